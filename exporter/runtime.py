"""Running exported artifacts: ``.onnx`` in ONNX Runtime or OpenVINO, ``.xml`` in OpenVINO.

Every runner takes ``src`` and ``bgr`` as the model does (``(1, 3, H, W)`` float32, BGR,
0..255) and returns ``{"pha": ..., "fgr": ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.artifact import OUTPUT_NAMES, artifact_metadata, check_io
from exporter.errors import ArtifactError

__all__ = ["Runner", "load_runner", "runners_for"]

RUNTIMES = ("onnxruntime", "openvino")


@dataclass
class Runner:
    """One artifact loaded in one runtime."""

    path: Path
    runtime: str
    run: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
    input_shape: tuple[int, ...] = ()
    compiled: object | None = None  # OpenVINO's CompiledModel, for asynchronous pipelines

    @property
    def name(self) -> str:
        return f"{self.path.name} [{self.runtime}]"


def _onnxruntime(path: Path, metadata: dict[str, str]) -> Runner:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
        raise ArtifactError(f"{path} does not load in ONNX Runtime: {str(exc).splitlines()[0]}") from None
    shapes = {v.name: v.shape for v in session.get_inputs()}, {v.name: v.shape for v in session.get_outputs()}
    check_io(path, *shapes, metadata)

    def run(src: np.ndarray, bgr: np.ndarray) -> dict[str, np.ndarray]:
        pha, fgr = session.run(list(OUTPUT_NAMES), {"src": src, "bgr": bgr})
        return {"pha": pha, "fgr": fgr}

    return Runner(path, "onnxruntime", run, tuple(session.get_inputs()[0].shape))


def _openvino(path: Path, metadata: dict[str, str], device: str, f32: bool, throughput: bool) -> Runner:
    import openvino as ov

    core = ov.Core()
    available = core.available_devices
    if device.split(":")[0] not in ("AUTO", "MULTI", "HETERO") and not any(d.startswith(device) for d in available):
        raise ArtifactError(f"OpenVINO device {device} is not available here (available: {', '.join(available)})")
    # f32 arithmetic judges the artifact's weights, not the device's default bf16/f16 maths.
    config = {"INFERENCE_PRECISION_HINT": "f32"} if f32 and device == "CPU" else {}
    if throughput:  # several requests in flight, as a pipeline keeps them
        config["PERFORMANCE_HINT"] = "THROUGHPUT"
    try:
        compiled = core.compile_model(str(path), device, config)
    except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line report
        raise ArtifactError(f"{path} does not load in OpenVINO {device}: {str(exc).splitlines()[0]}") from None
    shapes = [
        {v.any_name: v.get_partial_shape().get_min_shape() for v in ports}
        for ports in (compiled.inputs, compiled.outputs)
    ]
    check_io(path, *shapes, metadata)
    request = compiled.create_infer_request()

    def run(src: np.ndarray, bgr: np.ndarray) -> dict[str, np.ndarray]:
        result = request.infer({"src": src, "bgr": bgr})
        return {name: np.array(result[compiled.output(name)]) for name in OUTPUT_NAMES}

    shape = tuple(compiled.input("src").get_partial_shape().get_min_shape())
    return Runner(path, "openvino", run, shape, compiled)


def load_runner(
    path: Path,
    runtime: str,
    device: str = "CPU",
    f32: bool = True,
    throughput: bool = False,
    metadata: dict[str, str] | None = None,
) -> Runner:
    """``f32``: on CPU, compute in f32 whatever the device's default (parity checks want
    that; deployment may not). ``throughput``: OpenVINO's THROUGHPUT hint, for pipelines
    that keep several requests in flight (``Runner.compiled``). ``metadata``: the file's, if
    the caller has read it already (``artifact_metadata``); else it is read here."""
    path = Path(path)
    if metadata is None:  # a file without bgm-export's metadata is refused here
        metadata = artifact_metadata(path)
    if runtime == "onnxruntime":
        if path.suffix != ".onnx":
            raise ArtifactError(f"ONNX Runtime runs .onnx files, not {path}")
        return _onnxruntime(path, metadata)
    if runtime == "openvino":
        return _openvino(path, metadata, device, f32, throughput)
    raise ArtifactError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")


def runners_for(path: Path, metadata: dict[str, str] | None = None) -> list[Runner]:
    """``.onnx``: ONNX Runtime and OpenVINO; ``.xml``: OpenVINO. The file is read once."""
    path = Path(path)
    if metadata is None:
        metadata = artifact_metadata(path)
    runtimes = ("onnxruntime", "openvino") if path.suffix == ".onnx" else ("openvino",)
    return [load_runner(path, runtime, metadata=metadata) for runtime in runtimes]
