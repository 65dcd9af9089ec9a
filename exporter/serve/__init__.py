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
turns an 11 MB tensor into a Python list), a port in use named before any model is compiled,
and SIGTERM that lets every request in flight finish before the process exits 0.

``import exporter.serve`` is light (no KServe, no torch); ``serve()`` imports the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from exporter.artifact import artifact_kind, artifact_metadata
from exporter.errors import ServerError
from exporter.repository import read_repository, served_name

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HOST",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_MAX_REQUEST_MB",
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


def serve(
    target: Path,
    *,
    host: str = DEFAULT_HOST,
    http_port: int = DEFAULT_HTTP_PORT,
    grpc_port: int = DEFAULT_GRPC_PORT,
    device: str = "CPU",
    inference_precision: str = "auto",
    max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
    on_ready: Callable[[Listening], None] | None = None,
) -> ServeSummary:
    """Serve every model of the repository ``target`` (or the one artifact ``target``) over
    REST (JSON and binary tensors) on ``http_port`` and gRPC on ``grpc_port`` of ``host``
    (port 0: any free one; ``on_ready`` is told which) until SIGTERM or Ctrl-C; requests in
    flight then finish. ``ServerError`` if a port is in use, before any model is compiled."""
    if max_request_mb <= 0:
        raise ServerError(f"--max-request-mb {max_request_mb} is not a positive size")
    models = served_models(target)
    from exporter.serve.server import Server

    server = Server(models, host, http_port, grpc_port, device, inference_precision, int(max_request_mb * 2**20))
    return server.run(on_ready)
