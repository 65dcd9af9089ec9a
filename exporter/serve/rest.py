"""The REST side: KServe's V2 endpoints (health, readiness, model list, metrics) on a FastAPI
app, with the model routes taken over here for versions, the request size limit, and a
binary tensor decoder that checks lengths; every error the protocol's status with
``{"error": message}``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from kserve.errors import (
    InferenceError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerNotLive,
    ServerNotReady,
)
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from kserve.utils.numpy_codec import to_np_dtype

from exporter.remote import BINARY_HEADER, aligned_json
from exporter.serve.model import MattingModel, lookup

__all__ = ["BodyBuffers", "PartsResponse", "RequestTooLarge", "build_app", "decode_request"]

log = logging.getLogger("bgm-export.serve")

# A body over the limit whose Content-Length says at most this many times the limit is read
# and dropped, so that the client (which sends its body before reading) gets the 413;
# a larger one is refused unread and its connection closed.
DRAIN_FACTOR = 4


class RequestTooLarge(Exception):
    """HTTP 413; over gRPC, the channel's own limit answers RESOURCE_EXHAUSTED."""


class NoRepositoryChanges(ModelRepositoryExtension):
    """The repository extension's load and unload, refused: this server serves the models it
    was started with (a client must not unload them)."""

    async def load(self, model_name: str) -> None:
        raise NotImplementedError("this server does not load or unload models; restart it on another repository")

    async def unload(self, model_name: str) -> None:
        raise NotImplementedError("this server does not load or unload models; restart it on another repository")


def _fields(item: object, index: int) -> tuple[str, str, list[int], dict]:
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{index}] is not an object")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    parameters = item.get("parameters") or {}
    if not isinstance(name, str):
        raise InvalidInput(f'inputs[{index}] has no "name" string')
    if not isinstance(datatype, str):
        raise InvalidInput(f"input '{name}' has no \"datatype\" string")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):  # fmt: skip
        raise InvalidInput(f"input '{name}' has no \"shape\" list of whole numbers")
    if not isinstance(parameters, dict):
        raise InvalidInput(f"input '{name}': \"parameters\" is not an object")
    return name, datatype, shape, parameters


def decode_request(body: bytes | bytearray | memoryview, headers: Mapping[str, str], model_name: str) -> InferRequest:
    """A V2 REST body (JSON, or JSON then binary tensors as its header says) as KServe's
    ``InferRequest``; ``InvalidInput`` (400) naming what is malformed or inconsistent."""
    header = headers.get(BINARY_HEADER)
    binary = memoryview(b"")
    if header is None:
        text = body
    else:
        if not header.strip().isdigit():
            raise InvalidInput(f"Inference-Header-Content-Length {header!r} is not a byte count")
        length = int(header)
        if length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length says the JSON part is {length} bytes, but the body has only "
                f"{len(body)}"
            )
        text, binary = body[:length], memoryview(body)[length:]
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request's JSON is malformed: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InvalidInput('the request\'s JSON has no "inputs" list')
    inputs, offset = [], 0
    for index, item in enumerate(document["inputs"]):
        name, datatype, shape, parameters = _fields(item, index)
        if "data" in item:
            inputs.append(InferInput(name, shape, datatype, data=item["data"], parameters=parameters))
            continue
        size = parameters.get("binary_data_size")
        if size is None:
            raise InvalidInput(f'input \'{name}\' has neither "data" nor a "binary_data_size" parameter')
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"input '{name}': binary_data_size {size!r} is not a byte count")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input '{name}' declares {size} bytes of binary data, but the body holds only "
                f"{len(binary) - offset} after its JSON and the inputs before"
            )
        raw, offset = binary[offset : offset + size], offset + size
        inputs.append(InferInput(name, shape, datatype, data=_tensor(name, datatype, shape, raw),
                                 parameters=parameters))  # fmt: skip
    if offset != len(binary):
        raise InvalidInput(f"the body holds {len(binary) - offset} bytes after the inputs' binary data")
    outputs = document.get("outputs")
    if outputs is not None and not (
        isinstance(outputs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)
    ):
        raise InvalidInput('"outputs" is not a list of objects with a "name"')
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=document.get("id"),
        parameters=document.get("parameters"),
        request_outputs=[RequestedOutput(o["name"], o.get("parameters")) for o in outputs] if outputs else None,
    )


def _tensor(name: str, datatype: str, shape: list[int], raw: memoryview) -> np.ndarray | bytes:
    """Binary tensor data as an array over the body's bytes (no copy), its length checked
    against the shape; a non-numeric datatype is kept as bytes, for the model to refuse."""
    dtype = to_np_dtype(datatype)
    if dtype is None or dtype is np.object_:
        if dtype is None:
            raise InvalidInput(f"input '{name}': datatype {datatype!r} is not a V2 datatype")
        return bytes(raw)
    needed = math.prod(shape) * np.dtype(dtype).itemsize
    if len(raw) != needed:
        raise InvalidInput(
            f"input '{name}' has {len(raw)} bytes of binary data; a {shape} {datatype} tensor is {needed} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


class PartsResponse(Response):
    """A body sent as the parts it is made of, not joined first: a 720p answer's arrays are
    15 MB, and joining them was one more full copy on the cores that compute."""

    def __init__(self, parts: list[bytes | memoryview], headers: dict[str, str]) -> None:
        length = sum(len(part) for part in parts)
        super().__init__(None, headers={**headers, "content-length": str(length)},
                         media_type="application/octet-stream")  # fmt: skip
        self.parts = parts

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for index, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < len(self.parts) - 1})


def encode_binary(response: InferResponse, request: InferRequest) -> PartsResponse | None:
    """The response as JSON then every output's bytes (the binary tensor extension), the
    arrays sent from their own memory; None when JSON numbers are asked for (KServe encodes
    those)."""
    if request.request_outputs:
        if not all(output.binary_data for output in request.request_outputs):
            return None
        names = [output.name for output in request.request_outputs]
    elif request.use_binary_outputs:
        names = [output.name for output in response.outputs]
    else:
        return None
    outputs = {output.name: output for output in response.outputs}
    arrays = [outputs[name].data for name in names]
    described = [
        {"name": name, "datatype": outputs[name].datatype, "shape": list(array.shape),
         "parameters": {"binary_data_size": array.nbytes}}
        for name, array in zip(names, arrays, strict=True)
    ]  # fmt: skip
    header = aligned_json({"id": response.id, "model_name": response.model_name,
                           "model_version": response.model_version, "outputs": described})  # fmt: skip
    parts = [header, *(memoryview(np.ascontiguousarray(array)).cast("B") for array in arrays)]
    return PartsResponse(parts, {BINARY_HEADER: str(len(header))})


class BodyBuffers:
    """Binary requests' body buffers, used again once their request is answered: zeroing a
    fresh 22 MB ``bytearray`` for each 720p request was a tenth of the event loop's time. A
    buffer is reused for a body of its exact size (a model's binary requests all have one);
    at most ``keep`` wait here free."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[np.ndarray] = []

    def take(self, size: int) -> np.ndarray:
        for index, buffer in enumerate(self._free):
            if buffer.size == size:
                return self._free.pop(index)
        return np.empty(size, np.uint8)  # not zeroed: only what the stream writes is read

    def give(self, body: memoryview) -> None:
        if isinstance(body.obj, np.ndarray):  # a chunked body's bytearray is not kept
            self._free = [body.obj, *self._free][: self.keep]


async def read_body(request: Request, limit: int, buffers: BodyBuffers | None) -> memoryview:
    """The request's body, at most ``limit`` bytes (``RequestTooLarge`` otherwise): with a
    Content-Length, into one buffer of that length (from ``buffers`` when given, which the
    caller gives back once answered; on a failed read here), writable so that the runtime
    can read the tensors in it where they are; without one (chunked), as it comes."""
    declared = request.headers.get("content-length", "")
    too_large = f"the request body of {{}} bytes is over this server's maximum of {limit} bytes (--max-request-mb)"
    if not declared.isdigit():
        grown = bytearray()
        async for chunk in request.stream():
            grown += chunk
            if len(grown) > limit:
                raise RequestTooLarge(too_large.format(f"more than {len(grown)}"))
        return memoryview(grown)
    if int(declared) > limit:
        if int(declared) <= DRAIN_FACTOR * limit:
            async for _ in request.stream():
                pass
        raise RequestTooLarge(too_large.format(declared))
    size = int(declared)
    body, filled = memoryview(buffers.take(size) if buffers is not None else np.empty(size, np.uint8)), 0
    try:
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > size:  # the HTTP parser stops at the length; never written past it
                raise InvalidInput(f"the request body is longer than its Content-Length of {declared} bytes")
            body[filled:end] = chunk
            filled = end
    except BaseException:
        if buffers is not None:
            buffers.give(body)
        raise
    return body[:filled]


class Endpoints:
    """The model routes, with or without ``/versions/{model_version}``."""

    def __init__(self, dataplane: DataPlane, models: Mapping[str, MattingModel], server: dict, limit: int) -> None:
        self.dataplane, self.models, self.server, self.limit = dataplane, models, server, limit
        # As many as the models keep requests in flight: what the server holds at once anyway.
        self.buffers = BodyBuffers(sum(model.runner.parallel for model in models.values() if model.runner))

    async def server_metadata(self) -> dict:
        return self.server

    async def metadata(self, model_name: str, model_version: str | None = None) -> dict:
        return lookup(self.models, model_name, model_version).metadata()

    async def ready(self, model_name: str, model_version: str | None = None) -> dict:
        model = lookup(self.models, model_name, model_version)
        if not model.ready:
            raise ModelNotReady(model_name)
        return {"name": model_name, "ready": True}

    async def infer(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        model = lookup(self.models, model_name, model_version)
        if not model.ready:
            raise ModelNotReady(model_name)
        # Only binary bodies are reused: a JSON body's length changes with its numbers.
        buffers = self.buffers if BINARY_HEADER in request.headers else None
        body = await read_body(request, self.limit, buffers)
        try:
            infer_request, response = await self._run(model, body, request.headers)
        except asyncio.CancelledError:
            buffers = None  # the inference may still be reading the body on its thread
            raise
        finally:  # otherwise, the outputs are arrays of their own: nothing reads the body after this
            if buffers is not None:
                buffers.give(body)
        binary = encode_binary(response, infer_request)
        if binary is not None:
            return binary
        encoded, headers = self.dataplane.encode(model_name, response, {}, {})
        if isinstance(encoded, bytes):
            return Response(encoded, headers=headers, media_type="application/octet-stream")
        return _json(encoded)

    async def _run(self, model: MattingModel, body: memoryview, headers: Mapping[str, str]) -> tuple:
        try:
            infer_request = decode_request(body, headers, model.name)
        except InvalidInput:  # what passes decoding, the model checks and counts itself
            model.refused += 1
            raise
        response, _ = await self.dataplane.infer(model.name, infer_request)
        return infer_request, response


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def _handler(status: int):  # noqa: ANN202 - a FastAPI exception handler
    async def handle(request: Request, exc: Exception) -> Response:
        message = str(exc)
        if status >= 500:
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, message, exc_info=exc)
        else:
            log.warning("%d %s %s: %s", status, request.method, request.url.path, message)
        return _json({"error": message}, status)

    return handle


# Each error the protocol's status (KServe's own mapping, and 413 for a body over the limit).
STATUSES: dict[type[BaseException], int] = {
    InvalidInput: 400,
    ModelNotFound: 404,
    RequestTooLarge: 413,
    NotImplementedError: 501,
    ModelNotReady: 503,
    ServerNotReady: 503,
    ServerNotLive: 503,
    InferenceError: 500,
    Exception: 500,
}


def build_app(dataplane: DataPlane, models: Mapping[str, MattingModel], server: dict, limit: int) -> FastAPI:
    """The REST application: the model routes here first (the first match wins), then
    KServe's V2 endpoints and its Prometheus ``/metrics``."""
    app = FastAPI(title="bgm-export", docs_url=None, redoc_url=None)
    endpoints = Endpoints(dataplane, models, server, limit)
    app.add_api_route("/v2", endpoints.server_metadata, methods=["GET"])
    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        app.add_api_route(prefix, endpoints.metadata, methods=["GET"])
        app.add_api_route(f"{prefix}/ready", endpoints.ready, methods=["GET"])
        app.add_api_route(f"{prefix}/infer", endpoints.infer, methods=["POST"], response_model=None)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    register_v2_endpoints(app, dataplane, NoRepositoryChanges(dataplane.model_registry))
    for error, status in STATUSES.items():
        app.add_exception_handler(error, _handler(status))
    return app
