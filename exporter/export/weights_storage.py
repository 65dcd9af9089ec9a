"""How an ONNX artifact stores its weights: FP32 as traced, or smaller for a download.

Each reduced storage rewrites initializers only and turns them back into float32 inside the
graph, so every op still computes in FP32. ONNX Runtime folds FP16's casts away when it loads
the model; it keeps INT8's DequantizeLinear (its QDQ rules) and runs it every frame (native, at
640x360: 87 against 69 ms a frame, docs/web.md):

- ``FP16``: every large float32 initializer as float16, then a ``Cast`` to float32.
- ``INT8``: the weights of Conv, MatMul and Gemm as int8, symmetric per output channel, then
  a ``DequantizeLinear`` (zero point 0). Activations, biases and the layers the INT8 IR
  keeps in floating point stay float32.

What the rounding costs is for ``bgm-export verify`` to judge, with the bars of that
precision. One entry per storage in ``STORAGES``. What a graph stores is read
back from the graph by ``stored_weights``, which lives in ``exporter.artifact`` because the
deployment side checks every ONNX's metadata against it without importing this package.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporter.artifact import stored_weights
from exporter.export.int8 import INT8_FIXED_LAYERS, INT8_FP_LAYERS

__all__ = [
    "FP16_MIN_ELEMENTS",
    "INT8_KEPT_LAYERS",
    "STORAGES",
    "store_fp16",
    "store_int8",
    "store_weights",
    "stored_weights",
]

# Below this many elements a tensor is a bias, a depthwise kernel or a constant of the graph's
# arithmetic (clip bounds, a fixed upsampling kernel): all of them together are under 2% of an
# export's bytes, so halving them is not worth a Cast each.
FP16_MIN_ELEMENTS = 1024
# Layers whose weights INT8 keeps in float32, as the INT8 IR does (exporter.export.int8): the
# refiner's last convolution, which emits the alpha and foreground of every refined patch, and
# the fixed kernels of the deployed graph (upsampling, the error map's copy, downsampling),
# which 8 bits would no longer hold exactly. Matched anywhere in a node's name.
INT8_KEPT_LAYERS = (*INT8_FP_LAYERS, *INT8_FIXED_LAYERS)
# The largest int8 level used: symmetric, so -128 is left out and 0 stays exact.
_INT8_LEVELS = 127
# float16's largest finite value: a weight beyond it stays float32 (trained weights never are).
_FP16_MAX = float(np.finfo(np.float16).max)


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    return names | {name for node in graph.node for name in (*node.input, *node.output, node.name)}


def _replace(
    model: onnx.ModelProto, replacements: dict[str, tuple[list[TensorProto], onnx.NodeProto]]
) -> onnx.ModelProto:
    """``model`` with each named initializer dropped for new initializers and the node that
    recomputes it under the same name (placed first: it depends on initializers only)."""
    if not replacements:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept = [t for t in graph.initializer if t.name not in replacements]
    added = [tensor for tensors, _ in replacements.values() for tensor in tensors]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *added])
    nodes = [node for _, node in replacements.values()] + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    # An initializer listed as a graph input (IR version < 4 style) is now a node's output.
    inputs = [value for value in graph.input if value.name not in replacements]
    del graph.input[:]
    graph.input.extend(inputs)
    return out


def store_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float32 initializer of at least ``FP16_MIN_ELEMENTS`` as float16 and a Cast back."""
    taken = _names(model.graph)
    replacements: dict[str, tuple[list[TensorProto], onnx.NodeProto]] = {}
    for tensor in model.graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or np.prod(tensor.dims) < FP16_MIN_ELEMENTS:
            continue
        values = numpy_helper.to_array(tensor)
        if not np.isfinite(values).all() or np.abs(values).max() > _FP16_MAX:
            continue
        half = numpy_helper.from_array(values.astype(np.float16), _unique(f"{tensor.name}_fp16", taken))
        cast = helper.make_node(
            "Cast", [half.name], [tensor.name], name=_unique(f"{tensor.name}_to_fp32", taken), to=TensorProto.FLOAT
        )
        replacements[tensor.name] = ([half], cast)
    return _replace(model, replacements)


def _output_axis(node: onnx.NodeProto, rank: int) -> int | None:
    """The axis of a weight's output channels for ``node`` (its input 1), or None."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "MatMul" and rank == 2:
        return 1
    if node.op_type == "Gemm" and rank == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return None


def quantize_per_channel(values: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 levels, float32 scales)``: symmetric, one scale per index of ``axis``; a channel
    of zeros gets scale 1 (any scale gives back its zeros)."""
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    scales = (np.abs(moved).max(axis=1) / _INT8_LEVELS).astype(np.float32)
    scales[scales == 0] = 1.0
    shape = [1] * values.ndim
    shape[axis] = -1
    levels = np.clip(np.rint(values / scales.reshape(shape)), -_INT8_LEVELS, _INT8_LEVELS).astype(np.int8)
    return levels, scales


def store_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float32 weights of Conv, MatMul and Gemm as int8 per output channel and a
    DequantizeLinear back; a weight shared by nodes that disagree on its axis, or feeding a
    layer of ``INT8_KEPT_LAYERS``, stays float32."""
    initializers = {t.name: t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    kept = re.compile("|".join(INT8_KEPT_LAYERS))
    axes: dict[str, set[int | None]] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        axis = None if kept.search(node.name) else _output_axis(node, len(initializers[node.input[1]].dims))
        axes.setdefault(node.input[1], set()).add(axis)
    taken = _names(model.graph)
    replacements: dict[str, tuple[list[TensorProto], onnx.NodeProto]] = {}
    for name, found in axes.items():
        if len(found) != 1 or None in found:
            continue
        (axis,) = found
        values = numpy_helper.to_array(initializers[name])
        if not np.isfinite(values).all():
            continue
        levels, scales = quantize_per_channel(values, axis)
        tensors = [
            numpy_helper.from_array(levels, _unique(f"{name}_int8", taken)),
            numpy_helper.from_array(scales, _unique(f"{name}_scale", taken)),
            numpy_helper.from_array(np.zeros_like(scales, np.int8), _unique(f"{name}_zero_point", taken)),
        ]
        node = helper.make_node(
            "DequantizeLinear", [t.name for t in tensors], [name], name=_unique(f"{name}_dequantize", taken), axis=axis
        )
        replacements[name] = (tensors, node)
    return _replace(model, replacements)


# One entry per value of ``ExportConfig.onnx_weights`` (``exporter.config.ONNX_WEIGHTS``).
STORAGES: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "FP32": lambda model: model,
    "FP16": store_fp16,
    "INT8": store_int8,
}


def store_weights(model: onnx.ModelProto, storage: str) -> onnx.ModelProto:
    """``model`` with its weights stored as ``storage`` (``FP32``: ``model`` itself, untouched)."""
    return STORAGES[storage](model)
