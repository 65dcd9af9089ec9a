"""Background replacement with an exported model: images, folders of frames, or video.

Frames of any size are letterboxed (aspect kept, centred, zero padding) to the model's
resolution, as Open Model Zoo's demo wrapper does, fed as BGR 0..255, and the results are
cropped and resized back. It writes the outputs asked for (``OUTPUT_KINDS``): the alpha
(8-bit PNG), the foreground (RGBA PNG), the composite over a colour, an image or a video
(PNGs, or a video for a video source). Everything is written into a staging folder first, so
a failure leaves nothing half-written in the output folder.

Folders and videos run as a pipeline: a thread decodes ahead, OpenVINO keeps its optimal
number of requests in flight (THROUGHPUT hint, ``AsyncInferQueue``), results are taken in
order, and post-processing and encoding run on writer threads. Every queue is bounded, so
memory stays flat however long the video.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.artifact import artifact_kind
from exporter.errors import InputError, OutputError
from exporter.files import remove_empty
from exporter.images import IMAGE_SUFFIXES, read_image, same_aspect, to_model_input
from exporter.runtime import Runner, load_runner

__all__ = [
    "OUTPUT_KINDS",
    "MatteResult",
    "MatteSummary",
    "Matter",
    "letterbox",
    "matte",
    "parse_outputs",
    "parse_target",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEVICES = ("CPU", "GPU", "NPU", "AUTO")
# What can be written, as the original's --output-types: ``composite`` is a video for a video
# source and PNGs otherwise; ``composite-png`` asks for PNGs of a video's frames too.
OUTPUT_KINDS = ("composite", "alpha", "foreground", "composite-png")
VIDEO_DEFAULT_OUTPUTS = ("composite",)
IMAGE_DEFAULT_OUTPUTS = ("alpha", "foreground", "composite")
# mp4v (MPEG-4 Part 2) is the codec every OpenCV build can both write and read back; the
# files play in browsers and players alike.
VIDEO_CODEC = "mp4v"
# Frames decoded ahead of inference, and frames handed to the writers not yet written:
# enough to keep every stage busy, few enough that memory does not grow with the video.
READ_AHEAD = 4
WRITE_BEHIND = 8
PNG_WRITERS = 2


@dataclass
class MatteResult:
    """One frame at its own size: alpha ``(H, W)`` 0..1, foreground ``(H, W, 3)`` RGB 0..1,
    composite ``(H, W, 3)`` RGB uint8."""

    pha: np.ndarray
    fgr: np.ndarray
    composite: np.ndarray


@dataclass
class MatteSummary:
    """What ``matte`` did: frames, wall time, files, and where the time went.

    ``timings``: seconds spent decoding (reader thread), preparing inputs, inferring (the
    requests' inference time over their number: equal to ``seconds`` when every request was
    always busy), and post-processing plus encoding (writer threads). The stages overlap.
    """

    frames: int
    seconds: float
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    alignment: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def model_share(self) -> float:
        """Share of the wall time the model was working: 1.0 means the model is the limit."""
        return self.timings.get("model", 0.0) / self.seconds if self.seconds else 0.0

    def lines(self, out: Path) -> list[str]:
        """What a person wants to read after the run (warnings are shown apart)."""
        split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.timings.items())
        lines = [f"background aligned: {self.alignment}"] if self.alignment else []
        return [
            *lines,
            f"{self.frames} frames in {self.seconds:.1f} s: {self.fps:.1f} frames per second",
            f"model busy {self.model_share:.0%} of the time (stages overlap: {split})",
            f"wrote {len(self.files)} files to {out}",
        ]


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def letterbox(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fit ``image`` into ``height x width`` keeping its aspect, centred on zeros.
    Returns the canvas and the box ``(top, left, h, w)`` the image occupies."""
    scale = min(height / image.shape[0], width / image.shape[1])
    h, w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    top, left = (height - h) // 2, (width - w) // 2
    canvas = np.zeros((height, width, *image.shape[2:]), image.dtype)
    canvas[top : top + h, left : left + w] = _resize(image, w, h)
    return canvas, (top, left, h, w)


class Matter:
    """A loaded model and a background, ready to matte frames of the background's size."""

    def __init__(self, runner: Runner, bgr_rgb: np.ndarray) -> None:
        self.runner = runner
        _, _, self.height, self.width = runner.input_shape
        self.size = bgr_rgb.shape[:2]
        self.bgr, self.box = letterbox(bgr_rgb, self.height, self.width)
        self._bgr_input = to_model_input(self.bgr)
        self._target: tuple[np.ndarray, np.ndarray] | None = None

    def inputs(self, src_rgb: np.ndarray, bgr_rgb: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The model's inputs for a frame (and, when aligned per frame, its own background)."""
        if src_rgb.shape[:2] != self.size:
            raise InputError(f"frame of {src_rgb.shape[1]}x{src_rgb.shape[0]} after a background of "
                             f"{self.size[1]}x{self.size[0]}: frames of one run must share a size")  # fmt: skip
        canvas, _ = letterbox(src_rgb, self.height, self.width)
        bgr = self._bgr_input if bgr_rgb is None else to_model_input(letterbox(bgr_rgb, self.height, self.width)[0])
        return {"src": to_model_input(canvas), "bgr": bgr}

    def model_outputs(self, src_rgb: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw ``pha``/``fgr`` on the letterboxed frame."""
        inputs = self.inputs(src_rgb)
        return self.runner.run(inputs["src"], inputs["bgr"])

    def __call__(self, src_rgb: np.ndarray, target: np.ndarray) -> MatteResult:
        return self.finish(self.model_outputs(src_rgb), target)

    def finish(self, out: dict[str, np.ndarray], target: np.ndarray) -> MatteResult:
        """The model's outputs cropped, resized back to the frame, and composited on ``target``.

        OpenCV's kernels, not NumPy expressions: at 720p this runs on every frame beside the
        model, on the same cores."""
        import cv2

        top, left, h, w = self.box
        height, width = self.size
        pha = np.clip(_resize(out["pha"][0, 0, top : top + h, left : left + w], width, height), 0, 1)
        planes = [_resize(plane[top : top + h, left : left + w], width, height) for plane in out["fgr"][0]]
        fgr = cv2.merge(planes)
        np.clip(fgr, 0, 1, out=fgr)
        background = self._float_target(target, width, height)
        composite = cv2.blendLinear(fgr, background, pha, 1 - pha)
        return MatteResult(pha, fgr, cv2.convertScaleAbs(composite, alpha=255))

    def _float_target(self, target: np.ndarray, width: int, height: int) -> np.ndarray:
        """``target`` as float32 0..1 at the frame's size; the last one is kept, since a
        colour or an image target is the same every frame."""
        if self._target is None or self._target[0] is not target:
            self._target = (target, _resize(target, width, height).astype(np.float32) / 255)
        return self._target[1]


def _open_video(path: Path):
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"cannot read video {path}")
    ok, _ = capture.read()
    if not ok:
        raise InputError(f"video {path} has no readable frame")
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return capture


def _video_frames(capture, path: Path, total: int) -> Iterator[np.ndarray]:
    """RGB frames; a video that stops decoding well before its announced frame count is an
    error, not a short result (containers may miscount by a frame, so a little slack)."""
    import cv2

    read = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        read += 1
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    capture.release()
    if total > 0 and read < total - max(1, total // 100):
        raise InputError(f"video {path} stopped decoding at frame {read + 1} of {total} (truncated or corrupt?)")


class _LoopingVideo:
    """A target video streamed frame by frame, from the start again when it ends, so that
    not even a long target is held in memory. Asked for frames in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._frames: Iterator[np.ndarray] = iter(())
        self._open()

    def _open(self) -> None:
        import cv2

        capture = _open_video(self.path)
        self._frames = _video_frames(capture, self.path, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))

    def __call__(self, index: int) -> np.ndarray:
        frame = next(self._frames, None)
        if frame is None:
            self._open()
            frame = next(self._frames, None)
        if frame is None:
            raise InputError(f"target video {self.path} has no readable frame")
        return frame


@dataclass
class _Source:
    names: list[str] | None  # None: a video, length unknown until read
    frames: Iterator[tuple[str, np.ndarray]]
    total: int
    size: tuple[int, int]
    fps: float | None = None


def _source(path: Path) -> _Source:
    import cv2

    path = Path(path)
    if not path.exists():
        raise InputError(f"source {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        stems = [p.stem for p in files]
        twins = sorted({p.name for p in files if stems.count(p.stem) > 1})
        if twins:  # their results would overwrite each other (a_alpha.png, ...)
            raise InputError(f"folder {path} has frames sharing a name: {', '.join(twins)}")
        first = read_image(files[0])  # read once: it fixes the size and is the first frame
        frames = itertools.chain([(files[0].stem, first)], ((p.stem, read_image(p)) for p in files[1:]))
        return _Source([p.stem for p in files], frames, len(files), first.shape[:2])
    if path.suffix.lower() in VIDEO_SUFFIXES:
        capture = _open_video(path)
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        size = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
        frames = ((f"frame_{i:06d}", frame) for i, frame in enumerate(_video_frames(capture, path, total)))
        return _Source(None, frames, total, size, capture.get(cv2.CAP_PROP_FPS) or 25.0)
    image = read_image(path)
    return _Source([path.stem], iter([(path.stem, image)]), 1, image.shape[:2])


def parse_target(spec: str) -> Callable[[int], np.ndarray] | tuple[int, int, int]:
    """``R,G,B`` -> a colour; an image path -> that image; a video path -> its frames in a loop."""
    parts = spec.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() for p in parts):
        colour = tuple(int(p) for p in parts)
        if any(c > 255 for c in colour):
            raise InputError(f"target colour {spec} has a channel above 255")
        return colour  # type: ignore[return-value]
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"target {spec} is neither a colour R,G,B nor an existing image or video")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return _LoopingVideo(path)
    image = read_image(path)
    return lambda index: image


# zlib level 1: at 720p an RGBA frame encodes in 40 ms instead of 137 ms at Pillow's
# default 6, for files about 1.5x larger; per-frame PNGs are written at video rates.
PNG_COMPRESSION = 1


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, compress_level=PNG_COMPRESSION)


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A folder inside ``out`` whose files are moved into ``out`` only on success."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".matte-", suffix=".partial", dir=out))
    except OSError as exc:
        raise OutputError(f"cannot write in {out}: {exc.strerror}") from None
    done = False
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            item.replace(out / item.name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            remove_empty(created)


def parse_outputs(spec: str | None, video: bool) -> tuple[str, ...]:
    """``alpha,composite`` -> the kinds to write; None -> the default for the source."""
    if spec is None:
        return VIDEO_DEFAULT_OUTPUTS if video else IMAGE_DEFAULT_OUTPUTS
    kinds = tuple(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))
    unknown = [kind for kind in kinds if kind not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise InputError(
            f"--outputs {spec!r}: {', '.join(unknown) or 'nothing'} is not one of {', '.join(OUTPUT_KINDS)}"
        )
    return kinds


_DONE = object()


def _read_ahead(items: Iterator, depth: int, timings: dict[str, float]) -> Iterator:
    """``items`` produced by a background thread (decoding overlaps inference), at most
    ``depth`` ahead; its exceptions are raised here, in order."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            while not stop.is_set():
                start = time.perf_counter()
                item = next(items, _DONE)
                timings["decode"] += time.perf_counter() - start
                buffer.put(item)
                if item is _DONE:
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="matte-reader", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a producer waiting for room
                buffer.get_nowait()
        thread.join(timeout=5)


class _Aligner:
    """The background warped onto each frame; estimated on the first frame and again every
    ``ALIGN_REFRESH_FRAMES`` frames (a failed refresh keeps the last good fit)."""

    def __init__(self, background: np.ndarray) -> None:
        self.background = background
        self.alignment = None
        self.fits: list[str] = []

    def __call__(self, index: int, frame: np.ndarray) -> np.ndarray:
        from exporter.align import ALIGN_REFRESH_FRAMES, estimate_alignment

        if self.alignment is None:
            self.alignment = estimate_alignment(self.background, frame)
            self.fits.append(f"frame {index}: {self.alignment.describe()}")
        elif index % ALIGN_REFRESH_FRAMES == 0:
            with contextlib.suppress(InputError):
                self.alignment = estimate_alignment(self.background, frame)
                self.fits.append(f"frame {index}: {self.alignment.describe()}")
        return self.alignment.warp(self.background, frame)


def matte(
    model: Path,
    src: Path,
    bgr: Path,
    *,
    target: str = "0,255,0",
    out: Path = Path("matte"),
    device: str = "CPU",
    outputs: str | None = None,
    align: bool = False,
    on_frame: Callable[[int, int], None] | None = None,
) -> MatteSummary:
    """Matte every frame of ``src`` against background image ``bgr`` and write ``outputs``
    (``OUTPUT_KINDS``, comma-separated; default: the composite video for a video, alpha,
    foreground and composite PNGs otherwise). ``align``: warp the background onto each frame
    first (``exporter.align``)."""
    import cv2

    if device.split(":")[0] not in DEVICES:
        raise InputError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    model = Path(model)
    artifact_kind(model)  # a missing or wrong model file is named before any frame is read
    source = _source(src)
    video = source.names is None
    kinds = parse_outputs(outputs, video)
    background = read_image(Path(bgr))
    backdrop = parse_target(target)
    warnings = []
    if not align and not same_aspect(background.shape[:2], source.size):
        # Resizing would stretch it: it cannot be a capture of the frames' view.
        (bh, bw), (fh, fw) = background.shape[:2], source.size
        raise InputError(
            f"background {bgr} is {bw}x{bh}, another aspect than the frames' {fw}x{fh}: it cannot be the "
            "same view; capture it with the same camera setting, or pass --align"
        )
    if background.shape[:2] != source.size:
        warnings.append(
            f"background {background.shape[1]}x{background.shape[0]} resized to the source's "
            f"{source.size[1]}x{source.size[0]}"
        )
        background = _resize(background, source.size[1], source.size[0])
    # Deployment arithmetic (the device's default), not verification's f32.
    runner = load_runner(model, "openvino", device, f32=False, throughput=True)
    matter = Matter(runner, background)
    aligner = _Aligner(background) if align else None
    # File suffixes of the PNGs per frame; an image's "composite" is its composite PNG.
    suffixes = {"alpha": "alpha", "foreground": "fgr", "composite-png": "composite"}
    if not video:
        suffixes["composite"] = "composite"
    pngs = tuple(dict.fromkeys(suffix for kind, suffix in suffixes.items() if kind in kinds))

    timings = {"decode": 0.0, "prepare": 0.0, "model": 0.0, "write": 0.0}
    slots = threading.BoundedSemaphore(WRITE_BEHIND)
    compiled = runner.compiled
    # Twice the compiled model's optimal number of requests, kept in flight and collected
    # in order (the spare ones keep every stream busy while the oldest is collected). No
    # completion callback: a Python callback would stall OpenVINO's threads on the GIL while
    # this process decodes and encodes.
    free = [
        compiled.create_infer_request() for _ in range(2 * compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    ]
    requests = len(free)
    in_flight: collections.deque = collections.deque()
    failures: list[BaseException] = []  # from the writer threads, raised in this one
    frames = 0
    start = time.perf_counter()
    with _staging(Path(out)) as staging:
        writer = None
        if video and "composite" in kinds:
            height, width = source.size
            writer = cv2.VideoWriter(str(staging / "composite.mp4"), cv2.VideoWriter_fourcc(*VIDEO_CODEC),
                                     source.fps, (width, height))  # fmt: skip
        # One writer thread keeps the video's frames in order; PNG encoding fans out.
        writer_pool = ThreadPoolExecutor(1, "matte-writer")
        png_pool = ThreadPoolExecutor(PNG_WRITERS, "matte-png")

        def record(job: Future) -> None:
            if job.exception() is not None:
                failures.append(job.exception())

        def save(image: np.ndarray, path: Path) -> None:
            begin = time.perf_counter()
            try:
                _save_png(image, path)
            except OSError as exc:  # a full disk, a vanished folder: the user's to fix
                raise OutputError(f"cannot write {Path(out) / path.name}: {exc.strerror or exc}") from None
            timings["write"] += time.perf_counter() - begin

        colour = None
        if isinstance(backdrop, tuple):
            colour = np.ascontiguousarray(np.broadcast_to(np.array(backdrop, np.uint8), (*source.size, 3)))

        def write(index: int, name: str, result_: dict[str, np.ndarray]) -> None:
            """Composite one frame, write it to the video, hand its PNGs to the encoders; the
            frame's slot is freed when its last file is written (or when this fails)."""
            begin = time.perf_counter()
            try:
                result = matter.finish(result_, colour if colour is not None else backdrop(index))
                if writer is not None:
                    writer.write(cv2.cvtColor(result.composite, cv2.COLOR_RGB2BGR))
                images = {}
                if pngs:  # 8-bit alpha and foreground only when written: a video needs neither
                    alpha = np.rint(result.pha * 255).astype(np.uint8)
                    images = {
                        "alpha": alpha,
                        "fgr": np.dstack([np.rint(result.fgr * 255).astype(np.uint8), alpha]),
                        "composite": result.composite,
                    }
                jobs = [png_pool.submit(save, images[suffix], staging / f"{name}_{suffix}.png") for suffix in pngs]
            except BaseException:
                slots.release()
                raise
            timings["write"] += time.perf_counter() - begin
            left = [len(jobs)]
            lock = threading.Lock()

            def one_written(job: Future) -> None:
                record(job)
                with lock:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    slots.release()

            for job in jobs:
                job.add_done_callback(one_written)
            if not jobs:
                slots.release()

        def collect() -> None:
            """Wait for the oldest request, copy its outputs and give them to the writer."""
            nonlocal frames
            index, name, request = in_flight.popleft()
            request.wait()
            result = {output: np.array(request.get_tensor(output).data) for output in ("pha", "fgr")}
            timings["model"] += request.latency / 1000
            free.append(request)
            slots.acquire()  # at most WRITE_BEHIND frames wait for the writers
            writer_pool.submit(write, index, name, result).add_done_callback(record)
            frames += 1
            if on_frame:
                on_frame(frames, source.total)

        finished = False
        try:
            for index, (name, image) in enumerate(_read_ahead(source.frames, READ_AHEAD, timings)):
                begin = time.perf_counter()
                inputs = matter.inputs(image, aligner(index, image) if aligner else None)
                timings["prepare"] += time.perf_counter() - begin
                if not free:
                    collect()
                request = free.pop()
                request.start_async(inputs)
                in_flight.append((index, name, request))
                if failures:
                    raise failures[0]
            while in_flight:
                collect()
                if failures:
                    raise failures[0]
            finished = True
        finally:
            for _, _, request in in_flight:
                request.wait()
            writer_pool.shutdown(wait=True, cancel_futures=not finished)
            png_pool.shutdown(wait=True)
            if writer is not None:
                writer.release()
        if failures:
            raise failures[0]
        # Requests overlap: their summed latency over the number that ran side by side.
        timings["model"] /= max(1, min(requests, frames))
        written = [Path(out) / p.name for p in sorted(staging.iterdir())]
    summary = MatteSummary(frames, time.perf_counter() - start, written, warnings, timings)
    if aligner is not None:
        summary.alignment = "; ".join(aligner.fits)
    return summary
