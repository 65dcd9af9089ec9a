"""Post-training INT8 quantization of the FP32 IR with NNCF, calibrated on frames.

``nncf.quantize`` on the OpenVINO backend by default, with the layers whose 8-bit error
hurts the matte most kept in floating point (``INT8_FP_LAYERS``, chosen by measurement on a
trained model; see ``exporter.tolerances``). With ``max_drop``,
``nncf.quantize_with_accuracy_control`` reverts further layers until the agreement with
the FP32 model on held-out frames drops by at most that much.

Calibration frames are the user's (Open Model Zoo HumanMatting layout) or synthetic
composites; validation frames for accuracy control are never calibration frames.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporter import tolerances as tol
from exporter.config import ExportConfig
from exporter.errors import ConfigError, InputError

if TYPE_CHECKING:
    from exporter.verify.data import Case

__all__ = [
    "CALIBRATION_SEED",
    "INT8_FP_LAYERS",
    "INT8_QUANTIZER_BARRIERS",
    "Frames",
    "Int8Options",
    "Int8Result",
    "agreement_score",
    "calibration_frames",
    "int8_options",
    "quantize_model",
]

# Synthetic calibration and validation frames start at seeds no verification uses (verify
# runs seeds 0..cases-1), so the frames INT8 is judged on are never those it was fitted to.
CALIBRATION_SEED = 1_000
VALIDATION_SEED = 2_000
# OpenVINO names (regex patterns) of the layers kept in floating point by default:
# refiner.conv4, which emits the final alpha and foreground of every refined patch (0.2% of
# the FLOPs). Measured on trained_v1.pth at 720p, 16 held-out composites, against FP32,
# alpha MAD / GRAD / foreground MSE rise and mean |d| of alpha:
#   everything quantized            +2.8% / +1.1% / +2.0%, 1.5e-3
#   decoder.conv4 (error head) kept +3.1% / +1.5% / +2.2%, 1.2e-3
#   decoder.conv4 and refiner.conv4 +1.8% / +0.9% / +1.1%, 1.0e-3 (decoder.conv4, 18% of
#                                   the FLOPs, then costs 14 ms of an 83 ms frame in f32)
#   refiner.conv4 kept              +1.5% / +0.6% / +0.9%, 1.4e-3
# The MIXED preset was no better; full (not fast) bias correction fails on this graph in
# NNCF 3.4.
INT8_FP_LAYERS = (r"/refiner/conv4/.*",)
# Ops NNCF must not move quantizers across (ignored, they stay in floating point): the zero
# padding before the refiner's patch gather. Otherwise NNCF places refiner.conv1's input
# quantizer above the padding, the CPU plugin dequantizes before the Pad, and conv1, the
# costliest layer, runs in floating point: 22.6 ms of an 83 ms INT8 frame (f32) against
# 6.9 ms of 68 ms with the barrier.
INT8_QUANTIZER_BARRIERS = (r"/refiner/Pad",)


@dataclass(frozen=True)
class Int8Options:
    """How an INT8 IR is made.

    Args:
        calibration: a folder in the Open Model Zoo HumanMatting layout (``com/``, ``bgr/``,
            optional ``pha/``); None for synthetic composites.
        frames: calibration frames to use (the first ones, sorted by name).
        max_drop: None for plain post-training quantization; else accuracy control, with at
            most this drop of the agreement score (100 - alpha MAD x1e3 against FP32, or
            against the true alpha when the folder has ``pha/``).
        validation_frames: held-out frames for accuracy control.
    """

    calibration: Path | None = None
    frames: int = tol.INT8_CALIBRATION_FRAMES
    max_drop: float | None = None
    validation_frames: int = tol.INT8_VALIDATION_FRAMES

    def validate(self) -> Int8Options:
        if not isinstance(self.frames, int) or self.frames < 1:
            raise ConfigError(f"calibration frames {self.frames} is not a positive whole number")
        if self.max_drop is not None and not (np.isfinite(self.max_drop) and self.max_drop >= 0):
            raise ConfigError(f"max drop {self.max_drop} is not a number >= 0")
        if self.validation_frames < 1:
            raise ConfigError(f"validation frames {self.validation_frames} is not a positive whole number")
        if self.calibration is not None and not Path(self.calibration).is_dir():
            raise InputError(f"calibration folder {self.calibration} does not exist or is not a folder")
        return self


@dataclass
class Int8Result:
    """The quantized model and what went into it (written to the IR's rt_info)."""

    model: object  # openvino.Model
    fp_layers: list[str]
    metadata: dict[str, str]
    durations: dict[str, float] = field(default_factory=dict)


def int8_options(
    precision: str, calibration: Path | None, frames: int | None, max_drop: float | None
) -> Int8Options | None:
    """The INT8 options given on a command line; None for another precision, where giving
    any of them is an error rather than silently ignored."""
    given = [name for name, value in (("--calibration", calibration), ("--calibration-frames", frames),
                                       ("--max-drop", max_drop)) if value is not None]  # fmt: skip
    if precision != "INT8":
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ConfigError(f"{', '.join(given)} {verb} to --precision INT8 only, not {precision}")
        return None
    defaults = Int8Options()
    return Int8Options(
        calibration=calibration,
        frames=defaults.frames if frames is None else frames,
        max_drop=max_drop,
    ).validate()


def _folder_label(folder: Path) -> str:
    """The calibration source as metadata: a hash of the folder's absolute path, not the path."""
    digest = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return f"folder sha256:{digest}"


@dataclass
class Frames:
    """Calibration frames, held-out validation frames, and the calibration source's label."""

    calibration: list[Case]
    validation: list[Case]
    source: str


def calibration_frames(config: ExportConfig, options: Int8Options) -> Frames:
    """Read (or make) the frames before any output is touched, so bad frames leave nothing."""
    from exporter.verify.data import image_cases, synthetic_cases

    accuracy_control = options.max_drop is not None
    if options.calibration is None:
        calibration = synthetic_cases(config.height, config.width, options.frames, CALIBRATION_SEED)
        validation = (
            synthetic_cases(config.height, config.width, options.validation_frames, VALIDATION_SEED)
            if accuracy_control
            else []
        )
        return Frames(calibration, validation, "synthetic")
    wanted = options.frames + (options.validation_frames if accuracy_control else 0)
    cases = image_cases(Path(options.calibration), config.height, config.width, same_aspect=True, limit=wanted)
    if len(cases) < wanted:
        what = (
            f"{options.frames} calibration + {options.validation_frames} validation frames"
            if accuracy_control
            else f"{options.frames} calibration frames"
        )
        raise InputError(f"calibration folder {options.calibration} has {len(cases)} frames; {what} were asked for")
    # Validation frames follow the calibration frames: the two never share one.
    return Frames(cases[: options.frames], cases[options.frames :], _folder_label(options.calibration))


def _inputs(case: Case) -> dict[str, np.ndarray]:
    from exporter.images import to_model_input

    return {"src": to_model_input(case.src), "bgr": to_model_input(case.bgr)}


def agreement_score(pha: np.ndarray, target: np.ndarray) -> float:
    """100 - alpha MAD x1e3: higher is better, and never 0 for a perfect model (NNCF divides
    by the FP32 score to report a relative drop)."""
    return 100.0 - float(np.abs(pha - target).mean()) * 1e3


def _validation_items(model: object, cases: list[Case]) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Each held-out frame with its target alpha: the truth when known, else the FP32 model's."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = []
    for case in cases:
        inputs = _inputs(case)
        target = case.pha[None, None] if case.pha is not None else compiled(inputs)[compiled.output("pha")]
        items.append((inputs, np.asarray(target, dtype=np.float32)))
    return items


def _validate(compiled: object, items: Iterable[tuple[dict[str, np.ndarray], np.ndarray]]) -> tuple[float, None]:
    scores = [agreement_score(compiled(inputs)[compiled.output("pha")], target) for inputs, target in items]
    return float(np.mean(scores)), None


def _kept_in_fp(model: object) -> list[str]:
    """Convolutions whose weights are not 8-bit (NNCF stores quantized weights as an int8
    constant behind Convert and Multiply): the layers that stayed in floating point."""
    kept = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() != "Constant" and node.get_input_size() > 0:
            node = node.input_value(0).get_node()
        if node.get_output_element_type(0).get_type_name() not in ("i8", "u8"):
            kept.append(op.get_friendly_name().removesuffix("/WithoutBiases"))
    return kept


def quantize_model(
    model: object,
    frames: Frames,
    options: Int8Options,
    *,
    stage: Callable[[str], object] | None = None,
) -> Int8Result:
    """INT8 of the FP32 ``openvino.Model`` ``model``, calibrated on ``frames``."""
    import contextlib

    import nncf

    stage = stage or (lambda name: contextlib.nullcontext())
    calibration, validation = frames.calibration, frames.validation
    dataset = nncf.Dataset([_inputs(case) for case in calibration])
    ignored = nncf.IgnoredScope(patterns=[*INT8_FP_LAYERS, *INT8_QUANTIZER_BARRIERS], validate=False)
    common = {
        "preset": nncf.QuantizationPreset.PERFORMANCE,
        "subset_size": len(calibration),
        "ignored_scope": ignored,
    }
    # NNCF logs every step at INFO; its progress bars stay, the log lines go.
    logging.getLogger("nncf").setLevel(logging.WARNING)
    if options.max_drop is None:
        with stage("quantize"):
            quantized = nncf.quantize(model, dataset, **common)
    else:
        with stage("validation data"):
            items = _validation_items(model, validation)
        with stage("quantize with accuracy control"):
            quantized = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                nncf.Dataset(items),
                _validate,
                max_drop=options.max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                **common,
            )
    fp_layers = _kept_in_fp(quantized)
    metadata = {
        "int8_calibration": frames.source,
        "int8_calibration_frames": str(len(calibration)),
        "int8_max_drop": "none" if options.max_drop is None else repr(options.max_drop),
        "int8_fp_layers": ",".join(fp_layers),
        "nncf_version": nncf.__version__,
    }
    return Int8Result(quantized, fp_layers, metadata)
