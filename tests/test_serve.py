"""bgm-export serve: the Open Inference Protocol (KServe V2) over REST (JSON, binary tensors)
and gRPC, talked to with tritonclient: outputs equal to the artifact run here, metadata as
the artifact states it, concurrent clients, every bad request answered with its status while
the server stays up, a port in use named, SIGTERM with requests in flight.

The server runs in a process of its own on free loopback ports (KServe's and tritonclient's
gRPC modules cannot share one process); one is shared by the module."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from exporter.artifact import artifact_metadata
from exporter.data import synthetic_case
from exporter.images import to_model_input
from exporter.repository import add_to_repository, tensor_specs
from exporter.runtime import load_runner
from exporter.tolerances import SERVED_ATOL
from serving import COMMAND, Served, start_server, stop_server

MODEL = "background-matting-mobilenetv2"
SHAPE = [1, 3, 192, 320]
# The test server's request limit: a 192x320 binary request is 1.5 MB.
MAX_REQUEST_MB = 4


@pytest.fixture(scope="module")
def repo(golden_irs, golden_onnx, tmp_path_factory) -> Path:
    """Version 1 and 2 of the FP32 IR, the FP16 IR and the ONNX."""
    root = tmp_path_factory.mktemp("serve") / "repo"
    add_to_repository([golden_irs["FP32"], golden_irs["FP32"], golden_irs["FP16"], golden_onnx], root)
    return root


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory) -> Iterator[Served]:
    served = start_server(repo, tmp_path_factory.mktemp("log") / "serve.log", "--inference-precision", "f32",
                          "--max-request-mb", MAX_REQUEST_MB)  # fmt: skip
    yield served
    assert stop_server(served) == 0, served.log.read_text()


@pytest.fixture(scope="module")
def feeds() -> list[dict[str, np.ndarray]]:
    cases = [synthetic_case(192, 320, 300 + i) for i in range(3)]
    return [{"src": to_model_input(c.src), "bgr": to_model_input(c.bgr)} for c in cases]


@pytest.fixture(scope="module")
def expected(golden_irs, feeds) -> list[dict[str, np.ndarray]]:
    """The same IR run here, in the server's arithmetic (f32)."""
    runner = load_runner(golden_irs["FP32"], "openvino", inference_precision="f32")
    try:
        return [runner.infer(f) for f in feeds]
    finally:
        runner.close()


def rest_inputs(feed: dict[str, np.ndarray], binary: bool = True) -> list[httpclient.InferInput]:
    inputs = []
    for name in ("src", "bgr"):
        tensor = httpclient.InferInput(name, list(feed[name].shape), "FP32")
        tensor.set_data_from_numpy(feed[name], binary_data=binary)
        inputs.append(tensor)
    return inputs


def grpc_inputs(feed: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name in ("src", "bgr"):
        tensor = grpcclient.InferInput(name, list(feed[name].shape), "FP32")
        tensor.set_data_from_numpy(feed[name])
        inputs.append(tensor)
    return inputs


def assert_matches(result: object, expected: dict[str, np.ndarray]) -> None:
    for name, array in expected.items():
        served = result.as_numpy(name)
        assert served.shape == array.shape and served.dtype == np.float32
        assert np.abs(served - array).max() <= SERVED_ATOL, name


# ---- what the server computes and states ----


@pytest.mark.parametrize("protocol", ["rest-binary", "rest-json", "grpc"])
def test_outputs_equal_the_ir_run_here(server, feeds, expected, protocol):
    if protocol == "grpc":
        result = server.grpc_client().infer(MODEL, grpc_inputs(feeds[0]))
    else:
        binary = protocol == "rest-binary"
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("pha", "fgr")]
        result = server.http().infer(MODEL, rest_inputs(feeds[0], binary), outputs=outputs)
        response = result.get_response()
        assert response["model_version"] == "2"
        assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary
    assert_matches(result, expected[0])


def test_other_models_and_the_served_version_by_number(server, feeds, expected):
    grpc = server.grpc_client()
    for name in (f"{MODEL}-onnx", MODEL):
        assert_matches(grpc.infer(name, grpc_inputs(feeds[1]), model_version="2" if name == MODEL else ""),
                       expected[1])  # fmt: skip
    fp16 = server.http().infer(f"{MODEL}-fp16", rest_inputs(feeds[1]))
    assert np.abs(fp16.as_numpy("pha") - expected[1]["pha"]).mean() < 1e-2  # FP16 weights, f32 arithmetic


def test_health_and_metadata_are_the_artifacts(server, golden_irs):
    rest, grpc = server.http(), server.grpc_client()
    assert rest.is_server_live() and rest.is_server_ready() and grpc.is_server_live() and grpc.is_server_ready()
    assert rest.is_model_ready(MODEL) and grpc.is_model_ready(MODEL, "2")
    inputs, outputs = tensor_specs(artifact_metadata(golden_irs["FP32"]))
    want_inputs, want_outputs = [s.to_dict() for s in inputs], [s.to_dict() for s in outputs]
    metadata = rest.get_model_metadata(MODEL)
    assert metadata == {"name": MODEL, "versions": ["2"], "platform": "openvino",
                        "inputs": want_inputs, "outputs": want_outputs}  # fmt: skip
    metadata = grpc.get_model_metadata(MODEL, "2", as_json=True)
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]] == [
        (s["name"], s["datatype"], s["shape"]) for s in want_inputs
    ]
    assert rest.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    models = json.loads(urlopen(server, "GET", "/v2/models")[1])["models"]
    assert sorted(models) == sorted([MODEL, f"{MODEL}-fp16", f"{MODEL}-onnx"])


def test_prometheus_metrics(server, feeds):
    server.http().infer(MODEL, rest_inputs(feeds[0]))
    status, body = urlopen(server, "GET", "/metrics")
    assert status == 200
    count = re.search(rf'request_predict_seconds_count\{{model_name="{MODEL}"\}} (\S+)', body.decode())
    assert count and float(count[1]) >= 1


def test_eight_concurrent_clients_of_ten_requests_are_all_correct(server, feeds, expected):
    def client(index: int) -> int:
        correct = 0
        if index % 2:
            connection = server.grpc_client()
            infer: Callable = lambda feed: connection.infer(MODEL, grpc_inputs(feed))  # noqa: E731
        else:
            connection = server.http()
            infer = lambda feed: connection.infer(MODEL, rest_inputs(feed))  # noqa: E731
        for i in range(10):
            k = (index + i) % len(feeds)
            assert_matches(infer(feeds[k]), expected[k])
            correct += 1
        connection.close()
        return correct

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(client, range(8))) == 80


# ---- every bad request gets its status, and the server goes on answering ----


def urlopen(server: Served, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple:
    host, port = server.rest.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def binary_body(feed: dict[str, np.ndarray], **changes: object) -> tuple[bytes, dict]:
    """A binary-tensor request body and its headers; ``changes`` edit the JSON header."""
    header = {
        "inputs": [
            {
                "name": n,
                "shape": list(feed[n].shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": feed[n].nbytes},
            }
            for n in ("src", "bgr")
        ],  # fmt: skip
        "outputs": [{"name": "pha", "parameters": {"binary_data": True}}],
    }
    header.update(changes)
    text = json.dumps(header).encode()
    data = b"".join(feed[n].tobytes() for n in ("src", "bgr"))
    return text + data, {"Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"}


def json_body(inputs: list[dict]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


def bad_rest_requests(feed: dict[str, np.ndarray]) -> dict[str, tuple]:
    """name -> (path, body, headers, status, words in the message)."""
    infer = f"/v2/models/{MODEL}/infer"
    small = np.zeros((1, 3, 8, 8), np.float32)
    good, headers = binary_body(feed)
    src = {"name": "src", "shape": SHAPE, "datatype": "FP32", "data": feed["src"].ravel().tolist()}
    bgr = {**src, "name": "bgr"}
    longer = {**headers, "Inference-Header-Content-Length": str(len(good) + 1)}
    return {
        "wrong shape": (infer, *binary_body({"src": small, "bgr": small}), 400, "has shape [1, 3, 8, 8]"),
        "wrong datatype": (
            infer,
            json_body([{**src, "datatype": "INT32", "data": [0] * 184320}, bgr]),
            {},
            400,
            "is INT32; model",
        ),  # fmt: skip
        "missing input": (infer, json_body([src]), {}, 400, "input 'bgr' is missing"),
        "extra input": (infer, json_body([src, bgr, {**src, "name": "mask"}]), {}, 400, "has no input 'mask'"),
        "unknown model": ("/v2/models/no-such-model/infer", good, headers, 404, "no-such-model"),
        "unknown version": (f"/v2/models/{MODEL}/versions/7/infer", good, headers, 404, "has no version '7'"),
        "unserved version": (f"/v2/models/{MODEL}/versions/1/infer", good, headers, 404, "serves its latest, 2"),
        "malformed json": (infer, b'{"inputs": [', {}, 400, "malformed"),
        "binary shorter than its header": (infer, good[: len(good) - 100], headers, 400, "declares 737280 bytes"),
        "json header longer than the body": (infer, good, longer, 400, "has only"),
        "binary longer than its header": (infer, good + b"1234", headers, 400, "4 bytes after the inputs'"),
        "unknown output": (infer, *binary_body(feed, outputs=[{"name": "alpha"}]), 400, "has no output 'alpha'"),
        "body over the maximum": (infer, b"{" + b" " * (MAX_REQUEST_MB * 2**20) + b"}", {}, 413, "maximum"),
    }


BAD_REST = list(bad_rest_requests({"src": np.zeros(SHAPE, np.float32), "bgr": np.zeros(SHAPE, np.float32)}))


@pytest.mark.parametrize("case", BAD_REST)
def test_bad_rest_request_gets_its_status_and_the_server_stays_up(server, feeds, expected, case):
    path, body, headers, status, words = bad_rest_requests(feeds[0])[case]
    answer, content = urlopen(server, "POST", path, body, headers)
    assert answer == status, content
    assert words in json.loads(content)["error"]
    assert_matches(server.http().infer(MODEL, rest_inputs(feeds[0])), expected[0])


def bad_grpc_requests(feed: dict[str, np.ndarray]) -> dict[str, tuple]:
    """name -> (model, version, inputs, status, words in the message)."""

    def tensor(name: str, array: np.ndarray, datatype: str = "FP32") -> grpcclient.InferInput:
        item = grpcclient.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array)
        return item

    src, bgr = tensor("src", feed["src"]), tensor("bgr", feed["bgr"])
    truncated = tensor("src", feed["src"][..., :-1].copy())
    truncated.set_shape(SHAPE)  # the raw contents fall short of the declared shape
    small = np.zeros((1, 3, 8, 8), np.float32)
    huge = np.zeros((1, 3, 1024, 1024), np.float32)  # 12 MB, over the 4 MB maximum
    return {
        "wrong shape": (MODEL, "", [tensor("src", small), tensor("bgr", small)], "INVALID_ARGUMENT", "has shape"),
        "wrong datatype": (
            MODEL,
            "",
            [tensor("src", feed["src"].astype(np.float64), "FP64"), bgr],
            "INVALID_ARGUMENT",
            "is FP64",
        ),  # fmt: skip
        "missing input": (MODEL, "", [src], "INVALID_ARGUMENT", "input 'bgr' is missing"),
        "extra input": (MODEL, "", [src, bgr, tensor("mask", feed["src"])], "INVALID_ARGUMENT", "no input 'mask'"),
        "data shorter than the shape": (MODEL, "", [truncated, bgr], "INVALID_ARGUMENT", "its data is not a"),
        "unknown model": ("no-such-model", "", [src, bgr], "NOT_FOUND", "no-such-model"),
        "unknown version": (MODEL, "7", [src, bgr], "NOT_FOUND", "has no version '7'"),
        "message over the maximum": (MODEL, "", [tensor("src", huge), bgr], "RESOURCE_EXHAUSTED", "larger than max"),
    }


BAD_GRPC = list(bad_grpc_requests({"src": np.zeros(SHAPE, np.float32), "bgr": np.zeros(SHAPE, np.float32)}))


@pytest.mark.parametrize("case", BAD_GRPC)
def test_bad_grpc_request_gets_its_status_and_the_server_stays_up(server, feeds, expected, case):
    model, version, inputs, status, words = bad_grpc_requests(feeds[0])[case]
    client = server.grpc_client()
    with pytest.raises(InferenceServerException) as error:
        client.infer(model, inputs, model_version=version)
    assert error.value.status() == f"StatusCode.{status}" and words in error.value.message()
    assert_matches(client.infer(MODEL, grpc_inputs(feeds[0])), expected[0])


def test_a_truncated_raw_body_is_named_by_the_data_check(server, feeds):
    """The binary data exactly as long as its header says, but not what the shape needs."""
    body, headers = binary_body(feeds[0])
    header = json.loads(body[: int(headers["Inference-Header-Content-Length"])])
    header["inputs"][0]["parameters"]["binary_data_size"] -= 4
    text = json.dumps(header).encode()
    data = body[int(headers["Inference-Header-Content-Length"]) :][4:]
    status, content = urlopen(server, "POST", f"/v2/models/{MODEL}/infer", text + data,
                              {**headers, "Inference-Header-Content-Length": str(len(text))})  # fmt: skip
    assert status == 400 and "a [1, 3, 192, 320] FP32 tensor is 737280 bytes" in json.loads(content)["error"]


def chunks(body: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    return (body[i : i + size] for i in range(0, len(body), size))


def test_a_chunked_body_is_read_whole(server, feeds, expected):
    """A body without a Content-Length (chunked transfer) has no length to read into; it is
    read as it comes, answered, and held to the same maximum."""
    from exporter.remote import binary_response

    body, headers = binary_body(feeds[0])
    host, port = server.rest.rsplit(":", 1)
    for data, status in [(body, 200), (b"{" + b" " * (MAX_REQUEST_MB * 2**20 + 100_000) + b"}", 413)]:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request("POST", f"/v2/models/{MODEL}/infer", body=chunks(data), headers=headers,
                               encode_chunked=True)  # fmt: skip
            response = connection.getresponse()
            content, length = response.read(), response.getheader("Inference-Header-Content-Length")
        finally:
            connection.close()
        assert response.status == status, content[:200]
        if status == 200:
            pha = binary_response(content, int(length))["pha"]
            assert np.abs(pha - expected[0]["pha"]).max() <= SERVED_ATOL
            assert int(length) % 64 == 0  # the answer's tensors start aligned
        else:
            assert "maximum" in json.loads(content)["error"]


BODY_BUFFERS = """
import numpy as np
from exporter.serve.server import _kserve
_kserve()
from exporter.serve.rest import BodyBuffers

buffers = BodyBuffers(keep=2)
first, second = buffers.take(100), buffers.take(100)
assert first is not second and first.size == second.size == 100
buffers.give(memoryview(first)[:60])  # a body shorter than declared: still its buffer
assert buffers.take(100) is first and buffers.take(100) is not first
kept = [buffers.take(100) for _ in range(3)]
for buffer in kept:
    buffers.give(memoryview(buffer))
assert buffers.take(100) is kept[-1] and buffers.take(100) is kept[-2] and buffers.take(100) is not kept[0]
assert buffers.take(50).size == 50  # another size: a buffer of its own
buffers.give(memoryview(bytearray(100)))  # a chunked body's: not kept
assert isinstance(buffers.take(100), np.ndarray)
print("ok")
"""


def test_request_bodies_buffers_are_used_again_and_only_so_many_kept():
    """In a process of its own: KServe's gRPC module and tritonclient's cannot share one."""
    result = subprocess.run([sys.executable, "-c", BODY_BUFFERS], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_serving_loop_is_uvloops_where_installed():
    """Where uvloop is installed (KServe's uvicorn brings it) the server's event loop is
    uvloop's: each 256 KB read of a request is an event-loop turn, and asyncio's cost the
    server 1-4 ms of CPU a 720p request more."""
    uvloop = pytest.importorskip("uvloop")
    from exporter.serve.server import _event_loop

    assert _event_loop() is uvloop.run


def test_each_bad_request_is_counted_once(golden_irs, feeds, tmp_path):
    """The stop line counts what each model answered and refused: a request refused while
    decoding (malformed JSON), by the model's checks (a wrong shape, over REST and gRPC), once each."""
    served = start_server(golden_irs["FP32"], tmp_path / "serve.log", "--inference-precision", "f32")
    try:
        infer = f"/v2/models/{MODEL}/infer"
        small = np.zeros((1, 3, 8, 8), np.float32)
        assert urlopen(served, "POST", infer, b'{"inputs": [')[0] == 400
        assert urlopen(served, "POST", infer, *binary_body({"src": small, "bgr": small}))[0] == 400
        with pytest.raises(InferenceServerException, match="has shape"):
            served.grpc_client().infer(MODEL, grpc_inputs({"src": small, "bgr": small}))
        assert urlopen(served, "POST", infer, *binary_body(feeds[0]))[0] == 200
    finally:
        assert stop_server(served) == 0, served.log.read_text()
    deadline = time.monotonic() + 10  # the last line may still be on its way from the pipe
    while (
        not (line := [text for text in served.output if text.startswith("stopped by")]) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert line and f"(answered: {MODEL} 1; refused as bad requests: {MODEL} 3)" in line[0], served.output


def test_repository_changes_are_refused(server):
    status, content = urlopen(server, "POST", f"/v2/repository/models/{MODEL}/unload")
    assert status == 501 and "does not load or unload" in json.loads(content)["error"]
    assert server.http().is_model_ready(MODEL)


# ---- starting and stopping ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("protocol", ["HTTP", "gRPC"])
def test_a_port_in_use_is_named(golden_irs, protocol):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = [port, free_port()] if protocol == "HTTP" else [free_port(), port]
        argv = [*COMMAND, "serve", golden_irs["FP32"], "--http-port", ports[0], "--grpc-port", ports[1]]
        result = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    option = "--http-port" if protocol == "HTTP" else "--grpc-port"
    expected = f"error: {protocol} port {port} on 127.0.0.1 is in use; choose another {option}"
    assert result.stderr.strip().splitlines() == [expected], result.stderr


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish_exits_0_and_frees_its_ports(golden_irs, feeds, expected, tmp_path):
    served = start_server(golden_irs["FP32"], tmp_path / "serve.log", "--inference-precision", "f32")
    model = "background-matting-mobilenetv2"
    records: list[tuple[float, float, bool]] = []  # sent, answered, correct
    stop = threading.Event()

    def client(index: int) -> None:
        connection = served.grpc_client() if index % 2 else served.http()
        inputs = grpc_inputs(feeds[0]) if index % 2 else rest_inputs(feeds[0])
        for _ in range(200):  # bounded: the server is stopped long before
            sent = time.monotonic()
            try:
                result = connection.infer(model, inputs)
                assert_matches(result, expected[0])
                records.append((sent, time.monotonic(), True))
            except Exception:  # noqa: BLE001 - refused once the server stopped taking requests
                records.append((sent, time.monotonic(), False))
                if stop.is_set():
                    return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    terminated = time.monotonic()
    stop.set()
    served.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert served.process.wait(timeout=60) == 0, served.log.read_text()
    in_flight = [r for r in records if r[0] < terminated - 0.05 < r[1]]
    assert in_flight and all(correct for _, _, correct in in_flight), records
    assert sum(correct for *_, correct in records) >= 4
    for address in (served.rest, served.grpc):
        host, port = address.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
            socket.create_connection((host, int(port)), timeout=5).close()
        with socket.socket() as sock:  # and a new server can take the port (closed connections wait out TIME_WAIT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
            sock.listen()
    time.sleep(0.2)  # the reader thread takes the last line
    assert "stopped by SIGTERM; every request in flight was answered" in "".join(served.output)


# ---- the deployment side stays torch-free ----


def test_serving_imports_no_torch():
    code = ("import sys, exporter.serve, exporter.remote, exporter.repository; "
            "from exporter.serve.server import _kserve; _kserve(); "
            "import exporter.serve.server, exporter.serve.rest, exporter.serve.grpc_api, exporter.serve.model; "
            "print('torch' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    timing = subprocess.run([sys.executable, "-X", "importtime", "-c", "import exporter.serve"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert "torch" not in timing.stderr


# ---- the documentation's KServe manifest ----

DOCS = Path(__file__).parents[1] / "docs" / "serving.md"

# Builds the manifest with the KServe SDK's own models (kserve.models for KServe's types, the
# Kubernetes client's for the rest), refusing any field a model does not declare.
KSERVE_CHECK = r"""
import re, sys, yaml
from exporter.serve.server import _kserve
_kserve()
import kserve.models, kubernetes.client.models

SCALARS = {"str": str, "int": int, "float": (int, float), "bool": bool, "object": object}

def build(data, klass, path):
    if re.fullmatch(r"[lL]ist\[.*\]", klass):
        assert isinstance(data, list), path
        return [build(item, klass[5:-1], f"{path}/{i}") for i, item in enumerate(data)]
    if mapping := re.fullmatch(r"dict\(str, (.*)\)|Dict\[str, (.*)\]", klass):
        value = mapping[1] or mapping[2]
        assert isinstance(data, dict), path
        return {key: build(item, value, f"{path}/{key}") for key, item in data.items()}
    if klass in SCALARS:
        assert isinstance(data, SCALARS[klass]), f"{path}: {data!r} is not {klass}"
        return data
    model = getattr(kserve.models, klass, None) or getattr(kubernetes.client.models, klass)
    fields = {json_name: name for name, json_name in model.attribute_map.items()}
    unknown = set(data) - set(fields)
    assert not unknown, f"{path}: {klass} has no field {sorted(unknown)}"
    return model(**{fields[k]: build(v, model.openapi_types[fields[k]], f"{path}/{k}") for k, v in data.items()})

text = open(sys.argv[1]).read()
manifest = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S)[1])
service = build(manifest, "V1beta1InferenceService", "")
predictor = service.spec.predictor
print(service.kind, predictor.min_replicas, predictor.max_replicas, predictor.scale_metric)
print(" ".join(predictor.containers[0].command))
"""


def test_the_docs_kserve_manifest_reads_as_an_inference_service(cli):
    result = subprocess.run([sys.executable, "-c", KSERVE_CHECK, str(DOCS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary, command = result.stdout.splitlines()
    assert summary == "InferenceService 2 10 concurrency"
    help_text = cli("serve", "--help").output
    for option in re.findall(r"--[a-z-]+", command):
        assert option in help_text, option
