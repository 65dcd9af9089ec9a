"""Sources of frames: an image, a folder of images, a video file, raw frames on a pipe, a
camera, a network stream. Every frame is RGB uint8 ``(H, W, 3)``.

Files and pipes keep every frame, in order, read ahead on a thread. Cameras and streams are
*live*: a thread keeps only the newest frame, so when the model falls behind, the frames it
could not take are dropped (and counted) instead of queueing, and latency stays bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from exporter.errors import InputError
from exporter.images import IMAGE_SUFFIXES, read_image

# FFmpeg (inside OpenCV) and OpenCV's video I/O print their own lines ("moov atom not found",
# "can't open camera by index") before our one error line; they are told before the first
# capture opens.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__all__ = [
    "READ_AHEAD",
    "STREAM_SCHEMES",
    "VIDEO_SUFFIXES",
    "Camera",
    "Frame",
    "Pipe",
    "Source",
    "SourceSpec",
    "Stream",
    "open_source",
    "read_ahead",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://", "srt://")
# Frames decoded ahead of inference: enough to keep the model busy, few enough that memory
# does not grow with the video.
READ_AHEAD = 4
# Frame rate written for a pipe or a stream that does not state one.
DEFAULT_FPS = 25.0

T = TypeVar("T")


@dataclass(frozen=True)
class Camera:
    """An OpenCV capture device (``/dev/videoN``)."""

    index: int


@dataclass(frozen=True)
class Stream:
    """A network stream OpenCV's FFmpeg reads: RTSP, HTTP (MJPEG, HLS, ...)."""

    url: str


@dataclass(frozen=True)
class Pipe:
    """Raw BGR24 frames of ``width x height`` (``ffmpeg -f rawvideo -pix_fmt bgr24``)."""

    width: int
    height: int
    stream: BinaryIO | None = None  # None: standard input
    fps: float = DEFAULT_FPS


SourceSpec = Path | Camera | Stream | Pipe


@dataclass
class Frame:
    index: int
    name: str
    image: np.ndarray  # RGB uint8 (H, W, 3)
    captured: float  # time.perf_counter() when it was read: live latency counts from here


class Source(ABC):
    """Frames of one size. ``total``: the count when known; ``fps``: for a video output;
    ``live``: latency mode (newest frame wins); ``video``: a sequence written as a video."""

    label: str
    size: tuple[int, int]  # (height, width)
    total: int | None = None
    fps: float | None = None
    live = False
    video = True
    files: tuple[Path, ...] = ()  # the files it reads, never to be overwritten
    dropped = 0

    @abstractmethod
    def frames(self) -> Iterator[Frame]:
        """Every frame, in order (live: the newest one each time one is asked for)."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Stop reading (release the device, stop the thread)."""


class _ImageSource(Source):
    video = False

    def __init__(self, path: Path) -> None:
        self.label = str(path)
        self._image = read_image(path)
        self._name = path.stem
        self.size = self._image.shape[:2]
        self.total = 1
        self.files = (path,)

    def frames(self) -> Iterator[Frame]:
        yield Frame(0, self._name, self._image, time.perf_counter())


class _FolderSource(Source):
    video = False

    def __init__(self, folder: Path) -> None:
        self.label = str(folder)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        stems = [p.stem for p in files]
        twins = sorted({p.name for p in files if stems.count(p.stem) > 1})
        if twins:  # their results would overwrite each other (a_alpha.png, ...)
            raise InputError(f"folder {folder} has frames sharing a name: {', '.join(twins)}")
        self._first = read_image(files[0])  # read once: it fixes the size and is the first frame
        self._files = files
        self.files = (folder, *files)
        self.size = self._first.shape[:2]
        self.total = len(files)

    def frames(self) -> Iterator[Frame]:
        images = itertools.chain([self._first], (read_image(p) for p in self._files[1:]))
        for index, (path, image) in enumerate(zip(self._files, images, strict=False)):
            yield Frame(index, path.stem, image, time.perf_counter())


def _capture(target: str | int, what: str) -> tuple[object, np.ndarray]:
    """An opened OpenCV capture and its first frame (BGR)."""
    import cv2

    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        raise InputError(f"cannot read {what}")
    ok, first = capture.read()
    if not ok:
        capture.release()
        raise InputError(f"{what} has no readable frame")
    return capture, first


class _VideoSource(Source):
    def __init__(self, path: Path) -> None:
        import cv2

        self.label = str(path)
        self.path = path
        self.files = (path,)
        capture, first = _capture(str(path), f"video {path}")
        self.total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        self.size = first.shape[:2]
        self._capture, self._first = capture, first

    def frames(self) -> Iterator[Frame]:
        import cv2

        read, frame = 0, self._first
        while frame is not None:
            yield Frame(read, f"frame_{read:06d}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), time.perf_counter())
            read += 1
            ok, frame = self._capture.read()
            frame = frame if ok else None
        self.close()
        # A video that stops decoding well before its announced frame count is an error, not
        # a short result (containers may miscount by a frame, so a little slack).
        total = self.total or 0
        if total > 0 and read < total - max(1, total // 100):
            raise InputError(
                f"video {self.path} stopped decoding at frame {read + 1} of {total} (truncated or corrupt?)"
            )

    def close(self) -> None:
        self._capture.release()


class _PipeSource(Source):
    def __init__(self, pipe: Pipe) -> None:
        import sys

        if pipe.width < 1 or pipe.height < 1:
            raise InputError(f"--size {pipe.width}x{pipe.height}: a frame needs a width and a height of at least 1")
        self.label = "standard input" if pipe.stream is None else "the pipe"
        self._stream = pipe.stream if pipe.stream is not None else sys.stdin.buffer
        self.size = (pipe.height, pipe.width)
        self.fps = pipe.fps

    def frames(self) -> Iterator[Frame]:
        import cv2

        height, width = self.size
        length = height * width * 3
        for index in itertools.count():
            data = self._read(length)
            if not data:
                return
            if len(data) < length:
                raise InputError(
                    f"{self.label} ended inside frame {index + 1}: {len(data):,} of its {length:,} bytes "
                    f"({width}x{height} BGR24); is --size right?"
                )
            image = cv2.cvtColor(np.frombuffer(data, np.uint8).reshape(height, width, 3), cv2.COLOR_BGR2RGB)
            yield Frame(index, f"frame_{index:06d}", image, time.perf_counter())

    def _read(self, length: int) -> bytes:
        """Up to ``length`` bytes; fewer only at the end of the stream (pipes return short reads)."""
        chunks, got = [], 0
        while got < length:
            chunk = self._stream.read(length - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


class _LiveSource(Source):
    """A camera or a stream: a thread reads as fast as the source sends and keeps only the
    newest frame; ``frames()`` hands out the newest one not yet handed out. Reading starts
    with ``frames()``, so what arrives while the model compiles is not taken for live."""

    live = True

    def __init__(self, target: str | int, label: str) -> None:
        import cv2

        self.label = label
        self._capture, first = _capture(target, label)  # the first frame tells the size only
        self.dropped = 1
        self.size = first.shape[:2]
        self.fps = self._capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        if not 1 <= self.fps <= 240:  # streams report 0 or 90000 (a clock rate) as often as a rate
            self.fps = DEFAULT_FPS
        self._condition = threading.Condition()
        self._newest: Frame | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._reads = _ReadGuard()
        self._thread = threading.Thread(target=self._read, name="bgm-live-reader", daemon=True)

    def _read(self) -> None:
        import cv2

        try:
            for index in itertools.count(1):
                read = self._reads.call(self._capture.read)
                if read is _STOPPED or not read[0]:
                    break
                frame = read[1]
                image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                with self._condition:
                    if self._newest is not None:
                        self.dropped += 1  # the model did not take the previous one in time
                    self._newest = Frame(index, f"frame_{index:06d}", image, time.perf_counter())
                    self._condition.notify()
        except BaseException as exc:  # raised in the consumer's thread
            self._error = exc
        finally:
            with self._condition:
                self._ended = True
                self._condition.notify()

    def frames(self) -> Iterator[Frame]:
        if not self._thread.is_alive() and not self._ended:
            self._thread.start()
        while True:
            with self._condition:
                while self._newest is None and not self._ended:
                    self._condition.wait(timeout=0.5)
                frame, self._newest = self._newest, None
            if frame is None:  # ended, and the last frame was handed out
                if self._error is not None:
                    raise self._error
                return
            yield frame

    def close(self) -> None:
        if self._reads.stop(timeout=5):  # a read blocked on the network keeps its capture
            self._capture.release()


def open_source(spec: SourceSpec) -> Source:
    """The source ``spec`` names: a path (image, folder or video), a camera, a stream, a pipe."""
    if isinstance(spec, Camera):
        return _LiveSource(spec.index, f"camera {spec.index}")
    if isinstance(spec, Stream):
        return _LiveSource(spec.url, f"stream {spec.url}")
    if isinstance(spec, Pipe):
        return _PipeSource(spec)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"source {path} does not exist")
    if path.is_dir():
        return _FolderSource(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return _VideoSource(path)
    return _ImageSource(path)


_DONE = object()
_STOPPED = object()


class _ReadGuard:
    """Keeps a reader thread's reads and the release of what it reads from apart.

    ``stop`` returns once no read is running and none will start, whether or not the thread
    ever got going: Ctrl-C and SIGTERM are raised in the main thread, and can land inside
    ``Thread.start`` (the thread runs, but its ``join`` says it never started). A capture
    released during a read crashed the process (SIGSEGV after our error line)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False

    def call(self, read: Callable[[], T]) -> T | object:
        """``read()``, or ``_STOPPED`` once stopped."""
        with self._lock:
            return _STOPPED if self._stopped else read()

    def stop(self, timeout: float) -> bool:
        """False when a read still runs after ``timeout`` seconds (blocked on a network)."""
        self._stopped = True
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        return True


def read_ahead(items: Iterator, depth: int = READ_AHEAD) -> Iterator:
    """``items`` produced by a background thread (decoding overlaps inference), at most
    ``depth`` ahead; its exceptions are raised here, in order. Once this generator is closed
    (or raises), ``items`` is not advanced again."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    reads = _ReadGuard()

    def produce() -> None:
        try:
            while (item := reads.call(lambda: next(items, _DONE))) is not _STOPPED:
                buffer.put(item)
                if item is _DONE:
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="bgm-reader", daemon=True)
    try:
        thread.start()
        while (item := buffer.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a producer waiting for room
                buffer.get_nowait()
        reads.stop(timeout=5)
