"""What an exported model is: parameters, FLOPs counted from the graph, ops, sizes, metadata.

FLOPs count multiply-accumulates of Conv and MatMul/Gemm nodes as two operations each, from
shapes that ONNX shape inference makes static; element-wise ops, resizes and data movement
are not counted (they are memory-bound and, together, under 1% of the arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from exporter.errors import ArtifactError, shown

__all__ = [
    "ModelInfo",
    "artifact_info",
    "checkpoint_info",
    "count_flops",
    "format_info",
    "graph_parameters",
    "ir_info",
    "ir_parameters",
    "onnx_info",
]


@dataclass
class ModelInfo:
    """Facts about one artifact (or the checkpoint's model, exported at a config)."""

    path: str
    format: str
    trainable_parameters: int | None
    graph_parameters: int
    gflops: float
    gflops_by_block: dict[str, float]
    nodes: int
    nodes_before_simplify: int | None
    ops: dict[str, int]
    files: dict[str, int]
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = inferred.graph
    shapes = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims]
    for initializer in graph.initializer:
        shapes[initializer.name] = list(initializer.dims)
    return shapes


def _block(node: onnx.NodeProto) -> str:
    """``/model/refiner/conv1/Conv`` -> ``refiner``: the paper's block a node belongs to."""
    parts = [p for p in node.name.split("/") if p and p != "model"]
    return parts[0] if len(parts) > 1 and parts[0] in {"backbone", "aspp", "decoder", "refiner"} else "other"


def _at_resolution(model: onnx.ModelProto) -> onnx.ModelProto:
    """A ``--dynamic`` model with its inputs fixed at the resolution its metadata states, so
    that every shape (and so every FLOP) is known; any other model as it is."""
    metadata = {p.key: p.value for p in model.metadata_props}
    if metadata.get("dynamic") != "true":
        return model
    import onnxsim

    height, width = (int(v) for v in metadata["resolution"].split("x"))
    shapes = {value.name: [1, 3, height, width] for value in model.graph.input}
    fixed, _ = onnxsim.simplify(model, check_n=0, overwrite_input_shapes=shapes)
    return fixed


def count_flops(model: onnx.ModelProto) -> tuple[float, dict[str, float]]:
    """Total GFLOPs and GFLOPs per block (backbone, aspp, decoder, refiner, other)."""
    shapes = _shapes(model)
    by_block: dict[str, float] = {}

    def shape(node: onnx.NodeProto, name: str) -> tuple[int, ...]:
        if name not in shapes:  # a graph that is not ours: a weight that is no constant, a dynamic shape
            raise ArtifactError(f"cannot count the FLOPs of {node.op_type} node {shown(node.name)}: "
                                f"the shape of {shown(name)} is not known")  # fmt: skip
        return shapes[name]

    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = shape(node, node.input[1])  # (Cout, Cin/groups, kh, kw)
            flops = 2 * math.prod(shape(node, node.output[0])) * math.prod(weight[1:])
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shape(node, node.input[0]), shape(node, node.output[0])
            flops = 2 * math.prod(out) * a[-1]
        else:
            continue
        block = _block(node)
        by_block[block] = by_block.get(block, 0.0) + flops / 1e9
    return sum(by_block.values()), dict(sorted(by_block.items()))


def graph_parameters(model: onnx.ModelProto) -> int:
    """Floating-point constants in the graph (weights after BN folding), not index tables."""
    from onnx import numpy_helper

    total = 0
    for initializer in model.graph.initializer:
        if initializer.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            total += int(np.prod(initializer.dims))
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].HasField("t") else None
            if value is not None and value.dtype.kind == "f":
                total += value.size
    return total


def onnx_info(path: Path, nodes_before: int | None = None, trainable: int | None = None) -> ModelInfo:
    from exporter.artifact import load_onnx, op_histogram

    path = Path(path)
    model = load_onnx(path, external_data=True)  # a model, its external data beside it only
    gflops, by_block = count_flops(_at_resolution(model))
    return ModelInfo(
        path=str(path),
        format="onnx",
        trainable_parameters=trainable,
        graph_parameters=graph_parameters(model),
        gflops=gflops,
        gflops_by_block=by_block,
        nodes=len(model.graph.node),
        nodes_before_simplify=nodes_before,
        ops=op_histogram(model),
        files={str(path): path.stat().st_size},
        metadata={p.key: p.value for p in model.metadata_props},
    )


def _ir_flops(model: object) -> tuple[float, dict[str, float]]:
    by_block: dict[str, float] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        out = list(op.output(0).get_shape())
        weight = list(op.input(1).get_partial_shape().to_shape())
        if kind == "Convolution":  # weights (Cout, Cin, kh, kw)
            per_output = math.prod(weight[1:])
        elif kind == "GroupConvolution":  # weights (G, Cout/G, Cin/G, kh, kw)
            per_output = math.prod(weight[2:])
        else:
            per_output = list(op.input(0).get_shape())[-1]
        node = onnx.NodeProto(name=op.get_friendly_name())
        block = _block(node)
        by_block[block] = by_block.get(block, 0.0) + 2 * math.prod(out) * per_output / 1e9
    return sum(by_block.values()), dict(sorted(by_block.items()))


def _eight_bit_weights(node: object) -> bool:
    """Whether ``node`` is an integer constant made floating point again: a Convert of 8-bit
    (or narrower) weights, possibly minus its zero point, as NNCF stores quantized weights."""
    if node.get_type_name() == "Subtract":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Convert":
        return False
    source = node.input_value(0).get_node()
    return source.get_type_name() == "Constant" and not source.get_output_element_type(0).is_real()


def _quantization_input(node: object, index: int) -> bool:
    """Whether input ``index`` of ``node`` is a parameter quantization added: a FakeQuantize
    range, or the scale or zero point applied to 8-bit weights."""
    if node.get_type_name() == "FakeQuantize":
        return index > 0
    return node.get_type_name() in ("Multiply", "Subtract") and any(
        _eight_bit_weights(value.get_node()) for value in node.input_values()
    )


def ir_parameters(model: object) -> int:
    """The weights of an ``openvino.Model``, counted the same at every precision: floating-point
    constants (FP32, or FP16 behind a Convert) and integer constants that a Convert turns
    into weights (INT8), but neither what quantization adds (FakeQuantize ranges, the scales
    and zero points of 8-bit weights) nor integer index and shape tables."""
    total = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        uses = [(target.get_node(), target.get_index()) for target in op.output(0).get_target_inputs()]
        if op.get_output_element_type(0).is_real():
            counted = not (uses and all(_quantization_input(node, index) for node, index in uses))
        else:
            counted = bool(uses) and all(node.get_type_name() == "Convert" for node, _ in uses)
        if counted:
            total += math.prod(op.get_output_shape(0))
    return total


def ir_info(xml: Path) -> ModelInfo:
    import collections

    from exporter.artifact import read_ir
    from exporter.runtime import openvino_core

    xml = Path(xml)
    metadata = read_ir(xml)
    try:
        model = openvino_core().read_model(str(xml))
    except Exception as exc:  # OpenVINO raises RuntimeError with a long report
        raise ArtifactError(f"{xml} is not a readable OpenVINO IR: {str(exc).splitlines()[0]}") from None
    ops = collections.Counter(op.get_type_name() for op in model.get_ordered_ops())
    params = ir_parameters(model)
    if metadata.get("dynamic") == "true":  # FLOPs at the resolution it states
        height, width = (int(v) for v in metadata["resolution"].split("x"))
        model.reshape({name: [1, 3, height, width] for name in ("src", "bgr")})
    gflops, by_block = _ir_flops(model)
    bin_path = xml.with_suffix(".bin")
    return ModelInfo(
        path=str(xml),
        format="openvino-ir",
        trainable_parameters=None,
        graph_parameters=params,
        gflops=gflops,
        gflops_by_block=by_block,
        nodes=sum(ops.values()),
        nodes_before_simplify=None,
        ops=dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
        files={str(p): p.stat().st_size for p in (xml, bin_path) if p.exists()},
        metadata=metadata,
    )


def artifact_info(path: Path) -> ModelInfo:
    from exporter.artifact import artifact_kind

    path = Path(path)
    if artifact_kind(path) == ".xml":
        return ir_info(path)
    info = onnx_info(path)
    before = info.metadata.get("nodes_before_simplify")
    info.nodes_before_simplify = int(before) if before and before.isdigit() else None
    return info


def checkpoint_info(config: object, weights: object) -> ModelInfo:
    """The checkpoint's model exported at ``config`` to a scratch folder, with its
    trainable parameter count."""
    import tempfile

    from exporter.checkpoint import build_model
    from exporter.export.onnx import export_onnx

    trainable = sum(p.numel() for p in build_model(config, weights).parameters())
    with tempfile.TemporaryDirectory(prefix="bgm-info-") as scratch:
        result = export_onnx(config, weights, Path(scratch) / "model.onnx")
        info = onnx_info(result.path, nodes_before=result.nodes_before, trainable=trainable)
    info.path = weights.source
    info.files = {}
    return info


def format_info(info: ModelInfo) -> str:
    """``info`` for a terminal: one fact a line, names in a column."""
    lines = []
    if info.trainable_parameters is not None:
        lines.append(f"trainable parameters  {info.trainable_parameters:,}")
    lines.append(f"graph parameters      {info.graph_parameters:,} (after batch-norm folding)")
    blocks = ", ".join(f"{k} {v:.4f}" for k, v in info.gflops_by_block.items())
    lines.append(f"GFLOPs                {info.gflops:.4f} ({blocks})")
    before = f"{info.nodes_before_simplify} before simplification, " if info.nodes_before_simplify else ""
    lines.append(f"nodes                 {before}{info.nodes}")
    lines.append("ops                   " + ", ".join(f"{k} {v}" for k, v in info.ops.items()))
    lines += [f"file                  {path}  {size:,} bytes" for path, size in info.files.items()]
    lines += [f"metadata              {key} = {value}" for key, value in info.metadata.items()]
    return "\n".join(lines)
