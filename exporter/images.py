"""Image files in and out of the model's layout; torch-free (the deployment side uses it)."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from exporter.errors import InputError

__all__ = [
    "ASPECT_SLACK",
    "IMAGE_SUFFIXES",
    "image_size",
    "read_image",
    "same_aspect",
    "to_eager_input",
    "to_model_input",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Two images show the same view when their aspects differ by at most this (rounding of a
# resolution: 1366x768 against 1280x720 is 0.05%).
ASPECT_SLACK = 0.01


def same_aspect(size: tuple[int, int], other: tuple[int, int]) -> bool:
    """Whether ``(height, width)`` sizes ``size`` and ``other`` have one aspect, within ``ASPECT_SLACK``."""
    (height, width), (other_height, other_width) = size, other
    return abs(width * other_height / (height * other_width) - 1) <= ASPECT_SLACK


@functools.cache
def _quiet_bomb_warnings(image_module: object) -> None:
    """Between MAX_IMAGE_PIXELS and twice that Pillow only warns (a raw warning line) and
    would decode the image: ``_check_pixels`` refuses it instead, so the warning is not shown.
    Once a process, the first time an image is read (the filter list is process-wide)."""
    warnings.filterwarnings("ignore", category=image_module.DecompressionBombWarning)


def _check_pixels(image: object, path: Path) -> None:
    """Raise Pillow's own error for an image over its limit, which Pillow itself raises only
    above twice the limit."""
    from PIL import Image

    width, height = image.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise Image.DecompressionBombError(f"{path}: {width * height:,} pixels")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Pillow's errors for ``path`` as ``InputError`` naming the file: an unreadable image, and
    one so large that Pillow refuses it as a decompression bomb (raised on opening, before a
    pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    _quiet_bomb_warnings(Image)
    try:
        yield
    except Image.DecompressionBombError:
        raise InputError(
            f"image {path} is larger than the {Image.MAX_IMAGE_PIXELS:,} pixels Pillow opens safely"
        ) from None
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {path}: {str(exc).splitlines()[0]}") from None


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, from its header alone."""
    from PIL import Image

    with _reading(path), Image.open(path) as image:
        _check_pixels(image, path)
        width, height = image.size
    return height, width


def read_image(path: Path, size: tuple[int, int] | None = None, mode: str = "RGB") -> np.ndarray:
    """An image file as a uint8 array in ``mode``, resized to ``size`` (H, W) if given."""
    from PIL import Image

    with _reading(path), Image.open(path) as image:
        _check_pixels(image, path)
        # 16-bit grey ("I;16") converted directly would clip to white; scale to 8 bits first.
        if image.mode.startswith("I;16") or image.mode == "I":
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
        image = image.convert(mode)
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        return np.array(image)


def to_model_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` -> the artifact's input: ``(1, 3, H, W)`` float32 BGR 0..255."""
    return np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1)[None], dtype=np.float32)


def to_eager_input(image: np.ndarray) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` -> what the original PyTorch model takes: ``(1, 3, H, W)``
    float32 RGB 0..1 (divided by 255, as the original's data loader does)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255
