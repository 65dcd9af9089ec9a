"""Runners: one interface for every way of running the model, as Polygraphy's runners are.

A runner holds one model loaded in one runtime (``.onnx`` in ONNX Runtime or OpenVINO,
``.xml`` in OpenVINO; the eager PyTorch model is ``exporter.eager.EagerRunner``, a remote
server will be another). Every runner takes the model's feeds — ``src`` and ``bgr``,
``(1, 3, H, W)`` float32, BGR, 0..255 — and returns ``{"pha": ..., "fgr": ...}`` and every
further output the artifact has (a base model's ``err``, ``hid``):

- ``infer(feeds)``: one synchronous inference;
- ``submit(feeds)``: start one and return a ``Pending`` whose ``result()`` waits for it;
  asynchronous where the runtime has it (OpenVINO's infer requests), so a pipeline keeps
  ``parallel`` requests in flight;
- ``metadata``, ``input_shape``, ``inference_precision``: what it runs and in what arithmetic.

Callers (verify, bench, matte, a server) use only this; nothing reaches into a runtime's
objects. Torch-free: the deployment side imports it.
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.artifact import IO_NAMES, artifact_metadata, check_io
from exporter.errors import ArtifactError, ConfigError
from exporter.isa import warn_isa_mismatch

__all__ = [
    "keep_signal_stack",
    "openvino_core",
    "INFERENCE_PRECISIONS",
    "Feeds",
    "LayerTime",
    "Pending",
    "Runner",
    "check_inference_precision",
    "default_inference_precision",
    "load_runner",
    "runners_for",
]

RUNTIMES = ("onnxruntime", "openvino")
# OpenVINO's INFERENCE_PRECISION_HINT: ``auto`` leaves the device its default (bf16 on CPUs
# that have it, f16 on GPUs); verification wants ``f32`` to judge the artifact's weights.
INFERENCE_PRECISIONS = ("auto", "f32", "bf16", "f16")
DEVICES = ("CPU", "GPU", "NPU", "AUTO")

Feeds = dict[str, np.ndarray]


class Pending:
    """An inference started by ``Runner.submit``; ``result()`` waits for its outputs.
    ``seconds`` is the time the runtime spent on it (known after ``result()``)."""

    def __init__(self, outputs: dict[str, np.ndarray] | None = None, seconds: float = 0.0) -> None:
        self._outputs = outputs
        self.seconds = seconds

    def result(self) -> dict[str, np.ndarray]:
        assert self._outputs is not None
        return self._outputs


@dataclass
class LayerTime:
    """One layer's share of an inference, from the runtime's counters."""

    name: str
    type: str
    kernel: str
    milliseconds: float


class Runner(ABC):
    """One model loaded in one runtime."""

    runtime: str = ""
    # Requests worth keeping in flight for full throughput (1: synchronous runtimes).
    parallel: int = 1

    def __init__(self, path: Path | str, metadata: dict[str, str], input_shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.metadata = metadata
        self.input_shape = tuple(input_shape)

    @property
    def name(self) -> str:
        return f"{self.path.name} [{self.runtime}]"

    @property
    def inference_precision(self) -> str:
        """The arithmetic it computes in (``f32``, ``bf16``, ``f16``)."""
        return "f32"

    @abstractmethod
    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """The outputs for ``feeds``, synchronously."""

    def submit(self, feeds: Feeds, share_inputs: bool = False) -> Pending:
        """Start an inference; synchronous runtimes finish it here. ``share_inputs``: the
        caller leaves the arrays unchanged until the result, so a runtime may read them in
        place rather than copy them first."""
        start = time.perf_counter()
        outputs = self.infer(feeds)
        return Pending(outputs, time.perf_counter() - start)

    def layer_times(self) -> list[LayerTime]:
        """Per-layer times of the last ``infer``, where the runner was loaded to profile."""
        return []

    def cancel(self) -> None:  # noqa: B027 - most runtimes' requests cannot be given up
        """Give up the requests in flight (their results raise), where the runtime can: a
        remote server's can; OpenVINO's are waited for (abandoned, they abort the exit)."""

    def close(self) -> None:  # noqa: B027 - not every runtime holds anything
        """Free what the runtime holds (threads, memory); the runner is unusable after."""


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"

    def __init__(
        self,
        path: Path,
        metadata: dict[str, str],
        resolution: tuple[int, int] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:  # else ONNX Runtime's default: one intra-op thread per physical core
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
            raise ArtifactError(f"{path} does not load in ONNX Runtime: {str(exc).splitlines()[0]}") from None
        inputs = {v.name: v.shape for v in self._session.get_inputs()}
        check_io(path, inputs, {v.name: v.shape for v in self._session.get_outputs()}, metadata, resolution)
        super().__init__(path, metadata, _input_shape(inputs["src"], metadata, resolution))
        self.output_names = tuple(v.name for v in self._session.get_outputs())

    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        # Every output the artifact has (pha, fgr, and a base model's err, hid ...).
        return dict(zip(self.output_names, self._session.run(list(self.output_names), feeds), strict=True))

    def close(self) -> None:
        self._session = None


class _OpenVINOPending(Pending):
    def __init__(self, runner: OpenVINORunner, request: object, outputs: dict[str, np.ndarray]) -> None:
        super().__init__()
        self._runner, self._request, self._arrays = runner, request, outputs

    def result(self) -> dict[str, np.ndarray]:
        if self._outputs is None:
            request = self._request
            request.wait()
            self._outputs = self._arrays
            self.seconds = request.latency / 1000
            self._runner._release(request)
        return self._outputs


class OpenVINORunner(Runner):
    runtime = "openvino"

    def __init__(
        self,
        path: Path,
        metadata: dict[str, str],
        device: str,
        inference_precision: str,
        throughput: bool,
        profile: bool = False,
        resolution: tuple[int, int] | None = None,
        threads: int | None = None,
    ) -> None:
        import openvino as ov

        if device.split(":")[0] not in DEVICES:
            raise ArtifactError(f"device {device!r} is not one of {', '.join(DEVICES)}")
        check_inference_precision(inference_precision)
        core = openvino_core()
        available = core.available_devices
        if device.split(":")[0] != "AUTO" and not any(d.startswith(device) for d in available):
            raise ArtifactError(f"OpenVINO device {device} is not available here (available: {', '.join(available)})")
        config = {} if inference_precision == "auto" else {"INFERENCE_PRECISION_HINT": inference_precision}
        # THROUGHPUT: several requests in flight, as a pipeline or a server keeps them.
        config["PERFORMANCE_HINT"] = "THROUGHPUT" if throughput else "LATENCY"
        if profile:  # counters cost time of their own: never on a runner that is timed
            config["PERF_COUNT"] = "YES"
        if threads is not None:  # else every core
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model: object = str(path)
            if metadata.get("dynamic") == "true":  # compiled for one concrete size
                height, width = _input_shape([], metadata, resolution)[2:]
                model = core.read_model(str(path))
                model.reshape({name: [1, 3, height, width] for name in ("src", "bgr")})
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line report
            raise ArtifactError(f"{path} does not load in OpenVINO {device}: {str(exc).splitlines()[0]}") from None
        inputs = {_port_name(v): v.get_partial_shape().get_min_shape() for v in self._compiled.inputs}
        outputs = {_port_name(v): v.get_partial_shape().get_min_shape() for v in self._compiled.outputs}
        check_io(path, inputs, outputs, metadata, resolution)
        super().__init__(path, metadata, tuple(inputs["src"]))
        self.output_names = tuple(outputs)
        self.device = device
        # Twice the device's optimal number: the spare requests keep every stream busy while
        # the oldest one's outputs are collected.
        self.parallel = 2 * self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS") if throughput else 1
        # Each request writes its outputs into arrays of its own, handed to the caller as they
        # are: copying them out of the request instead cost 2-6 ms of CPU a 720p frame.
        ports = enumerate(zip(self.output_names, self._compiled.outputs, strict=True))
        self._output_ports = [(index, name, tuple(v.get_shape()), v.get_element_type().to_dtype())
                              for index, (name, v) in ports]  # fmt: skip
        self._tensor = ov.Tensor
        self._free: list[object] = []
        self._requests: list[object] = []  # every request made, waited for on close
        self._lock = threading.Lock()
        self._sync = self._compiled.create_infer_request()

    @property
    def inference_precision(self) -> str:
        try:
            return self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        except RuntimeError:  # devices without the property compute as the IR says
            return "as the IR"

    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        result = self._sync.infer(feeds)
        return {name: np.array(result[self._compiled.output(name)]) for name in self.output_names}

    def submit(self, feeds: Feeds, share_inputs: bool = False) -> Pending:
        # No completion callback: a Python callback would stall OpenVINO's threads on the GIL
        # while the caller decodes and encodes; the caller collects in order instead.
        # OpenVINO copies read-only arrays (a gRPC message's bytes) even when asked to share.
        with self._lock:
            if self._free:
                request = self._free.pop()
            else:
                request = self._compiled.create_infer_request()
                self._requests.append(request)
        outputs = {}
        for index, name, shape, dtype in self._output_ports:
            outputs[name] = np.empty(shape, dtype)
            request.set_output_tensor(index, self._tensor(outputs[name], shared_memory=True))
        request.start_async(feeds, share_inputs=share_inputs)
        return _OpenVINOPending(self, request, outputs)

    def layer_times(self) -> list[LayerTime]:
        return [
            LayerTime(p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds() * 1000)
            for p in self._sync.profiling_info
        ]

    def _release(self, request: object) -> None:
        with self._lock:
            self._free.append(request)

    def close(self) -> None:
        # A request still computing when its compiled model is freed aborts the process
        # (an interrupt can leave one behind): wait for every one first.
        for request in self._requests:
            request.wait()
        self._free.clear()
        self._requests.clear()
        self._sync = self._compiled = None
        keep_signal_stack()


# The main thread's alternate signal stack, ours (see ``keep_signal_stack``): a few times
# glibc's SIGSTKSZ, room for Python's C-level signal handler, which only sets a flag.
SIGNAL_STACK_BYTES = 64 * 1024


class _StackT(ctypes.Structure):  # struct stack_t (sigaltstack(2)), as glibc lays it out on Linux
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.cache
def _signal_stack() -> ctypes.Array:
    return ctypes.create_string_buffer(SIGNAL_STACK_BYTES)  # held for the process's life


def keep_signal_stack() -> None:
    """Give the main thread an alternate signal stack that lives as long as the process.

    OpenVINO's CPU plugin sets the loading thread's alternate signal stack when a Core loads
    it and, unloaded, puts back the one it found. Two Cores unloaded out of order (ours and
    one NNCF made) left the stack pointing at freed memory; Python's handlers run on that
    stack (SA_ONSTACK), so the next Ctrl-C or SIGTERM crashed the process with SIGSEGV
    instead of ending it with 130 / 143. Called after OpenVINO has loaded or unloaded a
    plugin; a no-op where there is no glibc or off the main thread (signals reach Python's
    main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        sigaltstack = ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):
        return
    buffer = _signal_stack()
    stack = _StackT(ctypes.cast(buffer, ctypes.c_void_p), 0, ctypes.sizeof(buffer))
    sigaltstack(ctypes.byref(stack), None)


_core: list[object] = []
_core_lock = threading.Lock()


def openvino_core() -> object:
    """The process's one ``openvino.Core`` (made once, whichever threads ask first): each Core
    loads a CPU plugin of its own, and every load and unload moves the main thread's signal
    stack (``keep_signal_stack``)."""
    with _core_lock:
        if not _core:
            import openvino as ov

            core = ov.Core()
            _ = core.available_devices  # loads the plugins now, so that the stack is ours from here on
            keep_signal_stack()
            _core.append(core)
        return _core[0]


def _port_name(port: object) -> str:
    """The model's name for an input or output. A compiled model can give a port more than
    one (an output whose last op was fused away keeps its producer's name as well), and
    ``any_name`` may be the internal one."""
    names = port.get_names()
    known = sorted(names & IO_NAMES)
    return known[0] if known else port.any_name


def _input_shape(
    declared: Sequence[int | str], metadata: dict[str, str], resolution: tuple[int, int] | None
) -> tuple[int, ...]:
    """The ``src`` shape a runner runs at: a dynamic model's at ``resolution``, else at the
    size it states (its metadata's resolution)."""
    if metadata.get("dynamic") != "true":
        return tuple(declared)
    if resolution is None:
        height, width = (int(v) for v in metadata.get("resolution", "0x0").split("x"))
        resolution = (height, width)
    return (1, 3, *resolution)


def check_inference_precision(inference_precision: str) -> str:
    """``inference_precision`` if it is one of ``INFERENCE_PRECISIONS``; ``ConfigError`` if not."""
    if inference_precision not in INFERENCE_PRECISIONS:
        raise ConfigError(
            f"inference precision {inference_precision!r} is not one of {', '.join(INFERENCE_PRECISIONS)}"
        )
    return inference_precision


def default_inference_precision(device: str = "CPU") -> str:
    """The arithmetic OpenVINO computes in on ``device`` when not told (``f32``, ``bf16``,
    ``f16``): what a user's ``compile_model`` gets."""
    try:
        return openvino_core().get_property(device, "INFERENCE_PRECISION_HINT").get_type_name()
    except RuntimeError:  # a device without the property, or one not here
        return "f32"


def load_runner(
    path: Path,
    runtime: str = "openvino",
    device: str = "CPU",
    inference_precision: str = "f32",
    throughput: bool = False,
    metadata: dict[str, str] | None = None,
    profile: bool = False,
    resolution: tuple[int, int] | None = None,
    threads: int | None = None,
) -> Runner:
    """``inference_precision``: OpenVINO's arithmetic (``INFERENCE_PRECISIONS``; parity checks
    want ``f32``, deployment the device's ``auto``). ``throughput``: OpenVINO's THROUGHPUT
    hint, for callers that keep ``parallel`` requests in flight. ``metadata``: the file's, if
    the caller has read it already (``artifact_metadata``); else it is read here.
    ``profile``: OpenVINO's per-layer counters (``layer_times``). ``resolution``: the
    height and width a dynamic model runs at (OpenVINO compiles it for that shape; default:
    the size in its metadata); a static model's are its own. ``threads``: the runtime's
    threads for one inference (default: the runtime's own choice)."""
    path = Path(path)
    if metadata is None:  # a file without bgm-export's metadata is refused here
        metadata = artifact_metadata(path)
    if runtime == "onnxruntime":
        if path.suffix != ".onnx":
            raise ArtifactError(f"ONNX Runtime runs .onnx files, not {path}")
        return OnnxRuntimeRunner(path, metadata, resolution, threads)
    if runtime == "openvino":
        runner = OpenVINORunner(path, metadata, device, inference_precision, throughput, profile, resolution, threads)
        if device.split(":")[0] in ("CPU", "AUTO"):  # an INT8 IR computes by the CPU's ISA (exporter.isa)
            warn_isa_mismatch(path, metadata)
        return runner
    raise ArtifactError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")


def runners_for(
    path: Path,
    metadata: dict[str, str] | None = None,
    inference_precisions: Sequence[str] = ("f32",),
    resolution: tuple[int, int] | None = None,
) -> list[Runner]:
    """``.onnx``: ONNX Runtime (f32; where f32 is asked for) and OpenVINO; ``.xml``: OpenVINO;
    OpenVINO once per arithmetic in ``inference_precisions``. The file is read once."""
    path = Path(path)
    if metadata is None:
        metadata = artifact_metadata(path)
    runners: list[Runner] = []
    if path.suffix == ".onnx" and "f32" in inference_precisions:
        runners.append(load_runner(path, "onnxruntime", metadata=metadata, resolution=resolution))
    for precision in inference_precisions:
        runners.append(
            load_runner(path, "openvino", metadata=metadata, inference_precision=precision, resolution=resolution)
        )
    return runners
