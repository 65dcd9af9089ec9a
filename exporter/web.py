"""``bgm-export web``: a self-contained static site that runs an ONNX artifact in the browser
(the ES module web/bgm.js around ONNX Runtime Web, the artifact byte for byte, and a live
page), and a loopback server for it with the cross-origin isolation that multi-threaded
WebAssembly needs.

ONNX Runtime Web comes from the npm registry at the version pinned in package-lock.json,
installed into node_modules/ by ``make setup`` (``npm ci``); it is copied, never fetched,
here. Torch-free (the deployment side).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import http.server
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exporter import __version__
from exporter.artifact import artifact_kind, artifact_metadata
from exporter.config import ExportConfig
from exporter.errors import ArtifactError, InputError, OutputError, ServerError, Terminated
from exporter.files import remove_empty, sha256_of
from exporter.redact import printable

__all__ = [
    "DEFAULT_WEB_PORT",
    "HEADER_TIMEOUT_SECONDS",
    "ISOLATION_HEADERS",
    "MAX_CONNECTIONS",
    "MAX_MODEL_BYTES",
    "ORT_FILES",
    "SITE_MANIFEST",
    "Site",
    "WebResult",
    "build_site",
    "ort_web_dist",
    "publish",
]

REPOSITORY = Path(__file__).resolve().parent.parent
# The module and page sources, and where `npm ci` puts ONNX Runtime Web (package.json).
WEB_SOURCES = REPOSITORY / "web"
NODE_MODULES = REPOSITORY / "node_modules"
ORT_PACKAGE = "onnxruntime-web"
# The files of ONNX Runtime Web 1.30 a site needs, and nothing else: each build's entry module
# and the WebAssembly it loads (web/bgm.js imports the WebAssembly-only build, or the WebGPU
# one when an adapter is there). Its package has no licence file: site.json records its licence.
ORT_FILES = (
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
PAGE_FILES = ("index.html", "app.js", "style.css", "bgm.js")
MODEL_FILE = "model.onnx"
SITE_MANIFEST = "site.json"
# The largest artifact a site takes, checked before the file is read (a 3 GB file was read
# whole before its parse failed): the largest this project makes is ResNet-101 FP32, some
# 240 MB of weights at any resolution (checkpoints/README.md), so 1 GB leaves a 4x margin and
# stays far below what a browser tab's 32-bit WebAssembly memory (4 GB) can load.
MAX_MODEL_BYTES = 1 << 30

# Loopback only: the page is for the person at this machine (a static host serves it to others).
WEB_HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 8090  # clear of `serve`'s 8000 / 8001
# SharedArrayBuffer, and so WebAssembly threads, exist only in a cross-origin-isolated page:
# https://web.dev/articles/coop-coep. CORP lets the page's own workers load under COEP.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming refuses any other type
    ".onnx": "application/octet-stream",
    ".png": "image/png",
}
# A client that takes in nothing of an answer for this long loses its connection: a reader
# that never reads must not hold a handler thread forever (HOSTILE.md, 1). The model is the
# largest answer (tens of MB over loopback take well under a second).
REQUEST_TIMEOUT_SECONDS = 30
# A request line and headers are a few hundred bytes: a client that has not sent them whole
# within this long, however it trickles them, is holding a connection, not sending a request
# (as `serve`'s HEADER_TIMEOUT_SECONDS; Apache's mod_reqtimeout gives 20 s). Answered 408.
HEADER_TIMEOUT_SECONDS = 20.0
# The longest any one answer may take: the largest (a MAX_MODEL_BYTES model) at 8 MB/s.
# Loopback carries it in about a second; a client slower than this holds a thread for nothing.
RESPONSE_DEADLINE_SECONDS = 128.0
# Connections served at once, each a thread: Chromium opens at most 6 per host over
# HTTP/1.1, so 32 serves a few tabs and their preconnects. Past it the answer is 503.
MAX_CONNECTIONS = 32
# The longest request line: http.server's own bound, 414 past it.
MAX_REQUEST_LINE = 65536
# A log line quotes the client's request line (up to 64 KB): its start and end, 150 characters
# each, say what was asked; the rest would only flood the terminal.
LOG_LINE_CHARS = 300


@dataclass
class Site:
    """A static site made by ``build_site``: its folder, its files with their sizes, and what it holds."""

    folder: Path
    ort_version: str
    model_sha256: str
    model_bytes: int
    resolution: str
    files: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        total = sum(self.files.values())
        return [
            f"site {self.folder}: {len(self.files)} files, {total / 1e6:.1f} MB",
            f"  model      {MODEL_FILE} {self.resolution}, {self.model_bytes / 1e6:.1f} MB, sha256 {self.model_sha256}",
            f"  runtime    ONNX Runtime Web {self.ort_version} (WebAssembly; WebGPU where the browser has it)",
            f"  serve it:  bgm-export web {self.folder} --serve   (or any static host with the headers in docs/web.md)",
        ]


@dataclass
class WebResult:
    """What ``publish`` did: the site it built (None when it only served) and how serving ended."""

    site: Site | None
    stopped_by: str | None = None


def ort_web_dist(node_modules: Path = NODE_MODULES) -> tuple[Path, str]:
    """ONNX Runtime Web's ``dist`` folder and version, as ``npm ci`` installed it from the
    lockfile; ``InputError`` saying to run ``make setup`` when it is missing or another version."""
    package = node_modules / ORT_PACKAGE
    try:
        installed = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        raise InputError(
            f"ONNX Runtime Web is not installed ({package}): run `make setup` (npm ci) in the repository"
        ) from None
    lock = REPOSITORY / "package-lock.json"
    try:
        locked = json.loads(lock.read_text())["packages"][f"node_modules/{ORT_PACKAGE}"]["version"]
    except (OSError, ValueError, KeyError):
        locked = installed  # an installed package without the repository's lockfile: take what is there
    if installed != locked:
        raise InputError(
            f"ONNX Runtime Web {installed} is installed but package-lock.json pins {locked}: run `make setup`"
        )
    dist = package / "dist"
    missing = [name for name in ORT_FILES if not (dist / name).is_file()]
    if missing:
        raise InputError(f"ONNX Runtime Web {installed} lacks {', '.join(missing)}: run `make setup` (npm ci)")
    return dist, installed


def _browser_artifact(path: Path) -> tuple[dict[str, str], ExportConfig]:
    """The metadata and configuration of an ONNX artifact the browser can run; ``ArtifactError``
    for anything else, before a byte is written."""
    path = Path(path)
    if artifact_kind(path) != ".onnx":
        raise ArtifactError(f"{path} is an OpenVINO IR; browsers run the ONNX artifact (bgm-export onnx)")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        # Before a byte is read: ONNX's parser takes the whole file into memory.
        raise ArtifactError(
            f"{path} is {size / 1e9:.2f} GB; a site takes models of at most {MAX_MODEL_BYTES / 1e9:.2f} GB "
            "(the largest bgm-export artifact, ResNet-101 FP32, is about 0.24 GB)"
        )
    metadata = artifact_metadata(path)
    config = ExportConfig.from_metadata(metadata)
    if config.dynamic:
        # The page sizes its frames from the artifact's one resolution, and a dynamic graph is
        # verified at two sizes only: a browser runs what was verified.
        raise ArtifactError(
            f"{path} is a --dynamic export; the browser runs fixed-size exports "
            f"(bgm-export onnx --height H --width W, one per camera size)"
        )
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ArtifactError(f"{path} keeps its weights in external files; the browser loads one .onnx file")
    return metadata, config


def _check_out(out: Path) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"output folder {out} is not empty; give a new or empty folder")


def build_site(artifact: Path, out: Path, node_modules: Path = NODE_MODULES) -> Site:
    """Write the static site for ``artifact`` (an ``.onnx`` made by ``bgm-export onnx``, any weights)
    into ``out`` (new, or an empty folder): the page, web/bgm.js, ONNX Runtime Web's files,
    the artifact byte for byte as model.onnx, and site.json recording versions and digests.
    All or nothing: the site is made beside ``out`` and renamed into place."""
    metadata, config = _browser_artifact(artifact)
    _check_out(out)
    dist, ort_version = ort_web_dist(node_modules)
    out = Path(out)
    created = [folder for folder in (out.parent, *out.parent.parents) if not folder.exists()]
    done = False
    staging = None
    try:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", suffix=".partial", dir=out.parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o777 & ~umask)  # a folder, not mkdtemp's private 0700: static hosts read it
            for name in PAGE_FILES:
                shutil.copyfile(WEB_SOURCES / name, staging / name)
            (staging / "ort").mkdir()
            for name in ORT_FILES:
                shutil.copyfile(dist / name, staging / "ort" / name)
            shutil.copyfile(artifact, staging / MODEL_FILE)
            files = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
            model_sha = sha256_of(staging / MODEL_FILE)
            if model_sha != sha256_of(artifact):
                raise OutputError(f"{artifact} changed while the site was written; run again")
            manifest = {
                "tool": f"bgm-export {__version__}",
                "onnxruntime_web": ort_version,
                "onnxruntime_web_license": "MIT (Microsoft Corporation), as its package.json states",
                "model": {
                    "file": MODEL_FILE,
                    "source": Path(artifact).name,
                    "bytes": files[MODEL_FILE],
                    "sha256": model_sha,
                    "resolution": f"{config.height}x{config.width}",
                    "onnx_weights": config.onnx_weights,  # FP32, or a smaller download (bgm-export onnx)
                    "metadata": metadata,
                },
                "files": {name: sha256_of(staging / name) for name in files},
                "headers": ISOLATION_HEADERS,
            }
            # A full disk fails here as anywhere else: the site is not there, and nothing is left.
            (staging / SITE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            files[SITE_MANIFEST] = (staging / SITE_MANIFEST).stat().st_size
            os.rename(staging, out)  # onto a missing or empty folder: atomic
        except OSError as exc:
            raise OutputError(f"cannot write the site {out}: {exc.strerror or exc}") from None
        staging = None
        done = True
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not done:
            remove_empty(created)
    return Site(out, ort_version, model_sha, files[MODEL_FILE], f"{config.height}x{config.width}", files)


def _check_site(folder: Path) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a site made by `bgm-export web MODEL.onnx --out DIR`")
    if not (folder / SITE_MANIFEST).is_file():
        raise InputError(f"{folder} has no {SITE_MANIFEST}: it is not a site made by `bgm-export web`")


def _plain_answer(code: int, text: str) -> bytes:
    """A whole answer with a status line and the isolation headers, for the connections that
    never reach a handler's ``send_error`` (refused, or too slow to finish their headers)."""
    body = (text + "\n").encode()
    reason = http.HTTPStatus(code).phrase
    headers = {**ISOLATION_HEADERS, "Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)),
               "Connection": "close"}  # fmt: skip
    head = f"HTTP/1.0 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("ascii") + body


_log_lock = threading.Lock()


def _log(text: str) -> None:
    """One line on stderr; handler threads write whole lines (print writes the text and its
    newline apart, and threads' lines ran together)."""
    line = f"web: {printable(text, LOG_LINE_CHARS)}\n"
    with _log_lock:
        sys.stderr.write(line)
        sys.stderr.flush()


class _HeadersTooSlow(TimeoutError):
    """The request line and headers did not arrive within ``HEADER_TIMEOUT_SECONDS``."""


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, each read waiting at most until the deadline: a client that trickles
    one byte every few seconds resets a socket's own timeout forever, not this one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline: float | None = None
        self.received = 0  # since the deadline was set

    def readable(self) -> bool:
        return True

    def start(self) -> None:
        self.deadline = time.monotonic() + HEADER_TIMEOUT_SECONDS
        self.received = 0

    def stop(self) -> None:
        self.deadline = None

    def readinto(self, buffer: memoryview) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _HeadersTooSlow
            self.sock.settimeout(left)
        try:
            count = self.sock.recv_into(buffer)
        except TimeoutError:
            if self.deadline is not None:
                raise _HeadersTooSlow from None
            raise
        self.received += count
        return count


class _SiteHandler(http.server.SimpleHTTPRequestHandler):
    """Static files of one folder (never a path that leaves it, symlinks included) with the
    isolation headers and the MIME types the page needs; no listings. Every answer has a status
    line and the headers; every refused request is one line on stderr."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    # Errors before the version is read are answered as HTTP/1.0 (with a status line and
    # headers), never as HTTP/0.9's bare body.
    default_request_version = "HTTP/1.0"

    def setup(self) -> None:
        self.timeout = REQUEST_TIMEOUT_SECONDS
        super().setup()
        self.rfile.close()  # the socket's own reader, whose timeout each trickled byte resets
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)
        self.command, self.request_version, self.requestline = None, self.default_request_version, ""

    def handle_one_request(self) -> None:
        """http.server's, with the headers' deadline, and silence for a connection that sent
        nothing (a browser's preconnect)."""
        self._reader.start()
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.requestline, self.command = "", None
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():  # reads the headers, within the deadline
                return
            self._reader.stop()
            self.connection.settimeout(REQUEST_TIMEOUT_SECONDS)
            method = getattr(self, f"do_{self.command}", None)
            if method is None:
                self.send_error(501, f"Unsupported method ({self.command!r})")
                return
            method()
            self.wfile.flush()
        except _HeadersTooSlow:
            self.close_connection = True
            if self._reader.received:
                _log(f"{self.address_string()}: the request was not complete within {HEADER_TIMEOUT_SECONDS:g} s: 408")
                with contextlib.suppress(OSError):
                    self.connection.settimeout(1)
                    self.connection.sendall(_plain_answer(408, "the request did not arrive in time"))

    def parse_request(self) -> bool:
        words = str(self.raw_requestline, "iso-8859-1").split()
        if len(words) == 2:  # HTTP/0.9, which has no status line nor headers to answer with
            self.requestline = " ".join(words)
            self.close_connection = True
            self.send_error(400, "a request line needs a version (HTTP/1.0 or HTTP/1.1)")
            return False
        return super().parse_request()

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        # The model and runtime change when the site is rebuilt in place of another.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def translate_path(self, path: str) -> str:
        """The real path of ``path`` in the site, or ``_Outside`` when it names none (a NUL byte
        or a lone surrogate, which no file name holds, or a symlink leading out of the folder)."""
        local = super().translate_path(path)
        if "\0" in local:
            raise _Outside
        root = os.path.realpath(self.directory)
        try:
            real = os.path.realpath(local)
        except ValueError:  # embedded NUL, or a surrogate the file system cannot encode
            raise _Outside from None
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise _Outside
        return real + "/" if local.endswith("/") and not real.endswith("/") else real

    def send_head(self) -> object:
        try:
            return super().send_head()
        except _Outside:
            self.send_error(404, "File not found")
            return None

    def copyfile(self, source: object, outputfile: object) -> None:
        """The file in blocks, the whole within ``RESPONSE_DEADLINE_SECONDS``."""
        deadline = time.monotonic() + RESPONSE_DEADLINE_SECONDS
        while block := source.read(1 << 16):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client took in the answer too slowly")
            self.connection.settimeout(min(left, REQUEST_TIMEOUT_SECONDS))
            outputfile.write(block)

    def list_directory(self, path: str | os.PathLike) -> None:
        self.send_error(404, "no listings")
        return None

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # the page's requests are not news; send_error logs the refused ones

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        _log(f"{self.address_string()} {self.requestline!r}: {format % args}")


class _Outside(Exception):
    """A requested path that names nothing in the site's folder."""


class _SiteServer(http.server.ThreadingHTTPServer):
    """One thread per connection, at most ``MAX_CONNECTIONS`` of them; a connection past the
    bound is answered 503 and closed at once. Stopping does not wait for slow clients."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.limit = MAX_CONNECTIONS
        self._slots = threading.BoundedSemaphore(self.limit)
        super().__init__(*args, **kwargs)

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        if not self._slots.acquire(blocking=False):
            _log(f"{client_address[0]}: {self.limit} connections are open, the bound: 503")
            with contextlib.suppress(OSError):
                request.settimeout(1)  # a fresh socket's buffer takes the few bytes at once
                request.sendall(_plain_answer(503, f"the server holds {self.limit} connections; retry shortly"))
                # What the client sent already, read: closed with it unread, the socket would
                # reset the connection, and the client could lose the answer.
                request.setblocking(False)
                request.recv(1 << 16)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: tuple) -> None:
        """A client that goes away mid-answer (a closed tab, a cancelled download) is normal; any
        other failure is one line, never a traceback (HOSTILE.md, 6)."""
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            _log(f"a request from {client_address[0]} failed: {error}")


def _bind(port: int) -> _SiteServer:
    """The server socket, bound before anything is written: a port in use fails first."""
    try:
        return _SiteServer((WEB_HOST, port), functools.partial(_SiteHandler, directory=os.devnull))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(
                f"port {port} on {WEB_HOST} is in use; choose another with --port (0: any free one)"
            ) from None
        raise ServerError(f"cannot listen on {WEB_HOST}:{port}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _serving(server: _SiteServer) -> Iterator[None]:
    try:
        yield
    finally:
        server.server_close()


def publish(
    target: Path,
    out: Path | None = None,
    serve: bool = False,
    port: int | None = DEFAULT_WEB_PORT,
    on_built: Callable[[Site], None] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> WebResult:
    """``web``'s work: build a site from ``target`` (an .onnx) into ``out``, serve one (``target``
    a site folder, or the site just built) on loopback, or both. The port is taken before
    anything is written; serving ends on Ctrl-C or SIGTERM (``stopped_by``)."""
    if out is None and not serve:
        raise InputError("give --out DIR to build a site from an .onnx, or --serve to serve a site folder")
    if out is None and Path(target).is_file():
        raise InputError(f"{target} is a file; build a site first (--out DIR), or serve a site folder")
    if out is not None:
        _browser_artifact(target)
        _check_out(out)
    else:
        _check_site(target)
    server = _bind(DEFAULT_WEB_PORT if port is None else port) if serve else None
    with _serving(server) if server is not None else contextlib.nullcontext():
        site = build_site(target, out) if out is not None else None
        if site is not None and on_built is not None:
            on_built(site)
        if server is None:
            return WebResult(site)
        folder = site.folder if site is not None else Path(target)
        server.RequestHandlerClass = functools.partial(_SiteHandler, directory=str(folder.resolve()))
        host, bound = server.server_address[:2]
        if on_ready is not None:
            on_ready(f"http://{host}:{bound}/")
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt as exc:  # the way a server is stopped: not an error
            return WebResult(site, "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C")
    return WebResult(site)
