"""Background replacement with an exported model: images, folders, video files, raw frames on
a pipe, cameras and network streams.

``matte()`` wires the stages of ``exporter.pipeline``: a source, the preparation of each
frame's feeds, the infer stage (requests in flight, results in order), and the sinks behind
the write-behind threads. Files are written into a staging folder first and moved into the
output folder only on success, so a failure leaves nothing half-written; raw frames can go
to a pipe instead. Files and pipes keep every frame; cameras and streams run in latency
mode: two requests in flight, and the newest frame wins when the model falls behind.

The library takes typed values; ``parse_*`` turn the command line's strings into them.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from exporter.artifact import artifact_files, artifact_metadata
from exporter.errors import ConfigError, InputError, OutputError, Terminated
from exporter.files import staging_folder
from exporter.images import read_image, same_aspect
from exporter.pipeline.infer import LATENCY_DEPTH, InferStage
from exporter.pipeline.prepare import Backdrop, Composite, Prepare, median_background, resize
from exporter.pipeline.sinks import PNG_SUFFIXES, PipeSink, PngSink, Sink, VideoSink
from exporter.pipeline.sources import (
    STREAM_SCHEMES,
    Camera,
    Frame,
    Pipe,
    Source,
    SourceSpec,
    Stream,
    open_source,
    read_ahead,
)
from exporter.pipeline.timings import Timings, timed
from exporter.pipeline.writebehind import WriteBehind
from exporter.remote import Remote, parse_remote
from exporter.runtime import load_runner

__all__ = [
    "OUTPUT_KINDS",
    "FirstFrames",
    "MatteSummary",
    "PipeOut",
    "matte",
    "parse_background",
    "parse_model",
    "parse_outputs",
    "parse_source",
    "parse_target",
]

# What can be written, as the original's --output-types: ``composite`` is a video for a video
# source and PNGs otherwise; ``composite-png`` asks for PNGs of a video's frames too.
# ``err`` and ``ref``: the error map and the refined patches, from a model exported with
# ``--extra-outputs err,ref``.
OUTPUT_KINDS = ("composite", "alpha", "foreground", "composite-png", "err", "ref")
VIDEO_DEFAULT_OUTPUTS = ("composite",)
IMAGE_DEFAULT_OUTPUTS = ("alpha", "foreground", "composite")
DEFAULT_TARGET = (0, 255, 0)
# Frames handed to the writers and not yet written: enough to keep every stage busy, few
# enough that memory stays flat.
WRITE_BEHIND = 8
PNG_WRITERS = 2
# The most frames ``--bgr first:N`` takes (their median is held in memory).
MAX_BACKGROUND_FRAMES = 100


@dataclass(frozen=True)
class FirstFrames:
    """The background as the median of the source's first ``count`` frames (a live scene the
    subject steps into afterwards); those frames are not matted."""

    count: int


@dataclass(frozen=True)
class PipeOut:
    """Composite frames as raw BGR24 on ``stream`` (None: standard output)."""

    stream: BinaryIO | None = None


Target = tuple[int, int, int] | Path


@dataclass
class MatteSummary:
    """What ``matte`` did: frames, wall time, files, and where the time went.

    ``timings``: seconds spent decoding, preparing inputs, inferring (the model's working
    time: equal to ``seconds`` when every request was always busy), and post-processing plus
    encoding (writer threads). The stages overlap. Live sources also give the latency from
    capture to written (``latency_ms``: p50 and p95) and the frames dropped.
    """

    frames: int
    seconds: float
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    alignment: str | None = None
    inference_precision: str = ""
    device: str = "CPU"
    live: bool = False
    dropped: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None  # "Ctrl-C" / "SIGTERM" when a live run was stopped

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def model_share(self) -> float:
        """Share of the wall time the model was working: 1.0 means the model is the limit."""
        return self.timings.get("model", 0.0) / self.seconds if self.seconds else 0.0

    @property
    def drop_rate(self) -> float:
        seen = self.frames + self.dropped
        return self.dropped / seen if seen else 0.0

    def lines(self, out: Path | PipeOut) -> list[str]:
        """What a person wants to read after the run (warnings are shown apart)."""
        split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.timings.items())
        lines = [f"background aligned: {self.alignment}"] if self.alignment else []
        if self.stopped:
            lines.append(f"stopped by {self.stopped}; every frame taken was written")
        lines += [
            f"{self.frames} frames in {self.seconds:.1f} s: {self.fps:.1f} frames per second",
            f"inference on {self.device} in {self.inference_precision} arithmetic",
            f"model busy {self.model_share:.0%} of the time (stages overlap: {split})",
        ]
        if self.live:
            lines.append(
                f"latency from capture to output p50 {self.latency_ms.get('p50', 0):.0f} ms, "
                f"p95 {self.latency_ms.get('p95', 0):.0f} ms; dropped {self.dropped} of "
                f"{self.frames + self.dropped} frames ({self.drop_rate:.0%})"
            )
        where = "standard output" if isinstance(out, PipeOut) else out
        lines.append(f"wrote {len(self.files)} files to {where}" if self.files else f"wrote the frames to {where}")
        return lines


# ---- the command line's strings as typed values ----


def parse_source(spec: str, size: str | None = None) -> SourceSpec:
    """``camera:N``, a stream URL, ``-`` (raw BGR24 frames of ``size`` WxH on standard input),
    or a path."""
    if size is not None and spec != "-":
        raise InputError("--size applies to --src - (raw frames on standard input) only")
    if spec == "-":
        if size is None:
            raise InputError("--src - needs --size WxH: raw frames carry no size")
        match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
        if not match or min(int(match[1]), int(match[2])) < 1:
            raise InputError(f"--size {size!r} is not WIDTHxHEIGHT (for example 1280x720)")
        return Pipe(int(match[1]), int(match[2]))
    if spec.startswith("camera:"):
        index = spec.removeprefix("camera:")
        if not index.isdigit():
            raise InputError(f"--src {spec}: a camera is camera:N, N its number (camera:0 is /dev/video0)")
        return Camera(int(index))
    if spec.lower().startswith(STREAM_SCHEMES):
        return Stream(spec)
    return Path(spec)


def parse_model(
    model: Path | None, server: str | None, model_name: str | None, version: str | None = None
) -> Path | Remote:
    """``--model PATH``, or ``--server URL --model-name NAME [--model-version V]``: one of the two."""
    if (model is None) == (server is None):
        raise InputError("give --model PATH (an exported model) or --server URL --model-name NAME, one of the two")
    if model is not None:
        if model_name is not None or version is not None:
            raise InputError("--model-name and --model-version apply with --server only")
        return Path(model)
    return parse_remote(server, model_name, version)


def parse_target(spec: str) -> Target:
    """``R,G,B`` -> a colour; anything else -> the path of an image or a video."""
    parts = spec.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() for p in parts):
        colour = tuple(int(p) for p in parts)
        if any(c > 255 for c in colour):
            raise InputError(f"target colour {spec} has a channel above 255")
        return colour  # type: ignore[return-value]
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"target {spec} is neither a colour R,G,B nor an existing image or video")
    return path


def parse_background(spec: str) -> Path | FirstFrames:
    """``first:N`` -> the median of the source's first N frames; anything else -> an image."""
    if spec.startswith("first:"):
        count = spec.removeprefix("first:")
        if not count.isdigit() or not 1 <= int(count) <= MAX_BACKGROUND_FRAMES:
            raise InputError(f"--bgr {spec}: first:N takes N from 1 to {MAX_BACKGROUND_FRAMES}")
        return FirstFrames(int(count))
    return Path(spec)


def parse_outputs(spec: str) -> tuple[str, ...]:
    """``alpha,composite`` -> the kinds to write."""
    kinds = tuple(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise InputError(
            f"--outputs {spec!r}: {', '.join(unknown) or 'nothing'} is not one of {', '.join(OUTPUT_KINDS)}"
        )
    return kinds


# ---- the rules, one function each ----


def _kinds(outputs: Collection[str] | None, source: Source, out: Path | PipeOut, target: Target | None) -> set[str]:
    """The kinds to write, checked against the source, the output and the target."""
    kinds = set(outputs) if outputs else set(VIDEO_DEFAULT_OUTPUTS if source.video else IMAGE_DEFAULT_OUTPUTS)
    unknown = kinds - set(OUTPUT_KINDS)
    if unknown:
        raise InputError(f"outputs {', '.join(sorted(unknown))}: not one of {', '.join(OUTPUT_KINDS)}")
    if isinstance(out, PipeOut) and kinds != {"composite"}:
        raise InputError("--out - writes the composite frames only; other outputs need an output folder")
    if isinstance(out, PipeOut) and not source.video:
        raise InputError("--out - writes a sequence of frames: give a video, a pipe, a camera or a stream")
    if target is not None and not kinds & {"composite", "composite-png"}:
        raise InputError(f"--target applies to the composite, which is not written (outputs: {', '.join(kinds)})")
    return kinds


def _png_kinds(kinds: set[str], video: bool) -> list[str]:
    """The PNGs written per frame: a sequence's composite is its video unless composite-png
    is asked for; an image's composite is its PNG."""
    pngs = [kind for kind in ("alpha", "foreground") if kind in kinds]
    if "composite-png" in kinds or (not video and "composite" in kinds):
        pngs.append("composite")
    return pngs + [kind for kind in ("err", "ref") if kind in kinds]


def _check_maps(kinds: set[str], model: Path | Remote, metadata: dict[str, str] | None) -> None:
    """``err``/``ref`` need a model that outputs ``err_sm``/``ref_sm`` (``--extra-outputs``)."""
    asked = [kind for kind in ("err", "ref") if kind in kinds]
    if not asked:
        return
    if metadata is None:
        raise InputError(f"--outputs {','.join(asked)}: written from a local model file only")
    outputs = metadata.get("outputs", "pha,fgr").split(",")
    missing = [kind for kind in asked if f"{kind}_sm" not in outputs]
    if missing:
        raise InputError(
            f"--outputs {','.join(missing)}: {model} has no {', '.join(f'{k}_sm' for k in missing)} output; "
            f"export it with --extra-outputs {','.join(missing)}"
        )


def _planned_files(source: Source, kinds: set[str]) -> Callable[[str], bool]:
    """Whether a file name in the output folder is one this run writes."""
    suffixes = [PNG_SUFFIXES[kind] for kind in _png_kinds(kinds, source.video)]
    if source.video:
        video = "composite" in kinds
        pattern = re.compile(rf"frame_\d{{6}}_({'|'.join(suffixes) or '-'})\.png")
        return lambda name: (video and name == "composite.mp4") or bool(pattern.fullmatch(name))
    stems = [file.stem for file in source.files if file.is_file()]
    return {f"{stem}_{suffix}.png" for stem in stems for suffix in suffixes}.__contains__


def _check_inputs_kept(
    out: Path, source: Source, kinds: set[str], model: Path | None, bgr: Path | FirstFrames, target: Target | None
) -> None:
    """No file this run writes may be one it reads, nor may its outputs join a folder of frames."""
    folder = out.resolve()
    if any(path.is_dir() and path.resolve() == folder for path in source.files):
        raise OutputError(f"output folder {out} is the source folder: its outputs would be read as frames next time")
    planned = _planned_files(source, kinds)
    inputs = [*source.files, *(artifact_files(model) if model is not None else [])]
    inputs += [item for item in (bgr, target) if isinstance(item, Path)]
    for path in inputs:
        if path.is_file() and path.resolve().parent == folder and planned(path.name):
            raise OutputError(f"output {out / path.name} would overwrite the input {path}; choose another --out")


def _background(bgr: Path | FirstFrames, source: Source, frames: Iterator[Frame], align: bool) -> tuple:
    """The background at the frames' size, and the warnings about it."""
    if isinstance(bgr, FirstFrames):
        first = [frame.image for _, frame in zip(range(bgr.count), frames, strict=False)]
        if len(first) < bgr.count:
            raise InputError(f"--bgr first:{bgr.count}: the source has only {len(first)} frames")
        return median_background(first), [f"background: the median of the first {bgr.count} frames"]
    background = read_image(Path(bgr))
    if not align and not same_aspect(background.shape[:2], source.size):
        # Resizing would stretch it: it cannot be a capture of the frames' view.
        (bh, bw), (fh, fw) = background.shape[:2], source.size
        raise InputError(
            f"background {bgr} is {bw}x{bh}, another aspect than the frames' {fw}x{fh}: it cannot be the "
            "same view; capture it with the same camera setting, or pass --align"
        )
    if background.shape[:2] == source.size:
        return background, []
    (bh, bw), (fh, fw) = background.shape[:2], source.size
    return resize(background, fw, fh), [f"background {bw}x{bh} resized to the source's {fw}x{fh}"]


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A folder inside ``out`` whose files are moved into ``out`` only on success."""
    with staging_folder(out, "matte") as staging:
        yield staging
        for item in sorted(staging.iterdir()):
            item.replace(out / item.name)


def _sinks(kinds: set[str], source: Source, out: Path | PipeOut, folder: Path | None, timings: Timings) -> list[Sink]:
    if isinstance(out, PipeOut):
        import sys

        return [PipeSink(out.stream if out.stream is not None else sys.stdout.buffer)]
    sinks: list[Sink] = []
    if source.video and "composite" in kinds:
        sinks.append(VideoSink(folder / "composite.mp4", source.fps, source.size))
    pngs = _png_kinds(kinds, source.video)
    if pngs:
        sinks.append(PngSink(folder, pngs, out, timings))
    return sinks


class _Writer:
    """The writing side of a run: compositing and every sink, behind the write-behind
    threads; a frame's latency is taken when its last ordered write is done."""

    def __init__(self, sinks: list[Sink], composite: Composite, backdrop: Backdrop | None, timings: Timings) -> None:
        self.sinks, self.composite, self.backdrop, self.timings = sinks, composite, backdrop, timings
        self.behind = WriteBehind(WRITE_BEHIND, PNG_WRITERS)

    def put(self, frame: Frame, outputs: dict[str, np.ndarray]) -> None:
        self.behind.put(lambda: self._write(frame, outputs))

    def _write(self, frame: Frame, outputs: dict[str, np.ndarray]) -> list:
        with self.timings.measure("write"):
            needs = any(sink.needs_composite for sink in self.sinks)
            matted = self.composite(outputs, self.backdrop() if needs and self.backdrop else None)
            jobs = [job for sink in self.sinks for job in sink.write(frame, matted)]
        self.timings.latency(time.perf_counter() - frame.captured)
        return jobs

    def close(self, finished: bool) -> None:
        try:
            self.behind.close(finished)
        finally:
            for sink in self.sinks:
                sink.close()


def _frames(source: Source, timings: Timings) -> Iterator[Frame]:
    """Every frame the source gives; files and pipes decoded ahead on a thread, live sources
    as they come (they have a thread of their own that keeps only the newest)."""
    frames = timed(source.frames(), timings, "decode")
    return frames if source.live else read_ahead(frames)


def matte(
    model: Path | Remote,
    src: SourceSpec,
    bgr: Path | FirstFrames,
    *,
    target: Target | None = None,
    out: Path | PipeOut = Path("matte"),
    device: str = "CPU",
    inference_precision: str = "auto",
    outputs: Collection[str] | None = None,
    align: bool = False,
    on_frame: Callable[[int, int], None] | None = None,
) -> MatteSummary:
    """Matte every frame of ``src`` against the background ``bgr`` and write ``outputs``
    (``OUTPUT_KINDS``; default: the composite video for a sequence, alpha, foreground and
    composite PNGs for images) into ``out``, composited over ``target`` (default green).
    ``align``: warp the background onto each frame first (``exporter.align``). A live source
    (camera, stream) or a pipe stopped by Ctrl-C or SIGTERM ends the run cleanly. ``model``:
    an exported model, or a ``Remote`` one on a V2 server (which chooses device and arithmetic)."""
    remote = model if isinstance(model, Remote) else None
    metadata = None
    if remote is None:
        model = Path(model)
        metadata = artifact_metadata(model)  # a missing or wrong model file is named before any frame is read
    elif (device, inference_precision) != ("CPU", "auto"):
        raise ConfigError("--device and --inference-precision are the server's: give them to the server")
    with contextlib.ExitStack() as stack:
        source = open_source(src)
        stack.callback(source.close)
        kinds = _kinds(outputs, source, out, target)
        _check_maps(kinds, model, metadata)
        if isinstance(out, Path):
            _check_inputs_kept(out, source, kinds, None if remote else model, bgr, target)
        if remote:
            runner = remote.connect()
        else:
            runner = load_runner(model, "openvino", device, inference_precision, throughput=True, metadata=metadata)
        stack.callback(runner.close)  # released here, not at interpreter exit (OpenVINO's threads abort then)
        arithmetic = runner.inference_precision
        timings = Timings("decode", "prepare", "model", "write")
        frames = _frames(source, timings)
        stack.callback(frames.close)  # the reader thread stops before its source is released
        background, warnings = _background(bgr, source, frames, align)
        _, _, height, width = runner.input_shape
        prepare = Prepare(height, width, background, align)
        backdrop = Backdrop(target or DEFAULT_TARGET, source.size) if kinds & {"composite", "composite-png"} else None
        infer = InferStage(runner, LATENCY_DEPTH if source.live else None, timings)
        start = time.perf_counter()
        with contextlib.nullcontext(None) if isinstance(out, PipeOut) else _staging(out) as folder:
            writer = _Writer(_sinks(kinds, source, out, folder, timings), Composite(source.size, height, width),
                             backdrop, timings)  # fmt: skip
            stopped = _run(frames, prepare, infer, writer, source, on_frame)
            written = [out / p.name for p in sorted(folder.iterdir())] if folder is not None else []
    timings.add("model", infer.model_seconds)
    latency = timings.latency_percentiles(50, 95)
    return MatteSummary(
        frames=infer.completed, seconds=time.perf_counter() - start, files=written, warnings=warnings,
        timings=timings.seconds(), alignment="; ".join(prepare.aligner.fits) if prepare.aligner else None,
        inference_precision=arithmetic, device=remote.url if remote else device, live=source.live,
        dropped=source.dropped,
        latency_ms={f"p{p}": s * 1000 for p, s in latency.items()}, stopped=stopped,
    )  # fmt: skip


def _run(
    frames: Iterator[Frame],
    prepare: Prepare,
    infer: InferStage,
    writer: _Writer,
    source: Source,
    on_frame: Callable[[int, int], None] | None,
) -> str | None:
    """Frames through the stages until the source ends; a live source or a pipe also ends on
    Ctrl-C or SIGTERM (returned as what stopped it), after writing every frame taken."""

    def feeds() -> Iterator[tuple[Frame, dict[str, np.ndarray]]]:
        for frame in frames:
            with writer.timings.measure("prepare"):
                prepared = prepare(frame)
            yield frame, prepared

    def written(frame: Frame, outputs: dict[str, np.ndarray]) -> None:
        writer.put(frame, outputs)
        if on_frame:
            on_frame(infer.completed, source.total or 0)

    finished, stopped = False, None
    try:
        infer.run(feeds(), written)
        finished = True
    except KeyboardInterrupt as exc:
        if source.total is not None:  # files: an interrupted run leaves nothing
            raise
        finished, stopped = True, "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
    finally:
        writer.close(finished)
    return stopped
