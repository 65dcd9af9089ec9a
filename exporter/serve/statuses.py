"""Every error the server answers, and its status in both transports: one table (MLServer
keeps one too, ``mlserver/grpc/utils.py``), read by the REST handlers and the gRPC
interceptor alike. The first class in the table that an error is an instance of wins."""

from __future__ import annotations

from grpc import StatusCode
from kserve.errors import (
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
)

from exporter.serve.limits import BodyTimeout, RequestTooLarge, ServerBusy, Stopping

__all__ = ["STATUSES", "message", "status_of"]

STATUSES: dict[type[BaseException], tuple[int, StatusCode]] = {
    InvalidInput: (400, StatusCode.INVALID_ARGUMENT),
    ModelNotFound: (404, StatusCode.NOT_FOUND),
    BodyTimeout: (408, StatusCode.DEADLINE_EXCEEDED),
    RequestTooLarge: (413, StatusCode.RESOURCE_EXHAUSTED),
    NotImplementedError: (501, StatusCode.UNIMPLEMENTED),
    ServerBusy: (503, StatusCode.RESOURCE_EXHAUSTED),
    Stopping: (503, StatusCode.UNAVAILABLE),
    ModelNotReady: (503, StatusCode.UNAVAILABLE),
    ServerNotReady: (503, StatusCode.UNAVAILABLE),
    ServerNotLive: (503, StatusCode.UNAVAILABLE),
    InferenceError: (500, StatusCode.INTERNAL),
    Exception: (500, StatusCode.INTERNAL),
}


def status_of(error: BaseException) -> tuple[int, StatusCode]:
    for kind, status in STATUSES.items():
        if isinstance(error, kind):
            return status
    return STATUSES[Exception]


def message(error: BaseException) -> str:
    """KServe's errors carry theirs in ``reason`` (their ``str`` adds a prefix for some)."""
    reason = getattr(error, "reason", None)
    return reason if isinstance(reason, str) and reason else str(error)
