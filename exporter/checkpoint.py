"""Reading, checking and resolving the weights of BackgroundMattingV2 (any published backbone).

Weights come from ``--checkpoint PATH``, else ``checkpoints/pytorch_<backbone>.pth``, else
the synthetic recipe (seed 0), which is said loudly: its outputs mean nothing for real
images. The backbone is read from the checkpoint's keys, so a user never has to name it.
Files are read with ``torch.load(weights_only=True)``, so a pickle that would run code is
refused, and every failure is a ``CheckpointError`` that says what is wrong.
"""

from __future__ import annotations

import functools
import lzma
import pickle
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exporter.config import ExportConfig
from exporter.errors import CheckpointError, shown
from exporter.files import sha256_of
from exporter.model import BACKBONES, DEFAULT_BACKBONE, MattingBase, MattingRefine
from exporter.synthetic import SYNTHETIC_NAME, synthetic_state_dict
from exporter.weight_formats import Loaded, check_archive

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
    "SYNTHETIC_LABEL",
    "is_synthetic_label",
]

# How the synthetic recipe's weights are named in every artifact made from them (its
# metadata's ``checkpoint``), followed by the seed.
SYNTHETIC_LABEL = f"synthetic {SYNTHETIC_NAME}"


def is_synthetic_label(label: str) -> bool:
    """Whether an artifact's ``checkpoint`` label names the synthetic recipe (and not a
    look-alike such as ``...-v10``)."""
    return label.startswith(SYNTHETIC_LABEL + " seed ")


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
# Pickle protocols torch.load(weights_only=True) reads: torch.save writes 2 by default, and 3
# reads too; its unpickler has neither the text opcodes of 0 and 1 nor FRAME (4 and 5).
_LOADABLE_PROTOCOLS = (2, 3)
# What a damaged pickle (or zip) raises from torch.load's weights_only unpickler besides
# UnpicklingError: a pickle is a program for a stack machine, and a broken one pops an empty
# stack (IndexError), reads a missing memo (KeyError), hashes a list (TypeError), takes an int
# for a storage type (AttributeError), or unpacks a short field (struct.error). Not
# MemoryError or KeyboardInterrupt: those are the CLI's.
_DAMAGED = (
    RuntimeError, EOFError, ValueError, OSError, LookupError, TypeError, AttributeError, ArithmeticError,
    AssertionError, RecursionError, struct.error, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
)  # fmt: skip


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
            raise CheckpointError(f"has an entry {shown(key)} that is a {type(value).__name__}, not a tensor")
        out[key.removeprefix("module.")] = value
    return out


def _head(path: Path) -> bytes:
    """The first bytes of ``path``, after checking that it is a readable, non-empty file."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except OSError as exc:  # a name too long, a loop of links: Path.exists() raises these
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"checkpoint {path} is a directory, not a file")
    if not stat.S_ISREG(mode):  # a FIFO or a device would block the read forever
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
        try:
            with zipfile.ZipFile(path) as archive:
                check_archive(archive, path)  # torch's reader allocates what each entry declares
                if any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist()):
                    raise CheckpointError(
                        f"checkpoint {path} is a TorchScript archive (torch.jit.save), which holds code; give the "
                        "state_dict instead: torch.save(model.state_dict(), 'pytorch_mobilenetv2.pth')"
                    )
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:  # an end record over a damaged directory
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {shown(str(exc))}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns of every protocol but 2, and of its own defaults
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        protocol = _pickle_protocol(path, is_zip)
        if "Unsupported operand" in message and protocol not in ("?", *map(str, _LOADABLE_PROTOCOLS)):
            raise CheckpointError(
                f"checkpoint {path} was saved with pickle protocol {protocol}, which torch.load(weights_only=True) "
                f"cannot read (it reads protocols {' and '.join(map(str, _LOADABLE_PROTOCOLS))}): save the "
                "state_dict again with torch.save's default protocol"
            ) from None
        if "Weights only load failed" in message:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or re.search(
                r"Unsupported operand (\d+)", message
            )
            what = f" ({shown(found.group(0))})" if found else ""
            raise CheckpointError(
                f"checkpoint {path} was refused: it holds Python objects or code, not only tensors{what}. "
                "Only plain state_dicts are loaded (torch.load weights_only=True)"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch file: {shown(message.splitlines()[0])}"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)
        what = "a zip archive but not a readable PyTorch checkpoint" if is_zip else "truncated or corrupt"
        raise CheckpointError(f"checkpoint {path} is {what}: {shown(first)}") from None
    except _DAMAGED as exc:
        first = (str(exc).splitlines() or [""])[0]
        module = type(exc).__module__.lstrip("_")  # struct.error, not "error"
        kind = type(exc).__name__ if module == "builtins" else f"{module}.{type(exc).__name__}"
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt (a damaged pickle: {kind}, {shown(first)})"
        ) from None
    try:
        return filter_checkpoint(loaded)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path} {exc}") from None


def _pickle_protocol(path: Path, is_zip: bool) -> str:
    """The pickle protocol of a checkpoint's data (``data.pkl``, or the legacy file itself):
    ``PROTO n`` opens protocols 2 and up; 0 and 1 have no such opcode."""
    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return "?"
                with archive.open(name) as handle:
                    head = handle.read(2)
        else:
            with path.open("rb") as handle:
                head = handle.read(2)
    except _DAMAGED:
        return "?"
    if len(head) == 2 and head[0] == pickle.PROTO[0]:
        return str(head[1])
    return "0 or 1"


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
    unexpected = [shown(k) for k in state_dict if k not in want]
    mismatched = [
        f"{k} {shown(list(state_dict[k].shape))} (expected {list(expected[k])})"
        for k in expected
        if k in keys and state_dict[k].shape != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return

    def listed(items: list[str], singular: str, plural: str) -> str:
        more = f", ... ({len(items) - _SHOWN_KEYS} more)" if len(items) > _SHOWN_KEYS else ""
        noun = singular if len(items) == 1 else plural
        return f"{len(items)} {noun}: " + ", ".join(items[:_SHOWN_KEYS]) + more

    parts = []
    if missing and all(k.startswith("refiner.") for k in missing) and not unexpected:
        parts.append("no refiner weights (a MattingBase checkpoint?)")
    elif missing:
        parts.append(listed(missing, "missing key", "missing keys"))
    if unexpected:
        parts.append(listed(unexpected, "unexpected key", "unexpected keys"))
    if mismatched:
        parts.append(listed(mismatched, "shape mismatch", "shape mismatches"))
    title = BACKBONES[backbone].title
    what = {"torchscript": "TorchScript archive", "onnx": "ONNX export"}.get(kind, "state_dict")
    raise CheckpointError(f"checkpoint {source} is not a BackgroundMattingV2 {title} {what}: " + "; ".join(parts))


def synthetic_weights(seed: int = 0, backbone: str = DEFAULT_BACKBONE) -> Weights:
    """The ``bgmv2-synthetic-v1`` recipe, labelled as such wherever it ends up."""
    label = f"{SYNTHETIC_LABEL} seed {seed}"
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
        stated = ", ".join(f"{k.replace('_', ' ')} {shown(v)}" for k, v in loaded.settings.items())
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
