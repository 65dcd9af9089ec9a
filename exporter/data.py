"""The frames every part of bgm-export runs models on: deterministic synthetic composites,
or real images on disk (the Open Model Zoo HumanMatting layout). One module serves
verification, INT8 calibration and validation, and the benchmarks (STYLE.md, "Runners").
Torch-free: NumPy, Pillow and OpenCV only.

A synthetic case is what a video call looks like to the model: a background, a person-like
foreground with soft edges and thin strands (hair) composited over it, and a "captured"
background that differs slightly from the true one (exposure, sensor noise), with the true
alpha and foreground kept as ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exporter.errors import ConfigError, InputError
from exporter.images import IMAGE_SUFFIXES, image_size, read_image, same_aspect, to_model_input

__all__ = ["SEEDS", "SEED_SPAN", "Case", "image_cases", "room_case", "seeds_for", "synthetic_case", "synthetic_cases"]

# Where each use's synthetic frames start: its frames are seeds SEEDS[use], SEEDS[use] + 1, ...
# Uses lie SEED_SPAN apart and may not run into one another, so INT8 is never validated or
# verified on a frame it was calibrated on. verify (0), calibration (1,000) and validation
# (2,000) keep the seeds they always had, so numbers recorded with them still hold.
SEED_SPAN = 1_000
SEEDS: dict[str, int] = {
    "verify": 0,
    "calibration": 1_000,
    "validation": 2_000,
    "bench": 3_000,
    "bench-matte": 4_000,
}


@dataclass
class Case:
    """One input pair, RGB uint8 ``(H, W, 3)``, with optional ground truth in 0..1."""

    name: str
    src: np.ndarray
    bgr: np.ndarray
    pha: np.ndarray | None = None  # (H, W)
    fgr: np.ndarray | None = None  # (H, W, 3)

    def feeds(self) -> dict[str, np.ndarray]:
        """What every runner takes: ``src`` and ``bgr``, BGR 0..255 NCHW float32."""
        return {"src": to_model_input(self.src), "bgr": to_model_input(self.bgr)}


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """Bilinearly upsampled coarse noise: smooth texture in 0..1."""
    coarse = rng.random((cells + 1, cells + 1, channels))
    ys = np.linspace(0, cells, height)
    xs = np.linspace(0, cells, width)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def synthetic_case(height: int, width: int, seed: int) -> Case:
    """The synthetic frame of ``seed``, the same on every machine; a named use's frames come
    from ``synthetic_cases``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = 0.15 + 0.7 * _smooth_noise(rng, height, width, 6, 3)
    for _ in range(4):  # furniture: flat rectangles with hard edges
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        h, w = rng.integers(height // 10, height // 3), rng.integers(width // 10, width // 3)
        background[y0 : y0 + h, x0 : x0 + w] = rng.random(3) * 0.8 + 0.1

    # A head and shoulders: two ellipses with a soft edge a few pixels wide.
    cy, cx = height * rng.uniform(0.35, 0.5), width * rng.uniform(0.35, 0.65)
    scale = min(height, width)
    head = ((yy - cy) / (0.22 * scale)) ** 2 + ((xx - cx) / (0.16 * scale)) ** 2
    body = ((yy - height) / (0.45 * scale)) ** 2 + ((xx - cx) / (0.42 * scale)) ** 2
    edge = max(2.0, scale / 150)
    distance = np.minimum(np.sqrt(head) - 1, np.sqrt(body) - 1) * 0.2 * scale
    alpha = np.clip(0.5 - distance / edge, 0, 1)
    for _ in range(40):  # strands: thin curved lines leaving the head, partly transparent
        angle = rng.uniform(-np.pi, 0)
        x = cx + np.cos(angle) * 0.16 * scale
        y = cy + np.sin(angle) * 0.22 * scale
        bend = rng.uniform(-0.6, 0.6)
        strength = rng.uniform(0.4, 1.0)
        for t in np.linspace(0, 0.12 * scale, int(0.3 * scale)):
            a = angle + bend * t / scale * 4
            px, py = int(x + np.cos(a) * t), int(y + np.sin(a) * t)
            if 0 <= py < height and 0 <= px < width:
                alpha[py, px] = max(alpha[py, px], strength)
    foreground = np.clip(0.2 + 0.6 * _smooth_noise(rng, height, width, 12, 3) * rng.random(3), 0, 1)

    composite = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    exposure = rng.uniform(0.97, 1.03)
    captured = background * exposure + rng.normal(0, 2 / 255, background.shape)

    def u8(image: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)

    return Case(
        f"synthetic-{seed}", u8(composite), u8(captured), alpha.astype(np.float32), foreground.astype(np.float32)
    )


def seeds_for(use: str, count: int, start: int = 0) -> range:
    """The seeds of ``count`` synthetic frames for ``use`` (a key of ``SEEDS``), from its
    ``start``-th; ``ConfigError`` if they would reach into another use's seeds."""
    if use not in SEEDS:
        raise ValueError(f"use {use!r} is not one of {', '.join(SEEDS)}")
    seeds = range(SEEDS[use] + start, SEEDS[use] + start + count)
    for other, first in SEEDS.items():
        taken = range(first, first + SEED_SPAN)
        if other != use and seeds and max(seeds.start, taken.start) < min(seeds.stop, taken.stop):
            raise ConfigError(
                f"{count} synthetic {use} frames from seed {seeds.start} would reuse the {other} frames' "
                f"seeds ({taken.start}..{taken.stop - 1}); {use} frames are seeds {SEEDS[use]}.."
                f"{SEEDS[use] + SEED_SPAN - 1} (or beyond every use's, from {max(SEEDS.values()) + SEED_SPAN})"
            )
    return seeds


def synthetic_cases(height: int, width: int, count: int, use: str = "verify", start: int = 0) -> list[Case]:
    """``count`` synthetic frames for ``use`` (``seeds_for``): the same frames every time, and
    never another use's."""
    return [synthetic_case(height, width, seed) for seed in seeds_for(use, count, start)]


def _check_aspect(path: Path, height: int, width: int) -> None:
    frame_height, frame_width = image_size(path)
    if not same_aspect((frame_height, frame_width), (height, width)):
        raise InputError(
            f"{path} is {frame_width}x{frame_height}, an aspect other than the model's {width}x{height}: "
            "calibrate on frames shaped like the deployment's"
        )


def image_cases(
    folder: Path, height: int, width: int, same_aspect: bool = False, limit: int | None = None
) -> list[Case]:
    """Open Model Zoo HumanMatting layout: ``com/``, ``bgr/`` and optional ``pha/``, ``fgr/``.
    ``same_aspect``: refuse frames, and their backgrounds, whose aspect differs from
    ``width / height`` (resizing would stretch them); ``limit``: read only the first frames
    (sorted by name)."""
    folder = Path(folder)
    com, bgr = folder / "com", folder / "bgr"
    if not folder.is_dir():
        raise InputError(f"images folder {folder} does not exist or is not a folder")
    if not com.is_dir() or not bgr.is_dir():
        raise InputError(f"{folder} needs com/ and bgr/ subfolders (Open Model Zoo HumanMatting layout)")
    names = sorted(p.name for p in com.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise InputError(f"{com} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    cases = []
    for name in names[:limit]:
        if not (bgr / name).is_file():
            raise InputError(f"{bgr / name} is missing: every com/ image needs a bgr/ image of the same name")
        size = (height, width)
        if same_aspect:
            _check_aspect(com / name, height, width)
            _check_aspect(bgr / name, height, width)
        pha = folder / "pha" / name
        fgr = folder / "fgr" / name
        cases.append(
            Case(
                Path(name).stem,
                read_image(com / name, size),
                read_image(bgr / name, size),
                read_image(pha, size, "L").astype(np.float32) / 255 if pha.is_file() else None,
                read_image(fgr, size).astype(np.float32) / 255 if fgr.is_file() else None,
            )
        )
    return cases


def room_case(
    height: int, width: int, seed: int, shift: tuple[float, float] = (12, -7), rotation: float = 1.0
) -> tuple[Case, np.ndarray]:
    """A synthetic frame over a room-like background (shelves, frames, tiles: texture and
    corners for feature matching), whose captured background was taken by a hand that moved:
    shifted by ``shift`` pixels (x, y) and rotated by ``rotation`` degrees. Returns the case
    (``bgr`` is the moved capture) and the exact background."""
    import cv2

    case = synthetic_case(height, width, seed)
    rng = np.random.default_rng(seed + 10_000)
    room = (0.25 + 0.5 * _smooth_noise(rng, height, width, 4, 3)).astype(np.float32)
    scale = min(height, width)
    for _ in range(60):  # objects with hard edges and corners
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        h, w = int(rng.integers(scale // 30 + 2, scale // 6)), int(rng.integers(scale // 30 + 2, scale // 6))
        room[y0 : y0 + h, x0 : x0 + w] = rng.random(3) * 0.9 + 0.05
    tiles = (np.arange(height)[:, None] // max(4, scale // 24) + np.arange(width) // max(4, scale // 24)) % 2
    room[height * 3 // 4 :] *= (0.8 + 0.2 * tiles[height * 3 // 4 :, :, None]).astype(np.float32)
    alpha = case.pha[..., None]
    composite = alpha * case.fgr + (1 - alpha) * room
    centre = (width / 2, height / 2)
    matrix = cv2.getRotationMatrix2D(centre, rotation, 1.0)
    matrix[:, 2] += shift
    moved = cv2.warpAffine(room, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)

    def u8(image: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)

    return Case(f"room-{seed}", u8(composite), u8(moved), case.pha, case.fgr), u8(room)
