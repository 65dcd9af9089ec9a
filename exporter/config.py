"""What defines an export: one frozen dataclass, its presets, and its validation.

The same object is written into every artifact's metadata and read back from it, so an
ONNX or IR file says how it was made.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from exporter import __version__
from exporter.backbones import BACKBONES, DEFAULT_BACKBONE
from exporter.errors import ConfigError, shown

__all__ = [
    "DEFAULT_OPSET",
    "EXTRA_OUTPUTS",
    "MODELS_DIR",
    "MODEL_TYPES",
    "ONNX_WEIGHTS",
    "PRECISIONS",
    "PRESETS",
    "REFINE_MODES",
    "SAMPLE_SHARE",
    "WEB_PRESET",
    "ExportConfig",
    "default_artifact_path",
    "quoted",
    "sample_pixels_for",
]

# How the refiner chooses its patches: the original's refine modes.
REFINE_MODES = ("sampling", "thresholding", "full")
# What is exported, as the original's ``--model-type``: ``refine`` (MattingRefine, the
# default) or ``base`` (MattingBase: the network without the refiner, at the input's
# resolution), and each one's outputs, named as the original names them.
MODEL_TYPES = {"refine": ("pha", "fgr"), "base": ("pha", "fgr", "err", "hid")}
# The refine model's diagnostic outputs (``--extra-outputs``), named as the original's ONNX
# names them: the coarse error map at the backbone's scale, and the map of refined 4x4
# patches at a quarter of the resolution (1 = refined).
EXTRA_OUTPUTS = {"err": "err_sm", "ref": "ref_sm"}

# Open Model Zoo's layout: models/<name>.onnx and models/<PRECISION>/<name>.xml.
MODELS_DIR = Path("models")
PRECISIONS = ("FP32", "FP16", "INT8")
# How an ONNX artifact stores its weights (exporter.export.weights_storage): FP32 as traced;
# FP16 or INT8 for a smaller download (ONNX Runtime, browsers), computed in FP32 all the same.
ONNX_WEIGHTS = ("FP32", "FP16", "INT8")
# 17 is the newest opset every runtime here imports without a converter warning, and has
# every op the graph needs (TopK, GatherElements, ScatterElements, Resize).
DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 22)
# The finest backbone scale: ``size_step`` reads the scale as a fraction of denominator at
# most 2**16, and below it the base network's 16 pixels would need an image over a million
# pixels a side (16 / scale overflows a float for the smallest ones).
MIN_BACKBONE_SCALE = 1 / (1 << 16)
# Every whole number of an export (a size, the sampler's TopK count, the opset) becomes an
# int64 in the graph or a runtime's shapes; a larger one is a mistake, not a setting.
_INT64_MAX = (1 << 63) - 1
# The fields that name one of a table's entries: each one's name in messages, and its table.
_CHOICES = {
    "backbone": ("backbone", BACKBONES),
    "refine_mode": ("refine mode", REFINE_MODES),
    "model_type": ("model type", MODEL_TYPES),
    "precision": ("precision", PRECISIONS),
    "onnx_weights": ("ONNX weights", ONNX_WEIGHTS),
}


def _finite(value: object) -> bool:
    """A real number (not a bool) that a float holds: an int beyond a float's range is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def quoted(value: object) -> str:
    """``value`` for a message, quoted when a string (as ``{value!r}``), shortened when large
    (``repr`` itself refuses an int of over 4,300 digits)."""
    return shown(repr(value)) if isinstance(value, str) else shown(value)


@dataclass(frozen=True)
class ExportConfig:
    """One export.

    Args:
        backbone: ``mobilenetv2``, ``resnet50`` or ``resnet101``; taken from the checkpoint.
        height, width: input resolution; both divisible by 4, and scaled by
            ``backbone_scale`` to whole numbers.
        backbone_scale: the base network's input scale, in (0, 1/2].
        refine_mode: ``sampling`` | ``thresholding`` | ``full``.
        sample_pixels: pixels refined in ``sampling`` mode (a multiple of 16 patches).
        threshold: error threshold in ``thresholding`` mode.
        opset: ONNX opset.
        precision: IR precision, ``FP32``, ``FP16`` or ``INT8`` (an ONNX computes in FP32).
        model_type: ``refine`` (MattingRefine) or ``base`` (MattingBase, ``MODEL_TYPES``).
        extra_outputs: keys of ``EXTRA_OUTPUTS`` the refine model also outputs, in that order.
        dynamic: height and width are free in the graph (any size valid at the backbone scale
            with at least ``patches`` patches); ``height`` x ``width`` is then the size it was
            traced and is verified at (with a second one, ``second_resolution``).
        onnx_weights: how the ONNX stores its weights, ``ONNX_WEIGHTS``: ``FP32``, or the large
            ones as ``FP16`` or the convolutions' as ``INT8`` (per output channel), each turned
            back into FP32 in the graph. IRs are made from FP32 weights only.
    """

    backbone: str = DEFAULT_BACKBONE
    height: int = 720
    width: int = 1280
    backbone_scale: float = 0.25
    refine_mode: str = "sampling"
    sample_pixels: int = 80_000
    threshold: float = 0.1
    opset: int = DEFAULT_OPSET
    precision: str = "FP32"
    model_type: str = "refine"
    extra_outputs: tuple[str, ...] = ()
    dynamic: bool = False
    onnx_weights: str = "FP32"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> ExportConfig:
        """Return self, or raise ``ConfigError`` naming the bad value and what would do.
        Runs on construction: an ``ExportConfig`` that exists is a valid one."""
        for name in ("height", "width", "sample_pixels", "opset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name.replace('_', ' ')} {quoted(value)} is not a whole number")
            if abs(value) > _INT64_MAX:
                raise ConfigError(f"{name.replace('_', ' ')} {shown(value)} is beyond what an int64 holds")
        for name in ("backbone_scale", "threshold"):
            value = getattr(self, name)
            if not _finite(value):
                raise ConfigError(f"{name.replace('_', ' ')} {quoted(value)} is not a finite number")
        # Before any lookup in a table: a list or a dict there would raise TypeError.
        for name, (label, choices) in _CHOICES.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ConfigError(f"{label} {quoted(value)} is not one of {', '.join(choices)}")
        if not isinstance(self.dynamic, bool):
            raise ConfigError(f"dynamic {quoted(self.dynamic)} is not True or False")
        if not 0 < self.backbone_scale <= 0.5:
            raise ConfigError(f"backbone scale {self.backbone_scale} is not in (0, 0.5]")
        if self.backbone_scale < MIN_BACKBONE_SCALE:
            raise ConfigError(
                f"backbone scale {self.backbone_scale} is below 1/{1 / MIN_BACKBONE_SCALE:.0f}, the smallest supported"
            )
        extra = self.extra_outputs
        if not isinstance(extra, (tuple, list)) or not all(isinstance(name, str) for name in extra):
            raise ConfigError(f"extra outputs {quoted(extra)} is not a list of names of {', '.join(EXTRA_OUTPUTS)}")
        extra = tuple(extra)
        unknown = [name for name in extra if name not in EXTRA_OUTPUTS]
        if unknown or len(set(extra)) != len(extra):
            raise ConfigError(
                f"extra outputs {shown(','.join(extra))}: each at most once, of {', '.join(EXTRA_OUTPUTS)}"
            )
        if extra and self.model_type != "refine":
            raise ConfigError(f"extra outputs apply to the refine model; the {self.model_type} model has err already")
        object.__setattr__(self, "extra_outputs", tuple(n for n in EXTRA_OUTPUTS if n in extra))  # canonical order
        if self.opset not in SUPPORTED_OPSETS:
            raise ConfigError(f"opset {self.opset} is not in {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
        step, minimum = self.size_step, self.min_size
        for name, value in (("height", self.height), ("width", self.width)):
            if value < minimum:
                nearest = f"{minimum}"
            elif value % step:
                nearest = f"{value // step * step} or {value // step * step + step}"
            else:
                continue
            raise ConfigError(
                f"{name} {value} is not valid at backbone scale {self.backbone_scale}: sizes must be "
                f"multiples of {step}, at least {minimum}; nearest valid: {nearest}"
            )
        # Both are recorded in the metadata whatever the mode, so both must be sensible in every
        # mode; only sampling needs the sample to fit the image.
        patches = (self.height // 4) * (self.width // 4)
        # (MattingBase refines nothing: its sample count is only recorded.)
        top = patches * 16 if self.refine_mode == "sampling" and self.model_type == "refine" else None
        if self.sample_pixels < 16 or (top is not None and self.sample_pixels > top):
            raise ConfigError(
                f"sample pixels {self.sample_pixels} is not in 16..{top}"
                f" (the {self.height}x{self.width} image has {patches} patches of 4x4)"
                if top is not None
                else f"sample pixels {self.sample_pixels} is below 16 (one 4x4 patch)"
            )
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"threshold {self.threshold} is not in [0, 1)")
        return self

    @property
    def size_step(self) -> int:
        """Height and width must be multiples of this: 4 for the refiner's patches, and
        whatever makes ``size * backbone_scale`` whole (8 at scale 1/8)."""
        denominator = Fraction(self.backbone_scale).limit_denominator(1 << 16).denominator
        return math.lcm(4, denominator)

    @property
    def min_size(self) -> int:
        """Smallest height or width: the base network needs 16 pixels (one at stride 16)."""
        step = self.size_step
        return max(step, math.ceil(16 / self.backbone_scale / step) * step)

    @property
    def patches(self) -> int:
        """Number of 4x4 patches the refiner computes: the sample for ``sampling``, else all."""
        if self.refine_mode == "sampling":
            return self.sample_pixels // 16
        return (self.height // 4) * (self.width // 4)

    @property
    def model_name(self) -> str:
        """``background-matting-<backbone>``, as Open Model Zoo names the MobileNetV2 model;
        ``...-base`` for MattingBase."""
        name = BACKBONES[self.backbone].model_name
        name = name if self.model_type == "refine" else f"{name}-{self.model_type}"
        return f"{name}-dynamic" if self.dynamic else name

    def second_resolution(self) -> tuple[int, int]:
        """Another valid size, for verifying a dynamic export at two: three quarters of this
        one (rounded down to the size step), else five quarters."""
        step = self.size_step
        for factor in (0.75, 1.25):
            size = (int(self.height * factor) // step * step, int(self.width * factor) // step * step)
            try:
                self.replace(height=size[0], width=size[1])
            except ConfigError:
                continue
            return size
        raise ConfigError(f"no second resolution near {self.height}x{self.width} is valid for this export")

    @property
    def outputs(self) -> tuple[str, ...]:
        """The artifact's output names, in order."""
        return MODEL_TYPES[self.model_type] + tuple(EXTRA_OUTPUTS[name] for name in self.extra_outputs)

    def replace(self, **changes: object) -> ExportConfig:
        return dataclasses.replace(self, **changes)

    def model_kwargs(self) -> dict[str, object]:
        """Keyword arguments of ``MattingRefine`` for this export."""
        return {
            "backbone": self.backbone,
            "backbone_scale": self.backbone_scale,
            "refine_mode": self.refine_mode,
            "refine_sample_pixels": self.sample_pixels,
            "refine_threshold": self.threshold,
        }

    def metadata(self, checkpoint: str) -> dict[str, str]:
        """The key/value pairs written into ONNX ``metadata_props`` and IR ``rt_info``.
        ``onnx_weights`` only when not FP32: the default export stays byte for byte what it
        was before the key existed, and ``from_metadata`` reads its absence as FP32."""
        reduced = {"onnx_weights": self.onnx_weights} if self.onnx_weights != "FP32" else {}
        return {
            "model_name": self.model_name,
            "backbone": self.backbone,
            "color_order": "BGR",
            "input_scale": "255",
            "layout": "NCHW",
            "output_color_order": "RGB",
            "resolution": f"{self.height}x{self.width}",
            "backbone_scale": repr(self.backbone_scale),
            "refine_mode": self.refine_mode,
            "sample_pixels": str(self.sample_pixels),
            "threshold": repr(self.threshold),
            "opset": str(self.opset),
            "precision": self.precision,
            "model_type": self.model_type,
            "extra_outputs": ",".join(self.extra_outputs),
            "outputs": ",".join(self.outputs),
            "dynamic": "true" if self.dynamic else "false",
            **reduced,
            "checkpoint": checkpoint,
            "tool": f"bgm-export {__version__}",
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ExportConfig:
        """Inverse of ``metadata``; raises ``ConfigError`` if a key is missing or bad."""
        try:
            height, width = (int(v) for v in metadata["resolution"].split("x"))
            return cls(
                # Artifacts made before the ResNet models carry no backbone: MobileNetV2.
                backbone=metadata.get("backbone", DEFAULT_BACKBONE),
                height=height,
                width=width,
                backbone_scale=float(metadata["backbone_scale"]),
                refine_mode=metadata["refine_mode"],
                sample_pixels=int(metadata["sample_pixels"]),
                threshold=float(metadata["threshold"]),
                opset=int(metadata["opset"]),
                precision=metadata.get("precision", "FP32"),
                # Artifacts made before MattingBase exports are MattingRefine.
                model_type=metadata.get("model_type", "refine"),
                extra_outputs=tuple(n for n in metadata.get("extra_outputs", "").split(",") if n),
                dynamic=metadata.get("dynamic", "false") == "true",
                # Artifacts made before the key, and every FP32 one (see ``metadata``): FP32.
                onnx_weights=metadata.get("onnx_weights", "FP32"),
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"artifact metadata is incomplete or malformed ({exc!s}); was it made by bgm-export?"
            ) from None


# The refiner's share of the pixels at the original's 720p setting (80,000 of 1280x720,
# 8.68%): the webcam sizes keep it, so a smaller frame refines as much of itself.
SAMPLE_SHARE = Fraction(80_000, 1280 * 720)


def sample_pixels_for(height: int, width: int) -> int:
    """``SAMPLE_SHARE`` of ``height`` x ``width``, rounded to whole 4x4 patches (16 pixels):
    20,000 at 640x360, 26,672 at 640x480."""
    return max(1, round(height * width * SAMPLE_SHARE / 16)) * 16


PRESETS: dict[str, ExportConfig] = {
    "720p": ExportConfig(),
    "1080p": ExportConfig(height=1080, width=1920, backbone_scale=0.25, sample_pixels=80_000),
    "4k": ExportConfig(height=2160, width=3840, backbone_scale=0.125, sample_pixels=320_000),
    # Webcams' other sizes, for the browser (issue 28).
    "360p": ExportConfig(height=360, width=640, sample_pixels=sample_pixels_for(360, 640)),
    "480p": ExportConfig(height=480, width=640, sample_pixels=sample_pixels_for(480, 640)),
}
# The size recommended for the browser (``--preset web``): 640x360 until measured otherwise.
WEB_PRESET = "360p"
PRESETS["web"] = PRESETS[WEB_PRESET]


def default_artifact_path(model_name: str, precision: str | None = None, root: Path = MODELS_DIR) -> Path:
    """``models/<name>.onnx`` without a precision, else ``models/<PRECISION>/<name>.xml``."""
    if precision is None:
        return root / f"{model_name}.onnx"
    return root / precision / f"{model_name}.xml"


if __name__ == "__main__":
    # `python -m exporter.config [BACKBONE]`: the default artifact paths, ONNX then each
    # precision's IR, for the Makefile (which reads them with the system Python, before
    # any virtual environment exists; this module needs nothing outside the standard library).
    import sys

    name = BACKBONES[sys.argv[1] if len(sys.argv) > 1 else DEFAULT_BACKBONE].model_name
    print(*(default_artifact_path(name, precision) for precision in (None, *PRECISIONS)))
