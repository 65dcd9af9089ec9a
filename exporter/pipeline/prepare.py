"""From a frame to the model's feeds and from its outputs back to the frame.

Frames of any size are letterboxed (aspect kept, centred, zero padding) to the model's
resolution, as Open Model Zoo's demo wrapper does, and fed as BGR 0..255; the outputs are
cropped and resized back, and composited over the target. The background is letterboxed
once, or warped onto each frame when aligned (``exporter.align``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.errors import InputError
from exporter.images import read_image, to_model_input
from exporter.pipeline.sources import VIDEO_SUFFIXES, Frame

__all__ = [
    "COMPOSITED",
    "Aligner",
    "Backdrop",
    "Composite",
    "Matted",
    "Prepare",
    "letterbox",
    "letterbox_box",
    "median_background",
    "resize",
]

# The model's outputs ``Composite`` reads (the maps only where the model has them).
COMPOSITED = ("pha", "fgr", "err_sm", "ref_sm")


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def letterbox_box(size: tuple[int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """The box ``(top, left, h, w)`` an image of ``size`` occupies, aspect kept and centred,
    in a ``height x width`` canvas."""
    scale = min(height / size[0], width / size[1])
    h, w = max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
    return (height - h) // 2, (width - w) // 2, h, w


def letterbox(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fit ``image`` into ``height x width`` keeping its aspect, centred on zeros.
    Returns the canvas and the box ``(top, left, h, w)`` the image occupies."""
    top, left, h, w = letterbox_box(image.shape[:2], height, width)
    canvas = np.zeros((height, width, *image.shape[2:]), image.dtype)
    canvas[top : top + h, left : left + w] = resize(image, w, h)
    return canvas, (top, left, h, w)


def median_background(frames: list[np.ndarray]) -> np.ndarray:
    """The per-pixel median of frames of an empty scene: sensor noise and a passer-by in a
    few of them are gone."""
    return np.median(np.stack(frames), axis=0).astype(np.uint8)


class Aligner:
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


class Prepare:
    """A frame's feeds for a model of ``height x width``, against the background ``bgr_rgb``
    (of the frames' size), aligned to each frame when ``align``."""

    def __init__(self, height: int, width: int, bgr_rgb: np.ndarray, align: bool = False) -> None:
        self.height, self.width = height, width
        self.size = bgr_rgb.shape[:2]
        self.aligner = Aligner(bgr_rgb) if align else None
        self._bgr = to_model_input(letterbox(bgr_rgb, height, width)[0])

    def __call__(self, frame: Frame) -> dict[str, np.ndarray]:
        image = frame.image
        if image.shape[:2] != self.size:
            raise InputError(f"frame of {image.shape[1]}x{image.shape[0]} after a background of "
                             f"{self.size[1]}x{self.size[0]}: frames of one run must share a size")  # fmt: skip
        bgr = self._bgr
        if self.aligner is not None:
            bgr = to_model_input(letterbox(self.aligner(frame.index, image), self.height, self.width)[0])
        return {"src": to_model_input(letterbox(image, self.height, self.width)[0]), "bgr": bgr}


@dataclass
class Matted:
    """One frame at its own size: alpha ``(H, W)`` 0..1, foreground ``(H, W, 3)`` RGB 0..1,
    composite ``(H, W, 3)`` RGB uint8 (None when no composite was asked for); ``maps``: a
    diagnostic model's error map (``err``, 0..1) and refined patches (``ref``, 0 or 1),
    ``(H, W)`` each, as the original's ``--output-types err ref`` writes them."""

    pha: np.ndarray
    fgr: np.ndarray
    composite: np.ndarray | None
    maps: dict[str, np.ndarray] = field(default_factory=dict)


class Composite:
    """The model's outputs cropped and resized back to frames of ``size`` (letterboxed into
    ``height x width``) and composited over a backdrop.

    OpenCV's kernels, not NumPy expressions: at 720p this runs on every frame beside the
    model, on the same cores."""

    def __init__(self, size: tuple[int, int], height: int, width: int) -> None:
        self.size = size
        self.box = letterbox_box(size, height, width)
        self._target: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, outputs: dict[str, np.ndarray], backdrop: np.ndarray | None) -> Matted:
        import cv2

        top, left, h, w = self.box
        height, width = self.size
        pha = np.clip(resize(outputs["pha"][0, 0, top : top + h, left : left + w], width, height), 0, 1)
        fgr = cv2.merge([resize(plane[top : top + h, left : left + w], width, height) for plane in outputs["fgr"][0]])
        np.clip(fgr, 0, 1, out=fgr)
        maps = self._maps(outputs)
        if backdrop is None:
            return Matted(pha, fgr, None, maps)
        composite = cv2.blendLinear(fgr, self._float(backdrop), pha, 1 - pha)
        return Matted(pha, fgr, cv2.convertScaleAbs(composite, alpha=255), maps)

    def _maps(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``err_sm`` (bilinear) and ``ref_sm`` (nearest) at the model's size, then cropped and
        resized to the frame's like alpha; only those the model outputs."""
        import cv2

        top, left, h, w = self.box
        height, width = self.size
        model_height, model_width = outputs["pha"].shape[2:]
        maps = {}
        for name, interpolation in (("err", cv2.INTER_LINEAR), ("ref", cv2.INTER_NEAREST)):
            if f"{name}_sm" in outputs:
                plane = cv2.resize(
                    outputs[f"{name}_sm"][0, 0], (model_width, model_height), interpolation=interpolation
                )
                plane = cv2.resize(plane[top : top + h, left : left + w], (width, height), interpolation=interpolation)
                maps[name] = np.clip(plane, 0, 1)
        return maps

    def _float(self, target: np.ndarray) -> np.ndarray:
        """``target`` as float32 0..1 at the frame's size; the last one is kept, since a
        colour or an image target is the same every frame."""
        if self._target is None or self._target[0] is not target:
            height, width = self.size
            self._target = (target, resize(target, width, height).astype(np.float32) / 255)
        return self._target[1]


class Backdrop:
    """What the subject is composited over, frame by frame: a colour, an image, or a video
    streamed in a loop (never held in memory). Asked for frames in order."""

    def __init__(self, target: tuple[int, int, int] | Path, size: tuple[int, int]) -> None:
        self._video: Path | None = None
        self._frames: Iterator[np.ndarray] = iter(())
        if isinstance(target, tuple):
            if len(target) != 3 or any(not 0 <= c <= 255 for c in target):
                raise InputError(f"target colour {target} needs three channels from 0 to 255")
            self._still = np.ascontiguousarray(np.broadcast_to(np.array(target, np.uint8), (*size, 3)))
        elif not Path(target).is_file():
            raise InputError(f"target {target} is not an existing image or video")
        elif Path(target).suffix.lower() in VIDEO_SUFFIXES:
            self._video, self._still = Path(target), None
            self._open()
        else:
            self._still = read_image(Path(target))

    def _open(self) -> None:
        from exporter.pipeline.sources import open_source

        self._frames = (frame.image for frame in open_source(self._video).frames())

    def __call__(self) -> np.ndarray:
        if self._still is not None:
            return self._still
        frame = next(self._frames, None)
        if frame is None:
            self._open()
            frame = next(self._frames, None)
        if frame is None:
            raise InputError(f"target video {self._video} has no readable frame")
        return frame
