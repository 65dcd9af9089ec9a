"""Serving exported models over the Open Inference Protocol (KServe V2): the protocol of
OpenVINO Model Server, Triton and KServe, so that their clients (``tritonclient``, and
``matte --server`` through it) talk to any of them the same way.

Built on the KServe Python SDK (``kserve``), what KServe itself runs for a custom predictor:
its ``Model`` (per-model Prometheus histograms of every request), ``DataPlane`` (model
registry, liveness, readiness, dispatch), the V2 REST endpoints, error types and their HTTP
statuses, the V2 gRPC servicer and its status mapping, and ``InferRequest``/``InferResponse``
with the binary tensor extension. Seldon's MLServer was the other candidate; it has no REST
binary tensor extension (SeldonIO/MLServer#324, open), without which a 720p frame is tens of
megabytes of JSON numbers.

What ``kserve.ModelServer`` does not do, this package adds around those parts (nothing of the
protocol is hand-written): listening on one host (loopback by default; ModelServer listens on
every interface), model versions (KServe answers 501 to any), a maximum request size, a REST
decoder that checks the binary tensors' lengths against their header and shape (KServe's
turns an 11 MB tensor into a Python list), an encoder off the event loop, bounds on what is
held at once and timeouts on slow clients (``exporter.serve.limits``), a port in use named
before any model is compiled, and SIGTERM that cuts off the bodies still arriving and lets
every request being computed finish before the process exits 0.

``import exporter.serve`` is light (no KServe, no torch); ``serve()`` imports the server.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from exporter.artifact import artifact_kind, artifact_metadata
from exporter.errors import ServerError
from exporter.repository import read_repository, served_name, tensor_specs
from exporter.serve.limits import DEFAULT_BODY_TIMEOUT_SECONDS

__all__ = [
    "DEFAULT_BODY_TIMEOUT_SECONDS",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HOST",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_MAX_REQUEST_MB",
    "MAX_REQUEST_MB",
    "Listening",
    "ServeSummary",
    "ServedModel",
    "served_models",
    "serve",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000  # OpenVINO Model Server's and Triton's REST port in their docs
DEFAULT_GRPC_PORT = 8001
# A 720p request is 22 MB in binary tensors and about 60 MB as JSON numbers.
DEFAULT_MAX_REQUEST_MB = 128.0
# gRPC's message limits are C ints: 2**31 - 1 bytes is the most it takes (2048 crashed it).
MAX_REQUEST_MB = 2047.0
# Besides its tensors, a binary request carries a JSON header of a few hundred bytes.
REQUEST_HEADER_BYTES = 4096


@dataclass(frozen=True)
class ServedModel:
    """One model as served: its name, the version served (a repository's latest, as both
    engines serve by default), every version the repository has, and the artifact."""

    name: str
    version: int
    versions: tuple[int, ...]
    path: Path
    metadata: dict[str, str] = field(hash=False, compare=False)


def served_models(target: Path) -> list[ServedModel]:
    """The models a repository folder (``bgm-export repository``) or one artifact serves."""
    target = Path(target)
    if target.is_dir():
        models = []
        for model in read_repository(target):
            if not model.versions:
                raise ServerError(f"model {model.name} in {target} has no version folder (1, 2, ...)")
            path = model.versions[model.latest]
            if path.is_dir():
                raise ServerError(f"{path} holds no model.xml or model.onnx")
            models.append(ServedModel(model.name, model.latest, tuple(sorted(model.versions)), path,
                                      artifact_metadata(path)))  # fmt: skip
        if not models:
            raise ServerError(f"{target}/config.json lists no model")
        return models
    artifact_kind(target)
    metadata = artifact_metadata(target)
    return [ServedModel(served_name(target, metadata), 1, (1,), target, metadata)]


@dataclass
class Listening:
    """Where a started server answers."""

    rest: str  # http://host:port
    grpc: str  # host:port
    models: list[ServedModel]
    inference_precision: str


@dataclass
class ServeSummary:
    """How a server ended: what stopped it and the requests it answered, per model."""

    stopped_by: str
    answered: dict[str, int]
    refused: dict[str, int]
    cut_off: int = 0  # requests the stop ended unanswered (bodies still arriving, or past the grace period)
    busy: int = 0  # requests turned away at a bound (503 / RESOURCE_EXHAUSTED)
    timed_out: int = 0  # bodies slower than --body-timeout (408)

    def line(self) -> str:
        """The last line ``serve`` prints: honest about requests the stop cut off."""
        answered = ", ".join(f"{name} {count}" for name, count in self.answered.items())
        refused = ", ".join(f"{name} {count}" for name, count in self.refused.items())
        if self.cut_off:
            requests = "request" if self.cut_off == 1 else "requests"
            ending = f"{self.cut_off} {requests} cut off by the stop (503 or closed); every other request in flight"
        else:
            ending = "every request in flight"
        extra = "".join(
            f"; {label}: {count}"
            for label, count in (("turned away at a bound", self.busy), ("bodies too slow", self.timed_out))
            if count
        )
        return (
            f"stopped by {self.stopped_by}; {ending} was answered (answered: {answered}; "
            f"refused as bad requests: {refused}{extra})"
        )


def serve(
    target: Path,
    *,
    host: str = DEFAULT_HOST,
    http_port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    device: str = "CPU",
    inference_precision: str = "auto",
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS,
    on_ready: Callable[[Listening], None] | None = None,
) -> ServeSummary:
    """Serve every model of the repository ``target`` (or the one artifact ``target``) over
    REST (JSON and binary tensors) on ``http_port`` and gRPC on ``grpc_port`` of ``host``
    (port 0: any free one; ``on_ready`` is told which) until SIGTERM or Ctrl-C; requests
    being computed then finish. ``ServerError`` if a port is in use, before any model is
    compiled, or for a request limit that is not a size gRPC takes, or below one request."""
    if not (math.isfinite(max_request_mb) and 0 < max_request_mb <= MAX_REQUEST_MB):
        raise ServerError(f"--max-request-mb {max_request_mb:g} is not a size from 0 to {MAX_REQUEST_MB:g} MiB")
    if not (math.isfinite(body_timeout) and body_timeout > 0):
        raise ServerError(f"--body-timeout {body_timeout:g} is not a positive number of seconds")
    models = served_models(target)
    limit = int(max_request_mb * 2**20)
    for model in models:
        needed = request_bytes(model)
        if limit < needed:
            raise ServerError(
                f"--max-request-mb {max_request_mb:g} is below the {needed / 2**20:.2f} MiB of one binary request to "
                f"model {model.name}: it would refuse every request"
            )
    from exporter.serve.server import Server

    server = Server(models, host, http_port, grpc_port, device, inference_precision, limit, body_timeout)
    return server.run(on_ready)


def request_bytes(model: ServedModel) -> int:
    """The smallest request ``model`` can be sent: its inputs as binary tensors, and a header."""
    inputs, _ = tensor_specs(model.metadata)
    return sum(math.prod(spec.shape) * 4 for spec in inputs) + REQUEST_HEADER_BYTES  # FP32, the only datatype
