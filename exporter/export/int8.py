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

import contextlib
import gc
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter import tolerances as tol
from exporter.config import ExportConfig
from exporter.data import Case, image_cases, image_names, seeds_for, synthetic_cases
from exporter.errors import ConfigError, InputError
from exporter.isa import OVERFLOW_FIX_KEY
from exporter.resources import require_frame_memory

__all__ = [
    "INT8_FP_LAYERS",
    "INT8_OVERFLOW_FIX",
    "INT8_QUANTIZER_BARRIERS",
    "INT8_SYNTHETIC_FAMILY",
    "SYNTHETIC_CALIBRATION_WARNING",
    "TARGET_FP32",
    "TARGET_TRUTH",
    "Frames",
    "Int8Options",
    "Int8Result",
    "agreement_score",
    "calibration_frames",
    "check_frame_memory",
    "below_int8_floor",
    "check_int8_request",
    "check_int8_size",
    "int8_options",
    "quantize_model",
]

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
# Not layers but arithmetic, kept in floating point and not listed as layers kept: the
# deployed graph's (exporter.model.deploy) assembly of the full-resolution outputs, with
# the fixed bilinear kernels that upsample the coarse alpha and foreground (in 8 bits each
# output pixel would move by up to half a step of the coarse map's range), the source
# added and the refined patches written; and its patch selection (the error map, taken
# from the head by a 1x1 copy, its top k and whether each error is positive: rounded to 8
# bits, a small positive error is 0, and other patches are refined); its downsampling of
# the raw inputs (Downsample, a fixed matrix product; also a barrier, below).
INT8_FIXED_LAYERS = (r"/compose/.*", r"/error/.*", r"/select/.*", r"/downsample(_half)?(_\d+)?/.*")
# NNCF's overflow fix on every layer (its default: the first layer only): 7-bit weights, at
# most 64 in magnitude (depthwise layers keep 8 bits: their kernels do not sum in pairs).
# Without VNNI (AVX2, AVX-512 without VNNI) oneDNN sums u8 x s8 products in pairs
# into 16 bits with saturation (vpmaddubsw); 7-bit weights keep every pair sum within 16 bits
# (2 x 255 x 64), so one INT8 IR computes the same on every CPU. Measured on trained_v1.pth,
# 360x640, 4 composites each, INT8 vs the original, pha mean |d| / patches off by > 0.05:
#   first layer only, AVX-512 VNNI     2.07e-3 / 1.86% (synthetic), 3.40e-3 / 2.94% (hard)
#   first layer only, AVX2 kernels     2.54e-3 / 2.49%,              3.70e-3 / 3.23%
#   every layer, either ISA            2.46e-3 / 2.25%,              3.42e-3 / 3.03%
# (AVX2 kernels: ONEDNN_MAX_CPU_ISA=AVX2 on an AVX-512 VNNI machine). With the fix every
# layer's output is the same under both ISAs (to 2e-8, float rounding); without it they part
# from backbone.features.2 on, by 10% of the error against FP32 in the deep layers. 7-bit
# weights cost nothing in speed: the kernels are the same.
INT8_OVERFLOW_FIX = "enable"
# The synthetic frames INT8 is calibrated on without --calibration: the hard composites
# (exporter.data.hard_case), whose texture, noise and fine strands give activation ranges as
# wide as real frames'. Ranges calibrated on the plain composites clip real frames' (a range
# too narrow is the failure the hard composites were made to catch). Measured on
# trained_v1.pth, 720p, 16 calibration frames, pha mean |d| against FP32 on verify's 4 hard /
# 4 plain composites: calibrated on plain 6.31e-3 / 1.13e-3, on hard 3.90e-3 / 1.08e-3, on
# 8 of each 4.60e-3 / 1.22e-3.
INT8_SYNTHETIC_FAMILY = "hard"
# Ops NNCF must not move quantizers across (ignored, they stay in floating point).
# - The plain graph's zero padding before the refiner's patch gather: otherwise NNCF places
#   refiner.conv1's input quantizer above the padding, the CPU plugin dequantizes before
#   the Pad, and conv1, the costliest layer, runs in floating point: 22.6 ms of an 83 ms
#   INT8 frame (f32) against 6.9 ms of 68 ms with the barrier.
# - The deployed graph's downsampling of the raw inputs (Downsample, in INT8_FIXED_LAYERS):
#   otherwise the quantizer of refiner.conv1_image's input moves above the 2x2 average,
#   onto the full-resolution inputs, and the CPU plugin averages in 8 bits at 11 ms an
#   input a frame (720p, bf16, one stream) instead of under 2. Its crops of the raw inputs
#   (Crops), for conv3_image's input the same way.
# - Its sums of two convolutions (refiner.conv1 and conv1_image, conv3 and conv3_image)
#   and the interleaving of conv3's phases: quantized, NNCF rounds each addend to 8 bits,
#   and at 720p 2.1% of the foreground's patches were off by more than 0.05 (bar 2%)
#   against 0.65% for the plain graph.
# - Its bilinear resizes of the coarse maps to half resolution (refiner.conv1's input, on
#   the strips at the image's edges): the CPU's low-precision transformations do not carry
#   8 bits through a bilinear resize, so the quantizer NNCF put on the resize's input ran
#   as a fake quantization in floating point (2 ms a frame at 720p, bf16, one stream, when
#   the whole map was resized), a second rounding before conv1's own.
# - Its gather of the stage-one windows (refiner.windows): otherwise NNCF moves conv3's input
#   quantizer above it, onto every pixel pair of the table it gathers from (122,226 at 720p
#   for 40,000 gathered).
INT8_QUANTIZER_BARRIERS = (
    r"/refiner/Pad",
    r"/crops/.*",
    r"/refiner/(Add|Concat|Resize)(_\d+)?$",
    r"/refiner/windows/.*",
)


@dataclass(frozen=True)
class Int8Options:
    """How an INT8 IR is made.

    Args:
        calibration: a folder in the Open Model Zoo HumanMatting layout (``com/``, ``bgr/``,
            optional ``pha/``); None for synthetic composites.
        frames: calibration frames to use (the first ones, sorted by name).
        max_drop: None for plain post-training quantization; else accuracy control, with at
            most this drop of the agreement score (100 - alpha MAD x1e3 against FP32, or
            against the true alpha when the folder has ``pha/`` for every validation frame).
        validation_frames: held-out frames for accuracy control.

    Checked on construction, as ``ExportConfig`` is: an ``Int8Options`` that exists is valid.
    """

    calibration: Path | None = None
    frames: int = tol.INT8_CALIBRATION_FRAMES
    max_drop: float | None = None
    validation_frames: int = tol.INT8_VALIDATION_FRAMES

    def __post_init__(self) -> None:
        for name, value in (("calibration frames", self.frames), ("validation frames", self.validation_frames)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} {value!r} is not a positive whole number")
        if self.max_drop is not None and (
            isinstance(self.max_drop, bool)
            or not isinstance(self.max_drop, (int, float))
            or not (np.isfinite(self.max_drop) and self.max_drop >= 0)
        ):
            raise ConfigError(f"max drop {self.max_drop} is not a number >= 0")
        if self.calibration is not None and not Path(self.calibration).is_dir():
            raise InputError(f"calibration folder {self.calibration} does not exist or is not a folder")

    @property
    def frames_needed(self) -> int:
        """Frames read or made: the calibration frames, and the validation frames with accuracy control."""
        return self.frames + (self.validation_frames if self.max_drop is not None else 0)


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
    )


def _folder_label(folder: Path) -> str:
    """The calibration source as metadata: a hash of the folder's absolute path, not the path."""
    digest = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return f"folder sha256:{digest}"


# The calibration source of synthetic frames, as the IR records it: which family, since the
# plain and the hard composites make different INT8 models.
SYNTHETIC_SOURCE = f"synthetic {INT8_SYNTHETIC_FAMILY}"
SYNTHETIC_CALIBRATION_WARNING = (
    "INT8 is calibrated on synthetic composites; frames from the deployment's camera (--calibration DIR) give a "
    "better INT8 model"
)

# The target of accuracy control's agreement score, as recorded in the IR's rt_info.
TARGET_TRUTH = "truth"  # the validation frames' true alpha (pha/)
TARGET_FP32 = "fp32"  # the FP32 model's alpha on them


@dataclass
class Frames:
    """Calibration frames, held-out validation frames, the calibration source's label, and
    what the validation frames' alpha is compared with (``TARGET_TRUTH`` or ``TARGET_FP32``;
    None without validation frames)."""

    calibration: list[Case]
    validation: list[Case]
    source: str
    target: str | None = None


def check_frame_memory(config: ExportConfig, options: Int8Options) -> None:
    """``ConfigError`` if the frames ``options`` asks for cannot be held in memory at ``config``:
    checked before one is read or made, and before any other work."""
    what = "calibration" if options.max_drop is None else "calibration and validation"
    require_frame_memory(config, options.frames_needed, what)


def below_int8_floor(config: ExportConfig) -> bool:
    """Whether ``config``'s frames have fewer pixels than INT8 of a trained model needs."""
    return config.height * config.width < tol.INT8_MIN_PIXELS


def check_int8_size(config: ExportConfig, options: Int8Options, synthetic: bool) -> None:
    """``ConfigError`` for plain INT8 of a trained model below ``INT8_MIN_PIXELS``, where it
    misses its bars on frames as hard as real ones (calibrated on synthetic composites; frames
    of a deployment were not measured, so they do not lift it). Synthetic weights are judged
    by their own bars (tests and demonstrations at small sizes); accuracy control
    (``max_drop``) keeps in floating point what the drop asks for, when it asks for no more
    than the bars allow."""
    if not below_int8_floor(config) or synthetic:
        return
    frame = f"INT8 of a {config.width}x{config.height} frame ({config.height * config.width:,} pixels)"
    floor = f"below {tol.INT8_MIN_PIXELS:,} pixels (1280x720)"
    most = f"{tol.INT8_MAX_DROP_BELOW_FLOOR:g}"
    if options.max_drop is None:
        raise ConfigError(
            f"{frame} is refused: {floor}, 8-bit rounding misses INT8's bars on frames as hard as real ones "
            f"(a trained model measured alpha mean |d| 7e-3 to 1e-2 against {tol.INT8_HARD_MEAN_ATOL:g}; 3.9e-3 at "
            f"1280x720). Use --precision FP16, at least {tol.INT8_MIN_PIXELS:,} pixels, or --max-drop {most} or "
            f"less (accuracy control keeps the layers it needs in floating point)"
        )
    if options.max_drop > tol.INT8_MAX_DROP_BELOW_FLOOR:
        raise ConfigError(
            f"{frame} with --max-drop {options.max_drop:g} is refused: {floor} that drop allows plain INT8, which "
            f"misses INT8's bars there; at most {most} (alpha mean |d| {tol.INT8_HARD_MEAN_ATOL:g} against the "
            f"FP32 model, the bar on hard frames)"
        )


def check_int8_request(config: ExportConfig, options: Int8Options, synthetic: bool) -> None:
    """Everything about an INT8 request that can be refused before any work: its size, the
    frames' memory, and, for synthetic frames, that their seeds are their use's own."""
    check_int8_size(config, options, synthetic)
    check_frame_memory(config, options)
    if options.calibration is None:
        seeds_for("calibration", options.frames)
        if options.max_drop is not None:
            seeds_for("validation", options.validation_frames)
    elif (found := len(image_names(options.calibration))) < options.frames_needed:
        _too_few(options, found)


def calibration_frames(config: ExportConfig, options: Int8Options, synthetic: bool = False) -> Frames:
    """Read (or make) the frames before any output is touched, so bad frames leave nothing;
    first, that they fit in memory. ``synthetic``: the weights are the synthetic recipe's
    (exempt from the size floor, ``check_int8_size``)."""
    accuracy_control = options.max_drop is not None
    check_frame_memory(config, options)
    if options.calibration is None:
        calibration = synthetic_cases(
            config.height, config.width, options.frames, "calibration", family=INT8_SYNTHETIC_FAMILY
        )
        if not accuracy_control:
            return Frames(calibration, [], SYNTHETIC_SOURCE)
        # Against the FP32 model, as for a folder without pha/: a synthetic composite's true
        # alpha is not what synthetic (random) weights compute, so scores against it are noise.
        validation = synthetic_cases(
            config.height, config.width, options.validation_frames, "validation", family=INT8_SYNTHETIC_FAMILY
        )
        return Frames(calibration, validation, SYNTHETIC_SOURCE, TARGET_FP32)
    wanted = options.frames_needed
    cases = image_cases(Path(options.calibration), config.height, config.width, same_aspect=True, limit=wanted)
    if len(cases) < wanted:
        _too_few(options, len(cases))
    # Validation frames follow the calibration frames: the two never share one.
    calibration, validation = cases[: options.frames], cases[options.frames :]
    target = _target(options.calibration, validation)
    if target == TARGET_TRUTH and below_int8_floor(config) and not synthetic:
        # The drop's limit there (INT8_MAX_DROP_BELOW_FLOOR) bounds INT8's distance from the FP32
        # model; against the truth, a drop is a difference of two errors and bounds nothing.
        target = TARGET_FP32
    return Frames(calibration, validation, _folder_label(options.calibration), target)


def _too_few(options: Int8Options, found: int) -> None:
    what = (
        f"{options.frames} calibration + {options.validation_frames} validation frames"
        if options.max_drop is not None
        else f"{options.frames} calibration frames"
    )
    raise InputError(f"calibration folder {options.calibration} has {found} frames; {what} were asked for")


def _target(folder: Path, validation: list[Case]) -> str | None:
    """The one target of the agreement score: the true alpha when every validation frame has
    it, the FP32 model's when none has; ``InputError`` for a mix, whose two kinds of score
    NNCF would average into a number that is neither."""
    if not validation:
        return None
    with_truth = [case.name for case in validation if case.pha is not None]
    if not with_truth:
        return TARGET_FP32
    if len(with_truth) == len(validation):
        return TARGET_TRUTH
    missing = [case.name for case in validation if case.pha is None]
    raise InputError(
        f"{folder / 'pha'} holds the true alpha of {len(with_truth)} of the {len(validation)} validation frames "
        f"(none for {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): accuracy control compares "
        "every frame with one target, so give pha/ for every validation frame or for none"
    )


def agreement_score(pha: np.ndarray, target: np.ndarray) -> float:
    """100 - alpha MAD x1e3: higher is better, and never 0 for a perfect model (NNCF divides
    by the FP32 score to report a relative drop)."""
    return 100.0 - float(np.abs(pha - target).mean()) * 1e3


def _validation_items(
    model: object, cases: list[Case], target: str | None
) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Each held-out frame with its target alpha: the truth (``TARGET_TRUTH``) or the FP32
    model's (``TARGET_FP32``), the same for every frame."""
    from exporter.runtime import openvino_core

    compiled = openvino_core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = []
    for case in cases:
        inputs = case.feeds()
        expected = case.pha[None, None] if target == TARGET_TRUTH else compiled(inputs)[compiled.output("pha")]
        items.append((inputs, np.asarray(expected, dtype=np.float32)))
    return items


def _validate(compiled: object, items: Iterable[tuple[dict[str, np.ndarray], np.ndarray]]) -> tuple[float, None]:
    scores = [agreement_score(compiled(inputs)[compiled.output("pha")], target) for inputs, target in items]
    return float(np.mean(scores)), None


def _kept_in_fp(model: object) -> list[str]:
    """Convolutions whose weights are not 8-bit (NNCF stores quantized weights as an int8
    constant behind Convert and Multiply): the layers that stayed in floating point. The
    fixed kernels that resample (``INT8_FIXED_LAYERS``) are arithmetic, not layers, and are
    not listed."""
    kept = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        if any(re.match(pattern, op.get_friendly_name()) for pattern in INT8_FIXED_LAYERS):
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() != "Constant" and node.get_input_size() > 0:
            node = node.input_value(0).get_node()
        if node.get_output_element_type(0).get_type_name() not in ("i8", "u8"):
            kept.append(op.get_friendly_name().removesuffix("/WithoutBiases"))
    return kept


@contextlib.contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """NNCF draws its progress bars on rich's global console and has no switch for them
    (``nncf.set_log_level`` governs its log lines only): when they are not wanted, that
    console writes to ``os.devnull`` meanwhile. Not a terminal, so rich also leaves
    ``sys.stdout`` and ``sys.stderr`` alone, and warnings still reach the user."""
    if shown:
        yield
        return
    import rich

    console = rich.get_console()
    with open(os.devnull, "w") as devnull:
        console.file = devnull
        try:
            yield
        finally:
            console.file = None  # back to following sys.stdout, rich's default


def quantize_model(
    model: object,
    frames: Frames,
    options: Int8Options,
    *,
    stage: Callable[[str], object] | None = None,
    progress: bool = True,
) -> Int8Result:
    """INT8 of the FP32 ``openvino.Model`` ``model``, calibrated on ``frames``; ``progress``:
    whether NNCF draws its progress bars (on stdout)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    stage = stage or (lambda name: contextlib.nullcontext())
    calibration, validation = frames.calibration, frames.validation
    dataset = nncf.Dataset([case.feeds() for case in calibration])
    ignored = nncf.IgnoredScope(
        patterns=[*INT8_FP_LAYERS, *INT8_FIXED_LAYERS, *INT8_QUANTIZER_BARRIERS], validate=False
    )
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(INT8_OVERFLOW_FIX))
    common = {
        "preset": nncf.QuantizationPreset.PERFORMANCE,
        "subset_size": len(calibration),
        "ignored_scope": ignored,
    }
    # NNCF logs every step at INFO; the log lines go, the progress bars are ``progress``'s.
    logging.getLogger("nncf").setLevel(logging.WARNING)
    if options.max_drop is None:
        with stage("quantize"), _progress_bars(progress):
            quantized = nncf.quantize(model, dataset, advanced_parameters=advanced, **common)
    else:
        with stage("validation data"):
            items = _validation_items(model, validation, frames.target)
        with stage("quantize with accuracy control"), _progress_bars(progress):
            quantized = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                nncf.Dataset(items),
                _validate,
                max_drop=options.max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                advanced_quantization_parameters=advanced,
                **common,
            )
    # NNCF's own Cores are gone once collected: the signal stack they put back is ours again.
    from exporter.runtime import keep_signal_stack

    gc.collect()
    keep_signal_stack()
    fp_layers = _kept_in_fp(quantized)
    metadata = {
        "int8_calibration": frames.source,
        "int8_calibration_frames": str(len(calibration)),
        "int8_max_drop": "none" if options.max_drop is None else repr(options.max_drop),
        # What the accuracy control's score compared the INT8 model's alpha with.
        "int8_validation_target": frames.target or "none",
        "int8_fp_layers": ",".join(fp_layers),
        # 7-bit weights on every layer: the same results with and without VNNI.
        OVERFLOW_FIX_KEY: INT8_OVERFLOW_FIX,
        "nncf_version": nncf.__version__,
    }
    return Int8Result(quantized, fp_layers, metadata)
