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
15 MB of a 720p answer twice more); metadata and gRPC stay tritonclient's.
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from exporter.artifact import INPUT_NAMES, OUTPUT_NAMES
from exporter.errors import InputError, ServerError
from exporter.runtime import Feeds, Pending, Runner

__all__ = [
    "BINARY_HEADER",
    "PROTOCOLS",
    "Remote",
    "RemoteRunner",
    "aligned_json",
    "binary_request",
    "binary_response",
    "hold_freed_memory",
    "parse_remote",
]

# URL scheme -> protocol: gRPC, or REST with the binary tensor extension.
PROTOCOLS = {"grpc": "gRPC", "http": "REST"}
# Requests kept in flight by default: a server with the THROUGHPUT hint on a few cores
# keeps two to four busy (ours: twice OpenVINO's optimal number).
DEFAULT_REQUESTS = 4
TIMEOUT_SECONDS = 120.0
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
    ``version`` empty for the one the server chooses; ``requests`` in flight."""

    url: str
    model_name: str
    version: str = ""
    requests: int = DEFAULT_REQUESTS

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def address(self) -> str:
        return self.url.split("://", 1)[1].rstrip("/")

    def connect(self) -> RemoteRunner:
        return RemoteRunner(self)

    def __str__(self) -> str:
        version = f" version {self.version}" if self.version else ""
        return f"{self.model_name}{version} at {self.url}"


def parse_remote(url: str, model_name: str | None, version: str | None = None, requests: int | None = None) -> Remote:
    """``--server URL --model-name NAME`` as a ``Remote``; ``InputError`` naming what is off."""
    scheme, _, address = url.partition("://")
    if scheme not in PROTOCOLS or not address.strip("/"):
        raise InputError(f"--server {url!r} is not grpc://HOST:PORT (gRPC) or http://HOST:PORT (REST, binary tensors)")
    if "/" in address.strip("/"):
        raise InputError(f"--server {url!r}: give the server's address only, not a path")
    if not model_name:
        raise InputError("--server needs --model-name: the name the server serves the model under")
    if version is not None and not version.isdigit():
        raise InputError(f"--model-version {version!r} is not a version number")
    if requests is not None and requests < 1:
        raise InputError(f"requests in flight {requests} is below 1")
    return Remote(url, model_name, version or "", requests or DEFAULT_REQUESTS)


def _reason(exc: BaseException) -> str:
    """The first line of the server's (or the connection's) message, made one ``error:`` line."""
    message = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    message = (message or type(exc).__name__).strip().splitlines()[0]
    return message.replace("; last error: ", ": ")  # gRPC's wording of a refused connection


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
    JSON header, then each input's memory as it is (no copy before the socket's)."""

    def __init__(self, remote: Remote) -> None:
        self._connection = http.client.HTTPConnection(remote.address, timeout=TIMEOUT_SECONDS)
        version = f"/versions/{quote(remote.version)}" if remote.version else ""
        self._path = f"/v2/models/{quote(remote.model_name)}{version}/infer"

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
        outputs = binary_response(response, length)
        missing = [name for name in names if name not in outputs]
        if missing:
            raise ValueError(f"the answer has no output {', '.join(map(repr, missing))}")
        return {name: outputs[name] for name in names}

    def _post(self, body: list, headers: dict[str, str]) -> tuple[int, bytes, int | None]:
        # A kept-alive connection the server has closed since (uvicorn: after 5 s idle) fails
        # on first use: once, on a fresh one.
        reused = self._connection.sock is not None
        try:
            return self._exchange(body, headers)
        except _STALE:
            if not reused:
                raise
        return self._exchange(body, headers)

    def _exchange(self, body: list, headers: dict[str, str]) -> tuple[int, bytes, int | None]:
        try:
            self._connection.request("POST", self._path, body=body, headers=headers)
            response = self._connection.getresponse()
            data = response.read()
        except _STALE:
            self._connection.close()
            raise
        length = response.getheader(BINARY_HEADER)
        return response.status, data, int(length) if length and length.isdigit() else None

    def close(self) -> None:
        self._connection.close()


def _error_message(body: bytes, status: int) -> str:
    """The V2 error answer's message (``{"error": ...}``), else the status and the body's start."""
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else f"HTTP {status}: {body[:200].decode(errors='replace')}"


class _Client:
    """One connection and the calls ``RemoteRunner`` makes on it, for either protocol."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.rest: _BinaryRest | None = None
        if remote.protocol == "grpc":
            import tritonclient.grpc as client

            self.client = client.InferenceServerClient(remote.address)
        else:
            import tritonclient.http as client

            self.client = client.InferenceServerClient(
                remote.address, connection_timeout=TIMEOUT_SECONDS, network_timeout=TIMEOUT_SECONDS
            )
            self.rest = _BinaryRest(remote)
        self.module = client

    def metadata(self) -> dict:
        remote = self.remote
        if remote.protocol == "grpc":
            return self.client.get_model_metadata(remote.model_name, remote.version, as_json=True)
        return self.client.get_model_metadata(remote.model_name, remote.version)

    def infer(self, feeds: Feeds, names: tuple[str, ...]) -> dict[str, np.ndarray]:
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
                                   client_timeout=TIMEOUT_SECONDS)  # fmt: skip
        return {name: result.as_numpy(name) for name in names}

    def close(self) -> None:
        self.client.close()
        if self.rest is not None:
            self.rest.close()


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
        try:
            client = self._client()
            metadata = client.metadata()
        except ImportError:
            raise ServerError("a server's client needs tritonclient: pip install -e '.[serve]'") from None
        except Exception as exc:  # tritonclient's errors, refused connections, timeouts
            self.close()
            raise ServerError(f"{remote}: {_reason(exc)}") from None
        try:
            shapes = self._check(metadata)
        except ServerError:
            self.close()
            raise
        super().__init__(Path(remote.model_name), self._metadata(metadata, shapes), shapes["src"])
        # Every output the model has (pha, fgr, and a base model's or extra outputs).
        self.output_names = tuple(t["name"] for t in metadata["outputs"])
        self.parallel = remote.requests
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="bgm-remote")

    @property
    def name(self) -> str:
        return f"{self.remote} [{PROTOCOLS[self.remote.protocol]}]"

    @property
    def inference_precision(self) -> str:
        return "the server's"

    def _check(self, metadata: dict) -> dict[str, tuple[int, ...]]:
        """The model's inputs and outputs, as a matting model has them: names, FP32, shapes
        of one frame (``ServerError`` otherwise)."""
        tensors = {t["name"]: t for t in [*metadata.get("inputs", []), *metadata.get("outputs", [])]}
        names_in = sorted(t["name"] for t in metadata.get("inputs", []))
        names_out = [t["name"] for t in metadata.get("outputs", [])]
        if names_in != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(names_out):
            raise ServerError(
                f"{self.remote} takes {names_in} and gives {names_out}; a matting model takes "
                f"{list(INPUT_NAMES)} and gives {list(OUTPUT_NAMES)}"
            )
        shapes = {name: tuple(int(d) for d in t["shape"]) for name, t in tensors.items()}
        src = shapes["src"]
        height_width = src[2:] if len(src) == 4 else ()
        expected = {"src": 3, "bgr": 3, "pha": 1, "fgr": 3}
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
            "server": self.remote.url,
        }

    def _client(self) -> _Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = _Client(self.remote)
            with self._lock:
                self._clients.append(client)
        return client

    def _timed(self, feeds: Feeds) -> tuple[dict[str, np.ndarray], float]:
        start = time.perf_counter()
        try:
            outputs = self._client().infer(feeds, self.output_names)
        except Exception as exc:  # the server's refusal, or a lost connection
            raise ServerError(f"{self.remote}: {_reason(exc)}") from None
        return outputs, time.perf_counter() - start

    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return self._timed(feeds)[0]

    def submit(self, feeds: Feeds, share_inputs: bool = False) -> Pending:
        return _RemotePending(self._pool.submit(self._timed, feeds))

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a client of a server that went away
                pass
