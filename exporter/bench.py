"""What each runtime costs per frame: eager PyTorch, ONNX Runtime, OpenVINO IR FP32/FP16/INT8,
and the original repository's export recipe, timed in one run on one machine.

Latency is one synchronous request at a time (median and 90th percentile after warm-up).
Throughput is OpenVINO's THROUGHPUT hint with its optimal number of asynchronous requests;
for eager PyTorch and ONNX Runtime it is frames per second at that latency. Every number
is measured here and now; nothing is asserted about it in tests.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from exporter.checkpoint import Weights, build_model
from exporter.config import ExportConfig
from exporter.export.onnx import export_onnx
from exporter.export.openvino import export_ir
from exporter.export.upstream import export_upstream_onnx
from exporter.images import to_eager_input, to_model_input
from exporter.info import count_flops
from exporter.table import format_table
from exporter.verify.data import synthetic_case

__all__ = ["BenchReport", "BenchRow", "LayerCost", "bench", "format_bench"]

WARMUP = 3
SETTLE_SECONDS = 1.0


@dataclass
class LayerCost:
    name: str
    type: str
    kernel: str
    milliseconds: float


@dataclass
class BenchRow:
    """One model in one runtime."""

    name: str
    runtime: str
    precision: str  # weights
    inference: str  # arithmetic
    median_ms: float
    p90_ms: float
    throughput_fps: float  # OpenVINO: THROUGHPUT hint; otherwise one request at a time
    gflops: float
    speedup_latency: float = 0.0
    speedup_throughput: float = 0.0
    profile: list[LayerCost] = field(default_factory=list)

    @property
    def gflops_per_second(self) -> float:
        return self.gflops * self.throughput_fps


@dataclass
class BenchReport:
    config: ExportConfig
    checkpoint: str
    threads: int
    rows: list[BenchRow]

    def to_dict(self) -> dict:
        return {
            "resolution": [self.config.height, self.config.width],
            "sample_pixels": self.config.sample_pixels,
            "checkpoint": self.checkpoint,
            "threads": self.threads,
            "rows": [{**asdict(r), "gflops_per_second": r.gflops_per_second} for r in self.rows],
        }


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


def _openvino_rows(
    name: str, xml: Path, precision: str, inputs: dict, runs: int, gflops: float, profile: bool, f32: bool
) -> BenchRow:
    import openvino as ov

    core = ov.Core()
    extra = {"INFERENCE_PRECISION_HINT": "f32"} if f32 else {}
    compiled = core.compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY", **extra})
    inference = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    request = compiled.create_infer_request()
    row = _row(name, "openvino", precision, inference, _time(lambda: request.infer(inputs), runs), gflops)
    del request, compiled
    if profile:  # counters cost time of their own, so they are read from a separate run
        compiled = core.compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES", **extra})
        request = compiled.create_infer_request()
        _time(lambda: request.infer(inputs), 1)
        costs = [
            LayerCost(p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds() * 1000)
            for p in request.profiling_info
        ]
        row.profile = sorted(costs, key=lambda c: -c.milliseconds)[:10]
        del request, compiled

    compiled = core.compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", **extra})
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    frames = max(runs, 2 * len(queue))
    for _ in range(len(queue)):
        queue.start_async(inputs)
    queue.wait_all()
    start = time.perf_counter()
    for _ in range(frames):
        queue.start_async(inputs)
    queue.wait_all()
    row.throughput_fps = frames / (time.perf_counter() - start)
    return row


def bench(
    config: ExportConfig,
    weights: Weights,
    *,
    runs: int = 20,
    profile: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Export every variant at ``config`` into a scratch folder and time each."""
    import onnx
    import onnxruntime as ort

    say = on_progress or (lambda message: None)
    case = synthetic_case(config.height, config.width, 0)
    inputs = {"src": to_model_input(case.src), "bgr": to_model_input(case.bgr)}
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="bgm-bench-") as scratch:
        root = Path(scratch)
        say("exporting ONNX, IR FP32, IR FP16, IR INT8 and the original recipe's IR")
        ours = export_onnx(config, weights, root / "ours.onnx").path
        ir32 = export_ir(ours, root / "FP32" / "ours.xml", "FP32").xml
        ir16 = export_ir(ours, root / "FP16" / "ours.xml", "FP16").xml
        ir8 = export_ir(ours, root / "INT8" / "ours.xml", "INT8").xml
        upstream_onnx = export_upstream_onnx(config, weights, root / "upstream.onnx").path
        upstream = export_ir(upstream_onnx, root / "upstream" / "upstream.xml", "FP32").xml
        gflops = count_flops(onnx.load(str(ours)))[0]

        say("eager PyTorch")
        model = build_model(config, weights)
        src = torch.from_numpy(to_eager_input(case.src))
        bgr = torch.from_numpy(to_eager_input(case.bgr))
        with torch.no_grad():
            rows.append(_row("eager PyTorch", "torch", "FP32", "f32", _time(lambda: model(src, bgr), runs), gflops))

        say("ONNX Runtime")
        session = ort.InferenceSession(str(ours), providers=["CPUExecutionProvider"])
        rows.append(_row("ONNX", "onnxruntime", "FP32", "f32", _time(partial(session.run, None, inputs), runs), gflops))

        variants = [
            ("IR FP32", ir32, "FP32", True),
            ("IR FP32", ir32, "FP32", False),
            ("IR FP16", ir16, "FP16", False),
            ("IR INT8", ir8, "INT8", True),
            ("IR INT8", ir8, "INT8", False),
            ("original recipe IR FP32", upstream, "FP32", True),
            ("original recipe IR FP32", upstream, "FP32", False),
        ]
        for name, xml, precision, f32 in variants:
            say(f"OpenVINO {name} ({'f32' if f32 else 'device default'} arithmetic)")
            rows.append(_openvino_rows(name, xml, precision, inputs, runs, gflops, profile, f32))

    eager = rows[0]
    for row in rows:
        row.speedup_latency = eager.median_ms / row.median_ms
        row.speedup_throughput = row.throughput_fps / eager.throughput_fps
    return BenchReport(config, weights.label, torch.get_num_threads(), rows)


def _ratios(rows: list[BenchRow]) -> list[tuple[BenchRow, BenchRow]]:
    """The comparisons worth a line: IR FP32 against the original recipe's IR in the same
    arithmetic, and IR INT8 (both arithmetics) against IR FP32 and the original recipe's IR
    computing in f32 (8-bit arithmetic is what INT8 is for; f32 is what the FP32 IR promises)."""
    found = {(r.name, r.inference): r for r in rows}
    pairs = []
    for arithmetic in dict.fromkeys(r.inference for r in rows if r.name == "IR FP32"):
        if ("original recipe IR FP32", arithmetic) in found:
            pairs.append((found["IR FP32", arithmetic], found["original recipe IR FP32", arithmetic]))
    f32 = next((r.inference for r in rows if r.name == "IR FP32"), None)
    for row in (r for r in rows if r.name == "IR INT8"):
        for other in ("IR FP32", "original recipe IR FP32"):
            if (other, f32) in found:
                pairs.append((row, found[other, f32]))
    return pairs


def format_bench(report: BenchReport) -> str:
    config = report.config
    lines = [
        f"{config.model_name} at {config.height}x{config.width}, {config.patches:,} refined patches, "
        f"{report.rows[0].gflops:.2f} GFLOP a frame; torch threads {report.threads}; weights {report.checkpoint}",
        "",
    ]
    rows = [
        ("model", "runtime", "arithmetic", "median ms", "p90 ms", "x eager", "throughput fps", "x eager", "GFLOP/s")
    ]
    for r in report.rows:
        rows.append(
            (r.name, r.runtime, r.inference, f"{r.median_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.speedup_latency:.2f}",
             f"{r.throughput_fps:.2f}", f"{r.speedup_throughput:.2f}", f"{r.gflops_per_second:.0f}")
        )  # fmt: skip
    lines += format_table(rows)
    lines.append("")
    for row, other in _ratios(report.rows):
        lines.append(
            f"{row.name} ({row.inference}) vs {other.name} ({other.inference}): latency x"
            f"{other.median_ms / row.median_ms:.2f}, throughput x{row.throughput_fps / other.throughput_fps:.2f}"
        )
    for r in report.rows:
        if r.profile:
            lines += ["", f"Top layers, {r.name} ({r.inference}), ms in one request:"]
            lines += [f"  {c.milliseconds:7.2f}  {c.type:<14} {c.kernel:<24} {c.name}" for c in r.profile]
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

    @property
    def ratio(self) -> float:
        return self.matte_fps / self.model_fps

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


# Distinct synthetic frames in the benchmark video, repeated to its length (each takes a
# fraction of a second to draw at 720p).
_DISTINCT_FRAMES = 8


def bench_matte(model: Path, frames: int = 48, on_progress: Callable[[str], None] | None = None) -> MatteBench:
    """Write a ``frames``-frame synthetic video at the model's resolution, time the model
    alone (THROUGHPUT hint) on its frames, then ``matte`` with its default outputs."""
    import cv2
    import openvino as ov

    from exporter.artifact import artifact_metadata
    from exporter.config import ExportConfig
    from exporter.matte import VIDEO_CODEC, matte
    from exporter.runtime import load_runner

    say = on_progress or (lambda message: None)
    metadata = artifact_metadata(model)
    config = ExportConfig.from_metadata(metadata)
    height, width = config.height, config.width
    cases = [synthetic_case(height, width, 100 + i) for i in range(_DISTINCT_FRAMES)]
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
        # Compiled as matte compiles it: the device's own arithmetic, THROUGHPUT hint.
        runner = load_runner(model, "openvino", f32=False, throughput=True, metadata=metadata)
        compiled = runner.compiled
        queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        inputs = [{"src": to_model_input(c.src), "bgr": to_model_input(cases[0].bgr)} for c in cases]
        for i in range(len(queue)):
            queue.start_async(inputs[i % len(inputs)])
        queue.wait_all()
        start = time.perf_counter()
        for i in range(frames):
            queue.start_async(inputs[i % len(inputs)])
        queue.wait_all()
        model_fps = frames / (time.perf_counter() - start)
        del queue, compiled, runner

        say("matte, default outputs (the composite video)")
        time.sleep(SETTLE_SECONDS)
        summary = matte(model, video, background, out=root / "out")
    return MatteBench(str(model), (height, width), frames, model_fps, summary.fps, summary.model_share, summary.timings)


def format_matte_bench(result: MatteBench) -> str:
    height, width = result.resolution
    split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.timings.items())
    return "\n".join(
        [
            f"{result.model} at {width}x{height}, {result.frames} frames",
            f"model alone (THROUGHPUT hint)   {result.model_fps:.2f} frames/s",
            f"matte, composite video          {result.matte_fps:.2f} frames/s ({result.ratio:.0%} of the model's)",
            f"model busy {result.model_share:.0%} of matte's time; stages (overlapping): {split}",
        ]
    )
