"""Export BackgroundMattingV2 to the Open Model Zoo ONNX model, and check what was made.

The graph takes ``src`` and ``bgr`` as BGR 0..255 (the channel reversal and the 1/255 are
nodes in the graph, so every ONNX consumer gets them), returns ``pha`` and ``fgr`` (RGB,
0..1), has a static shape for every tensor and none of If, Loop or NonZero.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from torch import nn

from exporter.artifact import INPUT_NAMES, OUTPUT_NAMES, io_shapes, op_histogram
from exporter.checkpoint import Weights, build_model
from exporter.config import ExportConfig, default_artifact_path
from exporter.errors import ExportError, OutputError
from exporter.export.weights_storage import store_weights
from exporter.files import atomic_outputs, check_not_input, check_writable, sha256_of
from exporter.model import BACKBONES, MattingBase, MattingRefine
from exporter.model.deploy import STACKED_RGB, DeployRefine, deploy_applies
from exporter.resources import require_memory
from exporter.stages import Stages

__all__ = ["BANNED_OPS", "BGRInputs", "OnnxExport", "check_graph", "export_module", "export_onnx"]

# Data-dependent control flow and shapes: what GPU/NPU plugins and TensorRT-style runtimes
# cannot plan for.
BANNED_OPS = frozenset({"If", "Loop", "Scan", "NonZero", "Unique", "NonMaxSuppression", "RoiAlign"})


class BGRInputs(nn.Module):
    """Feeds ``MattingRefine`` (or ``MattingBase``) from the deployment layout.

    Inputs: ``src``, ``bgr`` ``(1, 3, H, W)`` float, **BGR, 0..255**.
    Returns: ``pha (1, 1, H, W)`` alpha 0..1 and ``fgr (1, 3, H, W)`` RGB 0..1; for
    ``MattingBase`` also ``err (1, 1, H, W)`` 0..1 and ``hid (1, 32, H, W)``.
    """

    def __init__(self, model: MattingRefine | MattingBase, outputs: tuple[str, ...] = OUTPUT_NAMES) -> None:
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # One reversal and one scale on the stacked inputs: [B, G, R, B, G, R] -> RGB RGB.
        src_bgr = torch.cat([src, bgr], dim=1)
        order = torch.tensor(STACKED_RGB, device=src.device)
        rgb = torch.index_select(src_bgr, 1, order) / 255.0
        if not isinstance(self.model, MattingRefine):  # MattingBase, at the input's resolution
            pha, fgr, err, hid = self.model.coarse(rgb)
            return pha, (fgr + rgb[:, :3]).clamp(0.0, 1.0), err, hid
        pha, fgr, _, _, err_sm, ref_sm = self.model.forward_stacked(rgb)
        found = {"pha": pha, "fgr": fgr, "err_sm": err_sm, "ref_sm": ref_sm}  # --extra-outputs
        return tuple(found[name] for name in self.outputs)


@dataclass
class OnnxExport:
    """What ``export_onnx`` made."""

    path: Path
    config: ExportConfig
    checkpoint: str
    sha256: str
    size: int
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    durations: dict[str, float] = field(default_factory=dict)


def _static_dims(value: onnx.ValueInfoProto) -> bool:
    tensor = value.type.tensor_type
    return tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim)


def check_graph(
    model: onnx.ModelProto,
    banned: frozenset[str] = BANNED_OPS,
    outputs: tuple[str, ...] = OUTPUT_NAMES,
    dynamic: bool = False,
) -> list[str]:
    """Problems with an exported graph: checker, strict shape inference, banned ops,
    non-static shapes, I/O names. Empty when the graph is deployable."""
    problems: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return [f"onnx checker / shape inference: {str(exc).splitlines()[0]}"]
    found = sorted({n.op_type for n in inferred.graph.node} & banned)
    if found:
        problems.append(f"banned ops: {', '.join(found)}")
    graph = inferred.graph
    values = list(graph.input) + list(graph.output) + list(graph.value_info)
    # A graph that may hold NonZero cannot have static shapes; a dynamic one has its shapes
    # computed from the input's by shape arithmetic (still no If, Loop or NonZero).
    if "NonZero" in banned and not dynamic:
        dynamic = [v.name for v in values if not _static_dims(v)]
        typed = {v.name for v in values} | {i.name for i in graph.initializer}
        untyped = [o for n in graph.node for o in n.output if o and o not in typed]
        if dynamic:
            problems.append(f"{len(dynamic)} tensors without a static shape, e.g. {', '.join(dynamic[:3])}")
        if untyped:
            problems.append(f"{len(untyped)} tensors whose shape was not inferred, e.g. {', '.join(untyped[:3])}")
    names = ([i.name for i in graph.input], [o.name for o in graph.output])
    if names != (list(INPUT_NAMES), list(outputs)):
        problems.append(f"inputs/outputs are {names}, expected {INPUT_NAMES} / {outputs}")
    return problems


def _trace(model: nn.Module, config: ExportConfig) -> onnx.ModelProto:
    example = torch.full((1, 3, config.height, config.width), 128.0)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that it is deprecated; it is kept because it maps
        # this graph to plain opset-17 ops with no onnxscript functions to inline.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example, example.clone()),
            buffer,
            dynamo=False,
            opset_version=config.opset,
            input_names=list(INPUT_NAMES),
            output_names=list(config.outputs),
            dynamic_axes={name: {2: "height", 3: "width"} for name in (*INPUT_NAMES, *config.outputs)}
            if config.dynamic
            else None,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _simplify(model: onnx.ModelProto, config: ExportConfig) -> onnx.ModelProto:
    import onnxsim

    shapes = {name: [1, 3, config.height, config.width] for name in INPUT_NAMES} if config.dynamic else None
    with contextlib.redirect_stdout(io.StringIO()):  # onnxsim prints its check progress
        simplified, ok = onnxsim.simplify(model, check_n=1, test_input_shapes=shapes)
    if not ok:
        raise ExportError("onnxsim's check failed: the simplified graph computes something else")
    return simplified


def export_onnx(
    config: ExportConfig,
    weights: Weights,
    output: Path | None = None,
    *,
    on_stage: Callable[[str, float], None] | None = None,
) -> OnnxExport:
    """Export ``MattingRefine`` with ``weights`` at ``config`` to ``output``, atomically
    (default ``models/<model name>.onnx``, ``<model name>-fp16.onnx`` / ``-int8`` for weights
    stored so).

    Raises ``ConfigError`` for an impossible configuration, ``OutputError`` for an
    unwritable path and ``ExportError`` if the graph fails ``check_graph``.
    """
    # A variant's weight storage is in its default name: it never replaces the FP32 export, the
    # one ``ir`` converts.
    stem = config.model_name if config.onnx_weights == "FP32" else f"{config.model_name}-{config.onnx_weights.lower()}"
    output = Path(output) if output is not None else default_artifact_path(stem)
    check_writable(output)
    if output.suffix != ".onnx":
        raise OutputError(f"ONNX output {output} must end in .onnx")
    require_memory(config)
    check_not_input(output, weights.source)
    stages = Stages(on_stage)
    with stages("load"):
        model = build_model(config, weights)
        if deploy_applies(model, config.dynamic):
            module = DeployRefine(model, config.outputs).eval()
        else:
            module = BGRInputs(model, config.outputs).eval()
    return export_module(
        module, config, weights.label, output, stages=stages, source_format=weights.kind or "synthetic"
    )


def export_module(
    module: nn.Module,
    config: ExportConfig,
    checkpoint: str,
    output: Path,
    *,
    stages: Stages | None = None,
    banned: frozenset[str] = BANNED_OPS,
    source_format: str | None = None,
) -> OnnxExport:
    """Trace, simplify, check and save ``module`` (BGR 0..255 in, ``pha``/``fgr`` out) with
    ``config``'s metadata. ``export_onnx`` is this for the real model; tests use it to make
    deliberately broken exports that look like real ones."""
    output = Path(output)
    check_writable(output)
    stages = stages or Stages()
    with stages("export"):
        graph = _trace(module, config)
    before = graph
    # Always: the traced graph computes shapes at run time (Shape -> Gather -> Concat ...),
    # which only constant folding makes static; ONNX's shape inference leaves 48 unknown.
    with stages("simplify"):
        graph = _simplify(graph, config)
    if config.onnx_weights != "FP32":  # after onnxsim, which would fold the conversions back
        with stages("store weights"):
            graph = store_weights(graph, config.onnx_weights)
    with stages("check"):
        problems = check_graph(graph, banned, config.outputs, config.dynamic)
        if problems:
            raise ExportError("exported graph is not deployable: " + "; ".join(problems))
    if config.dynamic:  # batch and channels stay fixed; height and width are named per output
        shapes = io_shapes(config)
        for value in graph.graph.output:
            for i, dim in enumerate(value.type.tensor_type.shape.dim):
                if i < 2:
                    dim.Clear()
                    dim.dim_value = shapes[value.name][i]
                elif not dim.dim_param.isidentifier() or dim.HasField("dim_value"):
                    dim.Clear()
                    dim.dim_param = f"{value.name}_{('height', 'width')[i - 2]}"
    graph.producer_name = "bgm-export"
    graph.doc_string = (
        f"BackgroundMattingV2 {BACKBONES[config.backbone].title} (arXiv 2012.07810)"
        f"{' MattingBase' if config.model_type == 'base' else ''}; inputs BGR 0..255, outputs pha and RGB fgr "
        f"0..1{''.join(f', {name}' for name in config.outputs[2:])}"
    )
    del graph.metadata_props[:]
    for key, value in config.metadata(checkpoint).items():
        graph.metadata_props.add(key=key, value=value)
    if source_format is not None:  # state_dict, torchscript, onnx or synthetic
        graph.metadata_props.add(key="checkpoint_format", value=source_format)
    graph.metadata_props.add(key="nodes_before_simplify", value=str(len(before.graph.node)))
    with stages("save"), atomic_outputs(output) as (temporary,):
        temporary.write_bytes(graph.SerializeToString(deterministic=True))
    return OnnxExport(
        path=output,
        config=config,
        checkpoint=checkpoint,
        sha256=sha256_of(output),
        size=output.stat().st_size,
        nodes_before=len(before.graph.node),
        nodes_after=len(graph.graph.node),
        ops_before=op_histogram(before),
        ops_after=op_histogram(graph),
        durations=stages.durations,
    )
