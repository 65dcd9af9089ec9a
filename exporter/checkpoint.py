"""Reading, checking and resolving the weights of BackgroundMattingV2 (any published backbone).

Weights come from ``--checkpoint PATH``, else ``checkpoints/pytorch_<backbone>.pth``, else
the synthetic recipe (seed 0), which is said loudly: its outputs mean nothing for real
images. The backbone is read from the checkpoint's keys, so a user never has to name it.
Files are read with ``torch.load(weights_only=True)``, so a pickle that would run code is
refused, and every failure is a ``CheckpointError`` that says what is wrong.
"""

from __future__ import annotations

import functools
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exporter.config import ExportConfig
from exporter.errors import CheckpointError
from exporter.files import sha256_of
from exporter.model import BACKBONES, DEFAULT_BACKBONE, MattingBase, MattingRefine
from exporter.synthetic import SYNTHETIC_NAME, synthetic_state_dict
from exporter.weight_formats import Loaded

__all__ = [
    "CHECKPOINTS_DIR",
    "Weights",
    "build_model",
    "check_state_dict",
    "check_values",
    "default_checkpoint",
    "detect_backbone",
    "filter_checkpoint",
    "read_checkpoint",
    "read_weights",
    "resolve_weights",
    "synthetic_weights",
]

CHECKPOINTS_DIR = Path("checkpoints")
_SHOWN_KEYS = 5

# The first bytes of files people hand over by mistake, to name them in the error.
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x08", "an ONNX model (protobuf)"),
    (b"<?xml", "an XML file (an OpenVINO IR .xml?)"),
    (b"\x89HDF", "an HDF5 file (Keras?)"),
)


@dataclass(frozen=True)
class Weights:
    """A state_dict and where it came from.

    ``label`` is what goes into artifact metadata: ``sha256:<hex>`` of the file, or
    ``synthetic bgmv2-synthetic-v1 seed 0``.
    """

    state_dict: OrderedDict[str, torch.Tensor]
    source: str
    label: str
    synthetic: bool
    backbone: str = DEFAULT_BACKBONE
    warning: str | None = None
    # ``state_dict``, ``torchscript`` or ``onnx`` (``weight_formats.FORMATS``); None: synthetic.
    kind: str | None = None
    # ExportConfig fields the file states (a TorchScript wrapper's attributes, an ONNX
    # graph's constants): the export's defaults, which given options override.
    settings: dict[str, object] = field(default_factory=dict)


def default_checkpoint(backbone: str = DEFAULT_BACKBONE) -> Path:
    """``checkpoints/pytorch_<backbone>.pth``, the original repository's file name."""
    return CHECKPOINTS_DIR / BACKBONES[backbone].checkpoint_name


def filter_checkpoint(checkpoint: object) -> OrderedDict[str, torch.Tensor]:
    """Unwrap ``state_dict`` / ``model_state_dict`` and strip a ``module.`` prefix; nothing else."""
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"holds a {type(checkpoint).__name__}, not a state_dict (a dict of tensors)")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in checkpoint.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"has an entry {key!r} that is a {type(value).__name__}, not a tensor")
        out[key.removeprefix("module.")] = value
    return out


def _head(path: Path) -> bytes:
    """The first bytes of ``path``, after checking that it is a readable, non-empty file."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not path.is_file():  # a FIFO or a device would block the read forever
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror}") from None
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    return head


def read_weights(path: Path) -> Loaded:
    """Any published form of the weights, by its content: a PyTorch state_dict, a TorchScript
    archive of the original, or an ONNX export of the original (not yet checked)."""
    from exporter.weight_formats import is_torchscript, read_onnx_weights, read_torchscript

    path = Path(path)
    head = _head(path)
    if head.startswith(b"\x08"):  # protobuf field 1 (ir_version): an ONNX model, whatever its name
        return read_onnx_weights(path)
    if head.startswith(b"PK") and is_torchscript(path):
        return read_torchscript(path)
    return Loaded(read_checkpoint(path), "state_dict")


def read_checkpoint(path: Path) -> OrderedDict[str, torch.Tensor]:
    """Load a checkpoint file safely and return its state_dict (not yet checked)."""
    path = Path(path)
    head = _head(path)
    is_zip = head.startswith(b"PK")
    is_legacy = head.startswith(b"\x80")  # a pickle, the pre-1.6 torch.save format
    if not (is_zip or is_legacy):
        kind = next((f"it looks like {name}" for magic, name in _MAGIC if head.startswith(magic)), None)
        raise CheckpointError(
            f"checkpoint {path} is not a PyTorch file: {kind or 'its first bytes match no known format'}"
        )
    if is_zip and not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (its zip archive has no end)")
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            if any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist()):
                raise CheckpointError(
                    f"checkpoint {path} is a TorchScript archive (torch.jit.save), which holds code; give the "
                    "state_dict instead: torch.save(model.state_dict(), 'pytorch_mobilenetv2.pth')"
                )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" in message:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or re.search(
                r"Unsupported operand (\d+)", message
            )
            what = f" ({found.group(0)})" if found else ""
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds Python objects or code, not only tensors{what}. "
                "Only plain state_dicts are loaded (torch.load weights_only=True)"
            ) from None
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch file: {message.splitlines()[0]}") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)
        what = "a zip archive but not a readable PyTorch checkpoint" if is_zip else "truncated or corrupt"
        raise CheckpointError(f"checkpoint {path} is {what}: {first}") from None
    try:
        return filter_checkpoint(loaded)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path} {exc}") from None


@functools.cache
def _expected(backbone: str) -> dict[str, torch.Size]:
    """Key -> shape of ``MattingRefine(backbone)``, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in MattingRefine(backbone).state_dict().items()}


def detect_backbone(state_dict: dict[str, torch.Tensor]) -> str:
    """The backbone whose keys overlap ``state_dict``'s most (Jaccard index, so a ResNet-50
    file is not taken for the ResNet-101 whose keys include its own)."""
    keys = set(state_dict)

    def overlap(backbone: str) -> float:
        expected = set(_expected(backbone))
        return len(keys & expected) / len(keys | expected)

    return max(BACKBONES, key=overlap)


def check_state_dict(
    state_dict: dict[str, torch.Tensor], backbone: str, source: str = "weights", kind: str = "state_dict"
) -> None:
    """Raise ``CheckpointError`` listing missing, unexpected and mis-shaped keys of ``source``
    against the ``backbone`` model."""
    expected = _expected(backbone)
    keys, want = set(state_dict), set(expected)
    missing = [k for k in expected if k not in keys]
    unexpected = [k for k in state_dict if k not in want]
    mismatched = [
        f"{k} {list(state_dict[k].shape)} (expected {list(expected[k])})"
        for k in expected
        if k in keys and state_dict[k].shape != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return

    def shown(items: list[str], singular: str, plural: str) -> str:
        more = f", ... ({len(items) - _SHOWN_KEYS} more)" if len(items) > _SHOWN_KEYS else ""
        noun = singular if len(items) == 1 else plural
        return f"{len(items)} {noun}: " + ", ".join(items[:_SHOWN_KEYS]) + more

    parts = []
    if missing and all(k.startswith("refiner.") for k in missing) and not unexpected:
        parts.append("no refiner weights (a MattingBase checkpoint?)")
    elif missing:
        parts.append(shown(missing, "missing key", "missing keys"))
    if unexpected:
        parts.append(shown(unexpected, "unexpected key", "unexpected keys"))
    if mismatched:
        parts.append(shown(mismatched, "shape mismatch", "shape mismatches"))
    title = BACKBONES[backbone].title
    what = {"torchscript": "TorchScript archive", "onnx": "ONNX export"}.get(kind, "state_dict")
    raise CheckpointError(f"checkpoint {source} is not a BackgroundMattingV2 {title} {what}: " + "; ".join(parts))


def synthetic_weights(seed: int = 0, backbone: str = DEFAULT_BACKBONE) -> Weights:
    """The ``bgmv2-synthetic-v1`` recipe, labelled as such wherever it ends up."""
    label = f"synthetic {SYNTHETIC_NAME} seed {seed}"
    if backbone != DEFAULT_BACKBONE:  # MobileNetV2's label predates the other backbones
        label += f" {backbone}"
    warning = (
        f"no checkpoint given and none at {default_checkpoint(backbone)}: using the synthetic "
        f"{BACKBONES[backbone].title} weights {SYNTHETIC_NAME} (seed {seed}). The export is structurally real, "
        "but its outputs mean nothing for real images; put the official weights in checkpoints/ for a usable model."
    )
    return Weights(synthetic_state_dict(seed, backbone), SYNTHETIC_NAME, label, True, backbone, warning)


def resolve_weights(checkpoint: Path | None = None, backbone: str | None = None) -> Weights:
    """``checkpoint`` if given, else ``checkpoints/pytorch_<backbone>.pth`` if it exists, else
    the synthetic recipe. The backbone is read from the checkpoint; ``backbone``, when given,
    chooses the default file and the recipe, and must agree with the checkpoint."""
    if backbone is not None and backbone not in BACKBONES:
        raise CheckpointError(f"backbone {backbone!r} is not one of {', '.join(BACKBONES)}")
    default = default_checkpoint(backbone or DEFAULT_BACKBONE)
    path = checkpoint if checkpoint is not None else (default if default.exists() else None)
    if path is None:
        return synthetic_weights(0, backbone or DEFAULT_BACKBONE)
    loaded = read_weights(path)
    state_dict = loaded.state_dict
    found = detect_backbone(state_dict)
    check_state_dict(state_dict, found, str(path), loaded.kind)
    if backbone is not None and found != backbone:
        raise CheckpointError(
            f"checkpoint {path} holds the {BACKBONES[found].title} model, but --backbone {backbone} was given "
            f"(leave --backbone out: the checkpoint says which model it is)"
        )
    state_dict, cast_from = check_values(state_dict, str(path))
    label = f"sha256:{sha256_of(Path(path))}"
    notes = [*loaded.notes]
    if cast_from:  # the artifact says its weights were not float32 to begin with
        notes.append(f"{', '.join(cast_from)} weights cast to float32")
    if loaded.kind == "torchscript":
        notes.insert(0, "torchscript")
    if notes:
        label += f" ({'; '.join(notes)})"
    warning = None
    if loaded.settings:
        stated = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in loaded.settings.items())
        warning = f"checkpoint {path} states {stated}: used as this export's defaults (options given override them)"
    return Weights(state_dict, str(path), label, False, found, warning, loaded.kind, dict(loaded.settings))


def check_values(state_dict: dict[str, torch.Tensor], source: str) -> tuple[OrderedDict[str, torch.Tensor], list[str]]:
    """Refuse weights that cannot compute anything (NaN or infinite values, integer, boolean
    or complex tensors where float weights belong, tensors without values or sparse ones);
    cast float16 / bfloat16 / float64 weights to float32. Returns the weights and the dtypes
    that were cast."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    cast_from: list[str] = []
    not_finite: list[str] = []
    for name, tensor in state_dict.items():
        if tensor.layout != torch.strided:
            raise CheckpointError(f"checkpoint {source} has a sparse tensor {name}; weights must be dense")
        if tensor.device.type == "meta":
            raise CheckpointError(f"checkpoint {source} holds no values for {name} (a meta-device tensor)")
        if name.endswith("num_batches_tracked"):  # BatchNorm's step counter: an integer, never used in eval
            out[name] = tensor
            continue
        if not tensor.is_floating_point():
            kind = str(tensor.dtype).removeprefix("torch.")
            raise CheckpointError(f"checkpoint {source} has {name} of type {kind}; weights must be floating point")
        if tensor.dtype != torch.float32:
            cast_from.append(str(tensor.dtype).removeprefix("torch."))
            tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            not_finite.append(name)
        out[name] = tensor
    if not_finite:
        more = f", ... ({len(not_finite) - _SHOWN_KEYS} more)" if len(not_finite) > _SHOWN_KEYS else ""
        raise CheckpointError(
            f"checkpoint {source} has NaN or infinite values in {len(not_finite)} "
            f"{'tensor' if len(not_finite) == 1 else 'tensors'}: {', '.join(not_finite[:_SHOWN_KEYS])}{more}"
        )
    return out, sorted(set(cast_from))


def build_model(config: ExportConfig, weights: Weights) -> MattingRefine | MattingBase:
    """``MattingRefine`` for ``config`` with ``weights`` loaded strictly, in eval mode;
    ``MattingBase`` for ``model_type="base"``, with every weight but the refiner's."""
    if config.backbone != weights.backbone:
        raise CheckpointError(
            f"checkpoint {weights.source} holds the {BACKBONES[weights.backbone].title} model, "
            f"not the {BACKBONES[config.backbone].title} model this export is for"
        )
    check_state_dict(weights.state_dict, config.backbone, weights.source)
    if config.model_type == "base":
        base = MattingBase(config.backbone)
        kept = {k: v for k, v in weights.state_dict.items() if not k.startswith("refiner.")}
        base.load_state_dict(kept, strict=True)
        return base.eval()
    model = MattingRefine(**config.model_kwargs())
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()
