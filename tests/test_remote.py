"""A model on a V2 server as a runner: ``matte --server`` gives the composite local ``matte``
gives in the same arithmetic, ``bench --server`` measures clients against the local IR, and
a wrong server, model or option is one error line."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
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
        rest = _BinaryRest(Remote(f"http://127.0.0.1:{httpd.server_port}", "m"))
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
