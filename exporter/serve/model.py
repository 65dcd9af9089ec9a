"""The served model: a ``kserve.Model`` over an OpenVINO runner, checking every request
against what the artifact states (input names, datatypes, shapes) before it runs.

KServe's ``Model.__call__`` times each request into its Prometheus histograms; ``predict``
here checks the request, runs it on one of the runner's requests (THROUGHPUT hint, at most
``parallel`` in flight, with at most ``QUEUED_PER_SLOT`` times as many waiting: 503 past
them) and returns the outputs as an ``InferResponse``. Turning JSON numbers into arrays,
computing, and copying the outputs happen on worker threads: the event loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from kserve import Model
from kserve.errors import InferenceError, InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse

from exporter.errors import shown
from exporter.pipeline.infer import nonfinite
from exporter.repository import TensorSpec, tensor_specs
from exporter.runtime import Runner, load_runner
from exporter.serve import ServedModel
from exporter.serve.limits import QUEUED_PER_SLOT, ServerBusy, count, lower_this_thread

__all__ = ["PLATFORM", "MattingModel", "VersionNotFound", "lookup"]

# What the model metadata's ``platform`` says (Triton says "openvino" for its OpenVINO backend).
PLATFORM = "openvino"


class VersionNotFound(ModelNotFound):
    """A version the model does not have, or does not serve: HTTP 404, gRPC NOT_FOUND."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


class MattingModel(Model):
    def __init__(self, served: ServedModel, device: str, inference_precision: str) -> None:
        super().__init__(served.name)
        self.served = served
        self.inputs, self.outputs = tensor_specs(served.metadata)
        self.device, self.precision = device, inference_precision
        self.runner: Runner | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.answered = self.refused = self.busy = 0
        self.waiting = 0  # requests given to the runner's threads, computing or queued
        self.max_waiting = 0

    def load(self) -> bool:
        """Compile the artifact: THROUGHPUT hint, every stream kept busy by ``parallel``
        requests in flight."""
        # Compiled on a thread of lowered priority: the runtime's threads, started there, inherit it
        # (``COMPUTE_NICENESS``).
        with ThreadPoolExecutor(1, thread_name_prefix="bgm-compile", initializer=lower_this_thread) as compiler:
            self.runner = compiler.submit(load_runner, self.served.path, "openvino", self.device, self.precision,
                                          throughput=True, metadata=self.served.metadata).result()  # fmt: skip
        self._executor = ThreadPoolExecutor(self.runner.parallel, thread_name_prefix=f"bgm-{self.name}")
        self.max_waiting = (1 + QUEUED_PER_SLOT) * self.runner.parallel
        self.ready = True
        return True

    def stop(self) -> None:
        """After the requests in flight: free the runner's threads and memory."""
        self.ready = False
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.runner is not None:
            self.runner.close()

    def get_input_types(self) -> list[dict]:
        return [spec.to_dict() for spec in self.inputs]

    def get_output_types(self) -> list[dict]:
        return [spec.to_dict() for spec in self.outputs]

    def metadata(self) -> dict:
        """The Open Inference Protocol's model metadata: what the artifact states."""
        return {"name": self.name, "versions": [str(self.served.version)], "platform": PLATFORM,
                "inputs": self.get_input_types(), "outputs": self.get_output_types()}  # fmt: skip

    async def predict(self, payload: InferRequest, headers: Mapping[str, str] | None = None) -> InferResponse:
        try:
            self._check(payload)
        except InvalidInput:
            self.refused += 1
            raise
        if self.waiting >= self.max_waiting:
            self.busy += 1
            raise ServerBusy(
                f"model {self.name} has {self.waiting} requests computing or queued, its bound; retry shortly"
            )
        self.waiting += 1
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, payload)
        except InvalidInput:
            self.refused += 1
            raise
        finally:
            self.waiting -= 1
        self.answered += 1
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, model_version=str(self.served.version),
            infer_outputs=outputs, use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )  # fmt: skip

    def _infer(self, payload: InferRequest) -> list[InferOutput]:
        """On a runner's thread: the arrays (JSON numbers converted here), the inference, and
        the outputs as KServe takes them (for gRPC, a copy of their bytes)."""
        feeds = {item.name: _array(item) for item in payload.inputs}
        # Shared: the request's tensors are read where they arrived (a REST body's buffer).
        outputs = self.runner.submit(feeds, share_inputs=True).result()
        self._check_finite(feeds, outputs, [output.name for output in payload.request_outputs or []])
        return [_output(spec, outputs[spec.name], payload.from_grpc) for spec in self.outputs]

    def _check_finite(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray], asked: list[str]) -> None:
        """Refuse an answer holding NaN or infinite values (a client would write NaN as black):
        the request's fault (400) when its inputs hold them, else the artifact's (500). The
        inputs are read only then: a good answer costs one pass over the outputs asked for."""
        broken = nonfinite(outputs, asked or [spec.name for spec in self.outputs])
        if broken is None:
            return
        bad_input = nonfinite(feeds)
        if bad_input is not None:
            raise InvalidInput(f"input '{bad_input}' holds NaN or infinite values")
        raise InferenceError(
            f"model {self.name} answered NaN or infinite values in {broken}: its artifact is broken; "
            "check it with bgm-export verify"
        )

    def _check(self, payload: InferRequest) -> None:
        """The request's tensors and outputs, checked against the artifact's."""
        expected = {spec.name: spec for spec in self.inputs}
        takes = ", ".join(expected)
        names = [item.name for item in payload.inputs]
        for name in names:
            if names.count(name) > 1:
                raise InvalidInput(f"input '{name}' is given {names.count(name)} times")
            if name not in expected:
                raise InvalidInput(f"model {self.name} has no input '{name}'; it takes {takes}")
        for name in expected:
            if name not in names:
                raise InvalidInput(f"input '{name}' is missing; model {self.name} takes {takes}")
        for item in payload.inputs:
            spec = expected[item.name]
            if item.datatype != spec.datatype:
                raise InvalidInput(f"input '{item.name}' is {item.datatype}; model {self.name} takes {spec.datatype}")
            if [int(d) for d in item.shape] != list(spec.shape):
                raise InvalidInput(
                    f"input '{item.name}' has shape {list(item.shape)}; model {self.name} takes {list(spec.shape)}"
                )
        gives = [spec.name for spec in self.outputs]
        for output in payload.request_outputs or []:
            if output.name not in gives:
                raise InvalidInput(f"model {self.name} has no output '{output.name}'; it gives {', '.join(gives)}")


def _output(spec: TensorSpec, array: np.ndarray, grpc: bool) -> InferOutput:
    """An output for KServe to encode: for gRPC as raw bytes, its raw contents (an array left
    as ``data`` trips KServe's ``to_grpc`` on its truth value); for REST the array itself,
    which ``exporter.serve.rest`` sends as binary tensor data without another copy (or KServe
    as JSON numbers)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not grpc:
        return InferOutput(spec.name, list(spec.shape), spec.datatype, data=array)
    output = InferOutput(spec.name, list(spec.shape), spec.datatype)
    output.set_data_from_numpy(array, binary_data=True)
    return output


def _array(item: InferInput) -> np.ndarray:
    """The tensor of a checked input: binary REST data arrives decoded (``exporter.serve.rest``),
    gRPC's raw contents and JSON numbers are decoded here; data that does not make the
    declared shape is refused."""
    if isinstance(item.data, np.ndarray):
        return item.data
    try:
        return item.as_numpy()
    except (ValueError, TypeError, InvalidInput) as exc:
        raise InvalidInput(
            f"input '{item.name}': its data is not a {list(item.shape)} {item.datatype} tensor ({exc})"
        ) from None


def lookup(models: Mapping[str, MattingModel], name: str, version: str | None) -> MattingModel:
    """The served model ``name``; a ``version`` (empty: the served one) must be the one served.
    ``ModelNotFound`` / ``VersionNotFound`` otherwise."""
    model = models.get(name)
    if model is None:
        raise ModelNotFound(name)
    if version and count(version) != model.served.version:
        versions = model.served.versions
        if count(version) in versions:
            raise VersionNotFound(
                f"version {version} of model {name} is not served: this server serves its latest, "
                f"{model.served.version}"
            )
        raise VersionNotFound(
            f"model {name} has no version '{shown(version)}' (versions: {', '.join(map(str, versions))})"
        )
    return model
