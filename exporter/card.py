"""The model card of what was produced, in the Open Model Zoo format of
``background-matting-mobilenetv2`` (and the same for the ResNet models). Every number comes from this run: GFLOPs and
parameters from the graph, accuracy from ``verify``, hashes from the files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from exporter import __version__
from exporter.artifact import artifact_metadata
from exporter.backbones import BACKBONES
from exporter.config import ExportConfig
from exporter.errors import ArtifactError
from exporter.files import atomic_outputs, check_not_input, check_writable, sha256_of
from exporter.info import ModelInfo, artifact_info
from exporter.isa import ISA_CPU_KEY, ISA_KEY
from exporter.verify import VerifyReport, default_artifacts, verify
from exporter.verify.metrics import METRICS

__all__ = ["model_card", "write_card"]


def _shape(*dims: int) -> str:
    return ", ".join(str(d) for d in dims)


def _precision_table(report: VerifyReport, infos: list[ModelInfo]) -> list[str]:
    """One column per artifact run: what each precision keeps and what it trades."""
    sizes = {Path(info.path): sum(info.files.values()) for info in infos}
    gflops = {Path(info.path): info.gflops for info in infos}
    runs = report.artifacts
    header = ["", *[f"`{a.path.name}` {a.precision} ({a.runtime}, {a.arithmetic} arithmetic)" for a in runs]]
    rows = [
        ["Size (MB)", *[f"{sizes.get(a.path, 0) / 1e6:.2f}" for a in runs]],
        ["GFlops", *[f"{gflops.get(a.path, 0.0):.4f}" for a in runs]],
        ["pha mean abs diff", *[f"{a.outputs['pha'].mean_abs:.1e}" for a in runs]],
        ["Patches differing", *[f"{a.patch_flips * 100:.3f}%" for a in runs]],
    ]
    rows += [
        [f"{metric} change", *[f"{a.metrics[metric] / a.reference_metrics[metric] - 1:+.2%}" for a in runs]]
        for metric in METRICS
        if runs and all(metric in a.metrics and a.reference_metrics.get(metric) for a in runs)
    ]
    rows.append(["Arithmetic", *[a.arithmetic for a in runs]])
    rows.append(["ms per frame (verify, one request, that arithmetic)", *[f"{a.milliseconds:.0f}" for a in runs]])
    lines = ["Precisions (changes against the original model on the same cases):", ""]
    if report.isa is not None:  # INT8's numbers are this CPU's: another ISA sums INT8 products otherwise
        lines += [f"Measured on {report.isa.description} ({report.isa.int8_arithmetic}).", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


# Which artifact's graph the specification's GFlops and MParams are counted on, whatever the
# order the artifacts were given in: the ONNX, else the IR of the most exact precision.
_SPECIFICATION_ORDER = ("onnx", "FP32", "FP16", "INT8")


def _specification_info(infos: list[ModelInfo]) -> ModelInfo:
    def rank(info: ModelInfo) -> tuple[int, str]:
        kind = "onnx" if info.format == "onnx" else info.metadata.get("precision", "FP32")
        order = _SPECIFICATION_ORDER.index(kind) if kind in _SPECIFICATION_ORDER else len(_SPECIFICATION_ORDER)
        return order, info.path

    return min(infos, key=rank)


def model_card(report: VerifyReport, infos: list[ModelInfo]) -> str:
    """Markdown for the artifacts in ``report`` (one row per artifact run)."""
    first = report.artifacts[0]
    config = first.config
    models = {(a.config.backbone, a.config.height, a.config.width) for a in report.artifacts}
    if len(models) > 1:
        shown = ", ".join(f"{b} {h}x{w}" for b, h, w in sorted(models))
        raise ArtifactError(f"a model card describes one model at one resolution; these artifacts are {shown}")
    h, w = config.height, config.width
    info = _specification_info(infos)
    # The converted model's outputs are the original's: only the inputs' layout changed.
    outputs = [
        f"Alpha matte, name: `pha`, shape: `{_shape(1, 1, h, w)}`, format: `B, C, H, W`, values 0..1.",
        "",
        f"Foreground, name: `fgr`, shape: `{_shape(1, 3, h, w)}`, format: `B, C, H, W`, color order `RGB`, "
        "values 0..1.",
        "",
    ]
    from exporter.artifact import io_shapes

    shapes = io_shapes(config)
    described = {
        "err": "Predicted error of the coarse result", "hid": "Hidden features (32 channels)",
        "err_sm": "Coarse error map at the backbone scale", "ref_sm": "Refined 4x4 patches (1 = refined)",
    }  # fmt: skip
    for name in config.outputs[2:]:
        outputs += [f"{described[name]}, name: `{name}`, shape: `{_shape(*shapes[name])}`, format: `B, C, H, W`.", ""]
    lines = [f"# {config.model_name}", ""]
    if report.synthetic:
        lines += [
            f"> **Made from synthetic weights** (`{first.checkpoint}`), not the official checkpoint: "
            "the structure, costs and parity below are real; the accuracy numbers mean nothing for real images.",
            "",
        ]
    lines += [
        "## Use Case and High-Level Description",
        "",
        "Real-time, high-resolution background replacement (video calls, streaming): BackgroundMattingV2 "
        f"(arXiv 2012.07810) with a {BACKBONES[config.backbone].title} backbone. Given a frame and a picture of "
        "the background without the subject, it predicts the alpha matte and the foreground colours. A base "
        + (
            "network runs at the input resolution (MattingBase: no refiner)."
            if config.model_type == "base"
            else f"network runs at {config.backbone_scale:g} of the input resolution; a refiner recomputes the "
            f"{config.patches:,} 4x4 patches with the largest predicted error at full resolution "
            f"(refine mode `{config.refine_mode}`)."
        )
        + (" Height and width are free (`--dynamic`); figures are at the size stated." if config.dynamic else ""),
        "",
        "## Specification",
        "",
        "| Metric | Value |",
        "|---|---|",
        "| Type | Background matting |",
        f"| GFlops | {info.gflops:.4f} |",
        f"| MParams | {info.graph_parameters / 1e6:.3f} |",
        "| Source framework | PyTorch\\* |",
        "",
        f"GFlops count multiply-accumulates of every convolution as two operations at {h}x{w}, as this graph "
        f'computes them (the README\'s "deployed graph" trades operations for data movement), refiner '
        f"included ({info.gflops_by_block.get('refiner', 0.0):.4f} of them); MParams count the graph's weights "
        "after batch-norm folding.",
        "",
        "## Accuracy",
        "",
    ]
    with_metrics = [a for a in report.artifacts if a.metrics]
    if with_metrics:
        cases = ", ".join(report.case_names)
        lines += [f"Measured by `bgm-export verify` on: {cases}.", ""]
        for a in with_metrics:
            lines += [f"`{a.path.name}` ({a.precision}, {a.runtime}, {a.arithmetic} arithmetic):", ""]
            lines += ["| Metric | Original model | Converted model |", "|---|---|---|"]
            lines += [
                f"| {metric} | {a.reference_metrics[metric]:.4f} | {a.metrics[metric]:.4f} |"
                for metric in METRICS
                if metric in a.metrics
            ]
            lines.append("")
    else:
        lines += ["No ground truth was given (`verify --images` with `pha/`, `fgr/`): parity only.", ""]
    lines += _precision_table(report, infos)
    lines += [
        "Parity with the original (eager PyTorch on the same weights, the same images):",
        "",
        "| Artifact | Runtime | pha max abs diff | fgr max abs diff | patches differing | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for a in report.artifacts:
        lines.append(
            f"| `{a.path.name}` ({a.precision}) | {a.runtime}, {a.arithmetic} | {a.outputs['pha'].max_abs:.2e} | "
            f"{a.outputs['fgr'].max_abs:.2e} | {a.patch_flips * 100:.3f}% | {'PASSED' if a.passed else 'FAILED'} |"
        )
    lines += [
        "",
        "## Input",
        "",
        "### Original model",
        "",
        f"Image, name: `src`, shape: `{_shape(1, 3, h, w)}`, format: `B, C, H, W` (batch, channels, height, "
        "width). Expected color order: `RGB`. Values 0..1 (divided by 255).",
        "",
        f"Image, name: `bgr`, shape: `{_shape(1, 3, h, w)}`, format: `B, C, H, W`. The background without "
        "the subject. Expected color order: `RGB`. Values 0..1.",
        "",
        "### Converted model",
        "",
        f"Image, name: `src`, shape: `{_shape(1, 3, h, w)}`, format: `B, C, H, W`. Expected color order: "
        "`BGR`. Values 0..255 (the channel reversal and the 1/255 scale are in the graph).",
        "",
        f"Image, name: `bgr`, shape: `{_shape(1, 3, h, w)}`, format: `B, C, H, W`. Expected color order: "
        "`BGR`. Values 0..255.",
        "",
        "## Output",
        "",
        "### Original model",
        "",
        *outputs,
        "### Converted model",
        "",
        *outputs,
        "## Provenance",
        "",
        f"- Checkpoint: `{first.checkpoint}`",
        f"- Tool: bgm-export {__version__}; opset {config.opset}; static shapes, no If / Loop / NonZero.",
        *[
            f"- `{Path(info.path).name}`: INT8 calibrated with "
            f"{info.metadata[ISA_KEY]} kernels ({info.metadata.get(ISA_CPU_KEY, '?')})"
            for info in infos
            if info.metadata.get(ISA_KEY)
        ],
        "",
        "| File | Size (bytes) | sha256 |",
        "|---|---|---|",
    ]
    for info in infos:
        for path, size in info.files.items():
            lines.append(f"| `{Path(path).name}` ({info.format}) | {size:,} | `{sha256_of(Path(path))}` |")
    lines += [
        "",
        "## Legal Information",
        "",
        "The original model is distributed under the MIT License (PeterL1n/BackgroundMattingV2).",
        "",
    ]
    return "\n".join(lines)


def _second_size(result: object) -> bool:
    """A run of a dynamic artifact at another size than the one its metadata states."""
    config = result.config
    stated = ExportConfig.from_metadata(artifact_metadata(result.path))
    return config.dynamic and (config.height, config.width) != (stated.height, stated.width)


def write_card(
    artifacts: list[Path] | None,
    output: Path,
    weights: object | None = None,
    *,
    cases: int | None = None,
    images: Path | None = None,
) -> VerifyReport:
    """Verify ``artifacts`` (default: ``verify``'s), measure them and write their card to
    ``output`` atomically; the output is checked before the minutes of work. Returns the
    verification behind the card (its warnings are the caller's to show). ``cases`` and
    ``images``: as ``verify``'s (None: not given)."""
    paths = artifacts or default_artifacts()
    check_not_input(output, *paths, getattr(weights, "source", None))
    check_writable(output)
    report = verify(paths, weights, cases=cases, images=images)
    # A --dynamic artifact is verified at two sizes; its card describes the size it states.
    shown = dataclasses.replace(report, artifacts=[a for a in report.artifacts if not _second_size(a)])
    card = model_card(shown, [artifact_info(path) for path in paths])
    with atomic_outputs(Path(output)) as (temporary,):
        temporary.write_text(card)
    return report
