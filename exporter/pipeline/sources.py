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
from exporter.pipeline.waits import STOP_GRACE, STREAM_OPEN_TIMEOUT, STREAM_READ_TIMEOUT, Stopped, read_fd, wait_until
from exporter.redact import redact, redact_url

# FFmpeg (inside OpenCV) and OpenCV's video I/O print their own lines ("moov atom not found",
# "can't open camera by index") before our one error line; they are told before the first
# capture opens.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

__all__ = [
    "MAX_CAMERA_INDEX",
    "MAX_PIPE_PIXELS",
    "READ_AHEAD",
    "STREAM_SCHEMES",
    "VIDEO_SUFFIXES",
    "Camera",
    "Frame",
    "Pipe",
    "Source",
    "SourceSpec",
    "Stream",
    "ffmpeg_path",
    "open_source",
    "read_ahead",
]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://", "srt://", "ftp://")
# Frames decoded ahead of inference: enough to keep the model busy, few enough that memory
# does not grow with the video.
READ_AHEAD = 4
# Frame rate written for a pipe or a stream that does not state one.
DEFAULT_FPS = 25.0
# The largest raw frame ``--src - --size`` takes: 8K UHD (7680x4320, 100 MB in BGR24), the
# largest frame a video format carries. Beyond it --size is a typo, and a frame of it would
# not fit in memory (READ_AHEAD of them are held at once).
MAX_PIPE_PIXELS = 7680 * 4320
# camera:N is /dev/videoN, opened by OpenCV as a C int.
MAX_CAMERA_INDEX = 2**31 - 1

T = TypeVar("T")


@dataclass(frozen=True)
class Camera:
    """An OpenCV capture device (``/dev/videoN``)."""

    index: int


@dataclass(frozen=True)
class Stream:
    """A network stream OpenCV's FFmpeg reads: RTSP, HTTP (MJPEG, HLS, ...)."""

    url: str
    timeout: float = STREAM_OPEN_TIMEOUT  # seconds for its open (``matte --open-timeout``)


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
    stalled: str | None = None  # why a live source ended early (it stopped sending frames)

    @abstractmethod
    def frames(self) -> Iterator[Frame]:
        """Every frame, in order (live: the newest one each time one is asked for)."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Stop reading (release the device, stop the thread)."""

    def stop(self) -> None:  # noqa: B027 - files are never blocked for long
        """Make a read blocked on a pipe or a network give up within a tick (from any thread)."""


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


def ffmpeg_path(path: Path) -> str:
    """A local file as FFmpeg reads and writes it whatever its name: absolute, behind the
    ``file:`` protocol. A bare name is parsed for a protocol first: ``concat:a.mp4|b.mp4``
    would read two other files, and ``10:30.mp4`` names an unknown protocol."""
    return "file:" + os.path.abspath(path)


def _capture(target: str | int | Path, what: str, timeout: float | None = None) -> tuple[object, np.ndarray]:
    """An opened OpenCV capture and its first frame (BGR). ``target``: a camera's index, a
    stream's URL, or a local file; ``timeout``: a stream's open timeout (seconds; its reads
    take ``STREAM_READ_TIMEOUT``), FFmpeg's; a camera takes none."""
    import cv2

    started = time.monotonic()
    try:
        if isinstance(target, Path):  # FFmpeg: the one backend that reads video files by their own name
            capture = cv2.VideoCapture(ffmpeg_path(target), cv2.CAP_FFMPEG)
        elif timeout is None:
            capture = cv2.VideoCapture(target)
        else:
            capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(timeout * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(STREAM_READ_TIMEOUT * 1000),
            ])  # fmt: skip
    except (cv2.error, OverflowError) as exc:  # an index beyond a C int, a backend's refusal
        raise InputError(f"cannot read {what}: {redact(str(exc).strip())}") from None
    if not capture.isOpened():
        # A refusal (an HTTP 404, a redirect, a closed port) comes at once: a timeout is
        # guessed only when the open took about as long.
        late = timeout is not None and time.monotonic() - started >= 0.9 * timeout
        raise InputError(f"cannot read {what}" + (f" (no answer within {timeout:g} s?)" if late else ""))
    ok, first = capture.read()
    if not ok:
        capture.release()
        raise InputError(f"{what} has no readable frame")
    return capture, first


class _Opening:
    """``_capture`` on a thread of its own: opening a stream blocks inside FFmpeg, where no
    signal reaches, so the main thread waits for it in ticks (Ctrl-C and SIGTERM land between
    them). A capture that opens after its waiter gave up is released by the opener."""

    def __init__(self, target: str | int, what: str, timeout: float | None) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._result: tuple[object, np.ndarray] | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        self._args = (target, what, timeout)

    def _open(self) -> None:
        try:
            result = _capture(*self._args)
        except BaseException as exc:  # raised in the waiter's thread
            with self._lock:
                self._error = exc
                self._done.set()
            return
        with self._lock:
            if self._abandoned:
                result[0].release()
            else:
                self._result = result
            self._done.set()

    def wait(self, limit: float | None) -> tuple[object, np.ndarray]:
        threading.Thread(target=self._open, name="bgm-open", daemon=True).start()
        try:
            if not wait_until(self._done, limit):
                raise InputError(f"cannot read {self._args[1]}: no answer within {limit:g} s")
        except BaseException:
            with self._lock:
                self._abandoned = True
                if self._result is not None:
                    self._result[0].release()
            raise
        if self._error is not None:
            raise self._error
        return self._result


def _open_capture(target: str | int, what: str, timeout: float | None = None) -> tuple[object, np.ndarray]:
    """``_capture``, waited for in ticks (a stream's open within ``timeout``)."""
    # FFmpeg's own timeouts end the open and the first read; ours is a backstop after both.
    return _Opening(target, what, timeout).wait(None if timeout is None else timeout + STREAM_READ_TIMEOUT + 1)


class _VideoSource(Source):
    def __init__(self, path: Path) -> None:
        import cv2

        self.label = str(path)
        self.path = path
        self.files = (path,)
        capture, first = _capture(Path(path), f"video {path}")
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
        if pipe.width * pipe.height > MAX_PIPE_PIXELS:
            raise InputError(f"--size {pipe.width}x{pipe.height}: larger than 8K (7680x4320); is --size right?")
        self.label = "standard input" if pipe.stream is None else "the pipe"
        if pipe.stream is None and sys.stdin is None:
            raise InputError("--src -: standard input is closed")
        self._stream = pipe.stream if pipe.stream is not None else sys.stdin.buffer
        try:  # a real pipe is read through select, so that a stop ends a read nobody answers
            self._fd: int | None = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        self._stop = threading.Event()
        self.size = (pipe.height, pipe.width)
        self.fps = pipe.fps

    def stop(self) -> None:
        self._stop.set()

    def frames(self) -> Iterator[Frame]:
        import cv2

        height, width = self.size
        length = height * width * 3
        for index in itertools.count():
            try:
                data = self._read(length)
            except Stopped:
                return
            except OSError as exc:
                raise InputError(f"cannot read {self.label}: {exc.strerror or exc}") from None
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
        if self._fd is not None:
            return read_fd(self._fd, length, self._stop)
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

    def __init__(self, target: str | int, label: str, timeout: float | None = None) -> None:
        import cv2

        self.label = label
        # The first frame tells the size only: it is not counted as dropped.
        self._capture, first = _open_capture(target, label, timeout)
        self._timeout = timeout
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
                started = time.monotonic()
                read = self._reads.call(self._capture.read)
                if read is _STOPPED:
                    break
                if not read[0]:
                    # FFmpeg's read timeout, not the stream's end: said, never a silent success.
                    if self._timeout is not None and time.monotonic() - started >= 0.9 * STREAM_READ_TIMEOUT:
                        self.stalled = f"{self.label} sent no frame for {STREAM_READ_TIMEOUT:g} s"
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

    def stop(self) -> None:
        self._reads.stopped = True

    def close(self) -> None:
        if self._reads.stop(timeout=STOP_GRACE):  # a read blocked on the network keeps its capture
            self._capture.release()


def open_source(spec: SourceSpec) -> Source:
    """The source ``spec`` names: a path (image, folder or video), a camera, a stream, a pipe."""
    if isinstance(spec, Camera):
        if not 0 <= spec.index <= MAX_CAMERA_INDEX:
            raise InputError(f"camera {spec.index}: a camera's number is from 0 to {MAX_CAMERA_INDEX}")
        return _LiveSource(spec.index, f"camera {spec.index}")
    if isinstance(spec, Stream):
        return _LiveSource(spec.url, f"stream {redact_url(spec.url)}", spec.timeout)
    if isinstance(spec, Pipe):
        return _PipeSource(spec)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"source {path} does not exist")
    if path.is_dir():
        return _FolderSource(path)
    if not path.is_file():
        # A FIFO or a device: OpenCV would block opening it in C, where no signal reaches, and
        # every read after; piped frames have their own way in.
        raise InputError(
            f"source {path} is not a regular file (a FIFO or a device?): give a file, or raw frames on "
            "standard input with --src - --size WxH"
        )
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
        self.stopped = False

    def call(self, read: Callable[[], T]) -> T | object:
        """``read()``, or ``_STOPPED`` once stopped."""
        with self._lock:
            return _STOPPED if self.stopped else read()

    def stop(self, timeout: float) -> bool:
        """False when a read still runs after ``timeout`` seconds (blocked on a network)."""
        self.stopped = True
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
        reads.stop(timeout=STOP_GRACE)
