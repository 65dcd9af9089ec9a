"""`bgm-export web` and the browser module web/bgm.js, tested as users run them: a real
Chromium (Debian's, headless), driven by Playwright, on the site the command builds and
serves, with Chromium's fake camera playing a clip written here.

Without Chromium (or Playwright) the browser tests are skipped, saying why; in CI's own run
(CI=true, helpers.CI_RUN) they fail instead. Set BGM_WEB_SCREENSHOT=1 to save the page's
screenshot to docs/web_page.png (the README's).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.data import synthetic_case, synthetic_cases
from exporter.runtime import OnnxRuntimeRunner
from exporter.tolerances import OFF_BY_ONE_LEVEL
from exporter.verify.compare import BARS, compare_output
from exporter.web import ISOLATION_HEADERS, MODEL_FILE, ORT_FILES, SITE_MANIFEST, ort_web_dist
from exporter.webbench import CHROMIUM_ARGS, DEFAULT_CHROMIUM
from helpers import CI_RUN, CLI_COMMAND, GOLDEN_CONFIG

# The launch flags (loopback only) are the library's, as `bench --web` launches Chromium.
CHROMIUM = Path(os.environ.get("BGM_CHROMIUM", DEFAULT_CHROMIUM))
FAKE_DEVICE = "--use-fake-device-for-media-stream"
FAKE_UI = "--use-fake-ui-for-media-stream"  # grants the camera without asking
# Waits, all bounded: the model loads in ~3 s at 192x320, a frame takes ~0.1 s.
PAGE_TIMEOUT_MS = 60_000
SERVER_START_SECONDS = 30
# The clip: an empty scene, the subject entering from the left, then staying; frames/s of the clip.
EMPTY_FRAMES, ENTERING_FRAMES, HOLD_FRAMES, CLIP_FPS = 30, 10, 30, 10
BACKGROUND_FRAMES, RECORDED_FRAMES = 5, 8
SCREENSHOT = Path(__file__).parent.parent / "docs" / "web_page.png"


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def _ort_missing() -> str | None:
    try:
        ort_web_dist()
    except Exception as exc:  # InputError: not installed, or another version than the lockfile's
        return str(exc)
    return None


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if CI_RUN:
        pytest.fail(f"CI needs this: {reason}")
    print(f"skipped: {reason}")
    pytest.skip(reason)


# --- the command: building and serving sites, and refusing bad input ------------------------


@pytest.fixture(scope="session")
def site(tmp_path_factory, golden_onnx) -> Path:
    """The golden ONNX (192x320) as a site, built once by the command."""
    _require(_ort_missing())
    from exporter.web import build_site

    return build_site(golden_onnx, tmp_path_factory.mktemp("web") / "site").folder


def test_site_is_self_contained(site, golden_onnx):
    """The artifact byte for byte, ONNX Runtime Web's files and only those, versions recorded."""
    manifest = json.loads((site / SITE_MANIFEST).read_text())
    assert (site / MODEL_FILE).read_bytes() == golden_onnx.read_bytes()
    assert manifest["onnxruntime_web"] == ort_web_dist()[1]
    lock = json.loads((Path(__file__).parent.parent / "package-lock.json").read_text())
    assert manifest["onnxruntime_web"] == lock["packages"]["node_modules/onnxruntime-web"]["version"]
    assert sorted(p.name for p in (site / "ort").iterdir()) == sorted(ORT_FILES)
    files = {str(p.relative_to(site)) for p in site.rglob("*") if p.is_file()}
    assert files == set(manifest["files"]) | {SITE_MANIFEST}
    assert manifest["model"]["metadata"]["resolution"] == "192x320"
    # Nothing in the site names another origin to fetch from (the runtime's own comments aside,
    # the page and the module load relative URLs only).
    for name in ("index.html", "app.js", "bgm.js", "style.css"):
        assert "http://" not in (site / name).read_text() and "https://" not in (site / name).read_text()


def _plain_onnx(path: Path) -> Path:
    """A valid ONNX that bgm-export did not make: one Identity, no metadata."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))
    return path


def _dynamic_copy(golden_onnx: Path, path: Path) -> Path:
    """The golden artifact with the metadata of a --dynamic export (its free sizes are accepted
    as fixed ones by the artifact check, so only the refusal can stop it)."""
    model = onnx.load(str(golden_onnx))
    for prop in model.metadata_props:
        if prop.key == "dynamic":
            prop.value = "true"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "case",
    ["not-onnx", "not-ours", "dynamic", "ir", "out-is-file", "out-not-empty", "missing"],
)
def test_web_refuses_bad_input(case, cli, one_error, tmp_path, golden_onnx):
    out = tmp_path / "site"
    artifact = golden_onnx
    if case == "not-onnx":
        artifact = tmp_path / "model.onnx"
        artifact.write_text("not a model")
        expected = "is not a readable ONNX model"
    elif case == "not-ours":
        artifact, expected = _plain_onnx(tmp_path / "plain.onnx"), "carries no bgm-export metadata"
    elif case == "dynamic":
        artifact, expected = _dynamic_copy(golden_onnx, tmp_path / "d.onnx"), "is a --dynamic export"
    elif case == "ir":
        artifact = tmp_path / "model.xml"
        artifact.write_text("<net/>")
        expected = "browsers run the ONNX artifact"
    elif case == "out-is-file":
        out.write_text("x")
        expected = "exists and is not a folder"
    elif case == "out-not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("x")
        expected = "is not empty"
    else:
        artifact, expected = tmp_path / "absent.onnx", "does not exist"
    before = sorted(tmp_path.rglob("*"))
    one_error(cli("web", artifact, "--out", out), expected)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no staging folder left


def test_web_needs_out_or_serve(cli, one_error, tmp_path, golden_onnx):
    one_error(cli("web", golden_onnx), "give --out DIR")
    one_error(cli("web", tmp_path, "--serve"), "not a site made by `bgm-export web`")


def test_web_refuses_a_port_in_use(cli, one_error, tmp_path, golden_onnx, site):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_error(cli("web", site, "--serve", "--port", port), f"port {port} on 127.0.0.1 is in use")
        # Building and serving: the port is taken first, so no site is left behind.
        out = tmp_path / "new-site"
        one_error(cli("web", golden_onnx, "--out", out, "--serve", "--port", port), "is in use")
        assert not out.exists() and not list(tmp_path.iterdir())


def test_web_full_disk_leaves_nothing(cli, one_error, tmp_path, golden_onnx, monkeypatch):
    """The disk fills while site.json is written (the last file): one error line, exit 2, no
    site and no staging folder."""
    _require(_ort_missing())
    write_text = Path.write_text

    def full(self: Path, *args: object, **kwargs: object) -> int:
        if self.name == SITE_MANIFEST:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "out" / "site"
    one_error(cli("web", golden_onnx, "--out", out), "No space left on device")
    assert not list(tmp_path.iterdir())


def test_web_refuses_a_huge_file_unread(cli, one_error, tmp_path, monkeypatch):
    """`truncate -s 3G huge.onnx`: refused by its size, before ONNX's parser reads it whole."""
    huge = tmp_path / "huge.onnx"
    with huge.open("wb") as handle:
        handle.truncate(3 << 30)  # sparse: no disk, no memory

    def unread(*args: object, **kwargs: object) -> None:
        raise AssertionError("the huge file was parsed")

    monkeypatch.setattr(onnx, "load", unread)
    monkeypatch.setattr(onnx, "load_model", unread)
    one_error(cli("web", huge, "--out", tmp_path / "site"), "a site takes models of at most")
    assert [p.name for p in tmp_path.iterdir()] == ["huge.onnx"]


@pytest.fixture(scope="session")
def served(site) -> str:
    """The site served by `bgm-export web DIR --serve` in a process of its own; its URL."""
    process = subprocess.Popen(
        [*CLI_COMMAND, "web", str(site), "--serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        line = ""
        while "serving at" not in line and time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
        assert "serving at" in line, f"{line}{process.stderr.read() if process.poll() is not None else ''}"
        yield line.split("serving at ")[1].split()[0]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        # The server's way to stop: exit 0 with one line, no traceback.
        assert process.returncode == 0 and "stopped by SIGTERM" in out and "Traceback" not in err, (out, err)


def test_served_with_isolation_headers_and_types(served):
    import urllib.request

    types = {"index.html": "text/html", "bgm.js": "text/javascript", "ort/ort.wasm.min.mjs": "text/javascript",
             "ort/ort-wasm-simd-threaded.wasm": "application/wasm", MODEL_FILE: "application/octet-stream"}  # fmt: skip
    for name, mime in types.items():
        with urllib.request.urlopen(served + name, timeout=10) as response:
            assert response.headers["Content-Type"].split(";")[0] == mime, name
            for header, value in ISOLATION_HEADERS.items():
                assert response.headers[header] == value, (name, header)
    with pytest.raises(urllib.error.HTTPError, match="404"):  # no listings
        urllib.request.urlopen(served + "ort/", timeout=10)


@contextlib.contextmanager
def _local_server(folder: Path):
    """`web --serve`'s server in a thread of this process, serving ``folder``; its port."""
    from exporter import web

    server = web._bind(0)
    server.RequestHandlerClass = functools.partial(web._SiteHandler, directory=str(folder.resolve()))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture()
def hostile_folder(tmp_path) -> Path:
    """A served folder with symlinks leading out of it (a file, a folder) and one within it."""
    folder = tmp_path / "srv"
    folder.mkdir()
    (folder / "index.html").write_text("<p>page</p>")
    (folder / SITE_MANIFEST).write_text("{}")
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "hostname").write_text("secret")
    (folder / "passwdlink").symlink_to(secret / "hostname")
    (folder / "etclink").symlink_to(secret)
    (folder / "inner.html").symlink_to(folder / "index.html")
    return folder


def _exchange(port: int, request: bytes, timeout: float = 5) -> tuple[str, dict[str, str], bytes]:
    """One raw request on its own connection: the answer's status line, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        if request:
            connection.sendall(request)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := connection.recv(1 << 16):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines if ": " in line), body


# (request, status): paths leading out of the folder, and requests http.server answered
# without a status line (HTTP/0.9 style) or without a log line.
HOSTILE_REQUESTS = [
    (b"GET /index.html HTTP/1.1\r\n\r\n", 200),
    (b"GET /inner.html HTTP/1.1\r\n\r\n", 200),  # a symlink within the folder
    (b"GET /index.html%00.png HTTP/1.1\r\n\r\n", 404),
    (b"GET /%ED%A0%80 HTTP/1.1\r\n\r\n", 404),  # a lone surrogate: no file name holds it
    (b"GET /passwdlink HTTP/1.1\r\n\r\n", 404),
    (b"GET /etclink/hostname HTTP/1.1\r\n\r\n", 404),
    (b"GET /missing HTTP/1.1\r\n\r\n", 404),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    (b"BREW / HTTP/1.1\r\n\r\n", 501),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"GET /\r\n\r\n", 400),
]


def test_server_answers_hostile_requests(hostile_folder, capsys):
    """Every answer has a status line and the isolation headers; nothing leaves the folder; each
    refused request is one line on stderr, no traceback."""
    answers = []
    with _local_server(hostile_folder) as port:
        for request, expected in HOSTILE_REQUESTS:
            status, headers, body = _exchange(port, request)
            answers.append((request[:40], status, expected))
            assert status.startswith("HTTP/1.") and int(status.split()[1]) == expected, (request[:40], status)
            assert all(headers.get(name) == value for name, value in ISOLATION_HEADERS.items()), (request[:40], headers)
            assert b"secret" not in body
    err = capsys.readouterr().err
    refused = sum(expected != 200 for _, expected in HOSTILE_REQUESTS)
    lines = err.splitlines()
    assert len(lines) == refused and all(line.startswith("web: ") for line in lines), err
    assert "Traceback" not in err and len(max(lines, key=len)) < 400, err


def test_server_bounds_connections_and_slow_headers(hostile_folder, capsys, monkeypatch):
    """Past the bound of connections, 503 at once; a client trickling its headers a byte at a
    time is cut off at the headers' deadline (408), one that sends nothing is closed silently,
    and their threads are free again afterwards."""
    from exporter import web

    monkeypatch.setattr(web, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(web, "HEADER_TIMEOUT_SECONDS", 1.5)
    with _local_server(hostile_folder) as port:
        started = time.monotonic()
        slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        try:
            for connection in slow[:3]:
                connection.sendall(b"GET /index.html HTTP/1.1\r\n")
            time.sleep(0.3)  # all four accepted before the fifth
            status, headers, _ = _exchange(port, b"")  # answered on arrival, before it sends anything
            assert status.split()[1] == "503" and headers["Cross-Origin-Embedder-Policy"] == "require-corp", status
            answers: dict[int, bytes] = {}
            deadline = time.monotonic() + 10  # the 1.5 s deadline, with room for a loaded machine
            while len(answers) < len(slow) and time.monotonic() < deadline:
                for i, connection in enumerate(slow):
                    if i in answers:
                        continue
                    if select.select([connection], [], [], 0)[0]:
                        data = b""
                        with contextlib.suppress(ConnectionResetError):
                            while chunk := connection.recv(1 << 16):
                                data += chunk
                        answers[i] = data
                    elif i < 3:
                        with contextlib.suppress(OSError):
                            connection.sendall(b"X")  # one byte at a time, well within any idle timeout
                time.sleep(0.25)
            took = time.monotonic() - started
        finally:
            for connection in slow:
                connection.close()
        assert len(answers) == len(slow), f"still held after {took:.1f} s: {len(slow) - len(answers)}"
        assert all(answers[i].startswith(b"HTTP/1.0 408") for i in range(3)), answers
        assert answers[3] == b""  # a connection that sent nothing (a browser's preconnect)
        status, _, body = _exchange(port, b"GET /index.html HTTP/1.1\r\n\r\n")
        assert status.split()[1] == "200" and body == b"<p>page</p>"
    err = capsys.readouterr().err
    assert err.count("503") == 1 and err.count("408") == 3 and len(err.splitlines()) == 4, err


# --- the browser ------------------------------------------------------------------------------


# Module-scoped: while a sync Playwright is started its event loop counts as running in this
# thread, and bench --web (tests/test_webbench.py, later in the same run) starts its own.
@pytest.fixture(scope="module")
def playwright_instance():
    _require(_browser_missing())
    from playwright.sync_api import sync_playwright

    manager = sync_playwright().start()
    yield manager
    manager.stop()


def _y4m(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    """RGB uint8 frames as a YUV4MPEG2 clip (4:2:0, BT.601 limited range, as Chromium's fake
    camera reads it back)."""
    height, width = frames[0].shape[:2]
    with path.open("wb") as clip:
        clip.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            r, g, b = (frame[..., i].astype(np.float32) for i in range(3))
            luma = 0.299 * r + 0.587 * g + 0.114 * b
            y = 16 + luma * 219 / 255
            u = 128 + (b - luma) * 0.564 * 224 / 255
            v = 128 + (r - luma) * 0.713 * 224 / 255

            def sub(plane: np.ndarray) -> np.ndarray:
                return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

            clip.write(b"FRAME\n")
            for plane in (y, sub(u), sub(v)):
                clip.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
    return path


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """An empty scene, then a subject entering from the left (192x320), and the scene."""
    case = synthetic_case(192, 320, seed=7)
    scene = case.bgr.astype(np.float32) / 255
    frames = [case.bgr] * EMPTY_FRAMES
    for step in range(1, ENTERING_FRAMES + 1):
        shift = int(320 * (step / ENTERING_FRAMES - 1))  # from fully outside to in place
        pha = np.roll(case.pha, shift, axis=1)[..., None]
        fgr = np.roll(case.fgr, shift, axis=1)
        if shift < 0:
            pha[:, shift:] = 0
        frames.append(np.clip(np.rint((pha * fgr + (1 - pha) * scene) * 255), 0, 255).astype(np.uint8))
    frames += frames[-1:] * HOLD_FRAMES
    return _y4m(tmp_path_factory.mktemp("clip") / "clip.y4m", frames, CLIP_FPS), case.bgr


def _launch(playwright_instance, tmp_path: Path, *flags: str):
    return playwright_instance.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *flags], headless=True
    )


@pytest.fixture(scope="module")
def camera_browser(playwright_instance, tmp_path_factory, clip):
    """Chromium with the fake camera playing the clip, granted without asking."""
    context = _launch(
        playwright_instance, tmp_path_factory.mktemp("chromium"), FAKE_DEVICE, FAKE_UI,
        f"--use-file-for-fake-video-capture={clip[0]}",
    )  # fmt: skip
    yield context
    context.close()


def _wait_ready(page) -> dict:
    page.wait_for_function("window.bgmPage && (window.bgmPage.ready || window.bgmPage.error)", timeout=PAGE_TIMEOUT_MS)
    return page.evaluate("({ready: bgmPage.ready, info: bgmPage.info, messages: bgmPage.messages})")


def _decode(b64: str, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype).reshape(shape)


# In the page: typed arrays to base64 and back, in chunks (String.fromCharCode takes few arguments).
JS_B64 = """
window.toB64 = (array) => {
  const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
};
window.fromB64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
"""


def _rgba(image: np.ndarray) -> str:
    return base64.b64encode(np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]).tobytes()).decode()


@pytest.mark.slow
def test_module_matches_onnx_runtime(camera_browser, served, site):
    """m.run on three composites (RGBA ImageData, wasm): alpha and foreground within the FP32
    bars of ONNX Runtime in Python on the same inputs; the contract's shapes and ranges."""
    cases = synthetic_cases(192, 320, 3)
    page = camera_browser.new_page()
    try:
        page.goto(served + "index.html?load=0")
        page.add_script_tag(content=JS_B64)
        answer = page.evaluate(
            """async (cases) => {
              const { createMatting } = await import("./bgm.js");
              const m = await createMatting({ model: "model.onnx", backend: "wasm" });
              const { width, height } = m.info;
              const image = (b64) => new ImageData(new Uint8ClampedArray(fromB64(b64).buffer), width, height);
              const out = [];
              for (const [src, bgr] of cases) {
                const { pha, fgr } = await m.run(image(src), image(bgr));
                out.push({ pha: toB64(pha), fgr: toB64(fgr), kinds: [pha.constructor.name, fgr.constructor.name] });
              }
              const composite = m.composite(await m.run(image(cases[0][0]), image(cases[0][1])), [0, 255, 0]);
              m.dispose();
              let disposedError = null;
              await m.run(image(cases[0][0]), image(cases[0][1])).catch((e) => { disposedError = e.code; });
              // WebAssembly starts once per page: a second session asking other threads runs with the first's.
              const again = await createMatting({ model: "model.onnx", backend: "wasm", threads: 1 });
              again.dispose();
              const cores = navigator.hardwareConcurrency;
              return { info: m.info, out, composite: toB64(composite.data), disposedError, again: again.info, cores };
            }""",
            [[_rgba(c.src), _rgba(c.bgr)] for c in cases],
        )
    finally:
        page.close()
    info = answer["info"]
    assert (info["width"], info["height"], info["backend"]) == (320, 192, "wasm")
    assert info["threads"] >= 1 and info["metadata"]["resolution"] == "192x320" and info["fallback"] is None
    assert answer["disposedError"] == "disposed"
    # Cross-origin isolated (the server's headers): as many threads as cores, up to 4.
    assert info["threads"] == min(4, answer["cores"]) and answer["again"]["threads"] == info["threads"]
    runner = OnnxRuntimeRunner(site / MODEL_FILE, json.loads((site / SITE_MANIFEST).read_text())["model"]["metadata"])
    reference = [runner.infer(case.feeds()) for case in cases]
    for name, channels in (("pha", 1), ("fgr", 3)):
        assert {o["kinds"][0 if name == "pha" else 1] for o in answer["out"]} == {"Float32Array"}
        actual = np.stack([_decode(o[name], np.float32, (channels, 192, 320)) for o in answer["out"]])
        expected = np.concatenate([r[name] for r in reference])
        result = compare_output(name, expected, actual, BARS["FP32"])
        print(f"{name}: max |d| {result.max_abs:.2e}, patches off {result.patch_share:.2%}")
        assert result.passed, result
        assert 0 <= actual.min() and actual.max() <= 1
    # composite(): fgr * pha + colour * (1 - pha), rounded to 8 bits.
    pha, fgr = reference[0]["pha"][0, 0, ..., None], reference[0]["fgr"][0].transpose(1, 2, 0)
    expected = np.clip(fgr, 0, 1) * np.clip(pha, 0, 1) + np.array([0, 1, 0]) * (1 - np.clip(pha, 0, 1))
    composite = _decode(answer["composite"], np.uint8, (192, 320, 4))
    assert np.abs(composite[..., :3] / 255 - expected).max() <= 1 / 255 + 1e-3
    assert (composite[..., 3] == 255).all()


# In the page: the last frame matted differs from the background by over 5 levels on average.
SUBJECT_IN = """() => {
  const frame = bgmPage.lastFrame, background = bgmPage.background;
  if (!frame || !background) return false;
  let sum = 0;
  for (let i = 0; i < frame.data.length; i++) if ((i & 3) !== 3) sum += Math.abs(frame.data[i] - background.data[i]);
  return sum / (frame.data.length * 0.75) > 5;
}"""


def _page_images(page, expression: str) -> list[np.ndarray]:
    b64s = page.evaluate(f"({expression}).map((image) => toB64(image.data))")
    return [_decode(b, np.uint8, (192, 320, 4))[..., :3] for b in b64s]


@pytest.mark.slow
def test_fake_camera_end_to_end(camera_browser, served, site, clip, tmp_path):
    """The page with Chromium's fake camera: the background is the median of the first frames
    (an empty scene), every request stays on the page's origin, and the composite it draws
    matches `bgm-export matte` on the frames it read (mean |d| <= 1/255)."""
    page = camera_browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(served + "index.html?source=camera&debug=1")
        page.fill("#auto-frames", str(BACKGROUND_FRAMES))  # before the camera starts: the model loads first
        state = _wait_ready(page)
        assert state["ready"], state
        # Record once the subject is in: matting an empty scene would prove little.
        page.wait_for_function(SUBJECT_IN, timeout=PAGE_TIMEOUT_MS, polling=200)
        page.evaluate(f"bgmPage.record({RECORDED_FRAMES})")
        page.wait_for_function(f"bgmPage.records.length >= {RECORDED_FRAMES}", timeout=PAGE_TIMEOUT_MS)
        page.add_script_tag(content=JS_B64)
        texts = page.evaluate(
            "({fps: document.getElementById('fps').textContent, "
            "backend: document.getElementById('backend-used').textContent, "
            "threads: document.getElementById('threads').textContent, "
            "privacy: document.getElementById('privacy').textContent, messages: bgmPage.messages})"
        )
        background = _page_images(page, "[bgmPage.background]")[0]
        background_frames = _page_images(page, "bgmPage.backgroundFrames")
        frames = _page_images(page, "bgmPage.records.map((r) => r.src)")
        composites = _page_images(page, "bgmPage.records.map((r) => r.composite)")
        if os.environ.get("BGM_WEB_SCREENSHOT"):
            page.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        page.close()
    origin = served.rstrip("/")
    assert requests and all(url.startswith(origin + "/") or url.startswith(("data:", "blob:")) for url in requests), (
        requests
    )
    assert float(texts["fps"]) > 0 and "WebAssembly" in texts["backend"] and int(texts["threads"].split()[0]) >= 1
    assert "never leave this device" in texts["privacy"] and texts["messages"] == [], texts
    # The background: the median of the first frames read, and those showed the empty scene.
    assert len(background_frames) == BACKGROUND_FRAMES
    assert (background == np.median(np.stack(background_frames), axis=0).astype(np.uint8)).all()
    scene_error = np.abs(background.astype(np.float32) - clip[1]).mean()
    assert scene_error < 3, f"the captured background is not the empty scene (mean |d| {scene_error:.2f} levels)"
    # The subject was in some frame the page matted.
    assert max(np.abs(f.astype(np.float32) - background).mean() for f in frames) > 5
    # The same frames and background through `bgm-export matte`.
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{i:03d}.png")
    Image.fromarray(background).save(tmp_path / "background.png")
    out = tmp_path / "matte"
    done = subprocess.run(
        [*CLI_COMMAND, "matte", "--model", str(site / MODEL_FILE), "--src", str(folder), "--bgr",
         str(tmp_path / "background.png"), "--target", "0,255,0", "--outputs", "composite", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = sorted(out.rglob("*.png"))
    assert len(written) == len(frames), written
    errors = []
    for composite, path in zip(composites, written, strict=True):
        reference = np.asarray(Image.open(path).convert("RGB"), np.float32)
        errors.append(np.abs(composite.astype(np.float32) - reference).mean() / 255)
    print(f"background vs scene {scene_error:.2f} levels; composite vs matte mean |d| max {max(errors):.2e}")
    assert max(errors) <= OFF_BY_ONE_LEVEL, errors


@pytest.mark.slow
@pytest.mark.parametrize("model", ["not-ours", "not-onnx"])
def test_page_names_a_bad_model(camera_browser, served, tmp_path, model):
    """A model that is not a bgm-export artifact, or not an ONNX at all: a message, not a blank."""
    body = _plain_onnx(tmp_path / "plain.onnx").read_bytes() if model == "not-ours" else b"<html>not found</html>"
    page = camera_browser.new_page()
    try:
        page.route("**/model.onnx", lambda route: route.fulfill(status=200, body=body))
        page.goto(served + "index.html")
        state = _wait_ready(page)
        shown = page.inner_text("#messages")
    finally:
        page.close()
    code = "not-bgm-artifact" if model == "not-ours" else "model-unreadable"
    assert not state["ready"] and [m["code"] for m in state["messages"]] == [code]
    assert ("not a bgm-export artifact" if model == "not-ours" else "is not an ONNX model") in shown


@pytest.mark.slow
def test_page_falls_back_from_absent_webgpu(camera_browser, served):
    """WebGPU asked for where there is none (--disable-gpu): WebAssembly runs, and the page says so."""
    page = camera_browser.new_page()
    try:
        page.goto(served + "index.html?backend=webgpu")
        state = _wait_ready(page)
        shown = page.inner_text("#messages")
    finally:
        page.close()
    assert state["ready"] and state["info"]["backend"] == "wasm", state
    assert [m["code"] for m in state["messages"]] == ["webgpu-fallback"]
    assert "WebGPU was requested but" in shown and "running on WebAssembly instead" in shown


@pytest.mark.slow
@pytest.mark.parametrize("camera", ["refused", "absent"])
def test_page_names_camera_problems(playwright_instance, served, tmp_path, clip, camera):
    """The camera refused (a fake camera, no permission given) or absent (permission given, no
    device): a message saying what to do."""
    flags = (FAKE_DEVICE, f"--use-file-for-fake-video-capture={clip[0]}") if camera == "refused" else (FAKE_UI,)
    context = _launch(playwright_instance, tmp_path, *flags)
    try:
        page = context.new_page()
        page.goto(served + "index.html?source=camera&load=0")  # the camera alone
        page.wait_for_function("bgmPage.messages.length > 0", timeout=PAGE_TIMEOUT_MS)
        codes = page.evaluate("bgmPage.messages.map((m) => m.code)")
        shown = page.inner_text("#messages")
    finally:
        context.close()
    if camera == "refused":
        assert codes == ["camera-refused"] and "The camera was refused" in shown
    else:
        assert codes == ["no-camera"] and "No camera was found" in shown


@pytest.fixture(scope="session")
def nan_model(tmp_path_factory) -> Path:
    """A model with bgm-export's metadata and shapes (192x320) that answers NaN everywhere, as a
    broken artifact may: fgr = (src + bgr) * NaN, pha their channel mean."""
    from onnx import TensorProto, helper

    shape = [1, 3, 192, 320]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name in ("src", "bgr")]
    outputs = [helper.make_tensor_value_info("pha", TensorProto.FLOAT, [1, 1, 192, 320]),
               helper.make_tensor_value_info("fgr", TensorProto.FLOAT, shape)]  # fmt: skip
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])
    nodes = [
        helper.make_node("Add", ["src", "bgr"], ["sum"]),
        helper.make_node("Mul", ["sum", "nan"], ["fgr"]),
        helper.make_node("ReduceMean", ["fgr"], ["pha"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(nodes, "nan", inputs, outputs, initializer=[nan])
    # IR version 8 (opset 17): what ONNX Runtime Web reads, whatever the installed onnx writes by default.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, GOLDEN_CONFIG.metadata("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.onnx"
    onnx.save(model, str(path))
    return path


# In the page: every odd value given to the module, and the code of the MattingError it throws
# (or what happened instead). One page, one tiny model: the NaN one.
ODD_VALUES = """async (modelB64) => {
  const { createMatting, MattingError } = await import("./bgm.js");
  const model = fromB64(modelB64);
  const m = await createMatting({ model, backend: "wasm" });
  const { width: W, height: H } = m.info;
  const plane = W * H;
  const image = () => new ImageData(W, H);
  const matte = { pha: new Float32Array(plane).fill(0.5), fgr: new Float32Array(3 * plane).fill(1) };
  const outcome = async (thunk) => {
    try {
      const value = await thunk();
      return `no error: ${value && value.constructor ? value.constructor.name : value}`;
    } catch (error) {
      return error instanceof MattingError ? error.code : `${error.name}: ${error.message}`;
    }
  };
  const cases = {
    "run data []": () => m.run({ width: W, height: H, data: [] }, image()),
    "run data short": () => m.run({ width: W, height: H, data: new Uint8ClampedArray(10) }, image()),
    "run data Float32 NaN": () => m.run({ width: W, height: H, data: new Float32Array(4 * plane).fill(NaN) }, image()),
    "run answers NaN": () => m.run(image(), image()),
    "run ImageData-shaped object answers NaN": () =>
      m.run({ width: W, height: H, data: new Uint8ClampedArray(4 * plane) }, image()),
    "composite undefined": () => m.composite(undefined, [0, 0, 0]),
    "composite pha of 3": () => m.composite({ pha: new Float32Array(3), fgr: matte.fgr }, [0, 0, 0]),
    "composite NaN matte": () => m.composite({ pha: new Float32Array(plane).fill(NaN), fgr: matte.fgr }, [0, 0, 0]),
    "composite [300, -1, NaN]": () => m.composite(matte, [300, -1, NaN]),
    "composite [1]": () => m.composite(matte, [1]),
    "composite short target": () => m.composite(matte, { width: W, height: H, data: new Uint8ClampedArray(3) }),
    "ortBase nowhere": () => createMatting({ model, backend: "wasm", ortBase: "nowhere/" }),
    "threads -1": () => createMatting({ model, backend: "wasm", threads: -1 }),
  };
  const codes = {};
  for (const [name, thunk] of Object.entries(cases)) codes[name] = await outcome(thunk);
  const good = m.composite(matte, [0, 255, 0]);
  const pixel = Array.from(good.data.subarray(0, 4));
  m.dispose();
  codes["composite after dispose"] = await outcome(() => m.composite(matte, [0, 0, 0]));
  return { codes, pixel };
}"""


@pytest.mark.slow
def test_module_refuses_odd_values(camera_browser, served, nan_model):
    """Frames that are not RGBA bytes of the model's size, a model answering NaN, mattes and
    colours of the wrong kind, a use after dispose, a wrong ortBase: each a MattingError with
    its code (an all-NaN matte, odd colours, a black frame or a TypeError before)."""
    page = camera_browser.new_page()
    try:
        page.goto(served + "index.html?load=0")
        page.add_script_tag(content=JS_B64)
        answer = page.evaluate(ODD_VALUES, base64.b64encode(nan_model.read_bytes()).decode())
    finally:
        page.close()
    bad_output = {"run answers NaN", "run ImageData-shaped object answers NaN"}
    expected = {name: "bad-input" for name in answer["codes"]}
    expected.update(dict.fromkeys(bad_output, "bad-output"))
    expected.update({"ortBase nowhere": "runtime-missing", "composite after dispose": "disposed"})
    assert answer["codes"] == expected
    assert answer["pixel"] == [128, 255, 128, 255]  # 0.5 of white over green: valid values still work


@pytest.mark.slow
def test_page_shows_a_model_answering_nan(camera_browser, served, nan_model):
    """A model answering NaN stops the page with a message, not a black picture at full speed."""
    body = nan_model.read_bytes()
    page = camera_browser.new_page()
    try:
        page.route("**/model.onnx", lambda route: route.fulfill(status=200, body=body))
        page.goto(served + "index.html?source=camera")
        page.fill("#auto-frames", "1")
        page.wait_for_function("bgmPage.messages.length > 0", timeout=PAGE_TIMEOUT_MS)
        codes = page.evaluate("bgmPage.messages.map((m) => m.code)")
        shown = page.inner_text("#messages")
        frames = page.evaluate("bgmPage.frames")
    finally:
        page.close()
    assert codes == ["bad-output"] and "NaN or infinite" in shown and frames == 0, (codes, shown)


@pytest.mark.slow
@pytest.mark.parametrize("parameter", ["other-origin", "protocol-relative", "backend"])
def test_page_refuses_bad_parameters(camera_browser, served, parameter):
    """?model= on another origin is refused before any request leaves (it was fetched); a
    ?backend= the page does not know is named as the page's parameter (ONNX Runtime Web was blamed)."""
    with socket.socket() as probe:  # a loopback port nobody listens on: nothing can answer
        probe.bind(("127.0.0.1", 0))
        other = probe.getsockname()[1]
    query = {
        "other-origin": f"model=http://127.0.0.1:{other}/model.onnx",
        "protocol-relative": f"model=//127.0.0.1:{other}/model.onnx",
        "backend": "backend=nonsense",
    }[parameter]
    page = camera_browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(served + "index.html?" + query)
        page.wait_for_function("bgmPage.error", timeout=PAGE_TIMEOUT_MS)
        codes = page.evaluate("bgmPage.messages.map((m) => m.code)")
        shown = page.inner_text("#messages")
    finally:
        page.close()
    from urllib.parse import urlsplit

    assert not [url for url in requests if urlsplit(url).port == other], requests
    if parameter == "backend":
        assert codes == ["backend-parameter"], codes
        assert "parameter backend=nonsense is not one of auto, wasm, webgpu" in shown and "ONNX Runtime" not in shown
    else:
        assert codes == ["model-parameter"], codes
        assert "loads models from its own site only" in shown


def test_missing_browser_is_a_failure_in_ci(monkeypatch):
    """Without a browser the tests skip, saying why, except in CI's own run."""
    import helpers

    module = sys.modules[__name__]
    monkeypatch.setattr(module, "CI_RUN", True)
    with pytest.raises(pytest.fail.Exception, match="CI needs this: no Chromium"):
        _require("no Chromium at /nowhere")
    monkeypatch.setattr(module, "CI_RUN", False)
    with pytest.raises(pytest.skip.Exception):
        _require("no Chromium at /nowhere")
    assert isinstance(helpers.CI_RUN, bool)


def test_ort_web_missing_says_run_setup(tmp_path):
    from exporter.errors import InputError

    with pytest.raises(InputError, match="run `make setup`"):
        ort_web_dist(tmp_path)
    package = tmp_path / "onnxruntime-web" / "package.json"
    package.parent.mkdir()
    package.write_text(json.dumps({"name": "onnxruntime-web", "version": "0.0.1"}))
    with pytest.raises(InputError, match="package-lock.json pins"):
        ort_web_dist(tmp_path)


def test_site_records_onnx_weights(onnx_weight_variants, site, tmp_path):
    """A variant with FP16 or INT8 weights is a site like any artifact, its storage in site.json's model."""
    _require(_ort_missing())
    from exporter.web import build_site

    assert json.loads((site / SITE_MANIFEST).read_text())["model"]["onnx_weights"] == "FP32"
    variant = build_site(onnx_weight_variants["INT8"], tmp_path / "site").folder
    model = json.loads((variant / SITE_MANIFEST).read_text())["model"]
    assert model["onnx_weights"] == "INT8" and model["metadata"]["onnx_weights"] == "INT8"
    assert (variant / MODEL_FILE).read_bytes() == onnx_weight_variants["INT8"].read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["FP16", "INT8"])
def test_module_runs_weight_variants(camera_browser, served, onnx_weight_variants, storage):
    """ONNX Runtime Web runs the FP16-weight (Cast) and INT8-weight (DequantizeLinear) variants
    as ONNX Runtime in Python does: the same artifact, so within the FP32 bars of each other."""
    variant = onnx_weight_variants[storage]
    cases = synthetic_cases(192, 320, 1)
    page = camera_browser.new_page()
    try:
        page.route("**/variant.onnx", lambda route: route.fulfill(status=200, body=variant.read_bytes()))
        page.goto(served + "index.html?load=0")
        page.add_script_tag(content=JS_B64)
        answer = page.evaluate(
            """async ([src, bgr]) => {
              const { createMatting } = await import("./bgm.js");
              const m = await createMatting({ model: "variant.onnx", backend: "wasm" });
              const image = (b64) => new ImageData(new Uint8ClampedArray(fromB64(b64).buffer), 320, 192);
              const { pha, fgr } = await m.run(image(src), image(bgr));
              m.dispose();
              return { info: m.info, pha: toB64(pha), fgr: toB64(fgr) };
            }""",
            [_rgba(cases[0].src), _rgba(cases[0].bgr)],
        )
    finally:
        page.close()
    assert answer["info"]["backend"] == "wasm" and answer["info"]["metadata"]["onnx_weights"] == storage
    reference = OnnxRuntimeRunner(variant, answer["info"]["metadata"]).infer(cases[0].feeds())
    for name, channels in (("pha", 1), ("fgr", 3)):
        actual = _decode(answer[name], np.float32, (1, channels, 192, 320))
        result = compare_output(name, reference[name], actual, BARS["FP32"])
        print(f"{storage} {name}: max |d| {result.max_abs:.2e}, patches off {result.patch_share:.2%}")
        assert result.passed, result
