"""The other published forms of BackgroundMattingV2's weights: TorchScript archives and ONNX
exports of the original, read into our state_dict format.

- **TorchScript** (``torchscript_<backbone>_fp32.pth`` / ``_fp16.pth``, made by the
  original's ``export_torchscript.py``): the archive's ``data.pkl`` is read by a restricted
  unpickler that only rebuilds tensors and records objects' attributes; no TorchScript code
  and no Python code in the archive is compiled or run. The original's wrapper holds the
  network as ``model`` and hoists ``backbone_scale``, ``refine_mode``,
  ``refine_sample_pixels``, ``refine_threshold`` and ``refine_prevent_oversampling``; those
  are returned as the export's defaults.
- **ONNX** (``onnx_mobilenetv2_hd.onnx``, ``onnx_mobilenetv2_4k.onnx``, Open Model Zoo's
  ``bgm_mobilenetv2.onnx``): every ``Conv`` of the graph is paired with one convolution of
  our model by its place in the data flow (how many convolutions precede it on the longest
  path from the inputs, then its weight's shape and attributes, then graph order), so the
  pairing does not depend on initializer names. Where the exporter folded a BatchNorm into
  its convolution, the equivalent model is built: the folded kernel in the convolution and
  a BatchNorm that only adds the folded bias (mean 0, variance ``1 - eps``, scale 1); the
  unfolded numbers are not recoverable and are not pretended to be. The backbone scale and
  the sample count are read from the graph where it states them.

Every failure is a ``CheckpointError`` naming the first thing that does not match.
"""

from __future__ import annotations

import functools
import hashlib
import io
import lzma
import math
import pickle
import re
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import torch

from exporter.config import REFINE_MODES
from exporter.errors import CheckpointError, shown

__all__ = [
    "FORMATS",
    "MAX_WEIGHT_BYTES",
    "Loaded",
    "check_archive",
    "is_torchscript",
    "read_onnx_weights",
    "read_torchscript",
]

# The kinds of source an artifact's metadata names (``checkpoint_format``).
FORMATS = ("state_dict", "torchscript", "onnx")

# --- Limits on files from the internet (HOSTILE.md section 2) -----------------------------

# Tensor bytes one checkpoint may hold, checked before anything is allocated or inflated: the
# largest published checkpoint (ResNet-101, fp32) holds 0.24 GB of tensors; 1 GiB leaves room
# for four times that and bounds what a small file that claims gigabytes can make us allocate.
MAX_WEIGHT_BYTES = 1 << 30
# A TorchScript archive's data.pkl: the original's ResNet-101 wrapper writes ~56 KB (modules,
# attributes and tensor records, no tensor data); 8 MiB is 150 times that, and bounds the
# objects a pickle can build (tens of bytes of memory a byte of pickle at worst).
MAX_PICKLE_BYTES = 8 << 20
# Module nesting in data.pkl: the original's deepest path (model.backbone.layer1.0.downsample.0)
# is 6 deep; past 64 the file is not a network but an attack on the walk.
MAX_NESTING = 64
# Objects and module classes walked in data.pkl: the original's ResNet-101 archive has ~330
# modules of ~80 classes; a pickle that names more is not a model.
MAX_OBJECTS = 100_000
MAX_CLASSES = 10_000
# Bytes inflated at a time from a zip entry, so that an entry that lies about its size costs
# one chunk before it is caught.
READ_CHUNK_BYTES = 1 << 20

# The original wrapper's hoisted attributes -> ExportConfig fields.
_HOISTED = {
    "backbone_scale": "backbone_scale",
    "refine_mode": "refine_mode",
    "refine_sample_pixels": "sample_pixels",
    "refine_threshold": "threshold",
}
_BN_EPS = 1e-5
# What a file may state of the other settings before ``ExportConfig`` checks them at the
# export's resolution: the original's ranges (``MattingRefine`` asserts scale <= 1/2 and the
# threshold is a probability); sample pixels as many as a TorchScript int (int64) holds.
_STATED_RANGES = {"backbone_scale": (0.0, 0.5), "threshold": (0.0, 1.0)}
MAX_STATED_SAMPLE_PIXELS = (1 << 63) - 1


@dataclass
class Loaded:
    """Weights read from a TorchScript or ONNX file, and what the file said besides.

    ``settings``: ``ExportConfig`` fields the file states (defaults for the export);
    ``notes``: what the label should say (``batch norm folded``).
    """

    state_dict: OrderedDict[str, torch.Tensor]
    kind: str
    settings: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- TorchScript ---------------------------------------------------------------------------


class _ScriptObject:
    """A TorchScript object from ``data.pkl``: its class name and its attributes, nothing run."""

    qualified_name = "?"

    def __init__(self, *args: object) -> None:  # a scripted Enum is rebuilt from its value
        self.state: dict = {}
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state if isinstance(state, dict) else {}


class _Storage(NamedTuple):
    """A storage record of ``data.pkl``: read from ``data/<key>`` only once every tensor on it
    is known (immutable, so that a pickle cannot change it after it was checked)."""

    key: str
    dtype: torch.dtype
    numel: int


class _TensorRef(NamedTuple):
    """A tensor of ``data.pkl``, checked to lie inside its storage; made real after loading."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    end: int  # one past the last storage element it reaches


class _Refused(pickle.UnpicklingError):
    """A global or record that TorchScript's serializer does not write for data."""


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise _Refused(f"a tensor's {what} is not a tuple of non-negative integers")
    return value


def _rebuild_tensor_v2(storage: object, offset: object, size: object, stride: object, *_: object) -> _TensorRef:
    """``torch._utils._rebuild_tensor_v2``, checked: the view (offset, size, stride) must lie
    inside the storage it names."""
    if not isinstance(storage, _Storage) or type(offset) is not int or offset < 0:
        raise _Refused("a tensor record that names no storage or a negative offset")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise _Refused(f"a tensor of size {shown(list(size))} with stride {shown(list(stride))}")
    end = 0
    if 0 not in size:  # Python integers: no overflow, whatever the file claims
        end = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
        if end > storage.numel:
            raise _Refused(
                f"a tensor of size {shown(list(size))} that reaches element {shown(end)} of storage {storage.key}, "
                f"which holds {storage.numel}"
            )
    return _TensorRef(storage, offset, size, stride, end)


def _typed_list(data: object) -> list:
    """``torch.jit._pickle.build_intlist`` and its kin: they only tag a list's element type."""
    if not isinstance(data, list):
        raise _Refused("a typed list that is not a list")
    return data


def _restore_type_tag(value: object, type_str: object) -> object:
    """``torch.jit._pickle.restore_type_tag``: the static type of a container, not needed here."""
    return value


def _device(name: object) -> str:
    return str(name)


def _complex(real: object = 0.0, imag: object = 0.0) -> complex:
    if not all(type(v) in (int, float) for v in (real, imag)):
        raise _Refused("a complex number that is not made of numbers")
    return complex(real, imag)


def _storage_dtypes() -> dict[str, torch.dtype]:
    """``torch.<Name>Storage`` -> dtype, for every dtype this torch has (the C++ unpickler's
    ``AT_FORALL_SCALAR_TYPES_WITH_COMPLEX_AND_QINTS``, less the quantized ones)."""
    names = {
        "Float": "float32", "Half": "float16", "BFloat16": "bfloat16", "Double": "float64", "Long": "int64",
        "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8", "Bool": "bool",
        "ComplexHalf": "complex32", "ComplexFloat": "complex64", "ComplexDouble": "complex128",
        "Float8_e5m2": "float8_e5m2", "Float8_e4m3fn": "float8_e4m3fn",
    }  # fmt: skip
    return {f"{name}Storage": getattr(torch, dtype) for name, dtype in names.items() if hasattr(torch, dtype)}


# Every global TorchScript's serializer writes into data.pkl for data (torch/jit/_pickle.py and
# the C++ ``Unpickler::readGlobal``), each mapped to a function that only rebuilds data. What is
# not here (any other module's name, quantized or sparse tensors, the old tensor-table ids) is
# refused: a pickle can only call what this table gives it.
_GLOBALS: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch.jit._pickle", "build_intlist"): _typed_list,
    ("torch.jit._pickle", "build_doublelist"): _typed_list,
    ("torch.jit._pickle", "build_boollist"): _typed_list,
    ("torch.jit._pickle", "build_tensorlist"): _typed_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    ("collections", "OrderedDict"): OrderedDict,  # a tensor's (always empty) backward hooks
    ("torch", "device"): _device,
    ("builtins", "complex"): _complex,
    **{("torch", name): dtype for name, dtype in _storage_dtypes().items()},
}
_NOT_WEIGHTS = {
    ("torch._utils", "_rebuild_qtensor"): "a quantized tensor",
    ("torch._utils", "_rebuild_sparse_tensor"): "a sparse tensor",
    ("torch.jit._pickle", "build_tensor_from_id"): "a tensor-table reference (a pre-1.4 archive)",
}
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds data only: the globals of ``_GLOBALS``, and ``__torch__`` objects as attribute
    records; storages are records too, read after loading (``_Storages``)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.classes: dict[str, type] = {}
        self.storages: dict[str, _Storage] = {}
        self.tensors: list[_TensorRef] = []  # every tensor record, for what each storage must hold

    def _rebuild_tensor(self, *args: object) -> _TensorRef:
        ref = _rebuild_tensor_v2(*args)
        self.tensors.append(ref)
        return ref

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                if len(self.classes) >= MAX_CLASSES:
                    raise _Refused(f"more than {MAX_CLASSES} classes")
                self.classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        if (module, name) in _GLOBALS:
            found = _GLOBALS[module, name]
            return self._rebuild_tensor if found is _rebuild_tensor_v2 else found
        if (module, name) in _NOT_WEIGHTS:
            raise _Refused(f"{_NOT_WEIGHTS[module, name]}, which BackgroundMattingV2's weights never are")
        raise _Refused(f"Unsupported global: GLOBAL {shown(f'{module}.{name}')}")

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused("a persistent id that is not a storage record")
        _, dtype, key, _, numel = pid
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or not _STORAGE_KEY.fullmatch(key):
            raise _Refused("a storage record without a dtype or a plain key")
        if type(numel) is not int or not 0 <= numel <= MAX_WEIGHT_BYTES:
            raise _Refused(f"storage {key} of {shown(numel)} elements")
        storage = _Storage(key, dtype, numel)
        if self.storages.setdefault(key, storage) != storage:
            raise _Refused(f"storage {key} declared twice, differently")
        return storage


def check_archive(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse a zip archive whose entry names leave it (absolute, ``..``), name one entry
    twice (zip readers differ on which copy counts), or declare more bytes than any checkpoint
    holds (torch's reader allocates what an entry declares)."""
    infos = archive.infolist()
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0] or "\x00" in name:
            raise CheckpointError(
                f"checkpoint {path} has an archive entry named {shown(repr(name))}, outside the archive"
            )
        if name in seen:
            raise CheckpointError(f"checkpoint {path} has two archive entries named {shown(repr(name))}")
        seen.add(name)
    declared = sum(info.file_size for info in infos)
    if declared > MAX_WEIGHT_BYTES + MAX_PICKLE_BYTES:
        raise CheckpointError(
            f"checkpoint {path} declares {declared / 1e9:.1f} GB of archive entries, more than any "
            f"BackgroundMattingV2 checkpoint holds (at most {MAX_WEIGHT_BYTES / 1e9:.1f} GB of tensors are read)"
        )


def _read_entry(archive: zipfile.ZipFile, name: str, size: int | None, limit: int, path: Path) -> bytearray:
    """Entry ``name``, inflated a chunk at a time: ``size`` bytes exactly (or at most ``limit``
    when ``size`` is None), refused before inflating when its header says otherwise and as soon
    as its data does."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(
            f"checkpoint {path} is a damaged TorchScript archive: it has no entry {shown(name)}"
        ) from None
    want = info.file_size if size is None else size
    if size is not None and info.file_size > size:
        raise CheckpointError(
            f"checkpoint {path} has an entry {shown(name)} of {info.file_size} bytes where its tensors need {size}"
        )
    if want > limit:
        raise CheckpointError(
            f"checkpoint {path} has an entry {shown(name)} of {want} bytes, more than the {limit} allowed"
        )
    buffer = bytearray(want)
    view = memoryview(buffer)
    got = 0
    with archive.open(info) as handle:
        while got < want:
            chunk = handle.read(min(READ_CHUNK_BYTES, want - got))
            if not chunk:
                break
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        more = handle.read(1)
    if got != want or more:
        raise CheckpointError(
            f"checkpoint {path} is a damaged TorchScript archive: entry {shown(name)} holds "
            f"{'more' if more else got} bytes, not the {want} it declares"
        )
    return buffer


def is_torchscript(path: Path) -> bool:
    """A zip archive holding ``code/`` (what ``torch.jit.save`` writes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _walk(root: _ScriptObject, path: Path) -> tuple[OrderedDict[str, _TensorRef], dict[str, object]]:
    """The tensors of every module (``a.b.weight``) and the top module's scalar attributes,
    walked without recursion, with nesting and object count bounded."""
    tensors: OrderedDict[str, _TensorRef] = OrderedDict()
    scalars: dict[str, object] = {}
    stack: list[tuple[_ScriptObject, str, int]] = [(root, "", 0)]
    visited = 0
    while stack:
        obj, prefix, depth = stack.pop()
        visited += 1
        if depth > MAX_NESTING or visited > MAX_OBJECTS:
            what = (
                f"nests objects over {MAX_NESTING} deep" if depth > MAX_NESTING else f"has over {MAX_OBJECTS} objects"
            )
            raise CheckpointError(f"checkpoint {path} is not a model: its TorchScript data {what}")
        children = []
        for name, value in getattr(obj, "state", {}).items():  # no state: a BUILD the pickle left out
            if not isinstance(name, str) or name == "training" or name.startswith("_"):
                continue
            if isinstance(value, _TensorRef):
                tensors[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                children.append((value, f"{prefix}{name}.", depth + 1))
            elif not prefix and isinstance(value, (bool, int, float, str)):
                scalars[name] = value
        stack.extend(reversed(children))  # an object's own tensors first, then its children in order
    return tensors, scalars


def _materialise(
    refs: OrderedDict[str, _TensorRef], every: list[_TensorRef], archive: zipfile.ZipFile, prefix: str, path: Path
) -> OrderedDict[str, torch.Tensor]:
    """Read each storage the walked tensors use, once, after checking that its entry holds
    exactly what the file's tensors on it need and that all of them fit the bound."""
    need: dict[str, int] = {}
    for ref in every:
        need[ref.storage.key] = max(need.get(ref.storage.key, 0), ref.end)
    used = {ref.storage.key: ref.storage for ref in refs.values()}
    total = sum(s.numel * s.dtype.itemsize for s in used.values())
    total += sum(math.prod(r.size) * r.storage.dtype.itemsize for r in refs.values())
    if total > MAX_WEIGHT_BYTES:
        raise CheckpointError(
            f"checkpoint {path} claims {total / 1e9:.1f} GB of tensors, more than any BackgroundMattingV2 "
            f"checkpoint holds (at most {MAX_WEIGHT_BYTES / 1e9:.1f} GB are read)"
        )
    flats: dict[str, torch.Tensor] = {}
    for key, storage in used.items():
        if storage.numel > need[key]:  # what a tensor does not reach is not read
            raise CheckpointError(
                f"checkpoint {path} has a storage {key} of {storage.numel} elements where its tensors reach {need[key]}"
            )
        nbytes = storage.numel * storage.dtype.itemsize
        raw = _read_entry(archive, f"{prefix}data/{key}", nbytes, MAX_WEIGHT_BYTES, path)
        flats[key] = torch.frombuffer(raw, dtype=storage.dtype) if nbytes else torch.empty(0, dtype=storage.dtype)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, ref in refs.items():
        flat = flats[ref.storage.key]
        out[name] = torch.as_strided(flat, ref.size, ref.stride, ref.offset).clone()
    return out


def _error_name(exc: BaseException) -> str:
    return "zlib" if isinstance(exc, zlib.error) else type(exc).__name__  # zlib's own name is "error"


def read_torchscript(path: Path) -> Loaded:
    """The weights (and the hoisted settings) of a TorchScript archive, read without running it."""
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, path)
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pickles:
                raise CheckpointError(f"checkpoint {path} is a TorchScript archive without data.pkl (damaged?)")
            prefix = pickles[0].removesuffix("data.pkl")
            unpickler = _RestrictedUnpickler(bytes(_read_entry(archive, pickles[0], None, MAX_PICKLE_BYTES, path)))
            root = unpickler.load()
            if not isinstance(root, _ScriptObject):
                raise CheckpointError(f"checkpoint {path} is a TorchScript archive that holds no module")
            refs, scalars = _walk(root, path)
            tensors = _materialise(refs, unpickler.tensors, archive, prefix, path)
    except _Refused as exc:
        raise CheckpointError(
            f"checkpoint {path} was refused: its TorchScript data holds more than modules and tensors ({exc})"
        ) from None
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, NotImplementedError, pickle.UnpicklingError, OSError,
            EOFError, LookupError, ValueError, TypeError, AttributeError, ArithmeticError, RuntimeError, RecursionError,
            MemoryError) as exc:  # fmt: skip
        # A pickle is a program for a stack machine: a damaged one fails in any of these ways.
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {path} is a damaged TorchScript archive: {_error_name(exc)}: {shown(first)}"
        ) from None
    # The original's wrapper holds the network as ``model``.
    if tensors and all(k.startswith("model.") for k in tensors):
        tensors = OrderedDict((k.removeprefix("model."), v) for k, v in tensors.items())
    if scalars.get("refine_prevent_oversampling") is False:
        raise CheckpointError(
            f"checkpoint {path} sets refine_prevent_oversampling = False, which the static export does not compute "
            "(set it back to True before saving, or give the state_dict)"
        )
    settings = _stated(((field_, scalars[name]) for name, field_ in _HOISTED.items() if name in scalars), path)
    return Loaded(tensors, "torchscript", settings)


def _stated(settings: Iterable[tuple[str, object]], path: Path) -> dict[str, object]:
    """Settings a file states (``ExportConfig`` fields), each of the type and in the range the
    original allows, before anything uses or prints them: a file may state ``10**5000``."""
    out: dict[str, object] = {}
    for name, value in settings:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name == "refine_mode":
            ok = isinstance(value, str) and value in REFINE_MODES
            allowed = f"one of {', '.join(REFINE_MODES)}"
        elif name == "sample_pixels":
            ok = type(value) is int and 0 < value <= MAX_STATED_SAMPLE_PIXELS
            allowed = f"a whole number in 1..{MAX_STATED_SAMPLE_PIXELS}"
        else:
            low, high = _STATED_RANGES[name]
            ok = number and low <= value <= high  # NaN compares false; a huge int is not cast
            allowed = f"a number in [{low}, {high}]"
            value = float(value) if ok else value
        if not ok:
            raise CheckpointError(
                f"checkpoint {path} states {name.replace('_', ' ')} {shown(value)}, which is not {allowed} "
                "(BackgroundMattingV2's range): the file is damaged or not the original's"
            )
        out[name] = value
    return out


# --- ONNX ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ConvSite:
    """One convolution: its depth in the data flow, weight shape, attributes, and either our
    state_dict prefixes (``conv``, ``bn``) or the ONNX tensors it reads."""

    depth: int
    shape: tuple[int, ...]
    attrs: tuple[tuple[int, ...], tuple[int, ...], int]  # stride, dilation, groups
    name: str
    bn: str | None = None
    order: int = 0


@functools.cache
def _template(backbone: str) -> tuple[_ConvSite, ...]:
    """Our model's convolutions with their depths, from a TorchScript trace at a tiny size
    (parameter names come from the trace's attribute lookups)."""
    from exporter.model import MattingRefine

    model = MattingRefine(backbone, refine_sample_pixels=64).eval()
    example = torch.zeros(1, 3, 64, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trace is read for its structure only
        traced = torch.jit.trace(model, (example, example.clone()), check_trace=False)
    graph = traced.inlined_graph
    paths: dict[object, str] = {}
    depth: dict[object, int] = {}
    convs: list[tuple[int, str, object]] = []
    batch_norms: dict[object, str] = {}
    for node in graph.nodes():
        if node.kind() == "prim::GetAttr":
            parent = paths.get(node.inputsAt(0), "")
            paths[node.output()] = f"{parent}.{node.s('name')}".lstrip(".")
        is_conv = node.kind() in ("aten::_convolution", "aten::conv2d")
        here = max((depth.get(v, 0) for v in node.inputs()), default=0) + (1 if is_conv else 0)
        for out in node.outputs():
            depth[out] = here
        if is_conv:
            convs.append((here, paths[node.inputsAt(1)].rsplit(".", 1)[0], node.output().unique()))
        elif node.kind() == "aten::batch_norm":
            batch_norms[node.inputsAt(0).unique()] = paths[node.inputsAt(1)].rsplit(".", 1)[0]
    sites = []
    for here, name, output in convs:
        conv = model.get_submodule(name)
        attrs = (tuple(conv.stride), tuple(conv.dilation), int(conv.groups))
        sites.append(_ConvSite(here, tuple(conv.weight.shape), attrs, name, batch_norms.get(output)))
    return tuple(sites)


class _OnnxValues:
    """The values of one ONNX file's initializers and constants, read as untrusted: dims
    checked and the bytes they claim counted against ``MAX_WEIGHT_BYTES`` before anything is
    converted; external data only from files inside the model's own folder (never the current
    one), each read once and hashed, with offsets and lengths checked against it."""

    def __init__(self, path: Path) -> None:
        self.path, self.folder = path, path.parent
        self.files: dict[Path, bytes] = {}
        self.notes: list[str] = []  # ``external data <location> sha256:<hex>``, for the label
        self.claimed = 0

    def refuse(self, what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path} {what}")

    def array(self, tensor: object, kind: str) -> object:
        """``tensor`` as a NumPy array, or None for a tensor of strings (never a weight)."""
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        name = f"{kind} {shown(repr(tensor.name))}" if tensor.name else f"a {kind}"
        dims = list(tensor.dims)
        shown_dims = shown(dims)
        if any(d < 0 for d in dims):
            raise self.refuse(f"has {name} of dims {shown_dims}: a negative dimension")
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        except (KeyError, TypeError, ValueError):
            raise self.refuse(f"has {name} of data type {tensor.data_type}, which ONNX does not define") from None
        if dtype.kind == "O":
            return None
        nbytes = math.prod(dims) * dtype.itemsize
        self.claimed += nbytes
        if self.claimed > MAX_WEIGHT_BYTES:
            raise self.refuse(
                f"has {name} of dims {shown_dims} ({nbytes / 1e9:.3g} GB), beyond the {MAX_WEIGHT_BYTES / 1e9:.1f} GB "
                "that any BackgroundMattingV2 export holds"
            )
        if tensor.data_location == TensorProto.EXTERNAL:
            inline = TensorProto()
            inline.CopyFrom(tensor)
            del inline.external_data[:]
            inline.data_location = TensorProto.DEFAULT
            inline.raw_data = self.external(tensor, name, nbytes)
            tensor = inline
        try:
            array = numpy_helper.to_array(tensor)
        except (ValueError, TypeError, LookupError) as exc:
            raise self.refuse(
                f"has {name} of dims {shown_dims} whose data does not fill them ({shown(str(exc).splitlines()[0])})"
            ) from None
        if list(array.shape) != dims:
            raise self.refuse(f"has {name} of dims {shown_dims} whose data has shape {shown(list(array.shape))}")
        return array

    def external(self, tensor: object, name: str, nbytes: int) -> bytes:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = shown(location)
        parts = PurePosixPath(location.replace("\\", "/")).parts
        if not location or "\x00" in location or location.startswith(("/", "\\")) or ".." in parts or ":" in location:
            raise self.refuse(
                f"keeps the data of {name} at {shown(repr(location))}, outside the model's folder {self.folder}"
            )
        try:
            real = (self.folder / location).resolve(strict=True)
        except (OSError, RuntimeError):
            raise self.refuse(
                f"keeps the data of {name} in {where}, which is not in the model's folder {self.folder}"
            ) from None
        if not real.is_relative_to(self.folder.resolve()):
            raise self.refuse(
                f"keeps the data of {name} in {where}, a link that leaves the model's folder {self.folder}"
            )
        if not real.is_file():  # a FIFO or a device would block the read forever
            raise self.refuse(f"keeps the data of {name} in {where}, which is not a regular file")
        fields = {key: info.get(key, default) for key, default in (("offset", "0"), ("length", None))}
        if not all(v is None or re.fullmatch(r"[0-9]{1,19}", v) for v in fields.values()):
            raise self.refuse(f"gives {name} an external data offset or length that is not a number: {shown(fields)}")
        data = self.file(location, real)
        offset = int(fields["offset"])
        length = int(fields["length"]) if fields["length"] is not None else len(data) - offset
        if length != nbytes:
            raise self.refuse(f"gives {name} {length} bytes of external data where its dims need {nbytes}")
        if offset + length > len(data):
            raise self.refuse(
                f"reads the data of {name} at bytes {offset}..{offset + length} of {where}, which holds {len(data)}"
            )
        return data[offset : offset + length]

    def file(self, location: str, real: Path) -> bytes:
        if real not in self.files:
            try:
                with real.open("rb") as handle:
                    data = handle.read(MAX_WEIGHT_BYTES + 1)
            except OSError as exc:
                raise self.refuse(f"keeps data in {location}, which cannot be read: {exc.strerror}") from None
            if len(data) > MAX_WEIGHT_BYTES:
                raise self.refuse(
                    f"keeps data in {location}, larger than the {MAX_WEIGHT_BYTES / 1e9:.1f} GB "
                    "that any BackgroundMattingV2 export holds"
                )
            self.files[real] = data
            self.notes.append(f"external data {location} sha256:{hashlib.sha256(data).hexdigest()}")
        return self.files[real]


def _constants(model: object, values: _OnnxValues) -> dict[str, object]:
    """Initializers and ``Constant`` node outputs, as NumPy arrays."""
    out = {}
    for tensor in model.graph.initializer:
        array = values.array(tensor, "initializer")
        if array is not None:
            out[tensor.name] = array
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and node.output:
                    array = values.array(attr.t, "constant")
                    if array is not None:
                        out[node.output[0]] = array
    return out


def _onnx_sites(model: object, constants: dict) -> tuple[list[_ConvSite], dict]:
    """The graph's Conv nodes with their depths, and the BatchNormalization node (if any)
    reading each one's output."""
    from onnx import helper

    depth: dict[str, int] = {}
    sites: list[_ConvSite] = []
    readers: dict[str, object] = {}
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            readers[node.input[0]] = node
    for order, node in enumerate(model.graph.node):
        here = max((depth.get(i, 0) for i in node.input if i), default=0)
        if node.op_type == "Conv":
            here += 1
            if len(node.input) < 2 or node.input[1] not in constants:
                raise CheckpointError(f"has a Conv node {shown(node.name or order)} without a constant weight")
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            shape = tuple(constants[node.input[1]].shape)
            spatial = len(shape) - 2
            key = (
                tuple(attrs.get("strides", [1] * spatial)),
                tuple(attrs.get("dilations", [1] * spatial)),
                int(attrs.get("group", 1)),
            )
            sites.append(_ConvSite(here, shape, key, node.name or f"Conv #{len(sites)}", order=order))
        for out in node.output:
            depth[out] = here
    nodes = {n.name or f"Conv #{i}": n for i, n in enumerate(n for n in model.graph.node if n.op_type == "Conv")}
    return sites, {name: (node, readers.get(node.output[0])) for name, node in nodes.items()}


def _pair(expected: tuple[_ConvSite, ...], found: list[_ConvSite], title: str) -> dict[str, _ConvSite]:
    """Our conv prefix -> the file's Conv, or ``CheckpointError`` at the first mismatch."""
    if len(found) != len(expected):
        raise CheckpointError(f"has {len(found)} convolutions, the BackgroundMattingV2 {title} has {len(expected)}")
    free = sorted(found, key=lambda s: (s.depth, s.order))
    pairs: dict[str, _ConvSite] = {}
    for site in sorted(expected, key=lambda s: s.depth):
        match = next((f for f in free if (f.depth, f.shape, f.attrs) == (site.depth, site.shape, site.attrs)), None)
        if match is None:
            near = next((f for f in free if f.depth == site.depth), None)
            what = f"{shown(near.name)} has weight {list(near.shape)}" if near else "none is at that depth"
            raise CheckpointError(
                f"does not match the BackgroundMattingV2 {title} at {site.name} (weight {list(site.shape)}, "
                f"convolution {site.depth} on its path): {what}"
            )
        free.remove(match)
        pairs[site.name] = match
    return pairs


@functools.cache
def _conv_count(backbone: str) -> int:
    """Convolutions of our model (each runs once), counted on the meta device."""
    from exporter.model import MattingRefine

    with torch.device("meta"):
        return sum(isinstance(m, torch.nn.Conv2d) for m in MattingRefine(backbone).modules())


def _graph_settings(model: object, constants: dict) -> dict[str, object]:
    """Backbone scale (the first Resize's scale) and sample count (TopK's K * 16), where the
    graph states them as constants."""
    producers = {out: node for node in model.graph.node for out in node.output}
    settings: dict[str, object] = {}
    resize = next((n for n in model.graph.node if n.op_type == "Resize"), None)
    if resize is not None:
        seen, queue, floats = set(), [i for i in resize.input[1:] if i], set()
        while queue and len(seen) < 32:  # the scales, or the shape arithmetic giving the sizes
            name = queue.pop()
            if name in seen:
                continue
            seen.add(name)
            value = constants.get(name)
            if value is not None and value.dtype.kind == "f":
                floats |= {float(v) for v in value.reshape(-1)}
            elif name in producers and producers[name].op_type not in ("Shape", "Resize", "Conv"):
                queue += [i for i in producers[name].input if i]
        scales = {v for v in floats if 0 < v <= 0.5}
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] if model.graph.input else []
        if not scales and len(dims) == 4 and all(dims[2:]):  # a static export states the small size
            height, width = dims[2:]
            scales = {v / height for v in floats if 0 < v / height <= 0.5 and math.floor(width * v / height) in floats}
        if len(scales) == 1:
            settings["backbone_scale"] = scales.pop()
    topk = [n for n in model.graph.node if n.op_type == "TopK"]
    if len(topk) == 1 and topk[0].input[1] in constants:
        settings["refine_mode"] = "sampling"
        settings["sample_pixels"] = int(constants[topk[0].input[1]].reshape(-1)[0]) * 16
    return settings


def read_onnx_weights(path: Path, backbone: str | None = None) -> Loaded:
    """Our state_dict from an ONNX export of the original (the backbone found by the number of
    convolutions, or ``backbone``)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {path} is not a readable ONNX model: {first}") from None
    metadata = {p.key: p.value for p in model.metadata_props}
    if metadata.get("tool", "").startswith("bgm-export"):
        raise CheckpointError(
            f"checkpoint {path} is an artifact of bgm-export, not a checkpoint: convert it with "
            f"`bgm-export ir --onnx {path}`, or give the weights it was made from"
        )
    try:
        return _read_onnx(model, Path(path), backbone)
    except (LookupError, ValueError, TypeError, AttributeError, ArithmeticError) as exc:
        # What a damaged or hand-made graph breaks that the checks above do not name.
        first = (str(exc).splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} is a damaged ONNX model: {type(exc).__name__}: {first}") from None


def _read_onnx(model: object, path: Path, backbone: str | None) -> Loaded:
    from exporter.backbones import BACKBONES

    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 2:
        raise CheckpointError(
            f"checkpoint {path} is an ONNX model with inputs {shown(inputs)}, not BackgroundMattingV2's two (src, bgr)"
        )
    values = _OnnxValues(path)
    constants = _constants(model, values)
    try:
        found, nodes = _onnx_sites(model, constants)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path} {exc}") from None
    counts = {name: _conv_count(name) for name in ([backbone] if backbone else BACKBONES)}
    matching = [name for name, count in counts.items() if count == len(found)]
    if not matching:
        have = ", ".join(f"{BACKBONES[n].title} {c}" for n, c in counts.items())
        raise CheckpointError(
            f"checkpoint {path} is not an ONNX export of BackgroundMattingV2: it has {len(found)} convolutions ({have})"
        )
    chosen = matching[0]
    try:
        pairs = _pair(_template(chosen), found, BACKBONES[chosen].title)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path} {exc}") from None
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    folded = 0
    for site in _template(chosen):
        node, batch_norm = nodes[pairs[site.name].name]
        weight = torch.from_numpy(constants[node.input[1]].copy())
        bias = torch.from_numpy(constants[node.input[2]].copy()) if len(node.input) > 2 and node.input[2] else None
        state_dict[f"{site.name}.weight"] = weight
        if site.bn is None:
            if bias is not None:
                state_dict[f"{site.name}.bias"] = bias
            continue
        channels = weight.shape[0]
        if batch_norm is not None and bias is None:  # exported unfolded
            scale, shift, mean, var = (torch.from_numpy(constants[i].copy()) for i in batch_norm.input[1:5])
            eps = next((a.f for a in batch_norm.attribute if a.name == "epsilon"), _BN_EPS)
            if abs(eps - _BN_EPS) > 1e-9:
                var = var + (eps - _BN_EPS)  # the same denominator with our epsilon
        else:  # folded: a BatchNorm that only adds the folded bias
            folded += 1
            scale, mean = torch.ones(channels), torch.zeros(channels)
            shift = bias if bias is not None else torch.zeros(channels)
            var = torch.full((channels,), 1.0 - _BN_EPS)
        state_dict.update({
            f"{site.bn}.weight": scale, f"{site.bn}.bias": shift, f"{site.bn}.running_mean": mean,
            f"{site.bn}.running_var": var, f"{site.bn}.num_batches_tracked": torch.tensor(0),
        })  # fmt: skip
    notes = [f"onnx, {folded} batch norms folded"] if folded else ["onnx"]
    notes += values.notes  # so that another data file beside the same .onnx shows in the label
    return Loaded(state_dict, "onnx", _stated(_graph_settings(model, constants).items(), path), notes)
