"""The gRPC side: KServe's V2 ``GRPCInferenceService`` servicer, with model versions checked
and the model metadata the artifact states, on a ``grpc.aio`` server bound to one address.
Errors become the protocol's status codes through KServe's interceptor (INVALID_ARGUMENT,
NOT_FOUND, UNIMPLEMENTED, ...); a message over the maximum size is refused by gRPC itself
with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent import futures

from grpc import aio
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer

from exporter.errors import ServerError
from exporter.serve.model import MattingModel, lookup
from exporter.serve.rest import NoRepositoryChanges

__all__ = ["build_grpc_server"]

log = logging.getLogger("bgm-export.serve")

# Answers are up to 15 MB at 720p; the request limit is the server's --max-request-mb.
MAX_SEND_BYTES = 2**31 - 1


class Servicer(InferenceServicer):
    def __init__(self, dataplane: DataPlane, models: Mapping[str, MattingModel], server: dict) -> None:
        super().__init__(dataplane, NoRepositoryChanges(dataplane.model_registry))
        self._models, self._server = models, server

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: object) -> pb.ServerMetadataResponse:  # noqa: N802
        return pb.ServerMetadataResponse(**self._server)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: object) -> pb.ModelMetadataResponse:  # noqa: N802
        return pb.ModelMetadataResponse(**lookup(self._models, request.name, request.version).metadata())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:  # noqa: N802
        return pb.ModelReadyResponse(ready=lookup(self._models, request.name, request.version).ready)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:  # noqa: N802
        model = lookup(self._models, request.model_name, request.model_version)
        try:
            self.validate_grpc_request(request)
        except InvalidInput:
            model.refused += 1
            raise
        return await super().ModelInfer(request, context)


class Statuses(ExceptionToStatusInterceptor):
    """KServe's mapping of errors to statuses; a client's mistake is logged in one line."""

    async def handle_exception(self, ex: Exception, request_or_iterator: object, context: object, method_name: str):  # noqa: ANN201
        if isinstance(ex, (InvalidInput, ModelNotFound)):
            log.warning("gRPC %s: %s", method_name, ex.reason)
            from grpc import StatusCode

            code = StatusCode.INVALID_ARGUMENT if isinstance(ex, InvalidInput) else StatusCode.NOT_FOUND
            await context.abort(code, ex.reason)  # type: ignore[attr-defined]
        await super().handle_exception(ex, request_or_iterator, context, method_name)


def build_grpc_server(
    dataplane: DataPlane, models: Mapping[str, MattingModel], server: dict, address: str, limit: int
) -> tuple[aio.Server, int]:
    """The server with its port bound (``ServerError`` naming it if in use) and the port."""
    grpc_server = aio.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=(Statuses(),),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener
        ],
    )
    add_GRPCInferenceServiceServicer_to_server(Servicer(dataplane, models, server), grpc_server)
    try:
        port = grpc_server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise ServerError(f"gRPC port {address} is in use (or not an address here); choose another --grpc-port")
    return grpc_server, port
