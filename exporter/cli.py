"""The ``bgm-export`` command line: parse, call one library function, print, exit.

User mistakes arrive as ``BgmExportError`` (or as Typer's usage errors: a bad number, an
unknown option); each is printed as one ``error:`` line on stderr and ends the command with
exit code 2, never a traceback. Ctrl-C ends it with 130, SIGTERM with 143 (SIGHUP, a closed
terminal, with 129), after the command has removed every temporary file it made; a signal
while Typer parses ends it the same way. A reader that closes our standard output early ends
it quietly with 141, as SIGPIPE ends other tools; a standard output that cannot be written
(a full disk) is an error like any other. Every line on stderr is ``printable``: secrets
masked, control characters escaped.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, TypeVar

import typer
from typer.core import TyperCommand, TyperGroup

from exporter import __version__
from exporter import tolerances as tol
from exporter.backbones import BACKBONES, DEFAULT_BACKBONE
from exporter.config import DEFAULT_OPSET, MODEL_TYPES, ONNX_WEIGHTS, PRECISIONS, PRESETS, REFINE_MODES
from exporter.data import FAMILIES
from exporter.errors import (
    TERMINATING_SIGNALS,
    BgmExportError,
    ConfigError,
    OutputError,
    StandardOutputClosed,
    interruption,
    raise_terminated,
    shown,
)
from exporter.files import write_json
from exporter.redact import printable
from exporter.remote import DEFAULT_TIMEOUT_SECONDS
from exporter.runtime import INFERENCE_PRECISIONS
from exporter.serve import (
    DEFAULT_BODY_TIMEOUT_SECONDS,
    DEFAULT_GRPC_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_MAX_REQUEST_MB,
)
from exporter.settings import DEFAULT_PRESET, OPTION_FIELDS, option_names, resolve_export
from exporter.web import DEFAULT_WEB_PORT
from exporter.webbench import DEFAULT_CHROMIUM, WEB_WARMUP

if TYPE_CHECKING:
    from exporter.checkpoint import Weights

F = TypeVar("F", bound=Callable[..., object])


def error_line(message: str) -> None:
    typer.secho(f"error: {printable(message)}", err=True, fg=typer.colors.RED)


class _Interrupted(BaseException):
    """A signal outside a command's own handling (while Typer builds or parses it), carried past
    Typer, which would turn the ``KeyboardInterrupt`` into a silent exit 130 whatever the signal."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__(interrupt)
        self.interrupt = interrupt


class _Stdout:
    """``sys.stdout`` while a command runs: a write that fails is the command's error (one line,
    or quiet when the reader left), never a traceback from the middle of a print."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guarded(self, operation: Callable[..., Any], *args: Any) -> Any:
        import errno

        try:
            return operation(*args)
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                # Python flushes stdout again at exit: point it at nothing, so that flush is quiet.
                import os

                with contextlib.suppress(OSError, ValueError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
                raise StandardOutputClosed("") from None
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _guarded_stdout() -> Iterator[None]:
    stream = sys.stdout
    if stream is None:  # closed by the caller (`>&-`): nothing to guard; each command checks its own need
        yield
        return
    sys.stdout = _Stdout(stream)
    try:
        yield
    finally:
        sys.stdout = stream


def _bare_flags(params: list[Any]) -> list[Any]:
    """``params`` with each flag's value label left out of ``--help``: Typer labels a flag
    ``<bool>``, as if it took a value (``--quiet <bool>``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """Every command's class: its flags show no value label in ``--help``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))


class Commands(TyperGroup):
    """Typer's usage errors (a bad integer, a missing option, an unknown command) printed as
    one ``error:`` line like every other error, not as a panel; a signal while Typer parses
    ends the command like one during its work. Its flags show no value label in ``--help``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _bare_flags(super().get_params(ctx))

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt as exc:
            raise _Interrupted(exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted(exc) from None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
        from typer.exceptions import Abort

        # Handlers can only be set from the main thread (an embedding host may call us elsewhere).
        main_thread = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, raise_terminated) for s in TERMINATING_SIGNALS} if main_thread else {}
        try:
            with _guarded_stdout():
                code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:  # Typer has printed the help already
            code = exc.exit_code
        except UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            error_line(f"{exc.format_message()}{where}")
            code = exc.exit_code
        except _Interrupted as exc:
            what, code = interruption(exc.interrupt)
            error_line(what)
        except Abort:  # end of input at a prompt
            code = 1
        except BgmExportError as exc:  # standard output failing outside a command (--help, --version)
            if str(exc):
                error_line(str(exc))
            code = exc.exit_code
        finally:
            for signum, handler in previous.items():  # None: not Python's; the default is the nearest
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=Commands,
    help="Export BackgroundMattingV2 (MobileNetV2, ResNet-50, ResNet-101) to ONNX and OpenVINO IR, and prove parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def user_errors(command: F) -> F:
    """Turn ``BgmExportError`` into ``error: ...`` on stderr and its exit code."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except BgmExportError as exc:
            if str(exc):  # StandardOutputClosed has nothing to say, and nowhere to say it but stderr
                error_line(str(exc))
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt as exc:
            what, code = interruption(exc)
            # ``outcome``: what a signal after the output was complete found (exporter.matte).
            error_line(f"{what}; {getattr(exc, 'outcome', 'no partial output was left')}")
            raise typer.Exit(code=code) from None

    return wrapper  # type: ignore[return-value]


def printer(quiet: bool) -> Callable[[str, float], None] | None:
    if quiet:
        return None
    return lambda name, seconds: typer.echo(f"  {name:<9} {seconds:7.2f} s")


def progress(message: str) -> None:
    typer.echo(f"  {printable(message)}", err=True)


def capped(name: str, quiet: bool) -> None:
    """``--cpu-isa``: the cap set, and the kernels that show it took effect."""
    from exporter.isa import limit_cpu_isa

    isa = limit_cpu_isa(name)
    if not quiet:
        progress(f"{isa.description} (checked: {', '.join(isa.kernels)})")


def warn(message: str | None) -> None:
    if message:
        typer.secho(f"warning: {printable(message)}", err=True, fg=typer.colors.YELLOW)


@contextlib.contextmanager
def frame_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """An ``on_frame(done, total)`` drawing a bar with the rate, once there is more than one frame."""
    bars: list = []
    started = time.perf_counter()

    def rate(_: object) -> str:
        done = bars[0].pos if bars else 0
        return f"{done / max(time.perf_counter() - started, 1e-9):.1f} frames/s"

    def on_frame(done: int, total: int) -> None:
        if total > 1 and not bars:
            bars.append(typer.progressbar(length=total, label=label, file=sys.stderr, item_show_func=rate).__enter__())
        if bars:
            bars[0].update(1)

    try:
        yield on_frame
    finally:
        if bars:
            bars[0].__exit__(None, None, None)


Backbone = Literal[tuple(BACKBONES)]  # type: ignore[valid-type]
Preset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
Family = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]
Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
RefineMode = Literal[REFINE_MODES]  # type: ignore[valid-type]
ModelType = Literal[tuple(MODEL_TYPES)]  # type: ignore[valid-type]
InferencePrecision = Literal[INFERENCE_PRECISIONS]  # type: ignore[valid-type]


def _by_preset(value: Callable[[Any], object]) -> str:
    """Each preset's value of a setting, for the help: ``720p 720, 1080p 1080, 4k 2160``."""
    return ", ".join(f"{name} {value(config)}" for name, config in PRESETS.items())


CheckpointOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="The original's weights: pytorch_<backbone>.pth (a state_dict), torchscript_<backbone>_fp32/fp16.pth "
        "or an ONNX export of it (onnx_mobilenetv2_hd.onnx, bgm_mobilenetv2.onnx); the model is read from it "
        "(default: checkpoints/pytorch_<backbone>.pth, else synthetic weights)."
    ),
]
BackboneOpt = Annotated[
    Optional[Backbone],
    typer.Option(
        help=f"The model when no checkpoint is given (default {DEFAULT_BACKBONE}); checked against the checkpoint "
        "when one is."
    ),
]
PresetOpt = Annotated[
    Optional[Preset],
    typer.Option(help=f"Resolution preset, the base of every setting below (default {DEFAULT_PRESET})."),
]
HeightOpt = Annotated[
    Optional[int],
    typer.Option(help=f"Input height in pixels (default from the preset: {_by_preset(lambda c: c.height)})."),
]
WidthOpt = Annotated[
    Optional[int],
    typer.Option(help=f"Input width in pixels (default from the preset: {_by_preset(lambda c: c.width)})."),
]
ScaleOpt = Annotated[
    Optional[float],
    typer.Option(
        help="The base network's input size as a fraction of the input's, at most 0.5 (default from the preset: "
        f"{_by_preset(lambda c: f'{c.backbone_scale:g}')})."
    ),
]
ModeOpt = Annotated[
    Optional[RefineMode], typer.Option(help=f"Refine mode (default {PRESETS[DEFAULT_PRESET].refine_mode}).")
]
PixelsOpt = Annotated[
    Optional[int],
    typer.Option(
        help="Pixels refined in sampling mode, in 4x4 patches (default from the preset: "
        f"{_by_preset(lambda c: c.sample_pixels)})."
    ),
]
ThresholdOpt = Annotated[
    Optional[float],
    typer.Option(
        help="Error threshold in thresholding mode, in [0, 1) on the coarse error map "
        f"(default {PRESETS[DEFAULT_PRESET].threshold:g})."
    ),
]
OpsetOpt = Annotated[Optional[int], typer.Option(help=f"ONNX opset (default {DEFAULT_OPSET}).")]
ExtraOutputsOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Comma-separated diagnostic outputs of the refine model: err (err_sm, the coarse error map at the "
        "backbone scale), ref (ref_sm, 1 where a 4x4 patch was refined, quarter resolution) (default: none)."
    ),
]
DynamicOpt = Annotated[
    Optional[bool],
    typer.Option(
        "--dynamic",
        is_flag=True,
        help="One model for any height and width valid at the backbone scale (OpenVINO compiles it for one "
        "shape); --height/--width (or the preset) are the size it is traced and verified at.",
    ),
]
ModelTypeOpt = Annotated[
    Optional[ModelType],
    typer.Option(
        help="refine (default): MattingRefine, outputs pha, fgr; base: MattingBase, the network without the "
        "refiner at the input's resolution, outputs pha, fgr, err, hid (the original's --model-type mattingbase)."
    ),
]


def _onnx_weights(value: str) -> str:
    # Typer would refuse a bad value with "Value error," and the values lower-cased: named
    # here as the help and the config name them.
    for choice in ONNX_WEIGHTS:
        if value.upper() == choice:
            return choice
    raise typer.BadParameter(f"{value!r} is not one of {', '.join(ONNX_WEIGHTS)}")


OnnxWeightsOpt = Annotated[
    Optional[str],
    typer.Option(
        parser=_onnx_weights,
        metavar=f"<{'|'.join(ONNX_WEIGHTS)}>",
        help="How the ONNX stores its weights: FP32 (default); FP16 (the large tensors) or INT8 (the convolutions', "
        "per output channel), turned back into FP32 in the graph: a smaller download for ONNX Runtime and "
        "browsers. An IR is made from FP32 weights only.",
    ),
]
TimeoutOpt = Annotated[
    Optional[float],
    typer.Option(
        help="With --server: seconds to wait for the server to connect and for each answer "
        f"(default {DEFAULT_TIMEOUT_SECONDS:g}).",
    ),
]
ArtifactsArg = Annotated[
    Optional[list[Path]], typer.Argument(help=".onnx / .xml files (default: what make export writes).")
]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write every number here (default: not written).")]
CpuIsaOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Cap OpenVINO's CPU kernels at this oneDNN ISA (ONEDNN_MAX_CPU_ISA: AVX2, AVX2_VNNI, AVX512_CORE, "
        "AVX512_CORE_VNNI, AVX512_CORE_BF16, AVX512_CORE_AMX), to judge INT8 as a CPU with only that ISA "
        "computes it; at most what this CPU has (default: no cap).",
    ),
]
ArithmeticOpt = Annotated[
    Optional[InferencePrecision],
    typer.Option(
        help="OpenVINO's arithmetic: auto (the device's default: bf16 on CPUs that have it), f32, bf16 or f16 "
        "(default: f32 and, where it differs, the device's default)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and warnings.")]
CasesOpt = Annotated[Optional[int], typer.Option(min=1, help="Synthetic composites to run (default 4).")]


def given(**options: object) -> dict[str, object]:
    """The options that were given on the command line (not None)."""
    return {name: value for name, value in options.items() if value is not None}


def load_weights(checkpoint: Path | None, backbone: str | None) -> Weights:
    from exporter.checkpoint import resolve_weights

    weights = resolve_weights(checkpoint, backbone)
    warn(weights.warning)
    return weights


def size_line(label: str, path: Path, size: int, sha256: str) -> str:
    return f"  {label:<5} {shown(str(path))}  {size / 1e6:.2f} MB  sha256 {sha256}"


# The declaration of each ExportConfig field that is an export option (settings.OPTION_FIELDS):
# a field is an option of every export once it is declared here (tests/test_cli.py checks
# that each one is, and that each declaration names a field).
FIELD_OPTIONS: dict[str, object] = {
    "height": HeightOpt,
    "width": WidthOpt,
    "backbone_scale": ScaleOpt,
    "refine_mode": ModeOpt,
    "sample_pixels": PixelsOpt,
    "threshold": ThresholdOpt,
    "opset": OpsetOpt,
    "model_type": ModelTypeOpt,
    "extra_outputs": ExtraOutputsOpt,
    "dynamic": DynamicOpt,
    "onnx_weights": OnnxWeightsOpt,
}
# The options every export takes (``onnx``, and ``ir`` without ``--onnx``), declared once:
# those choosing the weights and the preset, then the fields, in ExportConfig's order.
# ``export_options`` adds them to a command's signature and hands them over as one mapping.
EXPORT_OPTIONS: dict[str, object] = {
    "checkpoint": CheckpointOpt,
    "backbone": BackboneOpt,
    "preset": PresetOpt,
    **{name: FIELD_OPTIONS[name] for name in OPTION_FIELDS if name in FIELD_OPTIONS},
}


def export_options(command: F | None = None, *, without: tuple[str, ...] = ()) -> F:
    """``command(..., export: dict)`` gets ``EXPORT_OPTIONS`` (but those ``without``) as options
    of its own, placed before its ``quiet`` flag, and receives the given ones (not None) as
    ``export``. Used bare (``@export_options``) or with ``without`` (``@export_options(without=...)``)."""
    if command is None:
        return functools.partial(export_options, without=without)  # type: ignore[return-value]
    options = {name: annotation for name, annotation in EXPORT_OPTIONS.items() if name not in without}
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "export"]
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        for name, annotation in options.items()
    ]
    split = next((i for i, p in enumerate(own) if p.name == "quiet"), len(own))
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

    @functools.wraps(command)
    def wrapper(**kwargs: object) -> object:
        export = given(**{name: kwargs.pop(name) for name in options})
        return command(**kwargs, export=export)

    wrapper.__signature__ = signature.replace(parameters=[*own[:split], *shared, *own[split:]])  # type: ignore[attr-defined]
    del wrapper.__wrapped__  # Typer must read the signature above, not the command's own
    return wrapper  # type: ignore[return-value]


@app.command(cls=Command)
@user_errors
@export_options
def onnx(
    output: Annotated[
        Optional[Path],
        typer.Option(
            help="Where to write the .onnx (default models/<model name>.onnx; <model name>-fp16.onnx or -int8.onnx "
            "with --onnx-weights FP16 or INT8)."
        ),
    ] = None,
    quiet: QuietOpt = False,
    export: dict | None = None,
) -> None:
    """Export the Open Model Zoo ONNX model: inputs src, bgr (BGR 0..255); outputs pha, fgr."""
    from exporter.export.onnx import export_onnx

    config, weights = resolve_export(**(export or {}), on_warning=warn)
    result = export_onnx(config, weights, output, on_stage=printer(quiet))
    if not quiet:
        typer.echo(f"  nodes     {result.nodes_before} exported, {result.nodes_after} after simplification")
        typer.echo(size_line("onnx", result.path, result.size, result.sha256))


@app.command(cls=Command)
@user_errors
# An IR's precision is --precision: --onnx-weights (how an ONNX stores its weights) has no IR.
@export_options(without=("onnx_weights",))
def ir(
    precision: Annotated[
        Precision,
        typer.Option(case_sensitive=False, help="FP16, FP32 or INT8 (post-training quantization with NNCF)."),
    ],
    onnx: Annotated[
        Optional[Path], typer.Option("--onnx", help="Convert this .onnx (default: export one first).")
    ] = None,
    output: Annotated[
        Optional[Path], typer.Option(help="The .xml to write (default models/<PRECISION>/<model name>.xml).")
    ] = None,
    calibration: Annotated[
        Optional[Path],
        typer.Option(
            help="INT8: calibration frames, Open Model Zoo HumanMatting layout (com/, bgr/, optional pha/); "
            "default synthetic composites."
        ),
    ] = None,
    calibration_frames: Annotated[
        Optional[int], typer.Option(min=1, help="INT8: calibration frames to use (default 16).")
    ] = None,
    max_drop: Annotated[
        Optional[float],
        typer.Option(
            help="INT8: accuracy control (slower): revert layers until the agreement score "
            "(100 - alpha MAD x1e3 against FP32 or the true alpha) drops by at most this many points "
            "(default: no accuracy control)."
        ),
    ] = None,
    quiet: QuietOpt = False,
    export: dict | None = None,
) -> None:
    """Convert to OpenVINO IR (.xml + .bin) in FP32, FP16 or INT8."""
    from exporter.checked_ir import export_checked_ir
    from exporter.export.int8 import int8_options
    from exporter.export.openvino import export_ir

    export = export or {}
    int8 = int8_options(precision, calibration, calibration_frames, max_drop)
    if onnx is not None and export:
        raise ConfigError(f"{option_names(export)} cannot apply with --onnx: the ONNX file fixes the export")
    if onnx is not None:
        result = export_ir(onnx, output, precision, int8=int8, on_stage=printer(quiet), on_warning=warn)
    else:
        config, weights = resolve_export(**export, on_warning=warn)
        result = export_checked_ir(
            config, weights, output, precision, int8=int8, on_stage=printer(quiet), on_warning=warn
        )
    for message in result.warnings:
        warn(message)
    if not quiet:
        if result.int8:
            typer.echo(f"  kept in floating point: {result.int8['int8_fp_layers'].replace(',', ', ')}")
        typer.echo(size_line("xml", result.xml, result.xml_size, result.xml_sha256))
        typer.echo(size_line("bin", result.bin, result.bin_size, result.bin_sha256))


@app.command(cls=Command)
@user_errors
def verify(
    artifacts: ArtifactsArg = None,
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    cases: CasesOpt = None,
    seed: Annotated[
        Optional[int], typer.Option(min=0, help="Seed of the first synthetic composite (default 0).")
    ] = None,
    family: Annotated[
        Optional[Family],
        typer.Option(
            help="The synthetic composites: hard (hair strands, colours close to the background's, texture, sensor "
            "noise, a background captured a pixel or two off) or plain, the easier ones verify used before "
            "(default hard)."
        ),
    ] = None,
    images: Annotated[
        Optional[Path],
        typer.Option(
            help="Your own frames: com/, bgr/ (and pha/, fgr/ ground truth), Open Model Zoo layout; the best judge "
            "of an artifact, INT8 above all (default: synthetic composites only)."
        ),
    ] = None,
    json_path: JsonOpt = None,
    report: Annotated[
        Optional[Path], typer.Option(help="Write |d| heat-maps and patch maps (PNG) here (default: not written).")
    ] = None,
    fp32_max_abs: Annotated[
        Optional[float],
        typer.Option(help=f"FP32 bar: max |d| outside differing patches, in alpha 0..1 (default {tol.FP32_ATOL:g})."),
    ] = None,
    fp32_patch_share: Annotated[
        Optional[float],
        typer.Option(
            help=f"FP32 bar: share of patches off by > {tol.FP32_PATCH_DELTA:g}, 0..1 "
            f"(default {tol.FP32_PATCH_SHARE:g})."
        ),
    ] = None,
    fp16_mean_abs: Annotated[
        Optional[float], typer.Option(help=f"FP16 bar: mean |d|, in alpha 0..1 (default {tol.FP16_MEAN_ATOL:g}).")
    ] = None,
    fp16_patch_share: Annotated[
        Optional[float],
        typer.Option(
            help=f"FP16 bar: share of patches off by > {tol.FP16_PATCH_DELTA:g}, 0..1 "
            f"(default {tol.FP16_PATCH_SHARE:g})."
        ),
    ] = None,
    inference_precision: ArithmeticOpt = None,
    cpu_isa: CpuIsaOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Check every artifact against the eager model: parity per output, patch flips, accuracy.

    Exit 0 when every bar holds, 1 when any is missed, 2 for bad usage or input.
    """
    from exporter.verify import default_artifacts
    from exporter.verify import verify as run_verify
    from exporter.verify.compare import overridden_bars
    from exporter.verify.report import check_outputs, format_report, write_previews

    bars = overridden_bars(
        fp32_max_abs=fp32_max_abs, fp32_patch_share=fp32_patch_share,
        fp16_mean_abs=fp16_mean_abs, fp16_patch_share=fp16_patch_share,
    )  # fmt: skip
    check_outputs(json_path, report, *(artifacts or []), checkpoint)
    # Without either, each artifact is checked against its own backbone's default weights.
    if cpu_isa is not None:  # before OpenVINO's CPU plugin loads: it reads the cap then
        capped(cpu_isa, quiet)
    weights = None if checkpoint is None and backbone is None else load_weights(checkpoint, backbone)
    result = run_verify(
        artifacts or default_artifacts(),
        weights,
        cases=cases,
        seed=seed,
        family=family,
        images=images,
        bars=bars,
        inference_precision=inference_precision,
        on_progress=None if quiet else progress,
    )
    typer.echo(format_report(result))
    if json_path is not None:
        write_json(result.to_dict(), json_path)
        typer.echo(f"numbers: {json_path}")
    if report is not None:
        for path in write_previews(result, report):
            typer.echo(f"report: {path}")
    raise typer.Exit(code=0 if result.passed else 1)


@app.command(cls=Command)
@user_errors
def info(
    artifact: Annotated[
        Optional[Path], typer.Argument(help="An .onnx or .xml (default: the checkpoint's model).")
    ] = None,
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    preset: PresetOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Parameters, GFLOPs counted from the graph, op histogram, node counts, sizes, metadata."""
    from exporter.files import check_not_input
    from exporter.info import artifact_info, checkpoint_info, format_info

    check_not_input(json_path, artifact, checkpoint)
    if artifact is not None:
        refused = given(checkpoint=checkpoint, backbone=backbone, preset=preset)
        if refused:
            names = ", ".join(f"--{name}" for name in refused)
            raise ConfigError(f"{names} cannot apply to an artifact: the file fixes the model")
        result = artifact_info(artifact)
    else:
        config, weights = resolve_export(checkpoint, backbone, preset, on_warning=warn)
        result = checkpoint_info(config, weights)
    typer.echo(format_info(result))
    if json_path is not None:
        write_json(result.to_dict(), json_path)


@app.command(cls=Command)
@user_errors
def bench(
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    preset: PresetOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    sample_pixels: PixelsOpt = None,
    model_type: ModelTypeOpt = None,
    runs: Annotated[Optional[int], typer.Option(min=1, help="Timed runs per model after warm-up (default 20).")] = None,
    profile: Annotated[
        bool, typer.Option("--profile", help="Top ten layers, and the time by stage, from OpenVINO's counters.")
    ] = False,
    matte: Annotated[
        Optional[Path],
        typer.Option(
            help="Instead of exporting: time `matte` on a synthetic video against this IR alone (THROUGHPUT hint) "
            "(default: export every variant and time it)."
        ),
    ] = None,
    frames: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            help="With --matte: frames in the synthetic video (default 150); with --server: requests (default 48).",
        ),
    ] = None,
    server: Annotated[
        Optional[str],
        typer.Option(
            help="Instead of exporting: a V2 server (grpc://HOST:PORT or http://HOST:PORT) under --clients "
            "concurrent clients (default: export every variant and time it)."
        ),
    ] = None,
    model_name: Annotated[
        Optional[str], typer.Option(help="With --server: the served model's name (no default: required with it).")
    ] = None,
    clients: Annotated[
        Optional[int], typer.Option(min=1, help="With --server: concurrent clients, one request each (default 4).")
    ] = None,
    local: Annotated[
        Optional[Path],
        typer.Option(
            help="With --server: the IR it serves, timed here too (THROUGHPUT hint) for comparison (default: none)."
        ),
    ] = None,
    timeout: TimeoutOpt = None,
    web: Annotated[
        Optional[Path],
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Instead of exporting: this fixed-size ONNX in the browser module (headless Chromium, WebAssembly, "
            "1 and 2 threads) beside native ONNX Runtime and OpenVINO FP32 (f32), interleaved, each row's accuracy "
            "judged (default: export every variant and time it).",
        ),
    ] = None,
    warmup: Annotated[
        Optional[int],
        typer.Option(min=0, help=f"With --web: untimed frames each row runs first (default {WEB_WARMUP})."),
    ] = None,
    chromium: Annotated[
        Optional[Path], typer.Option(help=f"With --web: the Chromium to drive (default {DEFAULT_CHROMIUM}).")
    ] = None,
    inference_precision: ArithmeticOpt = None,
    cpu_isa: CpuIsaOpt = None,
    json_path: JsonOpt = None,
) -> None:
    """Latency and throughput: eager PyTorch, ONNX Runtime, IR FP32/FP16/INT8, and the original recipe's IR; or
    the browser module beside the native runtimes (--web)."""
    # exporter.bench imports torch: --web and --server import only what they run.
    from exporter.files import check_not_input, check_writable
    from exporter.settings import bench_mode

    mode = bench_mode(dict(
        checkpoint=checkpoint, backbone=backbone, preset=preset, height=height, width=width,
        sample_pixels=sample_pixels, model_type=model_type, runs=runs, profile=profile, matte=matte, frames=frames,
        server=server, model_name=model_name, clients=clients, local=local, timeout=timeout, web=web,
        warmup=warmup, chromium=chromium, inference_precision=inference_precision, cpu_isa=cpu_isa,
    ))  # fmt: skip
    if mode == "web":
        chromium = chromium or DEFAULT_CHROMIUM
    if json_path is not None:  # before the minutes of timing it would hold
        check_not_input(json_path, web, chromium, matte, local, checkpoint)
        check_writable(json_path)
    if cpu_isa is not None:
        capped(cpu_isa, False)
    if mode == "web":
        from exporter.webbench import WEB_RUNS, bench_web, format_web_bench

        result = bench_web(
            web, runs=runs or WEB_RUNS, warmup=WEB_WARMUP if warmup is None else warmup,
            chromium=chromium, on_progress=progress,
        )  # fmt: skip
        typer.echo(format_web_bench(result))
        if json_path is not None:
            write_json(result.to_dict(), json_path)
        # A row whose answer missed the FP32 bars, or that ran other threads than asked: its
        # speed does not count, and a script must be able to tell (as verify's exit code).
        raise typer.Exit(code=0 if result.passed else 1)
    if mode == "server":
        from exporter.bench import bench_server, format_server_bench
        from exporter.remote import parse_remote

        result = bench_server(
            parse_remote(server, model_name, timeout=timeout), clients or 4, frames or 48, local=local,
            json_path=json_path, inference_precision=inference_precision or "auto", on_progress=progress,
        )  # fmt: skip
        typer.echo(format_server_bench(result))
    elif mode == "matte":
        from exporter.bench import MATTE_BENCH_FRAMES, bench_matte, format_matte_bench

        result = bench_matte(
            matte, frames or MATTE_BENCH_FRAMES, json_path=json_path, inference_precision=inference_precision or "auto",
            on_progress=progress,
        )  # fmt: skip
        typer.echo(format_matte_bench(result))
    else:
        from exporter.bench import bench as run_bench
        from exporter.bench import format_bench

        config, weights = resolve_export(
            checkpoint, backbone, preset, height=height, width=width, sample_pixels=sample_pixels,
            model_type=model_type, on_warning=warn,
        )  # fmt: skip
        result = run_bench(
            config, weights, runs=runs or 20, profile=profile, inference_precision=inference_precision,
            on_progress=progress,
        )  # fmt: skip
        typer.echo(format_bench(result))
    if json_path is not None:
        write_json(result.to_dict(), json_path)


@app.command(cls=Command)
@user_errors
def card(
    artifacts: ArtifactsArg = None,
    output: Annotated[Path, typer.Option(help="The Markdown file to write.")] = Path("models/MODEL_CARD.md"),
    checkpoint: CheckpointOpt = None,
    backbone: BackboneOpt = None,
    cases: Annotated[
        Optional[int], typer.Option(min=1, help="Synthetic composites for the accuracy table (default 4).")
    ] = None,
    images: Annotated[
        Optional[Path],
        typer.Option(help="Real data with ground truth (com/, bgr/, pha/, fgr/) (default: synthetic composites only)."),
    ] = None,
) -> None:
    """Write the Open Model Zoo model card of the artifacts, every number measured now."""
    from exporter.card import write_card

    weights = None if checkpoint is None and backbone is None else load_weights(checkpoint, backbone)
    report = write_card(artifacts, output, weights, cases=cases, images=images)
    for message in report.warnings:
        warn(message)
    typer.echo(f"model card: {output}")


@app.command(cls=Command)
@user_errors
def repository(
    artifacts: Annotated[
        list[Path], typer.Argument(help=".xml / .onnx files to add, each as its model's next version.")
    ],
    out: Annotated[Path, typer.Option(help="The repository folder (created if needed).")],
    version: Annotated[
        Optional[int], typer.Option(min=1, help="This version (default: the next; refused if it exists).")
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Option(help="The model name (default: the artifact's; another for another resolution, say)."),
    ] = None,
    device: Annotated[str, typer.Option(help="OpenVINO Model Server's target_device.")] = "CPU",
    performance_hint: Annotated[
        Literal["THROUGHPUT", "LATENCY"], typer.Option(help="OpenVINO's PERFORMANCE_HINT in both engines' config.")
    ] = "THROUGHPUT",
) -> None:
    """Add artifacts to a model repository that OpenVINO Model Server and Triton both load.

    Writes <model>/<version>/model.xml+.bin (or model.onnx), <model>/config.pbtxt (Triton) and
    config.json (OpenVINO Model Server), each checked against the engine's own schema.
    """
    from exporter.repository import add_to_repository

    result = add_to_repository(artifacts, out, device=device, hint=performance_hint, version=version, name=name)
    typer.echo("\n".join(result.lines()))


@app.command(cls=Command)
@user_errors
def serve(
    target: Annotated[Path, typer.Argument(help="A repository folder (bgm-export repository) or one .xml / .onnx.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on; another than loopback makes the server reachable from others.")
    ] = DEFAULT_HOST,
    http_port: Annotated[int, typer.Option(min=0, max=65535, help="REST port (0: any free one).")] = DEFAULT_HTTP_PORT,
    grpc_port: Annotated[int, typer.Option(min=0, max=65535, help="gRPC port (0: any free one).")] = DEFAULT_GRPC_PORT,
    device: Annotated[str, typer.Option(help="OpenVINO device: CPU, GPU, NPU or AUTO.")] = "CPU",
    inference_precision: Annotated[
        InferencePrecision, typer.Option(help="OpenVINO's arithmetic: auto (the device's default), f32, bf16, f16.")
    ] = "auto",
    max_request_mb: Annotated[
        float, typer.Option(help="Largest request body (REST) or message (gRPC) taken, in MiB.")
    ] = DEFAULT_MAX_REQUEST_MB,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may take to arrive; a slower one is answered 408.")
    ] = DEFAULT_BODY_TIMEOUT_SECONDS,
) -> None:
    """Serve every model of a repository (or one artifact) over the Open Inference Protocol (KServe V2).

    REST (JSON and binary tensors) and gRPC, as OpenVINO Model Server, Triton and KServe speak
    it; health, model metadata and Prometheus metrics at /metrics. SIGTERM or Ctrl-C: the
    bodies still arriving are cut off (503), the requests being computed finish, then it exits 0.
    """
    from exporter.serve import Listening
    from exporter.serve import serve as run_serve
    from exporter.serve.server import is_loopback

    def ready(listening: Listening) -> None:
        for model in listening.models:
            typer.echo(f"  {model.name} version {model.version}: {model.path}")
        typer.echo(f"REST  {listening.rest}   (metrics: {listening.rest}/metrics)")
        typer.echo(f"gRPC  {listening.grpc}")
        typer.echo(f"inference on {device} in {listening.inference_precision} arithmetic; SIGTERM or Ctrl-C stops")
        if not is_loopback(host):
            warn(f"listening on {host}: reachable from other machines, with no authentication")
        sys.stdout.flush()

    summary = run_serve(
        target, host=host, http_port=http_port, grpc_port=grpc_port, device=device,
        inference_precision=inference_precision, max_request_mb=max_request_mb, body_timeout=body_timeout,
        on_ready=ready,
    )  # fmt: skip
    typer.echo(summary.line())


@contextlib.contextmanager
def summary_stream(to_stderr: bool) -> Iterator[None]:
    """Where ``typer.echo`` goes: stderr while stdout carries frames."""
    if not to_stderr:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


@app.command(cls=Command)
@user_errors
def matte(
    model: Annotated[
        Optional[Path], typer.Option(help="The exported model, .xml or .onnx (no default: this or --server).")
    ] = None,
    server: Annotated[
        Optional[str],
        typer.Option(
            help="Instead of --model: a KServe V2 server (ours, OpenVINO Model Server, Triton), "
            "grpc://HOST:PORT or http://HOST:PORT (REST, binary tensors); with --model-name (no default: this "
            "or --model)."
        ),
    ] = None,
    model_name: Annotated[
        Optional[str], typer.Option(help="With --server: the served model's name (no default: required with it).")
    ] = None,
    model_version: Annotated[
        Optional[str], typer.Option(help="With --server: its version (default: the server's choice).")
    ] = None,
    timeout: TimeoutOpt = None,
    *,
    src: Annotated[
        str,
        typer.Option(
            help="An image, a folder of frames, a video, camera:N (a capture device), a stream URL "
            "(rtsp://, http://, ...), or - for raw BGR24 frames on standard input (with --size)."
        ),
    ],
    bgr: Annotated[
        str,
        typer.Option(help="The captured background (an image), or first:N: the median of the source's first N frames."),
    ],
    target: Annotated[
        Optional[str], typer.Option(help="New background: a colour R,G,B, an image or a video (default 0,255,0).")
    ] = None,
    out: Annotated[
        str, typer.Option(help="Folder for alpha, foreground and composite files, or - for raw BGR24 composites.")
    ] = "matte",
    size: Annotated[
        Optional[str],
        typer.Option(help="With --src -: the frames' size in pixels, WxH (no default: required with it)."),
    ] = None,
    device: Annotated[str, typer.Option(help="OpenVINO device: CPU, GPU, NPU or AUTO.")] = "CPU",
    inference_precision: Annotated[
        InferencePrecision,
        typer.Option(help="OpenVINO's arithmetic: auto (the device's default: bf16 on CPUs that have it), f32, ..."),
    ] = "auto",
    outputs: Annotated[
        Optional[str],
        typer.Option(
            help="Comma-separated: composite (a video for a video source, PNGs otherwise), alpha, foreground "
            "(RGBA), composite-png, err and ref (a model exported with --extra-outputs err,ref). Default: "
            "composite for a video; alpha, foreground, composite otherwise."
        ),
    ] = None,
    align: Annotated[
        bool,
        typer.Option("--align", help="Warp the background onto each frame first (hand-held captures)."),
    ] = False,
    open_timeout: Annotated[
        Optional[float],
        typer.Option(help="Seconds a stream URL may take to open and send its first frame (default 10)."),
    ] = None,
) -> None:
    """Replace the background of images, video, a camera, a stream or piped frames with an exported model
    (or one on a model server: --server).

    Cameras and streams run in latency mode (the newest frame wins when the model falls
    behind); they and piped frames stop cleanly on Ctrl-C or SIGTERM.
    """
    from exporter.matte import (
        PipeOut,
        output_complete,
        parse_background,
        parse_model,
        parse_out,
        parse_outputs,
        parse_source,
        parse_target,
    )
    from exporter.matte import matte as run_matte
    from exporter.remote import with_timeout

    destination = parse_out(out)  # before stdout is redirected
    with summary_stream(isinstance(destination, PipeOut)), frame_bar("matting") as on_frame:
        summary = run_matte(
            with_timeout(parse_model(model, server, model_name, model_version), timeout),
            parse_source(src, size),
            parse_background(bgr),
            target=None if target is None else parse_target(target),
            out=destination,
            device=device,
            inference_precision=inference_precision,
            outputs=None if outputs is None else parse_outputs(outputs),
            align=align,
            on_frame=on_frame,
            open_timeout=open_timeout,
            on_status=progress,
        )
        with output_complete(destination):
            for message in summary.warnings:
                warn(message)
            typer.echo("\n".join(summary.lines(destination)))


@app.command(cls=Command)
@user_errors
def web(
    target: Annotated[Path, typer.Argument(help="An .onnx artifact (with --out), or a site folder (with --serve).")],
    out: Annotated[
        Optional[Path], typer.Option(help="Build the site into this new or empty folder (no default: this or --serve).")
    ] = None,
    serve: Annotated[bool, typer.Option("--serve", help="Serve the site on loopback (Ctrl-C stops).")] = False,
    port: Annotated[
        Optional[int], typer.Option(min=0, max=65535, help=f"Port (default {DEFAULT_WEB_PORT}; 0: any free one).")
    ] = None,
) -> None:
    """Run a model in the browser: a static site (the JavaScript module bgm.js, ONNX Runtime Web,
    the artifact byte for byte, a live camera page) that works offline, served here with the
    cross-origin isolation headers multi-threaded WebAssembly needs (docs/web.md)."""
    from exporter.web import Site, publish

    def ready(url: str) -> None:
        typer.echo(f"serving at {url} (loopback only; frames never leave the browser); Ctrl-C stops")
        sys.stdout.flush()

    def built(site: Site) -> None:
        typer.echo("\n".join(site.lines()))

    result = publish(target, out, serve, port, on_built=built, on_ready=ready)
    if result.stopped_by:
        typer.echo(f"stopped by {result.stopped_by}")


@app.callback(invoke_without_command=True)
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        typer.echo(f"bgm-export {__version__}")
        raise typer.Exit()
