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
import errno
import math
import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from exporter.artifact import artifact_files, artifact_metadata
from exporter.errors import TERMINATING_SIGNALS, ArtifactError, ConfigError, InputError, OutputError, Terminated
from exporter.files import staging_folder
from exporter.images import read_image, same_aspect
from exporter.pipeline.infer import LATENCY_DEPTH, InferStage, nonfinite
from exporter.pipeline.prepare import COMPOSITED, Backdrop, Composite, Prepare, median_background, resize
from exporter.pipeline.sinks import PNG_SUFFIXES, PipeSink, PngSink, Sink, VideoSink
from exporter.pipeline.sources import (
    MAX_CAMERA_INDEX,
    MAX_PIPE_PIXELS,
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
from exporter.pipeline.waits import STOP_GRACE
from exporter.pipeline.writebehind import WriteBehind
from exporter.redact import redact_url
from exporter.remote import Remote, parse_remote
from exporter.runtime import load_runner

__all__ = [
    "OUTPUT_KINDS",
    "FirstFrames",
    "MatteSummary",
    "PipeOut",
    "matte",
    "output_complete",
    "parse_background",
    "parse_model",
    "parse_out",
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
# ``--open-timeout``'s bounds: under a millisecond FFmpeg reads as "none"; a day is a typo.
MAX_OPEN_TIMEOUT = 24 * 3600.0
# Digits as ``int`` reads them and ``str.isdigit`` does not refuse: ASCII only ("²" is a digit
# to isdigit, not to int).
_NUMBER = re.compile(r"[0-9]+")
# The signals a run's final moves hold back until every result is in place: those the CLI
# turns into an interrupt (an embedding host may handle them another way).
_HELD_SIGNALS = (signal.SIGINT, *TERMINATING_SIGNALS)


@dataclass(frozen=True)
class FirstFrames:
    """The background as the median of the source's first ``count`` frames (a live scene the
    subject steps into afterwards); those frames are not matted."""

    count: int


@dataclass(frozen=True)
class PipeOut:
    """Composite frames as raw BGR24 on ``stream`` (None: standard output)."""

    stream: BinaryIO | None = None

    @classmethod
    def standard(cls) -> PipeOut:
        """Standard output as it is now (before a summary is redirected onto stderr)."""
        if sys.stdout is None:
            raise OutputError("--out -: standard output is closed")
        return cls(sys.stdout.buffer)


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
    notes: list[str] = field(default_factory=list)  # what was chosen, for the summary (not warnings)
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
        lines = list(self.notes)
        lines += [f"background aligned: {self.alignment}"] if self.alignment else []
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
        count = len(self.files)
        lines.append(f"wrote {count} file{'s' * (count != 1)} to {where}" if count else f"wrote the frames to {where}")
        return lines


# ---- the command line's strings as typed values ----


def _bounded(text: str, low: int, high: int) -> int | None:
    """``text`` (ASCII digits) as a number from ``low`` to ``high``, or None. The digits are
    counted before ``int()`` reads them: Python refuses strings of more than 4,300 digits with
    a ValueError, and a number that long is never meant."""
    if not _NUMBER.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(high)):
        return None
    value = int(digits)
    return value if low <= value <= high else None


def _shown(text: str) -> str:
    """``text`` for an error line, cut short when it is long (a 5,000-digit number)."""
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text):,} characters)"


def _named(spec: str, option: str) -> str:
    """``spec`` unless it is empty: ``Path("")`` is the current folder, which nobody means."""
    if not spec.strip():
        raise InputError(f"{option} is empty: give a name")
    return spec


def parse_source(spec: str, size: str | None = None) -> SourceSpec:
    """``camera:N``, a stream URL, ``-`` (raw BGR24 frames of ``size`` WxH on standard input),
    or a path."""
    _named(spec, "--src")
    if size is not None and spec != "-":
        raise InputError("--size applies to --src - (raw frames on standard input) only")
    if spec == "-":
        if size is None:
            raise InputError("--src - needs --size WxH: raw frames carry no size")
        match = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*", size)
        if not match or not all(side.strip("0") for side in match.groups()):
            raise InputError(f"--size {_shown(size)!r} is not WIDTHxHEIGHT (for example 1280x720)")
        width, height = (_bounded(side, 1, MAX_PIPE_PIXELS) for side in match.groups())
        if width is None or height is None or width * height > MAX_PIPE_PIXELS:
            raise InputError(f"--size {_shown(size)}: larger than 8K (7680x4320); is --size right?")
        return Pipe(width, height)
    if spec.startswith("camera:"):
        index = _bounded(spec.removeprefix("camera:"), 0, MAX_CAMERA_INDEX)
        if index is None:
            raise InputError(
                f"--src {_shown(spec)}: a camera is camera:N, N its number from 0 to {MAX_CAMERA_INDEX} "
                "(camera:0 is /dev/video0)"
            )
        return Camera(index)
    if spec.lower().startswith("file://"):  # a local file: read as a file, in order
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(spec).path))
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
        _named(str(model), "--model")  # "" arrives as Path("."), a folder, refused as an artifact
        if model_name is not None or version is not None:
            raise InputError("--model-name and --model-version apply with --server only")
        return Path(model)
    return parse_remote(server, model_name, version)


def parse_target(spec: str) -> Target:
    """``R,G,B`` -> a colour; anything else -> the path of an image or a video."""
    parts = [part.strip() for part in _named(spec, "--target").split(",")]
    if len(parts) == 3 and all(_NUMBER.fullmatch(part) for part in parts):
        colour = tuple(_bounded(part, 0, 255) for part in parts)
        if None in colour:
            raise InputError(f"target colour {_shown(spec)} has a channel above 255")
        return colour  # type: ignore[return-value]
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"target {_shown(spec)} is neither a colour R,G,B nor an existing image or video")
    return path


def parse_background(spec: str) -> Path | FirstFrames:
    """``first:N`` -> the median of the source's first N frames; anything else -> an image."""
    if _named(spec, "--bgr").startswith("first:"):
        count = _bounded(spec.removeprefix("first:"), 1, MAX_BACKGROUND_FRAMES)
        if count is None:
            raise InputError(f"--bgr {_shown(spec)}: first:N takes N from 1 to {MAX_BACKGROUND_FRAMES}")
        return FirstFrames(count)
    return Path(spec)


def parse_out(spec: str) -> Path | PipeOut:
    """``-`` -> raw frames on standard output (taken now, before a summary is redirected
    onto stderr); anything else -> the output folder."""
    return PipeOut.standard() if _named(spec, "--out") == "-" else Path(spec)


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
    """The background at the frames' size, and notes on how it was made."""
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


def _check_outputs_free(out: Path, source: Source, kinds: set[str]) -> None:
    """No file this run writes may be named like a folder in ``out``: a file cannot replace a
    folder, and the run would fail after its work (checked before anything is written)."""
    planned = _planned_files(source, kinds)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(out) as entries:
        for entry in entries:
            if planned(entry.name) and entry.is_dir(follow_symlinks=False):
                raise OutputError(f"output {out / entry.name} is a folder; move it away or choose another --out")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP held back while the block runs, then handed to their own handlers:
    for a block that must not stop halfway. Signals reach Python's main thread only, so
    elsewhere nothing can stop the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    try:
        for signum in _HELD_SIGNALS:
            previous[signum] = signal.signal(signum, lambda number, _: caught.append(number))
        yield
    finally:
        for signum, handler in previous.items():
            # None: the handler was not set from Python; the default is the nearest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def _land(staging: Path, out: Path) -> None:
    """Every file of ``staging`` moved into ``out``, or none: a failed move undoes the moves
    before it and puts back the files they replaced (set aside in ``staging`` meanwhile)."""
    aside = staging / ".replaced"  # results never start with a dot
    moved: list[tuple[Path, Path | None]] = []  # (where a result landed, what it replaced)
    try:
        for item in sorted(staging.iterdir()):
            final, kept = out / item.name, None
            if os.path.lexists(final):
                if stat.S_ISDIR(os.lstat(final).st_mode):  # a rename cannot replace it
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(final))
                aside.mkdir(exist_ok=True)
                kept = aside / item.name
                final.replace(kept)
            try:
                item.replace(final)
            except OSError:
                if kept is not None:
                    kept.replace(final)
                raise
            moved.append((final, kept))
    except OSError as exc:
        for final, kept in reversed(moved):
            with contextlib.suppress(OSError):
                final.unlink()
                if kept is not None:
                    kept.replace(final)
        where = exc.filename or out
        raise OutputError(
            f"cannot move the results into {out} ({where}: {exc.strerror or exc}); none was left"
        ) from None


@contextlib.contextmanager
def output_complete(out: Path | PipeOut, landed: threading.Event | None = None) -> Iterator[None]:
    """An interrupt in the block says what it leaves as its ``outcome`` where "no partial
    output was left" would be false: the frames already written to standard output stay
    there; a run's results, once all in the folder ``out`` (``landed`` set; always when not
    given), are complete."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if isinstance(out, PipeOut):
            exc.outcome = "the frames written to standard output stay there"  # type: ignore[attr-defined]
        elif landed is None or landed.is_set():
            exc.outcome = f"the run had finished: its output in {out} is complete"  # type: ignore[attr-defined]
        raise


@contextlib.contextmanager
def _staging(out: Path, landed: threading.Event) -> Iterator[Path]:
    """A folder inside ``out`` whose files land in ``out`` on success, all of them or none.
    Ctrl-C and SIGTERM wait for the moves (a rename each) and for the staging folder's
    removal, which a failed run needs too: a folder half removed is partial output.
    ``landed``: set once the results are in ``out``."""
    with contextlib.ExitStack() as held, staging_folder(out, "matte") as staging:
        try:
            yield staging
        finally:
            held.enter_context(output_complete(out, landed))  # entered first: it sees a held signal
            held.enter_context(_signals_held())
        _land(staging, out)
        landed.set()


def _pipe_stream(out: PipeOut) -> BinaryIO:
    """Where ``--out -`` writes: refused when closed, or a terminal (raw video would flood it,
    as gzip refuses)."""
    stream = out.stream if out.stream is not None else PipeOut.standard().stream
    if getattr(stream, "closed", False):
        raise OutputError("--out -: standard output is closed")
    if stream.isatty():
        raise OutputError("--out - writes raw video: refusing to write it to a terminal; pipe it (| ffplay ...)")
    return stream


def _sinks(
    kinds: set[str], source: Source, out: Path | PipeOut, folder: Path | None, timings: Timings, stop: threading.Event
) -> list[Sink]:
    if isinstance(out, PipeOut):
        stream, shown = _pipe_stream(out), "the output pipe"
        with contextlib.suppress(AttributeError, OSError, ValueError):
            shown = "standard output" if stream.fileno() == 1 else "the output pipe"
        return [PipeSink(stream, stop, shown)]
    sinks: list[Sink] = []
    if source.video and "composite" in kinds:
        sinks.append(VideoSink(folder / "composite.mp4", source.fps, source.size, out / "composite.mp4"))
    pngs = _png_kinds(kinds, source.video)
    if pngs:
        sinks.append(PngSink(folder, pngs, out, timings))
    return sinks


class _Writer:
    """The writing side of a run: compositing and every sink, behind the write-behind
    threads; a frame's latency is taken when its last ordered write is done. ``model``: the
    model as the user named it, for the error a broken one's answer gets."""

    def __init__(
        self,
        sinks: list[Sink],
        composite: Composite,
        backdrop: Backdrop | None,
        timings: Timings,
        stop: threading.Event,
        model: str,
    ) -> None:
        self.sinks, self.composite, self.backdrop, self.timings = sinks, composite, backdrop, timings
        self.stop, self.model = stop, model
        self.behind = WriteBehind(WRITE_BEHIND, PNG_WRITERS, stop)

    def put(self, frame: Frame, outputs: dict[str, np.ndarray]) -> None:
        self.behind.put(lambda: self._write(frame, outputs))

    def _write(self, frame: Frame, outputs: dict[str, np.ndarray]) -> list:
        with self.timings.measure("write"):
            # Here, beside the model rather than in its collector: a live run's latency stays its own.
            broken = nonfinite(outputs, COMPOSITED)
            if broken is not None:
                raise ArtifactError(
                    f"{self.model} answered NaN or infinite values ({broken} of frame {frame.name}): the artifact "
                    "is broken; check it with bgm-export verify"
                )
            needs = any(sink.needs_composite for sink in self.sinks)
            matted = self.composite(outputs, self.backdrop() if needs and self.backdrop else None)
            jobs = [job for sink in self.sinks for job in sink.write(frame, matted)]
        self.timings.latency(time.perf_counter() - frame.captured)
        return jobs

    def close(self, finished: bool, grace: float | None = None) -> bool:
        """Wait for the writers (at most ``grace`` seconds when given); False when they were
        abandoned instead: past the grace, on an error, on an interrupt in the wait. A writer
        blocked on a reader that does not read gives up once abandoned."""
        try:
            if finished and not self.behind.drain(grace):
                finished = False
        except BaseException:
            finished = False
            raise
        finally:
            if not finished:
                self.stop.set()
            try:
                self.behind.close(finished)
            finally:
                for sink in self.sinks:
                    sink.close()
        return finished


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
    open_timeout: float | None = None,
    on_status: Callable[[str], None] | None = None,
) -> MatteSummary:
    """Matte every frame of ``src`` against the background ``bgr`` and write ``outputs``
    (``OUTPUT_KINDS``; default: the composite video for a sequence, alpha, foreground and
    composite PNGs for images) into ``out``, composited over ``target`` (default green).
    ``align``: warp the background onto each frame first (``exporter.align``). A live source
    (camera, stream) or a pipe stopped by Ctrl-C or SIGTERM ends the run cleanly. ``model``:
    an exported model, or a ``Remote`` one on a V2 server (which chooses device and arithmetic).
    ``open_timeout``: seconds a stream may take to open (default ``STREAM_OPEN_TIMEOUT``);
    ``on_status``: told what a wait of unknown length waits for (a stream's open)."""
    if open_timeout is not None:
        if not isinstance(src, Stream):
            raise InputError("--open-timeout applies to a stream URL (--src rtsp://..., http://, ...) only")
        if not (math.isfinite(open_timeout) and 0.001 <= open_timeout <= MAX_OPEN_TIMEOUT):
            raise InputError(f"--open-timeout {open_timeout}: give seconds from 0.001 to {MAX_OPEN_TIMEOUT:g}")
        src = Stream(src.url, open_timeout)
    remote = model if isinstance(model, Remote) else None
    metadata = None
    if remote is None:
        model = Path(model)
        metadata = artifact_metadata(model)  # a missing or wrong model file is named before any frame is read
    elif (device, inference_precision) != ("CPU", "auto"):
        raise ConfigError("--device and --inference-precision are the server's: give them to the server")
    if isinstance(out, PipeOut):
        _pipe_stream(out)  # closed or a terminal: said before anything is opened
    stop = threading.Event()  # set: every stage's blocked wait gives up (the writers were abandoned)
    landed = threading.Event()  # set: the results are in ``out``; an interrupt after it says so
    with output_complete(out, landed), contextlib.ExitStack() as stack:
        if isinstance(src, Stream) and on_status:
            on_status(f"opening {redact_url(src.url)} (up to {src.timeout:g} s)")
        source = open_source(src)
        stack.callback(source.close)
        kinds = _kinds(outputs, source, out, target)
        _check_maps(kinds, model, metadata)
        if isinstance(out, Path):
            _check_inputs_kept(out, source, kinds, None if remote else model, bgr, target)
            _check_outputs_free(out, source, kinds)
        if remote:
            runner = remote.connect()
        else:
            runner = load_runner(model, "openvino", device, inference_precision, throughput=True, metadata=metadata)
        stack.callback(runner.close)  # released here, not at interpreter exit (OpenVINO's threads abort then)
        arithmetic = runner.inference_precision
        timings = Timings("decode", "prepare", "model", "write")
        frames = _frames(source, timings)
        stack.callback(frames.close)  # the reader thread stops before its source is released
        stack.callback(source.stop)  # ...and a read it is blocked in gives up first
        background, notes = _background(bgr, source, frames, align)
        _, _, height, width = runner.input_shape
        prepare = Prepare(height, width, background, align)
        backdrop = Backdrop(target or DEFAULT_TARGET, source.size) if kinds & {"composite", "composite-png"} else None
        infer = InferStage(runner, LATENCY_DEPTH if source.live else None, timings, stop)
        start = time.perf_counter()
        with contextlib.nullcontext(None) if isinstance(out, PipeOut) else _staging(out, landed) as folder:
            writer = _Writer(_sinks(kinds, source, out, folder, timings, stop), Composite(source.size, height, width),
                             backdrop, timings, stop, str(remote or model))  # fmt: skip
            stopped = _run(frames, prepare, infer, writer, source, on_frame)
            warnings = []
            if source.stalled:
                if not infer.completed:
                    raise InputError(f"{source.stalled}; no frame was matted")
                warnings.append(f"stopped early: {source.stalled}; the frames before it were written")
                stopped = stopped or f"a stall ({source.stalled})"
            if not infer.completed:  # zero frames is a failure, never an empty success
                if isinstance(bgr, FirstFrames):
                    raise InputError(f"--bgr first:{bgr.count} took every frame of {source.label}: none was left "
                                     "to matte")  # fmt: skip
                raise InputError(f"{source.label} gave no frame to matte")
            written = [out / p.name for p in sorted(folder.iterdir())] if folder is not None else []
    timings.add("model", infer.model_seconds)
    latency = timings.latency_percentiles(50, 95)
    return MatteSummary(
        frames=infer.completed, seconds=time.perf_counter() - start, files=written, warnings=warnings, notes=notes,
        timings=timings.seconds(), alignment="; ".join(prepare.aligner.fits) if prepare.aligner else None,
        inference_precision=arithmetic, device=redact_url(remote.url) if remote else device, live=source.live,
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
    Ctrl-C or SIGTERM (returned as what stopped it), after writing every frame taken, when
    that takes at most ``STOP_GRACE`` seconds."""

    def feeds() -> Iterator[tuple[Frame, dict[str, np.ndarray]]]:
        for frame in frames:
            with writer.timings.measure("prepare"):
                prepared = prepare(frame)
            yield frame, prepared

    def written(frame: Frame, outputs: dict[str, np.ndarray]) -> None:
        writer.put(frame, outputs)
        if on_frame:
            on_frame(infer.completed, source.total or 0)

    finished, stopped, grace = False, None, None
    try:
        infer.run(feeds(), written)
        finished = True
    except KeyboardInterrupt as exc:
        # Files: an interrupted run leaves nothing. Live sources and pipes: what was taken is
        # written, unless nothing was, or the writers cannot finish within the grace (a reader
        # of our output that stopped reading): then it is an interrupt like any other.
        if source.total is not None or not infer.completed or writer.stop.is_set():
            raise
        finished, stopped, grace = True, "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C", STOP_GRACE
        if not writer.close(finished, grace):
            raise
        return stopped
    finally:
        if grace is None:
            writer.close(finished)
    return stopped
