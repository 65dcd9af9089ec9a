"""The ``bgm-export`` command line: parse, call one library function, print, exit.

User mistakes arrive as ``BgmExportError``; they are printed as one line on stderr and end
the command with the error's exit code (2), never a traceback.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer

from exporter import __version__
from exporter.config import PRESETS, ExportConfig
from exporter.errors import BgmExportError

if TYPE_CHECKING:
    from exporter.checkpoint import Weights
from exporter.files import write_json

app = typer.Typer(
    help="Export BackgroundMattingV2 (MobileNetV2, ResNet-50, ResNet-101) to ONNX and OpenVINO IR, and prove parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., object])


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=code)


def user_errors(command: F) -> F:
    """Turn ``BgmExportError`` into ``error: ...`` on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except BgmExportError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; no partial output was left", 130) from None

    return wrapper  # type: ignore[return-value]


def printer(quiet: bool) -> Callable[[str, float], None] | None:
    if quiet:
        return None
    return lambda name, seconds: typer.echo(f"  {name:<9} {seconds:7.2f} s")


def warn(message: str | None) -> None:
    if message:
        typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


CheckpointOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="Official pytorch_mobilenetv2.pth, pytorch_resnet50.pth or pytorch_resnet101.pth; the model is read "
        "from it (default: checkpoints/pytorch_<backbone>.pth, else synthetic weights)."
    ),
]
BackboneOpt = Annotated[
    Optional[str],
    typer.Option(
        help="mobilenetv2 (default), resnet50 or resnet101: the model when no checkpoint is given; "
        "checked against the checkpoint when one is."
    ),
]
PresetOpt = Annotated[str, typer.Option(help=f"Resolution preset: {', '.join(PRESETS)}.")]
HeightOpt = Annotated[Optional[int], typer.Option(help="Input height (default from preset).")]
WidthOpt = Annotated[Optional[int], typer.Option(help="Input width (default from preset).")]
ScaleOpt = Annotated[Optional[float], typer.Option(help="Backbone scale, at most 0.5.")]
ModeOpt = Annotated[Optional[str], typer.Option(help="Refine mode: sampling, thresholding or full.")]
PixelsOpt = Annotated[Optional[int], typer.Option(help="Pixels refined in sampling mode.")]
ThresholdOpt = Annotated[Optional[float], typer.Option(help="Error threshold in thresholding mode.")]
OpsetOpt = Annotated[Optional[int], typer.Option(help="ONNX opset (default 17).")]
NoSimplifyOpt = Annotated[bool, typer.Option("--no-simplify", help="Skip onnxsim.")]
ArtifactsArg = Annotated[
    Optional[list[Path]], typer.Argument(help=".onnx / .xml files (default: what make export writes).")
]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write every number here.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and warnings.")]


def load_weights(checkpoint: Path | None, backbone: str | None) -> Weights:
    from exporter.checkpoint import resolve_weights

    weights = resolve_weights(checkpoint, backbone)
    warn(weights.warning)
    return weights


def make_config(preset: str, **options: object) -> ExportConfig:
    """The preset with the options that were given (not None)."""
    if preset not in PRESETS:
        raise fail(f"preset {preset!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[preset].replace(**_given(**options))


# The options `onnx` and `ir` share, which define an export beyond its preset.
EXPORT_OPTIONS = ("height", "width", "backbone_scale", "refine_mode", "sample_pixels", "threshold", "opset")


def _export_options(arguments: dict[str, object]) -> dict[str, object]:
    """A command's export options, from its ``locals()``."""
    return {name: arguments[name] for name in EXPORT_OPTIONS}


def config_and_weights(
    checkpoint: Path | None, backbone: str | None, preset: str, **options: object
) -> tuple[ExportConfig, Weights]:
    """Options are checked before the weights are read (a bad size fails before a large
    checkpoint loads); then the checkpoint decides the backbone."""
    config = make_config(preset, **options)
    weights = load_weights(checkpoint, backbone)
    return config.replace(backbone=weights.backbone), weights


def size_line(label: str, path: Path, size: int, sha256: str) -> str:
    return f"  {label:<5} {path}  {size / 1e6:.2f} MB  sha256 {sha256}"


@app.command()
@user_errors
def onnx(
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    output: Annotated[
        Optional[Path], typer.Option(help="Where to write the .onnx (default models/<model name>.onnx).")
    ] = None,
    preset: PresetOpt = "720p",
    height: HeightOpt = None,
    width: WidthOpt = None,
    backbone_scale: ScaleOpt = None,
    refine_mode: ModeOpt = None,
    sample_pixels: PixelsOpt = None,
    threshold: ThresholdOpt = None,
    opset: OpsetOpt = None,
    no_simplify: NoSimplifyOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export the Open Model Zoo ONNX model: inputs src, bgr (BGR 0..255); outputs pha, fgr."""
    from exporter.export.onnx import export_onnx

    config, weights = config_and_weights(checkpoint, backbone, preset, **_export_options(locals()))
    result = export_onnx(config, weights, output, simplify=not no_simplify, on_stage=printer(quiet))
    if not quiet:
        typer.echo(f"  nodes     {result.nodes_before} exported, {result.nodes_after} after simplification")
        typer.echo(size_line("onnx", result.path, result.size, result.sha256))


@app.command()
@user_errors
def ir(
    precision: Annotated[str, typer.Option(help="FP32, FP16 or INT8 (post-training quantization with NNCF).")],
    onnx: Annotated[
        Optional[Path], typer.Option("--onnx", help="Convert this .onnx (default: export one first).")
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option(help="The .xml to write (default models/<PRECISION>/<model name>.xml).")
    ] = None,
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    preset: PresetOpt = "720p",
    height: HeightOpt = None,
    width: WidthOpt = None,
    backbone_scale: ScaleOpt = None,
    refine_mode: ModeOpt = None,
    sample_pixels: PixelsOpt = None,
    threshold: ThresholdOpt = None,
    opset: OpsetOpt = None,
    no_simplify: NoSimplifyOpt = False,
    calibration: Annotated[
        Optional[Path],
        typer.Option(
            help="INT8: calibration frames, Open Model Zoo HumanMatting layout (com/, bgr/, optional pha/); "
            "default synthetic composites."
        ),
    ] = None,
    calibration_frames: Annotated[
        Optional[int], typer.Option(help="INT8: calibration frames to use (default 16).")
    ] = None,
    max_drop: Annotated[
        Optional[float],
        typer.Option(
            help="INT8: accuracy control (slower): revert layers until the agreement score "
            "(100 - alpha MAD x1e3 against FP32 or the true alpha) drops by at most this."
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Convert to OpenVINO IR (.xml + .bin) in FP32, FP16 or INT8."""
    from exporter.export.int8 import int8_options
    from exporter.export.openvino import export_ir, export_ir_from_weights

    precision = precision.upper()
    given = _given(**_export_options(locals()), checkpoint=checkpoint, backbone=backbone)
    if onnx is not None and (given or preset != "720p" or no_simplify):
        options = [f"--{name.replace('_', '-')}" for name in given] + (["--preset"] if preset != "720p" else [])
        options += ["--no-simplify"] if no_simplify else []
        raise fail(f"{', '.join(options)} cannot apply with --onnx: the ONNX file fixes the export")
    int8 = int8_options(precision, calibration, calibration_frames, max_drop)
    if int8 is not None and int8.calibration is None:
        warn(
            "INT8 is calibrated on synthetic composites; frames from the deployment's camera "
            "(--calibration DIR) give a better INT8 model"
        )
    if onnx is not None:
        result = export_ir(onnx, output, precision, int8=int8, on_stage=printer(quiet))
    else:
        config, weights = config_and_weights(checkpoint, backbone, preset, **_export_options(locals()))
        result = export_ir_from_weights(
            config, weights, output, precision, simplify=not no_simplify, int8=int8, on_stage=printer(quiet)
        )
    if not quiet:
        if result.int8:
            typer.echo(f"  kept in floating point: {result.int8['int8_fp_layers'].replace(',', ', ')}")
        typer.echo(size_line("xml", result.xml, result.xml_size, result.xml_sha256))
        typer.echo(size_line("bin", result.bin, result.bin_size, result.bin_sha256))


@app.command()
@user_errors
def verify(
    artifacts: ArtifactsArg = None,
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    cases: Annotated[int, typer.Option(help="Synthetic composites to run.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the first synthetic composite.")] = 0,
    images: Annotated[
        Optional[Path],
        typer.Option(help="Real data: com/, bgr/ (and pha/, fgr/ ground truth), Open Model Zoo layout."),
    ] = None,
    json_path: JsonOpt = None,
    report: Annotated[Optional[Path], typer.Option(help="Write |d| heat-maps and patch maps (PNG) here.")] = None,
    fp32_max_abs: Annotated[Optional[float], typer.Option(help="FP32 bar: max |d| outside differing patches.")] = None,
    fp32_patch_share: Annotated[Optional[float], typer.Option(help="FP32 bar: share of patches off by > 1e-3.")] = None,
    fp16_mean_abs: Annotated[Optional[float], typer.Option(help="FP16 bar: mean |d|.")] = None,
    fp16_patch_share: Annotated[Optional[float], typer.Option(help="FP16 bar: share of patches off by > 0.05.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Check every artifact against the eager model: parity per output, patch flips, accuracy.

    Exit 0 when every bar holds, 1 when any is missed, 2 for bad usage or input.
    """
    import dataclasses

    from exporter.verify import default_artifacts
    from exporter.verify import verify as run_verify
    from exporter.verify.compare import BARS
    from exporter.verify.report import format_report, write_json, write_previews

    for name, value in (("--fp32-max-abs", fp32_max_abs), ("--fp32-patch-share", fp32_patch_share),
                        ("--fp16-mean-abs", fp16_mean_abs), ("--fp16-patch-share", fp16_patch_share)):  # fmt: skip
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise fail(f"{name} {value}: a bar is a number >= 0")
    bars = {
        "FP32": dataclasses.replace(BARS["FP32"], **_given(max_abs=fp32_max_abs, patch_share=fp32_patch_share)),
        "FP16": dataclasses.replace(BARS["FP16"], **_given(mean_abs=fp16_mean_abs, patch_share=fp16_patch_share)),
    }
    from exporter.files import check_not_input, check_writable

    for output in (json_path, report):
        check_not_input(output, *(artifacts or []), checkpoint)
    if json_path is not None:  # checked before minutes of work, not after
        check_writable(json_path)
    if report is not None and report.exists() and not report.is_dir():
        raise fail(f"--report {report} is a file; give a folder for the PNG reports")
    # Without either, each artifact is checked against its own backbone's default weights.
    weights = None if checkpoint is None and backbone is None else load_weights(checkpoint, backbone)
    progress = None if quiet else (lambda message: typer.echo(f"  {message}", err=True))
    result = run_verify(
        artifacts or default_artifacts(),
        weights,
        cases=cases,
        seed=seed,
        images=images,
        bars=bars,
        on_progress=progress,
    )
    typer.echo(format_report(result))
    if json_path is not None:
        write_json(result, json_path)
        typer.echo(f"numbers: {json_path}")
    if report is not None:
        for path in write_previews(result, report):
            typer.echo(f"report: {path}")
    raise typer.Exit(code=0 if result.passed else 1)


@app.command()
@user_errors
def info(
    artifact: Annotated[
        Optional[Path], typer.Argument(help="An .onnx or .xml (default: the checkpoint's model).")
    ] = None,
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    preset: PresetOpt = "720p",
    json_path: JsonOpt = None,
) -> None:
    """Parameters, GFLOPs counted from the graph, op histogram, node counts, sizes, metadata."""
    from exporter.files import check_not_input
    from exporter.info import artifact_info, checkpoint_info

    check_not_input(json_path, artifact, checkpoint)
    if artifact is not None:
        result = artifact_info(artifact)
    else:
        config, weights = config_and_weights(checkpoint, backbone, preset)
        result = checkpoint_info(config, weights)
    if result.trainable_parameters is not None:
        typer.echo(f"trainable parameters  {result.trainable_parameters:,}")
    typer.echo(f"graph parameters      {result.graph_parameters:,} (after batch-norm folding)")
    blocks = ", ".join(f"{k} {v:.4f}" for k, v in result.gflops_by_block.items())
    typer.echo(f"GFLOPs                {result.gflops:.4f} ({blocks})")
    before = f"{result.nodes_before_simplify} before simplification, " if result.nodes_before_simplify else ""
    typer.echo(f"nodes                 {before}{result.nodes}")
    typer.echo("ops                   " + ", ".join(f"{k} {v}" for k, v in result.ops.items()))
    for path, size in result.files.items():
        typer.echo(f"file                  {path}  {size:,} bytes")
    for key, value in result.metadata.items():
        typer.echo(f"metadata              {key} = {value}")
    if json_path is not None:
        write_json(result.to_dict(), json_path)


@app.command()
@user_errors
def bench(
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    preset: PresetOpt = "720p",
    height: HeightOpt = None,
    width: WidthOpt = None,
    sample_pixels: PixelsOpt = None,
    runs: Annotated[int, typer.Option(help="Timed runs per model after warm-up.")] = 20,
    profile: Annotated[bool, typer.Option("--profile", help="Top ten layers from OpenVINO's counters.")] = False,
    matte: Annotated[
        Optional[Path],
        typer.Option(help="Instead: time `matte` on a synthetic video against this IR alone (THROUGHPUT hint)."),
    ] = None,
    frames: Annotated[int, typer.Option(help="With --matte: frames in the synthetic video.")] = 48,
    json_path: JsonOpt = None,
) -> None:
    """Latency and throughput: eager PyTorch, ONNX Runtime, IR FP32/FP16/INT8, and the original recipe's IR."""
    from exporter.bench import bench as run_bench
    from exporter.bench import bench_matte, format_bench, format_matte_bench
    from exporter.files import check_writable

    if json_path is not None:  # before the minutes of timing it would hold
        check_writable(json_path)
    if runs < 1:
        raise fail(f"--runs {runs}: at least 1")
    if matte is not None:
        if frames < 1:
            raise fail(f"--frames {frames}: at least 1")
        result = bench_matte(matte, frames, on_progress=lambda m: typer.echo(f"  {m}", err=True))
        typer.echo(format_matte_bench(result))
        if json_path is not None:
            write_json(result.to_dict(), json_path)
        return
    config, weights = config_and_weights(
        checkpoint, backbone, preset, height=height, width=width, sample_pixels=sample_pixels
    )
    report = run_bench(
        config, weights, runs=runs, profile=profile, on_progress=lambda m: typer.echo(f"  {m}", err=True)
    )
    typer.echo(format_bench(report))
    if json_path is not None:
        write_json(report.to_dict(), json_path)


@app.command()
@user_errors
def card(
    artifacts: ArtifactsArg = None,
    output: Annotated[Path, typer.Option(help="The Markdown file to write.")] = Path("models/MODEL_CARD.md"),
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    cases: Annotated[int, typer.Option(help="Synthetic composites for the accuracy table.")] = 4,
    images: Annotated[
        Optional[Path], typer.Option(help="Real data with ground truth (com/, bgr/, pha/, fgr/).")
    ] = None,
) -> None:
    """Write the Open Model Zoo model card of the artifacts, every number measured now."""
    from exporter.card import model_card
    from exporter.files import atomic_outputs, check_not_input, check_writable
    from exporter.info import artifact_info
    from exporter.verify import default_artifacts
    from exporter.verify import verify as run_verify

    paths = artifacts or default_artifacts()
    check_not_input(output, *paths, checkpoint)
    check_writable(output)
    weights = None if checkpoint is None and backbone is None else load_weights(checkpoint, backbone)
    report = run_verify(paths, weights, cases=cases, images=images)
    for message in report.warnings:
        warn(message)
    infos = [artifact_info(path) for path in paths]
    with atomic_outputs(output) as (temporary,):
        temporary.write_text(model_card(report, infos))
    typer.echo(f"model card: {output}")


@app.command()
@user_errors
def matte(
    model: Annotated[Path, typer.Option(help="The exported model, .xml or .onnx.")],
    src: Annotated[Path, typer.Option(help="An image, a folder of frames, or a video.")],
    bgr: Annotated[Path, typer.Option(help="The captured background (an image), for every frame.")],
    target: Annotated[str, typer.Option(help="New background: a colour R,G,B, an image or a video.")] = "0,255,0",
    out: Annotated[Path, typer.Option(help="Folder for alpha, foreground and composite files.")] = Path("matte"),
    device: Annotated[str, typer.Option(help="OpenVINO device: CPU, GPU, NPU or AUTO.")] = "CPU",
    outputs: Annotated[
        Optional[str],
        typer.Option(
            help="Comma-separated: composite (a video for a video source, PNGs otherwise), alpha, foreground "
            "(RGBA), composite-png. Default: composite for a video; alpha, foreground, composite otherwise."
        ),
    ] = None,
    align: Annotated[
        bool,
        typer.Option("--align", help="Warp the background onto each frame first (hand-held captures)."),
    ] = False,
) -> None:
    """Replace the background of images or video with an exported model."""
    import time

    from exporter.matte import matte as run_matte

    bars: list = []  # one bar, opened once the frame count is known, for folders and video
    started = time.perf_counter()

    def rate(_: object) -> str:
        done = bars[0].pos if bars else 0
        return f"{done / max(time.perf_counter() - started, 1e-9):.1f} frames/s"

    def progress(done: int, total: int) -> None:
        if total > 1 and not bars:
            bar = typer.progressbar(length=total, label="matting", file=sys.stderr, item_show_func=rate)
            bars.append(bar.__enter__())
        if bars:
            bars[0].update(1)

    try:
        summary = run_matte(
            model, src, bgr, target=target, out=out, device=device, outputs=outputs, align=align, on_frame=progress
        )
    finally:
        if bars:
            bars[0].__exit__(None, None, None)
    for message in summary.warnings:
        warn(message)
    if summary.alignment:
        typer.echo(f"background aligned: {summary.alignment}")
    split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in summary.timings.items())
    typer.echo(f"{summary.frames} frames in {summary.seconds:.1f} s: {summary.fps:.1f} frames per second")
    typer.echo(f"model busy {summary.model_share:.0%} of the time (stages overlap: {split})")
    typer.echo(f"wrote {len(summary.files)} files to {out}")


def _given(**values: object) -> dict[str, object]:
    return {k: v for k, v in values.items() if v is not None}


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"bgm-export {__version__}")
        raise typer.Exit()
