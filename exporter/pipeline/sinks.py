"""Where matted frames go: a video file, PNG files, or raw BGR24 frames on a pipe.

A sink's ``write(frame, matted)`` runs on the ordered writer thread (``WriteBehind``): what
must stay in order (a video's or a pipe's next frame) it does there; what may run in
parallel (PNG encoding) it returns as jobs.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from exporter.errors import OutputError
from exporter.pipeline.prepare import Matted
from exporter.pipeline.sources import Frame, ffmpeg_path
from exporter.pipeline.timings import Timings
from exporter.pipeline.waits import write_fd

__all__ = ["PNG_COMPRESSION", "PNG_SUFFIXES", "VIDEO_CODEC", "PipeSink", "PngSink", "Sink", "VideoSink", "save_png"]

# mp4v (MPEG-4 Part 2) is the codec every OpenCV build can both write and read back; the
# files play in browsers and players alike.
VIDEO_CODEC = "mp4v"
# zlib level 1: at 720p an RGBA frame encodes in 40 ms instead of 137 ms at Pillow's
# default 6, for files about 1.5x larger; per-frame PNGs are written at video rates.
PNG_COMPRESSION = 1
# The file suffix of each kind of PNG written per frame.
PNG_SUFFIXES = {"alpha": "alpha", "foreground": "fgr", "composite": "composite", "err": "err", "ref": "ref"}

Job = Callable[[], None]


def save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, compress_level=PNG_COMPRESSION)


class Sink(ABC):
    needs_composite = True

    @abstractmethod
    def write(self, frame: Frame, matted: Matted) -> Sequence[Job]:
        """Write what must stay in order; return the jobs that may run in parallel."""

    def close(self) -> None:  # noqa: B027 - a pipe or PNGs have nothing to finish
        """Finish the file or the stream."""


class VideoSink(Sink):
    def __init__(self, path: Path, fps: float, size: tuple[int, int], shown: Path | None = None) -> None:
        import cv2

        height, width = size
        self._writer = cv2.VideoWriter(
            ffmpeg_path(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*VIDEO_CODEC), fps, (width, height)
        )
        if not self._writer.isOpened():
            # The file is in a hidden staging folder: named as the user knows it, with the likely cause.
            raise OutputError(
                f"cannot write video {shown or path}: {VIDEO_CODEC} cannot encode {width}x{height} frames "
                "(the encoder needs a size it supports; write PNGs with --outputs composite-png)"
            )

    def write(self, frame: Frame, matted: Matted) -> Sequence[Job]:
        import cv2

        self._writer.write(cv2.cvtColor(matted.composite, cv2.COLOR_RGB2BGR))
        return ()

    def close(self) -> None:
        self._writer.release()


class PipeSink(Sink):
    """Composite frames as raw BGR24 on ``stream``; a reader that is slower makes the
    writes wait, so every frame arrives. A write waits in ticks and gives up (``Stopped``)
    once ``stop`` is set: a reader that never reads cannot hold the run. ``written``: the
    bytes that reached the stream."""

    def __init__(self, stream: BinaryIO, stop: threading.Event | None = None, shown: str = "the output pipe") -> None:
        self._stream = stream
        self._stop = stop or threading.Event()
        self._shown = shown
        self.written = 0
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        if self._fd is not None:
            stream.flush()  # what went through the buffered stream before: ahead of our raw writes

    def write(self, frame: Frame, matted: Matted) -> Sequence[Job]:
        import cv2

        data = cv2.cvtColor(matted.composite, cv2.COLOR_RGB2BGR).tobytes()
        try:
            if self._fd is None:
                self._stream.write(data)
                self._stream.flush()
            else:
                write_fd(self._fd, data, self._stop)
        except BrokenPipeError:
            raise OutputError(f"the reader of {self._shown} closed it at frame {frame.index + 1}") from None
        except OSError as exc:  # /dev/full, a vanished disk
            raise OutputError(f"cannot write {self._shown}: {exc.strerror or exc}") from None
        self.written += len(data)
        return ()


class PngSink(Sink):
    """``kinds`` (keys of ``PNG_SUFFIXES``) as ``<frame name>_<suffix>.png`` in ``folder``;
    ``shown``: the name the user knows the folder by, for error messages."""

    def __init__(self, folder: Path, kinds: Sequence[str], shown: Path, timings: Timings) -> None:
        self.folder, self.shown, self.timings = folder, shown, timings
        self.suffixes = tuple(dict.fromkeys(PNG_SUFFIXES[kind] for kind in kinds))
        self.needs_composite = "composite" in self.suffixes

    def write(self, frame: Frame, matted: Matted) -> Sequence[Job]:
        # 8-bit alpha and foreground only when written: a video needs neither.
        alpha = np.rint(matted.pha * 255).astype(np.uint8) if {"alpha", "fgr"} & set(self.suffixes) else None
        images = {
            "alpha": lambda: alpha,
            "fgr": lambda: np.dstack([np.rint(matted.fgr * 255).astype(np.uint8), alpha]),
            "composite": lambda: matted.composite,
            "err": lambda: np.rint(matted.maps["err"] * 255).astype(np.uint8),
            "ref": lambda: np.rint(matted.maps["ref"] * 255).astype(np.uint8),
        }
        return [self._job(images[suffix](), f"{frame.name}_{suffix}.png") for suffix in self.suffixes]

    def _job(self, image: np.ndarray, name: str) -> Job:
        def save() -> None:
            start = time.perf_counter()
            try:
                save_png(image, self.folder / name)
            except OSError as exc:  # a full disk, a vanished folder: the user's to fix
                raise OutputError(f"cannot write {self.shown / name}: {exc.strerror or exc}") from None
            self.timings.add("write", time.perf_counter() - start)

        return save
