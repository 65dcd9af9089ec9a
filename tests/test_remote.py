"""A model on a V2 server as a runner: ``matte --server`` gives the composite local ``matte``
gives in the same arithmetic, ``bench --server`` measures clients against the local IR, and
a wrong server, model or option is one error line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from exporter.config import ExportConfig
from exporter.data import synthetic_case
from exporter.errors import InputError, ServerError
from exporter.matte import matte, parse_model
from exporter.remote import BINARY_HEADER, Remote, binary_request, binary_response, parse_remote
from exporter.tolerances import OFF_BY_ONE_LEVEL
from helpers import CLI_COMMAND
from serving import Served, start_server, stop_server

MODEL = "background-matting-mobilenetv2"


@pytest.fixture(scope="module")
def server(golden_irs, tmp_path_factory) -> Iterator[Served]:
    served = start_server(golden_irs["FP32"], tmp_path_factory.mktemp("log") / "serve.log",
                          "--inference-precision", "f32")  # fmt: skip
    yield served
    assert stop_server(served) == 0, served.log.read_text()


def write_video(path: Path, height: int, width: int, frames: int) -> tuple[Path, Path]:
    """A video of ``frames`` synthetic frames and its background as a PNG."""
    cases = [synthetic_case(height, width, 500 + i % 8) for i in range(frames)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (width, height))
    for case in cases:
        writer.write(cv2.cvtColor(case.src, cv2.COLOR_RGB2BGR))
    writer.release()
    background = path.with_name("bgr.png")
    Image.fromarray(cases[0].bgr).save(background)
    return path, background


def composites(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p), np.float64) / 255 for p in sorted(folder.glob("frame_*_composite.png"))]


def assert_same_composites(local: Path, served: Path, frames: int) -> None:
    ours, theirs = composites(local), composites(served)
    assert len(ours) == len(theirs) == frames
    assert max(np.abs(a - b).max() for a, b in zip(ours, theirs, strict=True)) <= OFF_BY_ONE_LEVEL


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_matte_through_the_server_gives_the_local_composite(server, golden_irs, tmp_path, scheme):
    video, background = write_video(tmp_path / "in.mp4", 192, 320, 8)
    outputs = ["composite", "composite-png"]
    local = matte(golden_irs["FP32"], video, background, out=tmp_path / "local", inference_precision="f32",
                  outputs=outputs)  # fmt: skip
    address = server.grpc if scheme == "grpc" else server.rest
    remote = matte(Remote(f"{scheme}://{address}", MODEL), video, background, out=tmp_path / "served",
                   outputs=outputs)  # fmt: skip
    assert remote.frames == local.frames == 8
    assert remote.device == f"{scheme}://{address}" and remote.inference_precision == "the server's"
    assert (tmp_path / "served" / "composite.mp4").is_file()
    assert_same_composites(tmp_path / "local", tmp_path / "served", 8)


def test_remote_runner_states_the_servers_metadata(server):
    runner = Remote(f"grpc://{server.grpc}", MODEL).connect()
    try:
        assert runner.input_shape == (1, 3, 192, 320) and runner.parallel == 4
        assert runner.metadata["resolution"] == "192x320" and runner.metadata["versions"] == "1"
        assert runner.metadata["platform"] == "openvino"
        case = synthetic_case(192, 320, 7)
        from exporter.images import to_model_input

        outputs = runner.submit({"src": to_model_input(case.src), "bgr": to_model_input(case.bgr)}).result()
        assert outputs["pha"].shape == (1, 1, 192, 320) and outputs["fgr"].shape == (1, 3, 192, 320)
    finally:
        runner.close()


def test_matte_server_on_the_command_line(server, tmp_path, cli):
    video, background = write_video(tmp_path / "in.mp4", 192, 320, 3)
    url = f"http://{server.rest}"
    result = cli("matte", "--server", url, "--model-name", MODEL, "--src", video, "--bgr", background,
                 "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"inference on {url} in the server's arithmetic" in result.output
    assert (tmp_path / "out" / "composite.mp4").is_file()


def test_bench_server_beside_the_local_ir(server, golden_irs, tmp_path, cli, bench_without_pauses):
    report = tmp_path / "bench.json"
    result = cli("bench", "--server", f"grpc://{server.grpc}", "--model-name", MODEL, "--clients", "2",
                 "--frames", "4", "--local", golden_irs["FP32"], "--inference-precision", "f32",
                 "--json", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 concurrent clients" in result.output and "the server gives" in result.output
    numbers = json.loads(report.read_text())
    assert numbers["clients"] == 2 and numbers["frames"] == 4 and numbers["protocol"] == "gRPC"
    assert numbers["rounds"] == 3  # interleaved with the local IR's
    assert numbers["server_fps"] > 0 and numbers["local_fps"] > 0 and numbers["ratio"] > 0
    assert set(numbers["latency_ms"]) == {"p50", "p90", "p99"}


# ---- bad input: one error line ----


def test_model_and_server_are_one_of_two():
    with pytest.raises(InputError, match="one of the two"):
        parse_model(Path("m.xml"), "grpc://127.0.0.1:1", "x")
    with pytest.raises(InputError, match="one of the two"):
        parse_model(None, None, None)
    with pytest.raises(InputError, match="apply with --server only"):
        parse_model(Path("m.xml"), None, "x")
    with pytest.raises(InputError, match="needs --model-name"):
        parse_model(None, "grpc://127.0.0.1:1", None)
    with pytest.raises(InputError, match="is not grpc://HOST:PORT"):
        parse_remote("127.0.0.1:8001", "x")
    with pytest.raises(InputError, match="not a path"):
        parse_remote("http://127.0.0.1:8000/v2/models/x", "x")


def test_unknown_model_and_unreachable_server_are_named(server, tmp_path, cli, one_error):
    video, background = write_video(tmp_path / "in.mp4", 192, 320, 1)
    for url, name, words in [
        (f"grpc://{server.grpc}", "no-such-model", "no-such-model"),
        (f"http://{server.rest}", "no-such-model", "no-such-model"),
        ("grpc://127.0.0.1:1", MODEL, f"{MODEL} at grpc://127.0.0.1:1"),
    ]:
        result = cli("matte", "--server", url, "--model-name", name, "--src", video, "--bgr", background,
                     "--out", tmp_path / "out")  # fmt: skip
        one_error(result, words)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ServerError, match="no version '9'"):
        Remote(f"grpc://{server.grpc}", MODEL, "9").connect()


def test_device_options_are_the_servers(server, tmp_path):
    video, background = write_video(tmp_path / "in.mp4", 192, 320, 1)
    from exporter.errors import ConfigError

    with pytest.raises(ConfigError, match="are the server's"):
        matte(Remote(f"grpc://{server.grpc}", MODEL), video, background, out=tmp_path / "o", inference_precision="f32")


@pytest.mark.slow
def test_matte_server_at_720p_on_48_frames_gives_the_local_composite(weights, tmp_path):
    """The issue's bar: a 48-frame 720p video, our server (f32) against local matte (f32)."""
    from exporter.export.onnx import export_onnx
    from exporter.export.openvino import export_ir

    onnx_path = tmp_path / "m.onnx"
    export_onnx(ExportConfig(), weights, onnx_path)
    ir = export_ir(onnx_path, tmp_path / "FP32" / "m.xml", "FP32").xml
    video, background = write_video(tmp_path / "in.mp4", 720, 1280, 48)
    outputs = ["composite-png"]
    local = matte(ir, video, background, out=tmp_path / "local", inference_precision="f32", outputs=outputs)
    served = start_server(ir, tmp_path / "serve.log", "--inference-precision", "f32")
    try:
        remote = matte(Remote(f"grpc://{served.grpc}", MODEL), video, background, out=tmp_path / "served",
                       outputs=outputs)  # fmt: skip
    finally:
        assert stop_server(served) == 0, served.log.read_text()
    assert remote.frames == local.frames == 48
    assert_same_composites(tmp_path / "local", tmp_path / "served", 48)


def test_our_rest_request_is_the_one_tritonclient_writes():
    """``matte --server`` and ``bench --server`` send REST requests written here (no copies
    of the frames); they say what tritonclient's own encoder says, byte for byte in the
    tensors."""
    import tritonclient.http as triton

    rng = np.random.default_rng(0)
    feeds = {name: rng.uniform(0, 255, (1, 3, 6, 10)).astype(np.float32) for name in ("bgr", "src")}
    parts = binary_request(feeds, ("pha", "fgr"))
    inputs = []
    for name in ("src", "bgr"):
        tensor = triton.InferInput(name, [1, 3, 6, 10], "FP32")
        tensor.set_data_from_numpy(feeds[name])
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(name, binary_data=True) for name in ("pha", "fgr")]
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, outputs)
    assert json.loads(parts[0]) == json.loads(body[:header_length])
    assert b"".join(parts[1:]) == body[header_length:]


def answer(outputs: dict[str, np.ndarray], as_json: tuple[str, ...] = ()) -> tuple[bytes, int]:
    """A V2 REST answer as a server writes it: the JSON header, then the binary outputs."""
    described, data = [], b""
    for name, array in outputs.items():
        item = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if name in as_json:
            item["data"] = array.ravel().tolist()
        else:
            item["parameters"] = {"binary_data_size": array.nbytes}
            data += array.tobytes()
        described.append(item)
    header = json.dumps({"model_name": "m", "outputs": described}).encode()
    return header + data, len(header)


def test_answers_are_read_where_they_arrived():
    """The outputs equal what tritonclient's own decoder gives, and are arrays over the
    answer's bytes, not copies of them (tritonclient copied 15 MB a 720p answer twice)."""
    import tritonclient.http as triton

    rng = np.random.default_rng(1)
    outputs = {"pha": rng.random((1, 1, 6, 10), np.float32), "fgr": rng.random((1, 3, 6, 10), np.float32)}
    body, length = answer(outputs)
    decoded = binary_response(body, length)
    theirs = triton.InferenceServerClient.parse_response_body(body, header_length=length)
    whole = np.frombuffer(body, np.uint8)
    for name, array in outputs.items():
        assert decoded[name].shape == array.shape and decoded[name].dtype == np.float32
        assert np.array_equal(decoded[name], array) and np.array_equal(decoded[name], theirs.as_numpy(name))
        assert np.shares_memory(decoded[name], whole), name
    # An output given as JSON numbers (the protocol allows it) is read too.
    body, length = answer(outputs, as_json=("pha",))
    assert np.array_equal(binary_response(body, length)["pha"], outputs["pha"])


def edited(body: bytes, length: int, **changes: object) -> tuple[bytes, int]:
    """The answer with its first output's header fields changed."""
    header = json.loads(body[:length])
    header["outputs"][0].update(changes)
    text = json.dumps(header).encode()
    return text + body[length:], len(text)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("short", "declares 240 bytes of binary data; a \\[1, 1, 6, 10\\] FP32 tensor is 240, and 236 are left"),
        ("long", "holds 4 bytes after"),
        ("no datatype", "not a V2 inference response"),
        ("unknown datatype", "'pha' is not a numeric tensor: FOO"),
        ("size off its shape", "declares -4 bytes of binary data"),
    ],
)
def test_an_answer_that_does_not_add_up_is_named(case, message):
    body, length = answer({"pha": np.zeros((1, 1, 6, 10), np.float32)})
    if case == "short":
        body = body[:-4]
    elif case == "long":
        body += b"\0" * 4
    elif case == "no datatype":
        body = json.dumps({"outputs": [{"name": "pha"}]}).encode()
        length = len(body)
    elif case == "unknown datatype":
        body, length = edited(body, length, datatype="FOO")
    else:
        body, length = edited(body, length, parameters={"binary_data_size": -4})
    with pytest.raises(ValueError, match=message):
        binary_response(body, length)


def test_the_json_part_is_padded_so_that_tensors_start_aligned():
    feeds = {name: np.zeros((1, 3, 6, 10), np.float32) for name in ("src", "bgr")}
    header = binary_request(feeds, ("pha", "fgr"))[0]
    assert len(header) % 64 == 0 and header.endswith(b" ") and json.loads(header)["inputs"][0]["name"] == "src"


class OneRequestPerConnection(BaseHTTPRequestHandler):
    """A V2 server that closes each connection after one answer without saying so, as a
    server does with a connection idle past its keep-alive time."""

    protocol_version = "HTTP/1.1"
    connections: list[int] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        pha = np.full((1, 1, 2, 3), 0.5, np.float32).tobytes()
        header = json.dumps({"outputs": [{"name": "pha", "datatype": "FP32", "shape": [1, 1, 2, 3],
                                          "parameters": {"binary_data_size": len(pha)}}]}).encode()  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Length", str(len(header) + len(pha)))
        self.send_header(BINARY_HEADER, str(len(header)))
        self.end_headers()
        self.wfile.write(header + pha)
        self.connections.append(id(self.connection))
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_connection_the_server_closed_is_opened_again():
    from exporter.remote import _BinaryRest

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), OneRequestPerConnection)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        rest = _BinaryRest(Remote(f"http://127.0.0.1:{httpd.server_port}", "m"), 1 << 20)
        feeds = {name: np.zeros((1, 3, 2, 3), np.float32) for name in ("src", "bgr")}
        for _ in range(3):
            assert rest.infer(feeds, ("pha",))["pha"].tolist() == [[[[0.5] * 3] * 2]]
        rest.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert len(OneRequestPerConnection.connections) == 3


def test_the_servers_refusal_is_its_own_message():
    from exporter.remote import _error_message

    assert (
        _error_message(b'{"error": "input \'src\' has shape [1, 3, 2, 2]"}', 400)
        == "input 'src' has shape [1, 3, 2, 2]"
    )
    assert _error_message(b"<html>Bad Gateway</html>", 502) == "HTTP 502: <html>Bad Gateway</html>"


# ---- a misbehaving server: every answer is checked against the model's metadata ----

FAKE_SIZE = (32, 48)  # the fake model's height and width: small, so that matte's work is nothing


def fake_metadata(height: int, width: int) -> dict:
    def tensor(name: str, channels: int) -> dict:
        return {"name": name, "datatype": "FP32", "shape": [1, channels, height, width]}

    inputs, outputs = [tensor("src", 3), tensor("bgr", 3)], [tensor("pha", 1), tensor("fgr", 3)]
    return {"name": "m", "versions": ["1"], "platform": "fake", "inputs": inputs, "outputs": outputs}


def right_answer(height: int, width: int) -> dict[str, np.ndarray]:
    return {"pha": np.full((1, 1, height, width), 0.5, np.float32), "fgr": np.ones((1, 3, height, width), np.float32)}


class FakeV2(BaseHTTPRequestHandler):
    """A V2 server of a matting model whose metadata is right and whose answers are the
    test's: ``answer()`` gives the outputs (any name, shape, dtype), or None for none at all."""

    protocol_version = "HTTP/1.1"
    answer: Callable[[], dict[str, np.ndarray] | None]
    declared_length: int | None = None  # a Content-Length to state instead of the body's
    size = FAKE_SIZE  # the height and width the metadata states
    metadata: bytes | None = None  # the metadata's body, instead of fake_metadata's
    trickle = False  # the metadata's headers a byte at a time instead, past any --timeout
    release = threading.Event()  # a request held without an answer may end

    def _send(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.trickle:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):  # 10 s at most, ended by the client or the fixture
                if self.release.wait(0.1):
                    break
                try:
                    self.wfile.write(b"X")
                except OSError:
                    break
            self.close_connection = True
            return
        body = json.dumps(fake_metadata(*self.size)).encode() if self.metadata is None else self.metadata
        self._send(body, {"Content-Length": str(len(body))})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        outputs = type(self).answer()
        if outputs is None:  # never answers (within the test's bound)
            type(self).release.wait(30)
            self.close_connection = True
            return
        described, data = [], b""
        for name, array in outputs.items():
            datatype = {np.float32: "FP32", np.float64: "FP64"}[array.dtype.type]
            described.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                              "parameters": {"binary_data_size": array.nbytes}})  # fmt: skip
            data += array.tobytes()
        header = json.dumps({"model_name": "m", "outputs": described}).encode()
        length = self.declared_length or len(header) + len(data)
        self._send(header + data, {"Content-Length": str(length), BINARY_HEADER: str(len(header))})
        if self.declared_length:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def fake_server() -> Iterator[Callable[..., str]]:
    """``fake_server(answer, declared_length=None, size=..., metadata=None, trickle=False)``: a
    ``FakeV2`` on a free loopback port, its URL."""
    started: list[tuple[ThreadingHTTPServer, type]] = []

    def start(
        answer: Callable[[], dict[str, np.ndarray] | None],
        declared_length: int | None = None,
        size: tuple[int, int] = FAKE_SIZE,
        metadata: bytes | None = None,
        trickle: bool = False,
    ) -> str:
        attributes = {"answer": staticmethod(answer), "declared_length": declared_length, "size": size,
                      "metadata": metadata, "trickle": trickle, "release": threading.Event()}  # fmt: skip
        handler = type("Fake", (FakeV2,), attributes)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append((httpd, handler))
        return f"http://127.0.0.1:{httpd.server_port}"

    yield start
    for httpd, handler in started:
        handler.release.set()
        httpd.shutdown()
        httpd.server_close()


def fake_images(folder: Path) -> tuple[Path, Path]:
    case = synthetic_case(*FAKE_SIZE, 3)
    folder.mkdir()
    Image.fromarray(case.src).save(folder / "src.png")
    Image.fromarray(case.bgr).save(folder / "bgr.png")
    return folder / "src.png", folder / "bgr.png"


def wrong(**changes: np.ndarray | None) -> Callable[[], dict[str, np.ndarray]]:
    """The right answer with ``changes`` (None: that output left out)."""

    def answer() -> dict[str, np.ndarray]:
        outputs = {**right_answer(*FAKE_SIZE), **changes}
        return {name: array for name, array in outputs.items() if array is not None}

    return answer


WRONG_ANSWERS = {
    # numpy broadcast a 10x10 alpha over the frame: exit 0, an all-zero alpha
    "10x10 pha": (wrong(pha=np.ones((1, 1, 10, 10), np.float32)), "pha is float32 [1, 1, 10, 10]"),
    "NaN pha": (wrong(pha=np.full((1, 1, *FAKE_SIZE), np.nan, np.float32)), "pha holds NaN or infinite"),
    "inf fgr": (wrong(fgr=np.full((1, 3, *FAKE_SIZE), np.inf, np.float32)), "fgr holds NaN or infinite"),
    "float64 pha": (wrong(pha=np.ones((1, 1, *FAKE_SIZE))), "pha is float64"),
    "an output not asked for": (wrong(alpha=np.ones((1, 1, *FAKE_SIZE), np.float32)), "outputs ['alpha', 'fgr'"),
}


@pytest.mark.parametrize("case", list(WRONG_ANSWERS))
def test_matte_refuses_an_answer_that_is_not_the_models(case, fake_server, tmp_path, cli, one_error):
    answer, message = WRONG_ANSWERS[case]
    src, bgr = fake_images(tmp_path / "in")
    result = cli("matte", "--server", fake_server(answer), "--model-name", "m", "--src", src, "--bgr", bgr,
                 "--out", tmp_path / "out")  # fmt: skip
    one_error(result, message)
    assert not (tmp_path / "out").exists()


def test_matte_takes_the_right_answer_from_the_fake_server(fake_server, tmp_path, cli):
    """The fake server itself is a valid one: what the cases above change is all that is wrong."""
    src, bgr = fake_images(tmp_path / "in")
    result = cli("matte", "--server", fake_server(wrong()), "--model-name", "m", "--src", src, "--bgr", bgr,
                 "--out", tmp_path / "out", "--outputs", "alpha")  # fmt: skip
    assert result.exit_code == 0, result.output
    (alpha,) = (tmp_path / "out").glob("*alpha*.png")
    assert np.asarray(Image.open(alpha)).max() in (127, 128)


def test_bench_refuses_a_wrong_answer_instead_of_timing_it(fake_server, tmp_path, cli, one_error):
    answer, message = WRONG_ANSWERS["10x10 pha"]
    result = cli("bench", "--server", fake_server(answer), "--model-name", "m", "--clients", "2", "--frames", "4",
                 "--json", tmp_path / "bench.json")  # fmt: skip
    one_error(result, message)
    assert not (tmp_path / "bench.json").exists()


def test_metadata_of_a_model_past_8k_is_refused(fake_server, tmp_path, cli, one_error):
    """Else every request would allocate the frames the metadata states (here 80 GB)."""
    src, bgr = fake_images(tmp_path / "in")
    url = fake_server(wrong(), size=(100_000, 100_000))
    result = cli("matte", "--server", url, "--model-name", "m", "--src", src, "--bgr", bgr, "--out", tmp_path / "o")
    one_error(result, "more than the 33,177,600 pixels (8K UHD) a client sends")


def test_an_answer_larger_than_the_outputs_is_refused_before_it_is_read(fake_server, tmp_path, cli, one_error):
    src, bgr = fake_images(tmp_path / "in")
    url = fake_server(wrong(), declared_length=1 << 40)
    result = cli("matte", "--server", url, "--model-name", "m", "--src", src, "--bgr", bgr, "--out", tmp_path / "o")
    one_error(result, "the answer is 1099511627776 bytes; the model's outputs take at most")


@pytest.mark.parametrize("command", ["matte", "bench"])
def test_timeout_bounds_a_server_that_never_answers(command, fake_server, tmp_path, cli, one_error):
    src, bgr = fake_images(tmp_path / "in")
    url = fake_server(lambda: None)
    inputs = ["--src", src, "--bgr", bgr, "--out", tmp_path / "o"] if command == "matte" else ["--frames", "2"]
    started = time.monotonic()
    result = cli(command, "--server", url, "--model-name", "m", "--timeout", "0.5", *inputs)
    one_error(result, "no answer within 0.5 s (--timeout)")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e9"])
def test_timeout_takes_seconds_above_zero(value, tmp_path, cli, one_error):
    result = cli("matte", "--server", "http://127.0.0.1:9", "--model-name", "m", "--timeout", value,
                 "--src", tmp_path / "a.png", "--bgr", tmp_path / "b.png")  # fmt: skip
    one_error(result, f"--timeout {float(value)} is not a number of seconds above 0")


def test_timeout_applies_with_server_only(tmp_path, cli, one_error):
    result = cli("matte", "--model", tmp_path / "m.xml", "--timeout", "5", "--src", tmp_path / "a.png",
                 "--bgr", tmp_path / "b.png")  # fmt: skip
    one_error(result, "--timeout applies with --server only")
    one_error(cli("bench", "--timeout", "5"), "--timeout applies with --server only")


@pytest.mark.parametrize(
    "url", ["http://admin:s3cret@127.0.0.1:9", "grpc://admin:s3cret@127.0.0.1:9", "http://127.0.0.1:9/?token=s3cret"]
)
def test_credentials_in_a_server_url_are_never_printed(url, tmp_path, cli, one_error):
    """Neither transport sends them: refused, masked (they reached the connection's error before)."""
    src, bgr = fake_images(tmp_path / "in")
    for result in (
        cli("matte", "--server", url, "--model-name", "m", "--src", src, "--bgr", bgr, "--out", tmp_path / "o"),
        cli("bench", "--server", url, "--model-name", "m", "--frames", "1"),
    ):
        one_error(result, "--server")
        assert "s3cret" not in result.output and "***" in result.stderr


def test_check_answer_names_what_differs():
    from exporter.remote import BadAnswer, check_answer

    expected = {"pha": (1, 1, 4, 6), "fgr": (1, 3, 4, 6)}
    right = {"pha": np.zeros((1, 1, 4, 6), np.float32), "fgr": np.zeros((1, 3, 4, 6), np.float32)}
    assert check_answer(dict(right), expected) == right
    cases = [
        ({"pha": right["pha"]}, "outputs \\['pha'\\]"),
        ({**right, "pha": np.zeros((1, 1, 2, 3), np.float32)}, "pha is float32 \\[1, 1, 2, 3\\]"),
        ({**right, "pha": np.zeros((1, 1, 4, 6), np.float16)}, "pha is float16"),
        ({**right, "fgr": np.full((1, 3, 4, 6), -np.inf, np.float32)}, "fgr holds NaN or infinite"),
    ]
    for outputs, message in cases:
        with pytest.raises(BadAnswer, match=message):
            check_answer(outputs, expected)
    nan_one = right["fgr"].copy()
    nan_one[0, 2, 3, 5] = np.nan  # one value of many
    with pytest.raises(BadAnswer, match="NaN"):
        check_answer({**right, "fgr": nan_one}, expected)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_matte_with_a_request_in_flight(signum, code, fake_server, tmp_path):
    """The server holds the request (the timeout is a minute): Ctrl-C or SIGTERM ends the run
    at once, one line, no traceback (closing the runner waited for the answer before)."""
    asked = threading.Event()

    def hold() -> None:
        asked.set()

    src, bgr = fake_images(tmp_path / "in")
    argv = [*CLI_COMMAND, "matte", "--server", fake_server(hold), "--model-name", "m", "--timeout", "60",
            "--src", str(src), "--bgr", str(bgr), "--out", str(tmp_path / "out")]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert asked.wait(60), "the request never arrived"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and stderr.count("error:") == 1, stderr
    assert not (tmp_path / "out").exists()


# ---- hostile addresses, names and metadata: one error line, no lookup, nothing allocated ----


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:abc", "the port a number from 1 to 65535"),  # was: InvalidURL nonnumeric port
        ("http://127.0.0.1 :1", "the host is not a host name"),  # was: InvalidURL control characters
        ("http://127.0.0.1:1\r\nX: secret", "the port a number"),  # was: a header, in a traceback
        ("grpc://127.0.0.1:0", "the port a number"),
        ("grpc://127.0.0.1:65536", "the port a number"),
        ("http://127.0.0.1:" + "9" * 5000, "the port a number"),  # int() refuses 5000 digits
        ("http://127.0.0.1:８０", "the port a number"),  # fullwidth digits: int() takes them
        ("http://127.0.0.1", "give HOST:PORT"),
        ("http://:8000", "the host is not"),
        ("grpc://::1:8001", "the host is not"),  # IPv6 without brackets
        ("grpc://[::g]:8001", "the host is not"),
        ("grpc://[::1%\n]:8001", "the host is not"),
        ("http://999.0.0.1:8000", "the host is not"),
        ("http://a..b:8000", "the host is not"),
        ("http://-a:8000", "the host is not"),
        ("http://ex\u00e4mple.org:8000", "the host is not"),
        ("http://" + "a" * 64 + ":8000", "the host is not"),
    ],
)
def test_a_malformed_address_is_refused_before_any_lookup(url, message, monkeypatch):
    def no_lookup(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"looked up {args}")

    monkeypatch.setattr("socket.getaddrinfo", no_lookup)
    with pytest.raises(InputError, match=message):
        parse_remote(url, "m")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "grpc://[::1]:8001", "http://localhost:1/",
                                 "grpc://model_server.internal.:65535", "grpc://[fe80::1%eth0]:8001"])  # fmt: skip
def test_well_formed_addresses_are_taken(url):
    assert parse_remote(url, "m").url == url


@pytest.mark.parametrize("command", ["matte", "bench"])
def test_a_malformed_address_is_one_error_line(command, tmp_path, cli, one_error):
    inputs = []
    if command == "matte":  # real images: matte checked them first, and the URL failed afterwards
        src, bgr = fake_images(tmp_path / "in")
        inputs = ["--src", src, "--bgr", bgr, "--out", tmp_path / "o"]
    for url in ("http://127.0.0.1:abc", "http://127.0.0.1:1\r\nX: secret"):
        one_error(cli(command, "--server", url, "--model-name", "m", *inputs), "the port a number from 1 to 65535")


@pytest.mark.parametrize("name", ["a\r\nb", "a/b", "a b", "..", ".", "a\x00", "a\u2028b", "\t", "m" * 256])
def test_a_model_name_that_is_no_path_segment_is_refused(name, tmp_path, cli, one_error):
    with pytest.raises(InputError, match="is not a served model's name"):
        parse_remote("http://127.0.0.1:8000", name)
    result = cli("matte", "--server", "http://127.0.0.1:9", "--model-name", name, "--src", tmp_path / "a.png",
                 "--bgr", tmp_path / "b.png")  # fmt: skip
    one_error(result, "is not a served model's name")


def metadata_text(old: str, new: str, count: int = 1) -> bytes:
    """The fake model's metadata as JSON text with ``old`` made ``new`` (numbers json.dumps cannot write)."""
    text = json.dumps(fake_metadata(*FAKE_SIZE))
    assert old in text
    return text.replace(old, new, count).encode()


def with_outputs(*outputs: dict) -> bytes:
    metadata = fake_metadata(*FAKE_SIZE)
    metadata["outputs"] += outputs
    return json.dumps(metadata).encode()


BAD_METADATA = {
    # was: OverflowError, int(inf), a traceback
    "1e400": (metadata_text("[1, 3, 32, 48]", "[1, 3, 1e400, 48]"), "src's shape [1, 3, inf, 48] is not whole numbers"),
    # was: truncated to 32 and taken
    "32.7": (metadata_text(", 32, 48]", ", 32.7, 48]", -1), "src's shape [1, 3, 32.7, 48] is not whole numbers"),
    "a string": (metadata_text("[1, 3, 32, 48]", '[1, 3, "32", 48]'), "is not whole numbers"),
    "true": (metadata_text("[1, 1, 32, 48]", "[true, 1, 32, 48]"), "pha's shape [True, 1, 32, 48] is not whole"),
    "pha twice": (with_outputs({"name": "pha", "datatype": "FP32", "shape": [1, 1, 32, 48]}), "states 'pha' twice"),
}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_metadata_that_is_no_matting_models_is_refused(case, fake_server):
    metadata, message = BAD_METADATA[case]
    with pytest.raises(ServerError, match=re.escape(message)):
        Remote(fake_server(wrong(), metadata=metadata), "m").connect().close()


def test_metadata_past_a_float_is_one_error_line(fake_server, tmp_path, cli, one_error):
    src, bgr = fake_images(tmp_path / "in")
    url = fake_server(wrong(), metadata=BAD_METADATA["1e400"][0])
    result = cli("matte", "--server", url, "--model-name", "m", "--src", src, "--bgr", bgr, "--out", tmp_path / "o")
    one_error(result, "is not whole numbers")


def test_outputs_a_client_does_not_use_are_never_asked_for(fake_server, tmp_path, cli):
    """An output x of [1, 1000, 100000, 100000] in the metadata made the answer's bound 3.2e14
    bytes, allocated before the answer was read (MemoryError): only pha and fgr are asked for
    (what matte and bench use), and only they bound the answer."""
    src, bgr = fake_images(tmp_path / "in")
    huge = {"name": "x", "datatype": "FP32", "shape": [1, 1000, 100_000, 100_000]}
    err_sm = {"name": "err_sm", "datatype": "FP32", "shape": [1, 1, 100_000, 100_000]}  # known, unused
    url = fake_server(wrong(), metadata=with_outputs(huge, err_sm))
    runner = Remote(url, "m").connect()
    try:
        assert runner.output_names == ("pha", "fgr") and runner._answer_bytes < 64 << 20
    finally:
        runner.close()
    result = cli("matte", "--server", url, "--model-name", "m", "--src", src, "--bgr", bgr, "--out", tmp_path / "o",
                 "--outputs", "alpha")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_headers_trickled_past_the_timeout_are_a_timeout(fake_server, tmp_path, cli, one_error):
    """Cut short by the watchdog, the headers looked complete and the answer empty: it was
    reported as metadata that is not JSON."""
    src, bgr = fake_images(tmp_path / "in")
    url = fake_server(wrong(), trickle=True)
    result = cli("matte", "--server", url, "--model-name", "m", "--timeout", "0.5", "--src", src, "--bgr", bgr,
                 "--out", tmp_path / "o")  # fmt: skip
    one_error(result, "no answer within 0.5 s (--timeout)")


def test_an_output_stated_twice_is_refused():
    """REST: the second pha won; gRPC: raw tensors beyond the outputs were ignored."""
    pha = np.zeros((1, 1, 6, 10), np.float32)
    body, length = answer({"pha": pha})
    header = json.loads(body[:length])
    header["outputs"] *= 2
    text = json.dumps(header).encode()
    with pytest.raises(ValueError, match="the answer states output 'pha' twice"):
        binary_response(text + pha.tobytes() * 2, len(text))

    import tritonclient.grpc as triton
    from tritonclient.grpc import service_pb2

    from exporter.remote import _Client

    def grpc_answer(names: list[str], raw: int) -> service_pb2.ModelInferResponse:
        response = service_pb2.ModelInferResponse(model_name="m")
        for name in names:
            response.outputs.add(name=name, datatype="FP32", shape=list(pha.shape))
        response.raw_output_contents.extend([pha.tobytes()] * raw)
        return response

    class Answers:
        response: service_pb2.ModelInferResponse

        def infer(self, *args: object, **kwargs: object) -> triton.InferResult:
            return triton.InferResult(self.response)

    client = object.__new__(_Client)  # its connection is the answers above
    client.remote, client.rest, client.module, client.client = (
        Remote("grpc://127.0.0.1:9", "m"),
        None,
        triton,
        Answers(),
    )
    feeds = {name: np.zeros((1, 3, 6, 10), np.float32) for name in ("src", "bgr")}
    client.client.response = grpc_answer(["pha"], 1)
    assert np.array_equal(client.infer(feeds, ("pha",))["pha"], pha)  # the right answer is taken
    for names, raw, message in [(["pha"], 2, "2 raw tensors for its 1 outputs"), (["pha", "pha"], 2, "twice")]:
        client.client.response = grpc_answer(names, raw)
        with pytest.raises(ValueError, match=message):
            client.infer(feeds, ("pha",))
