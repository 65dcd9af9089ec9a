"""Where matted frames go: a video file, PNG files, or raw BGR24 frames on a pipe.

A sink's ``write(frame, matted)`` runs on the ordered writer thread (``WriteBehind``): what
must stay in order (a video's or a pipe's next frame) it does there; what may run in
parallel (PNG encoding) it returns as jobs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from exporter.errors import OutputError
from exporter.pipeline.prepare import Matted
from exporter.pipeline.sources import Frame
from exporter.pipeline.timings import Timings

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
    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import cv2

        height, width = size
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_CODEC), fps, (width, height))
        if not self._writer.isOpened():
            raise OutputError(f"cannot write video {path}")

    def write(self, frame: Frame, matted: Matted) -> Sequence[Job]:
        import cv2

        self._writer.write(cv2.cvtColor(matted.composite, cv2.COLOR_RGB2BGR))
        return ()

    def close(self) -> None:
        self._writer.release()


class PipeSink(Sink):
    """Composite frames as raw BGR24 on ``stream``; a reader that is slower makes the
    writes wait, so every frame arrives."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, frame: Frame, matted: Matted) -> Sequence[Job]:
        import cv2

        try:
            self._stream.write(cv2.cvtColor(matted.composite, cv2.COLOR_RGB2BGR).tobytes())
            self._stream.flush()
        except BrokenPipeError:
            raise OutputError(f"the reader of the output pipe closed it at frame {frame.index + 1}") from None
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
