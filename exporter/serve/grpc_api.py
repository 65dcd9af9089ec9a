"""The gRPC side: KServe's V2 ``GRPCInferenceService`` servicer, with model versions checked
and the model metadata the artifact states, on a ``grpc.aio`` server bound to one address.
Errors become the protocol's status codes through ``exporter.serve.statuses`` (INVALID_ARGUMENT,
NOT_FOUND, UNIMPLEMENTED, RESOURCE_EXHAUSTED, ...); a message over the maximum size, or a call
past ``MAX_GRPC_CALLS`` at once, is refused by gRPC itself with RESOURCE_EXHAUSTED. Messages
are turned into requests, and answers into messages, on the codec threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent import futures

from grpc import aio
from kserve.errors import InvalidInput
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferRequest
from kserve.utils.utils import to_headers

from exporter.errors import ServerError
from exporter.serve.limits import MAX_GRPC_CALLS, Load
from exporter.serve.model import MattingModel, lookup
from exporter.serve.rest import NoRepositoryChanges
from exporter.serve.statuses import message, status_of

__all__ = ["build_grpc_server"]

log = logging.getLogger("bgm-export.serve")

# Answers are up to 15 MB at 720p; the request limit is the server's --max-request-mb.
MAX_SEND_BYTES = 2**31 - 1


class Servicer(InferenceServicer):
    def __init__(self, dataplane: DataPlane, models: Mapping[str, MattingModel], server: dict, load: Load) -> None:
        super().__init__(dataplane, NoRepositoryChanges(dataplane.model_registry))
        self._models, self._server, self._load = models, server, load

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: object) -> pb.ServerMetadataResponse:  # noqa: N802
        return pb.ServerMetadataResponse(**self._server)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: object) -> pb.ModelMetadataResponse:  # noqa: N802
        return pb.ModelMetadataResponse(**lookup(self._models, request.name, request.version).metadata())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:  # noqa: N802
        return pb.ModelReadyResponse(ready=lookup(self._models, request.name, request.version).ready)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:  # noqa: N802
        model = lookup(self._models, request.model_name, request.model_version)
        load = self._load
        load.refuse_if_stopping()
        with load.active():
            try:
                self.validate_grpc_request(request)
                infer_request = await load.off_loop(InferRequest.from_grpc, request)
            except InvalidInput:
                model.refused += 1
                raise
            try:
                response, _ = await self._data_plane.infer(model.name, infer_request, to_headers(context))
                return await load.off_loop(response.to_grpc)
            except asyncio.CancelledError:  # past the grace period of a stop
                load.cut_off += 1
                raise


class Statuses(ExceptionToStatusInterceptor):
    """Each error's status from ``exporter.serve.statuses``: a client's mistake, or a bound
    reached, is logged in one line; an error of ours with its traceback."""

    async def handle_exception(self, ex: Exception, request_or_iterator: object, context: object, method_name: str):  # noqa: ANN201
        http, code = status_of(ex)
        if http == 500:  # ours, not the client's: a 501 (not implemented) or a 503 (a bound) is one line
            log.error("gRPC %s: %s: %s", method_name, type(ex).__name__, message(ex), exc_info=ex)
        else:
            log.warning("gRPC %s: %s %s", method_name, code.name, message(ex))
        await context.abort(code, message(ex))  # type: ignore[attr-defined]


def build_grpc_server(
    dataplane: DataPlane, models: Mapping[str, MattingModel], server: dict, address: str, limit: int, load: Load
) -> tuple[aio.Server, int]:
    """The server with its port bound (``ServerError`` naming it if in use) and the port."""
    grpc_server = aio.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=(Statuses(),),
        maximum_concurrent_rpcs=MAX_GRPC_CALLS,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener
        ],
    )
    add_GRPCInferenceServiceServicer_to_server(Servicer(dataplane, models, server, load), grpc_server)
    try:
        port = grpc_server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise ServerError(f"gRPC port {address} is in use (or not an address here); choose another --grpc-port")
    return grpc_server, port
