"""What each runtime costs per frame: eager PyTorch, ONNX Runtime, OpenVINO IR FP32/FP16/INT8,
and the original repository's export recipe, timed in one run on one machine.

Latency is one synchronous request at a time (median and 90th percentile after warm-up).
Throughput is OpenVINO's THROUGHPUT hint with its optimal number of asynchronous requests;
for eager PyTorch and ONNX Runtime it is frames per second at that latency. Every number
is measured here and now; nothing is asserted about it in tests.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from exporter.checkpoint import Weights, build_model
from exporter.config import ExportConfig
from exporter.data import synthetic_cases
from exporter.eager import EagerRunner
from exporter.errors import ConfigError, InputError
from exporter.export.int8 import Int8Options, check_int8_size
from exporter.export.onnx import export_onnx
from exporter.export.openvino import export_ir
from exporter.export.upstream import export_upstream_onnx
from exporter.files import check_not_input, check_writable
from exporter.images import to_model_input
from exporter.info import count_flops
from exporter.pipeline.infer import InferStage
from exporter.remote import PROTOCOLS, Remote
from exporter.resources import cpu_description
from exporter.runtime import LayerTime, Runner, default_inference_precision, load_runner
from exporter.table import format_table

__all__ = [
    "BenchReport",
    "BenchRow",
    "ServerBench",
    "bench",
    "bench_server",
    "format_bench",
    "format_server_bench",
]

WARMUP = 3
SETTLE_SECONDS = 1.0


@dataclass
class BenchRow:
    """One model in one runtime and one arithmetic."""

    name: str
    runtime: str
    precision: str  # weights
    inference: str  # arithmetic
    median_ms: float
    p90_ms: float
    throughput_fps: float  # OpenVINO: THROUGHPUT hint, every stream busy; otherwise 1000 / median
    gflops: float
    speedup_latency: float = 0.0
    speedup_throughput: float = 0.0
    conv_share: float | None = None  # share of the profiled time (LATENCY hint) in convolutions
    profile: list[LayerTime] = field(default_factory=list)  # the costliest layers
    # The profiled ms: "convolutions", then the rest by the stage it belongs to, costliest first.
    time_by_stage: dict[str, float] = field(default_factory=dict)

    @property
    def gflops_per_second(self) -> float:
        return self.gflops * self.throughput_fps

    @property
    def label(self) -> str:
        return f"{self.name} ({self.inference})"


@dataclass
class BenchReport:
    config: ExportConfig
    checkpoint: str
    threads: int
    rows: list[BenchRow]
    cpu: str = ""
    notes: list[str] = field(default_factory=list)  # rows left out, and why

    def ratios(self) -> list[dict]:
        """Every IR against the original recipe's IR in the same arithmetic."""
        peers = {r.inference: r for r in self.rows if r.name == ORIGINAL}
        return [
            {
                "row": row.label,
                "against": peers[row.inference].label,
                "latency": peers[row.inference].median_ms / row.median_ms,
                "throughput": row.throughput_fps / peers[row.inference].throughput_fps,
            }
            for row in self.rows
            if row.runtime == "openvino" and row.name != ORIGINAL and row.inference in peers
        ]

    def to_dict(self) -> dict:
        return {
            "resolution": [self.config.height, self.config.width],
            "sample_pixels": self.config.sample_pixels,
            "checkpoint": self.checkpoint,
            "threads": self.threads,
            "cpu": self.cpu,
            "rows": [{**asdict(r), "gflops_per_second": r.gflops_per_second} for r in self.rows],
            "ratios": self.ratios(),
            "notes": self.notes,
        }


ORIGINAL = "original recipe IR FP32"
# OpenVINO's layer types that are convolutions (an INT8 one is a Convolution with an 8-bit
# kernel): the work the model is made of; everything else moves data.
CONVOLUTIONS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")
# Throughput rounds: every IR's rounds are interleaved with the others', and the median
# kept, so a neighbour's load on a shared machine falls on all of them alike.
THROUGHPUT_ROUNDS = 3


def _row(name: str, runtime: str, precision: str, inference: str, times: list[float], gflops: float) -> BenchRow:
    median = statistics.median(times)
    return BenchRow(
        name=name,
        runtime=runtime,
        precision=precision,
        inference=inference,
        median_ms=median,
        p90_ms=float(np.percentile(times, 90)),
        throughput_fps=1000 / median,
        gflops=gflops,
    )


def _time(run: Callable[[], object], runs: int) -> list[float]:
    # The previous runtime's worker threads may still be spinning: let them go to sleep.
    time.sleep(SETTLE_SECONDS)
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _throughput(runner: Runner, feeds: list[dict[str, np.ndarray]], frames: int) -> float:
    """Frames per second with every stream busy: the infer stage over ``frames`` requests,
    after one round of warm-up."""
    stage = InferStage(runner)
    stage.run(((None, feeds[i % len(feeds)]) for i in range(stage.depth)), lambda tag, outputs: None)
    start = time.perf_counter()
    stage.run(((None, feeds[i % len(feeds)]) for i in range(frames)), lambda tag, outputs: None)
    return frames / (time.perf_counter() - start)


def _video_feeds(cases: list) -> list[dict[str, np.ndarray]]:
    """The benchmark video's frames as the model takes them, all over its first background."""
    bgr = to_model_input(cases[0].bgr)
    return [{"src": to_model_input(case.src), "bgr": bgr} for case in cases]


def stage_of(layer: LayerTime, inputs: Iterable[str]) -> str:
    """What a layer's time is spent on: ``convolutions``; ``inputs`` for the conversion of the
    model's inputs to the device's arithmetic; else the module it was exported from
    (``/refiner/Gather_6`` -> ``refiner``, ``/downsample_half_1/Add`` -> ``downsample_half``:
    the deployed graph's stages, the original's blocks), or ``other``. OpenVINO names a
    reorder after the layers on both sides (``src_f32_bf16_/downsample/Reshape``,
    ``/Reshape_abcd_acdb_/refiner/conv3_image/Conv``): it counts for the layer it feeds (one
    that feeds an output, named after the output alone, for the layer it reads)."""
    if layer.type in CONVOLUTIONS:
        return "convolutions"
    if any(layer.name.startswith(f"{model_input}_") for model_input in inputs):
        return "inputs"
    name = layer.name
    if layer.type == "Reorder" and "_/" in name:
        name = "/" + name.rsplit("_/", 1)[1]
    match = re.match(r"/([a-z][a-z0-9_.]*?)(_\d+)?/", name)  # a module's (an op's is capitalised: /Div)
    return match.group(1) if match else "other"


def time_by_stage(layers: list[LayerTime], inputs: Iterable[str]) -> dict[str, float]:
    """A profiled inference's ms by ``stage_of``: convolutions first, then the rest costliest
    first (stages whose work all went into convolutions are left out)."""
    stages: dict[str, float] = {"convolutions": 0.0}
    for layer in layers:
        stage = stage_of(layer, inputs)
        stages[stage] = stages.get(stage, 0.0) + layer.milliseconds
    convolutions = stages.pop("convolutions")
    rest = sorted(((stage, ms) for stage, ms in stages.items() if ms > 0), key=lambda item: -item[1])
    return {"convolutions": convolutions, **dict(rest)}


@dataclass
class _Variant:
    name: str
    xml: Path
    precision: str
    arithmetic: str  # asked for: f32, the device's default, or the user's choice
    gflops: float  # what this graph computes a frame


def _eager_gflops(runner: EagerRunner, feeds: dict[str, np.ndarray]) -> float:
    """What the eager model computes a frame (its convolutions and matrix products, as
    ``count_flops`` counts a graph's): the original's arithmetic, which the deployed graph
    rearranges into more, cheaper operations."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        runner.infer(feeds)
    return counter.get_total_flops() / 1e9


def _openvino_rows(variants: list[_Variant], feeds: dict, runs: int, say: Callable) -> list[BenchRow]:
    """Latency (LATENCY hint, one request), the profile, then throughput (THROUGHPUT hint):
    each measured round by round across every variant, so the rows share the machine's
    moments."""
    rows = []
    for variant in variants:  # the profile first: counters cost time, so a runner of its own
        runner = load_runner(variant.xml, "openvino", inference_precision=variant.arithmetic, profile=True)
        for _ in range(WARMUP):
            runner.infer(feeds)
        layers = runner.layer_times()
        runner.close()
        stages = time_by_stage(layers, feeds)
        total = sum(stages.values())
        rows.append(BenchRow(variant.name, "openvino", variant.precision, "", 0.0, 0.0, 0.0, variant.gflops,
                             conv_share=stages["convolutions"] / total if total else 0.0,
                             profile=sorted(layers, key=lambda c: -c.milliseconds)[:10],
                             time_by_stage=stages))  # fmt: skip
    say("latency, one request at a time (rounds interleaved across the IRs)")
    runners = [load_runner(v.xml, "openvino", inference_precision=v.arithmetic) for v in variants]
    for row, runner in zip(rows, runners, strict=True):
        row.inference = runner.inference_precision
        for _ in range(WARMUP):
            runner.infer(feeds)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(runs):
        for runner, row_times in zip(runners, times, strict=True):
            start = time.perf_counter()
            runner.infer(feeds)
            row_times.append((time.perf_counter() - start) * 1000)
    for row, row_times, runner in zip(rows, times, runners, strict=True):
        row.median_ms, row.p90_ms = statistics.median(row_times), float(np.percentile(row_times, 90))
        runner.close()
    say(f"throughput, every stream busy ({THROUGHPUT_ROUNDS} rounds interleaved across the IRs)")
    runners = [load_runner(v.xml, "openvino", inference_precision=v.arithmetic, throughput=True) for v in variants]
    rates: list[list[float]] = [[] for _ in runners]
    for _ in range(THROUGHPUT_ROUNDS):
        for runner, row_rates in zip(runners, rates, strict=True):
            time.sleep(SETTLE_SECONDS)
            row_rates.append(_throughput(runner, [feeds], max(runs, 4 * runner.parallel)))
    for row, row_rates, runner in zip(rows, rates, runners, strict=True):
        row.throughput_fps = statistics.median(row_rates)
        runner.close()
    return rows


def bench(
    config: ExportConfig,
    weights: Weights,
    *,
    runs: int = 20,
    profile: bool = False,
    inference_precision: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Export every variant at ``config`` into a scratch folder and time each: eager PyTorch
    and ONNX Runtime in f32; each IR in f32 and, where it differs, in the device's default
    arithmetic (or only in ``inference_precision``). ``profile``: keep each IR's costliest layers in the report
    (their convolution share is always measured)."""
    import onnx

    say = on_progress or (lambda message: None)
    (case,) = synthetic_cases(config.height, config.width, 1, use="bench")
    inputs = case.feeds()
    # Where the device's default is f32 (CPUs without bf16), one row an IR: two rows of the same
    # arithmetic would time the same thing twice under one label.
    arithmetics = (
        tuple(dict.fromkeys(("f32", default_inference_precision())))
        if inference_precision is None
        else (inference_precision,)
    )
    rows: list[BenchRow] = []
    precisions, notes = ir_precisions(config, weights)
    with tempfile.TemporaryDirectory(prefix="bgm-bench-") as scratch:
        root = Path(scratch)
        say(f"exporting ONNX, IR {', IR '.join(precisions)} and the original recipe's IR")
        ours = export_onnx(config, weights, root / "ours.onnx").path
        irs = {p: export_ir(ours, root / p / "ours.xml", p, progress=False).xml for p in precisions}
        upstream = None  # the original recipe is MattingRefine's (no --model-type base, no extra outputs)
        if config.model_type == "refine" and not config.extra_outputs:
            upstream_onnx = export_upstream_onnx(config, weights, root / "upstream.onnx").path
            upstream = export_ir(upstream_onnx, root / "upstream" / "upstream.xml", "FP32").xml
        gflops = count_flops(onnx.load(str(ours)))[0]

        say("eager PyTorch")
        eager = EagerRunner(build_model(config, weights), config, weights.label)
        original = _eager_gflops(eager, inputs)
        rows.append(_row("eager PyTorch", "torch", "FP32", "f32", _time(partial(eager.infer, inputs), runs), original))

        say("ONNX Runtime")
        session = load_runner(ours, "onnxruntime")
        rows.append(_row("ONNX", "onnxruntime", "FP32", "f32", _time(partial(session.infer, inputs), runs), gflops))

        variants = [_Variant(f"IR {p}", xml, p, a, gflops) for p, xml in irs.items() for a in arithmetics]
        if upstream is not None:
            variants += [_Variant(ORIGINAL, upstream, "FP32", a, original) for a in arithmetics]
        say(f"OpenVINO: {len(variants)} IR and arithmetic pairs, profiled")
        rows += _openvino_rows(variants, inputs, runs, say)

    eager_row = rows[0]
    for row in rows:
        row.speedup_latency = eager_row.median_ms / row.median_ms
        row.speedup_throughput = row.throughput_fps / eager_row.throughput_fps
        if not profile:
            row.profile, row.time_by_stage = [], {}
    return BenchReport(config, weights.label, torch.get_num_threads(), rows, cpu_description(), notes)


def ir_precisions(config: ExportConfig, weights: Weights) -> tuple[list[str], list[str]]:
    """The IR precisions bench times at ``config``, and a note for each left out: INT8 of a
    trained model is refused below its size floor (``check_int8_size``), found before any export."""
    try:
        check_int8_size(config, Int8Options(), weights.synthetic)
    except ConfigError as exc:
        return ["FP32", "FP16"], [f"no IR INT8 row: {exc}"]
    return ["FP32", "FP16", "INT8"], []


def format_bench(report: BenchReport) -> str:
    config = report.config
    lines = [
        f"{config.model_name} at {config.height}x{config.width}, "
        f"{'no refiner' if config.model_type == 'base' else f'{config.patches:,} refined patches'}, "
        f"{report.rows[1].gflops:.2f} GFLOP a frame as exported ({report.rows[0].gflops:.2f} as the original "
        f"computes it); torch threads {report.threads}; weights {report.checkpoint}",
        f"CPU: {report.cpu}",
        "",
        "LATENCY: one request at a time (OpenVINO LATENCY hint)",
    ]
    rows = [("model", "runtime", "arithmetic", "median ms", "p90 ms", "x eager")]
    rows += [(r.name, r.runtime, r.inference, f"{r.median_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.speedup_latency:.2f}")
             for r in report.rows]  # fmt: skip
    lines += [*format_table(rows), "", "THROUGHPUT: every stream busy (OpenVINO THROUGHPUT hint; others 1000 / median)"]
    rows = [("model", "runtime", "arithmetic", "frames/s", "x eager", "GFLOP/s", "in convolutions")]
    rows += [(r.name, r.runtime, r.inference, f"{r.throughput_fps:.2f}", f"{r.speedup_throughput:.2f}",
              f"{r.gflops_per_second:.0f}", "" if r.conv_share is None else f"{r.conv_share:.0%}")
             for r in report.rows]  # fmt: skip
    lines += [*format_table(rows), ""]
    for ratio in report.ratios():
        lines.append(
            f"{ratio['row']} vs {ratio['against']}: latency x{ratio['latency']:.2f}, "
            f"throughput x{ratio['throughput']:.2f}"
        )
    if any(r.time_by_stage for r in report.rows):
        lines += ["", "Where one request's time goes (LATENCY hint), ms: convolutions, then the rest by stage:"]
    for r in report.rows:
        if r.time_by_stage:
            stages = ", ".join(f"{stage} {ms:.2f}" for stage, ms in r.time_by_stage.items())
            lines.append(f"  {r.label}: {stages}")
    for r in report.rows:
        if r.profile:
            lines += ["", f"Top layers, {r.label}, ms in one request (LATENCY hint):"]
            lines += [f"  {c.milliseconds:7.2f}  {c.type:<14} {c.kernel:<24} {c.name}" for c in r.profile]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


@dataclass
class MatteBench:
    """``matte`` end to end against the model alone, on the same frames in the same run."""

    model: str
    resolution: tuple[int, int]
    frames: int
    model_fps: float  # THROUGHPUT hint, asynchronous requests, inputs ready in memory
    matte_fps: float
    model_share: float
    timings: dict[str, float]
    cpu: str = ""

    @property
    def ratio(self) -> float:
        return self.matte_fps / self.model_fps

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


# The synthetic video's length: about ten seconds of matte at 720p, so that the pipeline's fill
# and drain (the first frames' decoding, the last ones' writing), which weigh about 15% on a
# 48-frame run, do not hide its steady rate.
MATTE_BENCH_FRAMES = 150
# Distinct synthetic frames in the benchmark video, repeated to its length (each takes a
# fraction of a second to draw at 720p).
_DISTINCT_FRAMES = 8


def bench_matte(
    model: Path,
    frames: int = MATTE_BENCH_FRAMES,
    json_path: Path | None = None,
    inference_precision: str = "auto",
    on_progress: Callable[[str], None] | None = None,
) -> MatteBench:
    """Write a ``frames``-frame synthetic video at the model's resolution, time the model
    alone on its frames (the infer stage ``matte`` uses, THROUGHPUT hint, inputs ready in
    memory), then ``matte`` with its default outputs. ``json_path``: checked here, before
    the work, against the model's files."""
    import cv2

    from exporter.artifact import artifact_metadata
    from exporter.config import ExportConfig
    from exporter.matte import matte
    from exporter.pipeline.sinks import VIDEO_CODEC

    say = on_progress or (lambda message: None)
    metadata = artifact_metadata(model)
    if json_path is not None:
        check_not_input(json_path, model)
        check_writable(json_path)
    config = ExportConfig.from_metadata(metadata)
    height, width = config.height, config.width
    cases = synthetic_cases(height, width, _DISTINCT_FRAMES, use="bench-matte")
    with tempfile.TemporaryDirectory(prefix="bgm-bench-matte-") as scratch:
        root = Path(scratch)
        say(f"writing a {frames}-frame {width}x{height} video")
        video = root / "in.mp4"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*VIDEO_CODEC), 25, (width, height))
        for i in range(frames):
            writer.write(cv2.cvtColor(cases[i % len(cases)].src, cv2.COLOR_RGB2BGR))
        writer.release()
        background = root / "bgr.png"
        cv2.imwrite(str(background), cv2.cvtColor(cases[0].bgr, cv2.COLOR_RGB2BGR))

        say("the model alone (THROUGHPUT hint)")
        time.sleep(SETTLE_SECONDS)
        # Compiled as matte compiles it: THROUGHPUT hint, the same arithmetic.
        runner = load_runner(model, "openvino", inference_precision=inference_precision, throughput=True,
                             metadata=metadata)  # fmt: skip
        feeds = _video_feeds(cases)
        model_fps = _throughput(runner, feeds, frames)
        runner.close()

        say("matte, default outputs (the composite video)")
        time.sleep(SETTLE_SECONDS)
        summary = matte(model, video, background, out=root / "out", inference_precision=inference_precision)
    return MatteBench(
        str(model), (height, width), frames, model_fps, summary.fps, summary.model_share, summary.timings,
        cpu_description(),
    )  # fmt: skip


def format_matte_bench(result: MatteBench) -> str:
    height, width = result.resolution
    split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.timings.items())
    return "\n".join(
        [
            f"{result.model} at {width}x{height}, {result.frames} frames; CPU: {result.cpu}",
            f"model alone (THROUGHPUT hint)   {result.model_fps:.2f} frames/s",
            f"matte, composite video          {result.matte_fps:.2f} frames/s ({result.ratio:.0%} of the model's)",
            f"model busy {result.model_share:.0%} of matte's time; stages (overlapping): {split}",
        ]
    )


@dataclass
class ServerBench:
    """A V2 server under ``clients`` concurrent clients (each one request at a time, on its own
    connection), beside the same IR's local THROUGHPUT frames/s when it was given."""

    server: str
    protocol: str
    resolution: tuple[int, int]
    clients: int
    frames: int
    server_fps: float
    latency_ms: dict[str, float]
    local: str | None = None
    local_fps: float | None = None
    cpu: str = ""
    rounds: int = 1

    @property
    def ratio(self) -> float | None:
        return self.server_fps / self.local_fps if self.local_fps else None

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def _clients(runners: list[Runner], feeds: list[dict[str, np.ndarray]], frames: int) -> tuple[float, list[float]]:
    """``frames`` requests shared by the runners, each its own client: the infer stage with one
    request in flight, on a thread of its own. Frames per second and every request's latency."""
    import threading

    latencies: list[float] = []
    failures: list[BaseException] = []

    def client(index: int, runner: Runner) -> None:
        share = range(index, frames, len(runners))
        items = ((time.perf_counter(), feeds[i % len(feeds)]) for i in share)
        try:
            InferStage(runner, depth=1).run(items, lambda started, _: latencies.append(time.perf_counter() - started))
        except BaseException as exc:  # raised in the caller's thread below
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i, r), name=f"bgm-client-{i}") for i, r in enumerate(runners)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if failures:
        raise failures[0]
    return frames / seconds, latencies


def bench_server(
    remote: Remote,
    clients: int = 4,
    frames: int = 48,
    *,
    local: Path | None = None,
    json_path: Path | None = None,
    inference_precision: str = "auto",
    on_progress: Callable[[str], None] | None = None,
) -> ServerBench:
    """Frames per second and latency percentiles (p50, p90, p99) of the model on a V2 server
    under ``clients`` concurrent clients, ``frames`` requests a round (after one warm-up
    request per client); with ``local``, the IR the server serves, timed here alone as
    ``matte`` runs it (THROUGHPUT hint, ``inference_precision``) in rounds interleaved with
    the server's, so that a neighbour's load on a shared machine falls on both alike. The
    medians of ``THROUGHPUT_ROUNDS`` rounds are kept (one round without ``local``)."""
    say = on_progress or (lambda message: None)
    if json_path is not None:
        check_not_input(json_path, *([local] if local else []))
        check_writable(json_path)
    runners: list[Runner] = []
    local_runner = None
    try:
        for _ in range(clients):  # inside the try: a refusal of the third closes the first two
            runners.append(remote.connect())
        _, _, height, width = runners[0].input_shape
        if local is not None:
            local_runner = load_runner(local, "openvino", inference_precision=inference_precision, throughput=True)
            if local_runner.input_shape != (1, 3, height, width):
                raise InputError(f"--local {local} takes {list(local_runner.input_shape)}; the server's model takes "
                                 f"{[1, 3, height, width]}")  # fmt: skip
        cases = synthetic_cases(height, width, _DISTINCT_FRAMES, use="bench")
        feeds = _video_feeds(cases)
        say(f"{remote}: {clients} clients, {frames} requests of {width}x{height} a round")
        _clients(runners, feeds, clients)  # warm-up: one request each
        server_fps, local_fps, latencies = [], [], []
        for round_ in range(THROUGHPUT_ROUNDS if local_runner else 1):
            fps, times = _clients(runners, feeds, frames)
            server_fps.append(fps)
            latencies += times
            if local_runner is not None:
                say(f"round {round_ + 1}: server {fps:.2f} frames/s; {local} here alone")
                time.sleep(SETTLE_SECONDS)  # the other side's threads go to sleep
                local_fps.append(_throughput(local_runner, feeds, frames))
                time.sleep(SETTLE_SECONDS)
    finally:
        for runner in [*runners, *([local_runner] if local_runner else [])]:
            runner.close()
    percentiles = {f"p{p}": float(np.percentile(latencies, p)) * 1000 for p in (50, 90, 99)}
    return ServerBench(
        remote.shown_url, PROTOCOLS[remote.protocol], (height, width), clients, frames, statistics.median(server_fps),
        percentiles, str(local) if local else None, statistics.median(local_fps) if local_fps else None,
        cpu_description(), len(server_fps),
    )  # fmt: skip


def format_server_bench(result: ServerBench) -> str:
    height, width = result.resolution
    latency = ", ".join(f"{name} {ms:.0f} ms" for name, ms in result.latency_ms.items())
    lines = [
        f"{result.server} ({result.protocol}) at {width}x{height}, {result.frames} requests a round, median of "
        f"{result.rounds}; CPU: {result.cpu}",
        f"server, {result.clients} concurrent clients   {result.server_fps:.2f} frames/s; latency {latency}",
    ]
    if result.local_fps is not None:
        lines.append(
            f"{result.local} here alone (THROUGHPUT hint)   {result.local_fps:.2f} frames/s; "
            f"the server gives {result.ratio:.0%} of it"
        )
    return "\n".join(lines)
