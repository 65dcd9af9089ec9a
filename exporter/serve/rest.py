"""The REST side: KServe's V2 endpoints (health, readiness, model list, metrics) on a FastAPI
app, with the model routes taken over here for versions, the request size limit and the
bounds of ``exporter.serve.limits``, a binary tensor decoder that checks lengths, and an
encoder for the answer; every error the protocol's status with ``{"error": message}``.

Decoding and encoding run on the codec threads, never on the event loop: a 720p answer as
JSON numbers is 3.7 million of them, and encoded on the loop (as KServe does) eight such
requests kept ``/v2/health/live`` waiting 5 s. The numbers are written in chunks of
``JSON_CHUNK``, each one C call, so that the loop gets the GIL between them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from kserve.errors import InvalidInput, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
from kserve.utils.numpy_codec import to_np_dtype
from starlette.requests import ClientDisconnect

from exporter.errors import shown
from exporter.remote import BINARY_HEADER, TENSOR_ALIGNMENT, aligned_json
from exporter.serve.limits import Load, RequestTooLarge, Stopping, count
from exporter.serve.model import MattingModel, lookup
from exporter.serve.statuses import STATUSES, message

__all__ = [
    "BodyBuffers",
    "PartsResponse",
    "RequestTooLarge",
    "build_app",
    "decode_request",
    "encode_response",
]

log = logging.getLogger("bgm-export.serve")

# A body over the limit whose Content-Length says at most this many times the limit is read
# and dropped, so that the client (which sends its body before reading) gets the 413;
# a larger one is refused unread and its connection closed.
DRAIN_FACTOR = 4
# Numbers encoded by one orjson call, which holds the GIL throughout: 8,192 take about 1 ms
# (65,536 took 7 ms on a busy core; a whole 720p answer, 0.5 s).
JSON_CHUNK = 1 << 13


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
        length = count(header)
        if length is None:
            raise InvalidInput(f"Inference-Header-Content-Length {shown(header)} is not a byte count")
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
        isinstance(outputs, list)
        and all(isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("parameters") or {}, dict)
                for o in outputs)
    ):  # fmt: skip
        raise InvalidInput('"outputs" is not a list of objects with a "name" (and "parameters", an object)')
    if not isinstance(document.get("parameters") or {}, dict):
        raise InvalidInput('the request\'s "parameters" is not an object')
    # KServe takes any truthy value ("false", "no", 2) as true: only JSON's booleans are.
    for output in outputs or []:
        _boolean((output.get("parameters") or {}).get("binary_data"), f"output '{output['name']}': binary_data")
    _boolean((document.get("parameters") or {}).get("binary_data_output"), "binary_data_output")
    if not isinstance(document.get("id") or "", str):
        raise InvalidInput('the request\'s "id" is not a string')
    return InferRequest(
        model_name=model_name,
        infer_inputs=inputs,
        request_id=document.get("id"),
        parameters=document.get("parameters"),
        request_outputs=[RequestedOutput(o["name"], o.get("parameters")) for o in outputs] if outputs else None,
    )


def _boolean(value: object, what: str) -> None:
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{what} {shown(value)} is not true or false")


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

    def __init__(self, parts: list[bytes | memoryview], headers: dict[str, str], media_type: str) -> None:
        length = sum(len(part) for part in parts)
        super().__init__(None, headers={**headers, "content-length": str(length)}, media_type=media_type)
        self.parts = parts

    async def __call__(self, scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for index, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < len(self.parts) - 1})


def _json_numbers(array: np.ndarray) -> list[bytes]:
    """``array``'s numbers, flattened, as the inside of a JSON list, in chunks."""
    flat = array.reshape(-1)
    parts = []
    for start in range(0, flat.size, JSON_CHUNK):
        text = orjson.dumps(flat[start : start + JSON_CHUNK], option=orjson.OPT_SERIALIZE_NUMPY)
        parts.append((b"," if start else b"") + text[1:-1])
    return parts


def encode_response(response: InferResponse, request: InferRequest) -> tuple[list[bytes | memoryview], dict, str]:
    """The answer's body (as parts), headers and media type: JSON, each output as JSON numbers
    or, where asked (the binary tensor extension), as its bytes after the JSON, sent from the
    array's own memory. Run on a codec thread."""
    outputs = {output.name: output for output in response.outputs}
    if request.request_outputs:
        chosen = [(output.name, output.binary_data) for output in request.request_outputs]
    else:
        chosen = [(name, request.use_binary_outputs) for name in outputs]
    described, numbers, binary = [], {}, []
    for name, as_binary in chosen:
        output = outputs[name]
        array = np.ascontiguousarray(output.data)
        entry = {"name": name, "datatype": output.datatype, "shape": list(array.shape)}
        if as_binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            binary.append(memoryview(array).cast("B"))
        else:
            numbers[len(described)] = _json_numbers(array)
        described.append(entry)
    document = {"id": response.id, "model_name": response.model_name, "model_version": response.model_version}
    if not numbers:
        header = aligned_json({**document, "outputs": described})
        return [header, *binary], {BINARY_HEADER: str(len(header))}, "application/octet-stream"
    # The JSON written around the numbers: each listed output's object, its "data" spliced in.
    parts: list[bytes | memoryview] = [orjson.dumps(document)[:-1] + b',"outputs":[']
    for index, entry in enumerate(described):
        text = orjson.dumps(entry)
        if index in numbers:
            parts += [(b"," if index else b"") + text[:-1] + b',"data":[', *numbers[index], b"]}"]
        else:
            parts.append((b"," if index else b"") + text)
    parts.append(b"]}")
    if not binary:
        return parts, {}, "application/json"
    length = sum(len(part) for part in parts)
    parts.append(b" " * (-length % TENSOR_ALIGNMENT))
    return [*parts, *binary], {BINARY_HEADER: str(length + len(parts[-1]))}, "application/octet-stream"


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

    def clear(self) -> None:
        """Once idle: a burst's buffers go back with the rest of its memory."""
        self._free = []


async def read_body(request: Request, limit: int, buffers: BodyBuffers | None, load: Load) -> tuple[memoryview, int]:
    """The request's body, at most ``limit`` bytes (``RequestTooLarge`` otherwise), and the
    bytes held for it in ``load`` (``ServerBusy`` past its bound; the caller releases them),
    read within its time (``BodyTimeout``; ``Stopping`` when the server stops meanwhile): with
    a Content-Length, into one buffer of that length (from ``buffers`` when given, which the
    caller gives back once answered; on a failed read here), writable so that the runtime
    can read the tensors in it where they are; without one (chunked), as it comes."""
    declared = count(request.headers.get("content-length", ""))
    too_large = f"the request body of {{}} bytes is over this server's maximum of {limit} bytes (--max-request-mb)"
    if declared is None:
        grown, held = bytearray(), 0
        try:
            async with load.reading():
                async for chunk in request.stream():
                    load.reserve(len(chunk))
                    held += len(chunk)
                    grown += chunk
                    if len(grown) > limit:
                        raise RequestTooLarge(too_large.format(f"more than {len(grown)}"))
        except BaseException:
            load.release(held)
            raise
        return memoryview(grown), held
    if declared > limit:
        if declared <= DRAIN_FACTOR * limit:
            async with load.reading():
                async for _ in request.stream():
                    pass
        raise RequestTooLarge(too_large.format(declared))
    size = declared
    await load.admit(size)
    body, filled = memoryview(buffers.take(size) if buffers is not None else np.empty(size, np.uint8)), 0
    try:
        async with load.reading():
            async for chunk in request.stream():
                end = filled + len(chunk)
                if end > size:  # the HTTP parser stops at the length; never written past it
                    raise InvalidInput(f"the request body is longer than its Content-Length of {declared} bytes")
                body[filled:end] = chunk
                filled = end
    except BaseException:
        if buffers is not None:
            buffers.give(body)
        load.release(size)
        raise
    return body[:filled], size


class Endpoints:
    """The model routes, with or without ``/versions/{model_version}``."""

    def __init__(
        self, dataplane: DataPlane, models: Mapping[str, MattingModel], server: dict, limit: int, load: Load
    ) -> None:
        self.dataplane, self.models, self.server, self.limit, self.load = dataplane, models, server, limit, load
        # As many as the models keep requests in flight: what the server holds at once anyway.
        self.buffers = BodyBuffers(sum(model.runner.parallel for model in models.values() if model.runner))
        load.on_idle.append(self.buffers.clear)

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
        self.load.refuse_if_stopping()
        with self.load.active():
            # Only binary bodies are reused: a JSON body's length changes with its numbers.
            buffers = self.buffers if BINARY_HEADER in request.headers else None
            body, held = await read_body(request, self.limit, buffers, self.load)
            try:
                infer_request = await self._decode(model, body, request.headers)
                response, _ = await self.dataplane.infer(model.name, infer_request)
                parts, headers, media_type = await self.load.off_loop(encode_response, response, infer_request)
            except asyncio.CancelledError:  # past the grace period of a stop
                buffers = None  # the inference may still be reading the body on its thread
                self.load.cut_off += 1
                raise
            finally:  # otherwise, the outputs are arrays of their own: nothing reads the body after this
                if buffers is not None:
                    buffers.give(body)
                self.load.release(held)
        return PartsResponse(parts, headers, media_type)

    async def _decode(self, model: MattingModel, body: memoryview, headers: Mapping[str, str]) -> InferRequest:
        try:
            header = headers.get(BINARY_HEADER)  # case-insensitive here; a dict's copy would not be
            binary = {} if header is None else {BINARY_HEADER: header}
            return await self.load.off_loop(decode_request, body, binary, model.name)
        except InvalidInput:  # what passes decoding, the model checks and counts itself
            model.refused += 1
            raise


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def _handler(status: int):  # noqa: ANN202 - a FastAPI exception handler
    async def handle(request: Request, exc: Exception) -> Response:
        text = message(exc)
        if status == 500:  # ours, not the client's: a 501 (not implemented) or a 503 (a bound) is one line
            log.error("%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, text, exc_info=exc)
        else:
            log.warning("%d %s %s: %s", status, request.method, request.url.path, text)
        response = _json({"error": text}, status)
        if isinstance(exc, Stopping):
            response.headers["connection"] = "close"
        elif status == 503:
            response.headers["retry-after"] = "1"
        return response

    return handle


async def _client_gone(request: Request, exc: Exception) -> Response:
    """A client that disconnected mid-body: nobody reads the answer; one line, no traceback."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
    log.info("%s %s: %s disconnected before its request body was complete", request.method, request.url.path, client)
    return Response(status_code=400)


def build_app(
    dataplane: DataPlane, models: Mapping[str, MattingModel], server: dict, limit: int, load: Load
) -> FastAPI:
    """The REST application: the model routes here first (the first match wins), then
    KServe's V2 endpoints and its Prometheus ``/metrics``."""
    # No generated docs: the protocol is documented elsewhere, and building /openapi.json from
    # routes registered under two prefixes logged FastAPI's "Duplicate Operation ID" warnings.
    app = FastAPI(title="bgm-export", docs_url=None, redoc_url=None, openapi_url=None)
    endpoints = Endpoints(dataplane, models, server, limit, load)
    app.add_api_route("/v2", endpoints.server_metadata, methods=["GET"])
    for prefix in ("/v2/models/{model_name}", "/v2/models/{model_name}/versions/{model_version}"):
        app.add_api_route(prefix, endpoints.metadata, methods=["GET"])
        app.add_api_route(f"{prefix}/ready", endpoints.ready, methods=["GET"])
        app.add_api_route(f"{prefix}/infer", endpoints.infer, methods=["POST"], response_model=None)
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    register_v2_endpoints(app, dataplane, NoRepositoryChanges(dataplane.model_registry))
    for error, (status, _) in STATUSES.items():
        app.add_exception_handler(error, _handler(status))
    app.add_exception_handler(ClientDisconnect, _client_gone)
    return app
