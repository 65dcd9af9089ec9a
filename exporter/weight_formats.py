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
import io
import math
import pickle
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exporter.errors import CheckpointError

__all__ = ["FORMATS", "Loaded", "is_torchscript", "read_onnx_weights", "read_torchscript"]

# The kinds of source an artifact's metadata names (``checkpoint_format``).
FORMATS = ("state_dict", "torchscript", "onnx")

# The original wrapper's hoisted attributes -> ExportConfig fields.
_HOISTED = {
    "backbone_scale": "backbone_scale",
    "refine_mode": "refine_mode",
    "refine_sample_pixels": "sample_pixels",
    "refine_threshold": "threshold",
}
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_BN_EPS = 1e-5


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

    def __setstate__(self, state: object) -> None:
        self.state = state if isinstance(state, dict) else {}


def _rebuild_tensor(flat: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: object) -> torch.Tensor:
    return torch.as_strided(flat, size, stride, offset).clone()


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and ``__torch__`` objects (as attribute records); any other global
    (what a pickle needs to run code) is refused."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptObject,), {"qualified_name": f"{module}.{name}"})
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")

    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, dtype, key, _, numel = pid
        raw = self.archive.read(f"{self.prefix}data/{key}")
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return flat[:numel]


def is_torchscript(path: Path) -> bool:
    """A zip archive holding ``code/`` (what ``torch.jit.save`` writes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _walk(obj: _ScriptObject, prefix: str, out: OrderedDict, scalars: dict) -> None:
    for name, value in obj.state.items():
        if name == "training" or name.startswith("_"):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _walk(value, f"{prefix}{name}.", out, scalars)
        elif not prefix and isinstance(value, (bool, int, float, str)):
            scalars[name] = value


def read_torchscript(path: Path) -> Loaded:
    """The weights (and the hoisted settings) of a TorchScript archive, read without running it."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pickles:
                raise CheckpointError(f"checkpoint {path} is a TorchScript archive without data.pkl (damaged?)")
            prefix = pickles[0].removesuffix("data.pkl")
            root = _RestrictedUnpickler(archive.read(pickles[0]), archive, prefix).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} was refused: its TorchScript data holds more than modules and tensors ({exc})"
        ) from None
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} is a damaged TorchScript archive: {exc}") from None
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"checkpoint {path} is a TorchScript archive that holds no module")
    tensors: OrderedDict[str, torch.Tensor] = OrderedDict()
    scalars: dict[str, object] = {}
    _walk(root, "", tensors, scalars)
    # The original's wrapper holds the network as ``model``.
    if tensors and all(k.startswith("model.") for k in tensors):
        tensors = OrderedDict((k.removeprefix("model."), v) for k, v in tensors.items())
    if scalars.get("refine_prevent_oversampling") is False:
        raise CheckpointError(
            f"checkpoint {path} sets refine_prevent_oversampling = False, which the static export does not compute "
            "(set it back to True before saving, or give the state_dict)"
        )
    settings = {field_: scalars[name] for name, field_ in _HOISTED.items() if name in scalars}
    for name in ("backbone_scale", "threshold"):
        if isinstance(settings.get(name), (int, float)) and not isinstance(settings[name], bool):
            settings[name] = float(settings[name])
    return Loaded(tensors, "torchscript", settings)


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


def _constants(model: object) -> dict[str, object]:
    """Initializers and ``Constant`` node outputs, as NumPy arrays."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


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
                raise CheckpointError(f"Conv node {node.name or order} has no constant weight")
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
            what = f"{near.name} has weight {list(near.shape)}" if near else "none is at that depth"
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

    from exporter.backbones import BACKBONES

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        raise CheckpointError(f"checkpoint {path} is not a readable ONNX model: {str(exc).splitlines()[0]}") from None
    metadata = {p.key: p.value for p in model.metadata_props}
    if metadata.get("tool", "").startswith("bgm-export"):
        raise CheckpointError(
            f"checkpoint {path} is an artifact of bgm-export, not a checkpoint: convert it with "
            f"`bgm-export ir --onnx {path}`, or give the weights it was made from"
        )
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 2:
        raise CheckpointError(
            f"checkpoint {path} is an ONNX model with inputs {inputs}, not BackgroundMattingV2's two (src, bgr)"
        )
    constants = _constants(model)
    found, nodes = _onnx_sites(model, constants)
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
    return Loaded(state_dict, "onnx", _graph_settings(model, constants), notes)
