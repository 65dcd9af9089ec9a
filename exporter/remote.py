"""A model on an Open Inference Protocol (KServe V2) server as one more runner: ours
(``bgm-export serve``), OpenVINO Model Server or Triton, reached with NVIDIA's
``tritonclient`` over gRPC or REST with binary tensors.

``Remote`` names the model (``grpc://host:port`` or ``http://host:port``, its name, a
version); ``RemoteRunner`` checks that the server is live, the model ready and a matting
model (its metadata's inputs and outputs), then runs requests: ``submit`` keeps up to
``parallel`` in flight on worker threads, each with its own connection (the HTTP client is
not thread-safe, and separate connections are what separate clients are). Its ``metadata``
is what the server's model metadata states. Torch-free; ``tritonclient`` is imported when a
runner connects.

REST inference requests are written here, not by tritonclient's ``infer``: its encoder and
HTTP client copy each 11 MB input of a 720p frame three times before it reaches the socket
(12 ms of a client's CPU a frame, on the cores the server computes with when both run on
one machine). ``_BinaryRest`` sends the JSON header and the arrays' own memory, and reads
the answer's tensors where they arrived (tritonclient's ``parse_response_body`` copies the
15 MB of a 720p answer twice more); REST metadata is one GET on the same connection, and gRPC
stays tritonclient's.

A server is a peer, not a part of this program: every answer is checked against the model's
metadata (``check_answer``: names, shapes, dtype, finite values) before matte or bench uses
it, its size is bounded before it is read, and every wait for it is bounded by the
``Remote``'s ``timeout`` and ends on Ctrl-C / SIGTERM (closing the runner aborts requests in
flight). URLs are printed through ``exporter.redact``.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import json
import math
import re
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import numpy as np

from exporter.artifact import INPUT_NAMES, OUTPUT_NAMES
from exporter.errors import InputError, ServerError
from exporter.redact import redact, redact_url
from exporter.runtime import Feeds, Pending, Runner

__all__ = [
    "BINARY_HEADER",
    "DEFAULT_TIMEOUT_SECONDS",
    "PROTOCOLS",
    "BadAnswer",
    "Remote",
    "RemoteRunner",
    "aligned_json",
    "answer_limit",
    "binary_request",
    "binary_response",
    "check_answer",
    "hold_freed_memory",
    "parse_remote",
    "with_timeout",
]

# URL scheme -> protocol: gRPC, or REST with the binary tensor extension.
PROTOCOLS = {"grpc": "gRPC", "http": "REST"}
# Requests kept in flight by default: a server with the THROUGHPUT hint on a few cores
# keeps two to four busy (ours: twice OpenVINO's optimal number).
DEFAULT_REQUESTS = 4
# How long a client waits for the server to connect and for each answer (``--timeout``): a
# 720p request on a busy CPU server takes a second or two, a server's first one can compile
# the model first (tens of seconds for a ResNet-101), and clients may queue behind others.
DEFAULT_TIMEOUT_SECONDS = 120.0
# The longest --timeout taken: a day; longer is a hang, not a wait.
MAX_TIMEOUT_SECONDS = 86_400.0
# The largest model metadata (REST) or message (gRPC) read before the model is known: a
# matting model's is under a kilobyte (four to six tensors' names, types and shapes).
METADATA_MAX_BYTES = 1 << 20
# An answer's bytes beyond its tensors: the JSON header of a few outputs is hundreds of
# bytes, and a server may send the values as JSON numbers instead (the protocol allows it), up
# to about 25 characters a float32 ("-1.1754943508222875e-38,"): this many per value.
JSON_BYTES_PER_VALUE = 32
ANSWER_HEADER_MAX_BYTES = 1 << 20
# The largest frame a model on a server may take: 8K UHD, the pipeline's largest
# (``MAX_PIPE_PIXELS``); metadata stating more would have the client allocate it per request.
MAX_MODEL_PIXELS = 7680 * 4320
# Numbers as URLs and headers carry them: ASCII digits ("²" is a digit to str.isdigit, not to int).
DIGITS = re.compile(r"[0-9]+")
# A server's address as both transports take it, checked before any name lookup (a malformed
# host never reaches getaddrinfo: DNS queries leave the machine): a DNS name (RFC 1123 labels
# of up to 63 letters, digits and "-", with the "_" of container service names; 253 at most)
# or an IPv4 address, or an IPv6 address in brackets (a zone as ``%eth0``); a TCP port.
HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOST_NAME = re.compile(rf"{HOST_LABEL}(?:\.{HOST_LABEL})*\.?")
HOST_NAME_MAX = 253
IPV6_HOST = re.compile(r"\[(?P<address>[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?)\]")
PORT = re.compile(r"[0-9]{1,5}")
MAX_PORT = 65535
# A served model's name as both protocols carry it: one segment of the URL's path
# (``/v2/models/NAME``), printable, without whitespace; as long as a folder's name may be.
MODEL_NAME_MAX = 255
# How much of an answer without a Content-Length is read at a time (up to its bound).
READ_CHUNK_BYTES = 1 << 20
# The binary tensor extension's header: the length of the JSON part of the body.
BINARY_HEADER = "Inference-Header-Content-Length"
# The JSON part is padded with spaces to a multiple of this, so that the tensors after it
# start aligned (numpy's work on a misaligned 720p output takes up to twice as long).
TENSOR_ALIGNMENT = 64


def aligned_json(document: object) -> bytes:
    """``document`` as the JSON part of a binary-tensor body, padded to ``TENSOR_ALIGNMENT``."""
    text = json.dumps(document, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % TENSOR_ALIGNMENT)


# glibc's mallopt parameters: allocations above the threshold are mapped and unmapped one by
# one, and the heap's free top is returned to the system above the trim threshold.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HELD_BYTES = 1 << 30


@functools.cache
def hold_freed_memory() -> bool:
    """Keep the memory of freed tensor buffers in this process (glibc: raise the mmap and trim
    thresholds), for a client or server that allocates and frees tens of megabytes a
    request: returned to the system each time, every request faults its pages in again,
    which measured as much CPU per 720p request as all its copies. True where it applied."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: its allocator decides
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _HELD_BYTES // 4)) and bool(mallopt(_M_TRIM_THRESHOLD, _HELD_BYTES))


@dataclass(frozen=True)
class Remote:
    """A model on a V2 server: ``url`` is ``grpc://host:port`` or ``http://host:port``;
    ``version`` empty for the one the server chooses; ``requests`` in flight; ``timeout`` in
    seconds for connecting and for each answer."""

    url: str
    model_name: str
    version: str = ""
    requests: int = DEFAULT_REQUESTS
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def address(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/")

    def connect(self) -> RemoteRunner:
        return RemoteRunner(self)

    @property
    def shown_url(self) -> str:
        """The URL as it may be printed: credentials masked."""
        return redact_url(self.url)

    def __str__(self) -> str:
        version = f" version {self.version}" if self.version else ""
        return f"{self.model_name}{version} at {self.shown_url}"


def _check_timeout(timeout: float) -> float:
    if not 0 < timeout <= MAX_TIMEOUT_SECONDS:  # NaN fails both comparisons
        raise InputError(f"--timeout {timeout} is not a number of seconds above 0 and up to {MAX_TIMEOUT_SECONDS:.0f}")
    return float(timeout)


def _check_address(address: str, shown: str) -> None:
    """``HOST:PORT`` as ``HOST_NAME``/``IPV6_HOST`` and ``PORT`` describe it (``InputError``
    otherwise), without a lookup."""
    host, colon, port = address.rpartition(":")
    if not colon or not PORT.fullmatch(port) or not 1 <= int(port) <= MAX_PORT:
        raise InputError(f"--server {shown[:200]!r}: give HOST:PORT, the port a number from 1 to {MAX_PORT}")
    ipv6 = IPV6_HOST.fullmatch(host)
    try:
        if ipv6:
            ipaddress.IPv6Address(ipv6["address"])
        elif not (HOST_NAME.fullmatch(host) and len(host) <= HOST_NAME_MAX):
            raise ValueError(host)
        elif host.rstrip(".").rpartition(".")[2].isdigit():  # no top-level domain is numeric: an IPv4 address
            ipaddress.IPv4Address(host)
    except ValueError:
        raise InputError(
            f"--server {shown[:200]!r}: the host is not a host name, an IPv4 address or an IPv6 address in brackets"
        ) from None


def _check_model_name(name: str) -> None:
    if (
        not name.isprintable()  # control characters, line and paragraph separators
        or any(c.isspace() or c in "/\\" for c in name)
        or name in (".", "..")
        or len(name) > MODEL_NAME_MAX
    ):
        raise InputError(
            f"--model-name {name[:80]!r} is not a served model's name: up to {MODEL_NAME_MAX} printable "
            "characters, without spaces, '/' or '\\' (the model's one segment of the server's URLs)"
        )


def parse_remote(
    url: str,
    model_name: str | None,
    version: str | None = None,
    requests: int | None = None,
    timeout: float | None = None,
) -> Remote:
    """``--server URL --model-name NAME`` as a ``Remote``; ``InputError`` naming what is off."""
    scheme, _, address = url.partition("://")
    shown = redact_url(url)
    if scheme not in PROTOCOLS or not address.strip("/"):
        raise InputError(
            f"--server {shown!r} is not grpc://HOST:PORT (gRPC) or http://HOST:PORT (REST, binary tensors)"
        )
    if "/" in address.strip("/") or any(mark in address for mark in "?#"):
        raise InputError(f"--server {shown!r}: give the server's address only, not a path or a query")
    if "@" in address:  # neither transport sends them: they would only reach messages
        raise InputError(f"--server {shown!r}: credentials in the URL are not supported; give HOST:PORT")
    _check_address(address.rstrip("/"), shown)
    if not model_name:
        raise InputError("--server needs --model-name: the name the server serves the model under")
    _check_model_name(model_name)
    if version is not None and not DIGITS.fullmatch(version):
        raise InputError(f"--model-version {version!r} is not a version number")
    if requests is not None and requests < 1:
        raise InputError(f"requests in flight {requests} is below 1")
    timeout = DEFAULT_TIMEOUT_SECONDS if timeout is None else _check_timeout(timeout)
    return Remote(url, model_name, version or "", requests or DEFAULT_REQUESTS, timeout)


def with_timeout(model: Path | Remote, timeout: float | None) -> Path | Remote:
    """``--timeout`` applied to a server's model (``InputError`` for a local one)."""
    if timeout is None:
        return model
    if not isinstance(model, Remote):
        raise InputError("--timeout applies with --server only")
    return replace(model, timeout=_check_timeout(timeout))


def _reason(exc: BaseException) -> str:
    """The first line of the server's (or the connection's) message, made one ``error:`` line,
    any URL in it masked."""
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    message = (message or type(exc).__name__).strip().splitlines()[0]
    return redact(message.replace("; last error: ", ": "))  # gRPC's wording of a refused connection


class BadAnswer(ValueError):
    """An answer that is not what the model's metadata states."""


def answer_limit(shapes: dict[str, tuple[int, ...]]) -> int:
    """The most bytes an answer with outputs of ``shapes`` may take, JSON numbers included."""
    return sum(math.prod(shape) for shape in shapes.values()) * JSON_BYTES_PER_VALUE + ANSWER_HEADER_MAX_BYTES


def check_answer(outputs: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """``outputs`` if they are exactly the model's: the names, shapes and float32 of
    ``expected`` (what the model's metadata states), every value finite; ``BadAnswer``
    naming the first difference otherwise. numpy would broadcast a 10x10 alpha over a frame
    and write NaN as black: neither may reach a file or a number."""
    if set(outputs) != set(expected):
        raise BadAnswer(f"the answer has outputs {sorted(outputs)}; the model's metadata states {sorted(expected)}")
    for name, shape in expected.items():
        array = outputs[name]
        if array.dtype != np.float32 or array.shape != shape:
            raise BadAnswer(
                f"the answer's {name} is {array.dtype} {list(array.shape)}; the model's metadata states "
                f"float32 {list(shape)}"
            )
        # min and max carry any NaN or infinity, without an array of flags the size of the frame.
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise BadAnswer(f"the answer's {name} holds NaN or infinite values")
    return outputs


# What a kept-alive connection the server has closed raises on its next use.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _ServerRefused(Exception):
    """An HTTP error answer: the server's own message."""


def binary_request(feeds: Feeds, names: tuple[str, ...]) -> list[bytes | memoryview]:
    """A V2 REST inference request with binary tensors, as its parts: the JSON header (the
    fields tritonclient's ``generate_request_body`` writes), then each input's own memory."""
    arrays = {name: np.ascontiguousarray(feeds[name], dtype=np.float32) for name in INPUT_NAMES}
    header = aligned_json({
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": array.nbytes}} for name, array in arrays.items()],
        "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in names],
    })  # fmt: skip
    return [header, *(memoryview(array).cast("B") for array in arrays.values())]


def binary_response(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    """A V2 REST inference answer's outputs by name: binary tensor data as arrays over the
    body's own memory (read-only, as tritonclient's are), JSON numbers as arrays;
    ``ValueError`` naming what does not add up."""
    from tritonclient.utils import triton_to_np_dtype

    length = len(body) if header_length is None else header_length
    document = json.loads(body[:length])
    view, offset, outputs = memoryview(body), length, {}
    try:
        for output in document["outputs"]:
            name, shape, dtype = output["name"], output["shape"], triton_to_np_dtype(output["datatype"])
            if name in outputs:
                raise ValueError(f"the answer states output {name!r} twice")
            if dtype is None or dtype is np.object_ or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"the answer's output {name!r} is not a numeric tensor: {output['datatype']} {shape}")
            size = (output.get("parameters") or {}).get("binary_data_size")
            if size is None:
                outputs[name] = np.array(output["data"], dtype=dtype).reshape(shape)
                continue
            needed = math.prod(shape) * np.dtype(dtype).itemsize
            if size != needed or offset + size > len(body):
                raise ValueError(
                    f"the answer's output {name!r} declares {size} bytes of binary data; a {shape} "
                    f"{output['datatype']} tensor is {needed}, and {len(body) - offset} are left"
                )
            outputs[name] = np.frombuffer(view[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"the answer is not a V2 inference response ({type(exc).__name__}: {exc})") from None
    if offset != len(body):
        raise ValueError(f"the answer holds {len(body) - offset} bytes after its outputs' binary data")
    return outputs


class _BinaryRest:
    """Inference requests over REST with binary tensors on one kept-alive connection: the
    JSON header, then each input's memory as it is (no copy before the socket's). Every
    exchange ends within the ``Remote``'s timeout (a watchdog shuts the socket down: a
    server that trickles its answer a byte at a time is cut off too), and its answer is read
    only up to ``max_bytes``."""

    def __init__(self, remote: Remote, max_bytes: int) -> None:
        self._timeout = remote.timeout
        self._max_bytes = max_bytes
        self._aborted = False
        self._connection = http.client.HTTPConnection(remote.address, timeout=remote.timeout)
        version = f"/versions/{quote(remote.version)}" if remote.version else ""
        self._model_path = f"/v2/models/{quote(remote.model_name, safe='')}{version}"
        self._path = f"{self._model_path}/infer"

    def metadata(self) -> dict:
        """The model's metadata (``GET /v2/models/NAME``)."""
        status, response, _ = self._exchange("GET", self._model_path, None, {})
        if status != 200:
            raise _ServerRefused(_error_message(response, status))
        try:
            metadata = json.loads(response)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"the model's metadata is not JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise ValueError("the model's metadata is not a JSON object")
        return metadata

    def infer(self, feeds: Feeds, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        body = binary_request(feeds, names)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(sum(len(part) for part in body)),
            BINARY_HEADER: str(len(body[0])),
        }
        status, response, length = self._post(body, headers)
        if status != 200:
            raise _ServerRefused(_error_message(response, status))
        return binary_response(response, length)

    def _post(self, body: list, headers: dict[str, str]) -> tuple[int, bytes, int | None]:
        # A kept-alive connection the server has closed since (uvicorn: after 5 s idle) fails
        # on first use: once, on a fresh one.
        reused = self._connection.sock is not None
        try:
            return self._exchange("POST", self._path, body, headers)
        except _STALE:
            if not reused or self._aborted:
                raise
        return self._exchange("POST", self._path, body, headers)

    def _exchange(
        self, method: str, path: str, body: list | None, headers: dict[str, str]
    ) -> tuple[int, bytes, int | None]:
        if self._aborted:
            raise ConnectionAbortedError("the request was given up (the run is stopping)")
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            self._shut_down()

        watchdog = threading.Timer(self._timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            self._connection.request(method, path, body=body, headers=headers)
            response = self._connection.getresponse()
            data = self._read(response)
            # A watchdog's shutdown can look like an answer's end (headers cut short end the
            # headers): what was read then is no answer.
            if expired.is_set():
                raise TimeoutError
        except (OSError, http.client.HTTPException) as exc:  # _STALE among them
            self._connection.close()
            # The socket's own timeout (the same seconds, per read) may end the wait first.
            if expired.is_set() or isinstance(exc, TimeoutError):
                raise TimeoutError(f"no answer within {self._timeout:g} s (--timeout)") from None
            if self._aborted:
                raise ConnectionAbortedError("the request was given up (the run is stopping)") from None
            raise
        finally:
            watchdog.cancel()
        length = response.getheader(BINARY_HEADER)
        return response.status, data, int(length) if length and DIGITS.fullmatch(length) else None

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        """The answer's body, refused before it is read when it would pass ``max_bytes``. A
        stated length is read exactly (``IncompleteRead`` if the body ends first); else the
        body is read a chunk at a time (``read(n)`` allocates ``n`` bytes first)."""
        if response.length is not None:  # http.client's reading of a valid Content-Length
            if response.length > self._max_bytes:
                self._connection.close()
                raise BadAnswer(
                    f"the answer is {response.length} bytes; the model's outputs take at most {self._max_bytes}"
                )
            return response.read()
        chunks, size = [], 0
        while chunk := response.read(READ_CHUNK_BYTES):
            chunks.append(chunk)
            size += len(chunk)
            if size > self._max_bytes:
                self._connection.close()
                raise BadAnswer(f"the answer is over {self._max_bytes} bytes, more than the model's outputs take")
        return b"".join(chunks)

    def abort(self) -> None:
        """End the exchange in flight and refuse the next ones (from another thread)."""
        self._aborted = True
        self._shut_down()

    def _shut_down(self) -> None:
        # A shut-down socket wakes the thread blocked reading it (closing it would not).
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._connection.close()


def _error_message(body: bytes, status: int) -> str:
    """The V2 error answer's message (``{"error": ...}``), else the status and the body's start."""
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    text = str(message) if message else f"HTTP {status}: {body[:200].decode(errors='replace')}"
    return text[:500]


class _Client:
    """One connection and the calls ``RemoteRunner`` makes on it, for either protocol; answers
    of at most ``max_bytes``."""

    def __init__(self, remote: Remote, max_bytes: int) -> None:
        self.remote = remote
        self.rest: _BinaryRest | None = None
        if remote.protocol == "grpc":
            import tritonclient.grpc as client
            from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

            # tritonclient's own channel arguments (given any, it sets none), the answer's size bounded.
            keepalive = KeepAliveOptions()
            self.client = client.InferenceServerClient(
                remote.address,
                channel_args=[
                    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                    ("grpc.max_receive_message_length", min(max_bytes, MAX_GRPC_MESSAGE_SIZE)),
                    ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
                    ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
                    ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
                    ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
                ],
            )
            self.module = client
        else:
            self.rest = _BinaryRest(remote, max_bytes)

    def metadata(self) -> dict:
        remote = self.remote
        if self.rest is not None:
            return self.rest.metadata()
        # The message, not its JSON: MessageToJson writes int64 dims as strings.
        message = self.client.get_model_metadata(remote.model_name, remote.version, client_timeout=remote.timeout)

        def tensors(specs: object) -> list[dict]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

        return {"name": message.name, "versions": list(message.versions), "platform": message.platform,
                "inputs": tensors(message.inputs), "outputs": tensors(message.outputs)}  # fmt: skip

    def infer(self, feeds: Feeds, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Every output the answer holds, by name (``check_answer`` says whether they are the model's)."""
        if self.rest is not None:
            return self.rest.infer(feeds, names)
        module, remote = self.module, self.remote
        inputs = []
        for name in INPUT_NAMES:
            array = np.ascontiguousarray(feeds[name], dtype=np.float32)
            tensor = module.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)  # raw contents
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in names]
        result = self.client.infer(remote.model_name, inputs, remote.version, outputs=outputs,
                                   client_timeout=remote.timeout)  # fmt: skip
        response = result.get_response()
        answered = [output.name for output in response.outputs]
        if len(set(answered)) != len(answered):
            raise ValueError(f"the answer states outputs {answered}: one of them twice")
        raw = len(response.raw_output_contents)
        if raw and raw != len(answered):  # as_numpy pairs them by position
            raise ValueError(f"the answer holds {raw} raw tensors for its {len(answered)} outputs")
        return {name: result.as_numpy(name) for name in answered}

    def abort(self) -> None:
        """End the request in flight, from another thread (closing a gRPC channel cancels its calls)."""
        if self.rest is not None:
            self.rest.abort()
        else:
            self.client.close()

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()
        else:
            self.client.close()


class _RemotePending(Pending):
    def __init__(self, future: Future) -> None:
        super().__init__()
        self._future = future

    def result(self) -> dict[str, np.ndarray]:
        if self._outputs is None:
            self._outputs, self.seconds = self._future.result()
        return self._outputs


class RemoteRunner(Runner):
    """A model on a V2 server; ``parallel`` is the ``Remote``'s requests in flight."""

    runtime = "server"

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        hold_freed_memory()
        self._local = threading.local()
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            client = _Client(remote, METADATA_MAX_BYTES)  # its own: answers are bounded by the metadata
        except ImportError:
            raise ServerError("a server's client needs tritonclient: pip install -e '.[serve]'") from None
        try:
            metadata = client.metadata()
        except Exception as exc:  # tritonclient's errors, refused connections, timeouts
            raise ServerError(f"{remote}: {_reason(exc)}") from None
        finally:
            client.close()
        try:
            shapes = self._check(metadata)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ServerError(
                f"{remote}: its model metadata is not a V2 model's ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        # The outputs asked for: pha and fgr, what matte and bench use; their shapes, bounded by
        # _check, bound the answer.
        self.output_names = OUTPUT_NAMES
        self._expected = {name: shapes[name] for name in self.output_names}
        self._answer_bytes = answer_limit(self._expected)
        super().__init__(Path(remote.model_name), self._metadata(metadata, shapes), shapes["src"])
        self.parallel = remote.requests
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="bgm-remote")

    @property
    def name(self) -> str:
        return f"{self.remote} [{PROTOCOLS[self.remote.protocol]}]"

    @property
    def inference_precision(self) -> str:
        return "the server's"

    def _shape(self, tensor: dict) -> tuple[int, ...]:
        """A tensor's shape as the metadata states it: whole numbers (JSON integers), or
        ``ServerError`` (``1e400`` reads as infinity, ``128.7`` is no size)."""
        shape = tensor["shape"]
        if not isinstance(shape, list) or not all(type(d) is int for d in shape):
            raise ServerError(f"{self.remote}: {tensor['name']}'s shape {str(shape)[:200]} is not whole numbers")
        return tuple(shape)

    def _check(self, metadata: dict) -> dict[str, tuple[int, ...]]:
        """The shapes of the model's inputs and of the outputs a client asks for (pha, fgr), as
        a matting model has them: names, FP32, shapes of one frame (``ServerError`` otherwise).
        Any other output (a base model's err and hid, --extra-outputs, the original's pha_sm) is
        never asked for: a client uses none, and its stated size bounds no answer."""
        tensors: dict[str, dict] = {}
        for tensor in [*metadata.get("inputs", []), *metadata.get("outputs", [])]:
            if tensor["name"] in tensors:
                raise ServerError(f"{self.remote}: its metadata states {str(tensor['name'])[:80]!r} twice")
            tensors[tensor["name"]] = tensor
        names_in = sorted(t["name"] for t in metadata.get("inputs", []))
        names_out = [t["name"] for t in metadata.get("outputs", [])]
        if names_in != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(names_out):
            raise ServerError(
                f"{self.remote} takes {names_in} and gives {names_out}; a matting model takes "
                f"{list(INPUT_NAMES)} and gives {list(OUTPUT_NAMES)}"
            )
        shapes = {name: self._shape(tensors[name]) for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
        src = shapes["src"]
        height_width = src[2:] if len(src) == 4 else ()
        expected = {"src": 3, "bgr": 3, "pha": 1, "fgr": 3}
        if math.prod(height_width) > MAX_MODEL_PIXELS:
            raise ServerError(
                f"{self.remote} takes {list(src)}: more than the {MAX_MODEL_PIXELS:,} pixels (8K UHD) a client sends"
            )
        if any(d < 1 for d in height_width):
            raise ServerError(
                f"{self.remote} takes any height and width ({list(src)}); a client sends frames of one size: serve "
                "the model at one (bgm-export serve runs a dynamic model at the size its metadata states)"
            )
        for name, channels in expected.items():
            if tensors[name]["datatype"] != "FP32" or shapes[name] != (1, channels, *height_width) or not height_width:
                raise ServerError(
                    f"{self.remote}: {name} is {tensors[name]['datatype']} {list(shapes[name])}; a matting model's is "
                    f"FP32 [1, {channels}, H, W] at one H x W"
                )
        return shapes

    def _metadata(self, metadata: dict, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
        """What the server states, as strings (a runner's metadata is an artifact's)."""
        _, _, height, width = shapes["src"]
        return {
            "model_name": str(metadata.get("name", self.remote.model_name)),
            "versions": ",".join(map(str, metadata.get("versions", []))),
            "platform": str(metadata.get("platform", "")),
            "resolution": f"{height}x{width}",
            "server": self.remote.shown_url,
        }

    def _client(self) -> _Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = _Client(self.remote, self._answer_bytes)
            with self._lock:
                if self._closed:  # closed while this request waited for a thread
                    client.close()
                    raise ServerError(f"{self.remote}: the client was closed")
                self._clients.append(client)
            self._local.client = client
        return client

    def _timed(self, feeds: Feeds) -> tuple[dict[str, np.ndarray], float]:
        start = time.perf_counter()
        try:
            outputs = check_answer(self._client().infer(feeds, self.output_names), self._expected)
        except ServerError:
            raise
        except Exception as exc:  # the server's refusal, a lost connection, a wrong answer
            raise ServerError(f"{self.remote}: {_reason(exc)}") from None
        return outputs, time.perf_counter() - start

    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return self._timed(feeds)[0]

    def submit(self, feeds: Feeds, share_inputs: bool = False) -> Pending:
        return _RemotePending(self._pool.submit(self._timed, feeds))

    def cancel(self) -> None:
        """Give up the requests in flight and the ones queued: an interrupted run does not wait
        out their timeout. Their results raise ``ServerError``."""
        with self._lock:
            self._closed = True
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(Exception):  # a client of a server that went away
                client.abort()

    def close(self) -> None:
        """Give up the requests in flight (``cancel``), then free the threads and connections."""
        self.cancel()
        with self._lock:
            clients, self._clients = self._clients, []
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
