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

__all__ = [
    "FAMILIES",
    "SEEDS",
    "SEED_SPAN",
    "Case",
    "hard_case",
    "image_cases",
    "image_names",
    "room_case",
    "seeds_for",
    "synthetic_case",
    "synthetic_cases",
]

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
    # The true background behind ``src`` (H, W, 3) in 0..1, where known: a synthetic frame's,
    # which ``bgr`` captured with another exposure, noise and (``hard_case``) a moved camera.
    background: np.ndarray | None = None

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
        f"synthetic-{seed}",
        u8(composite),
        u8(captured),
        alpha.astype(np.float32),
        foreground.astype(np.float32),
        background.astype(np.float32),
    )


def _u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def _strokes(shape: tuple[int, int], lines: list[tuple[np.ndarray, float, int]]) -> np.ndarray:
    """Anti-aliased polylines (points ``(K, 2)`` as x, y; strength 0..1; width in pixels)
    drawn one by one on ``shape``, each over the others by max: alpha in 0..1."""
    import cv2

    out = np.zeros(shape, np.float32)
    canvas = np.zeros(shape, np.uint8)
    for points, strength, thickness in lines:
        canvas[:] = 0
        cv2.polylines(canvas, [np.rint(points * 16).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, shift=4)
        np.maximum(out, canvas.astype(np.float32) * (strength / 255), out=out)
    return out


def hard_case(height: int, width: int, seed: int) -> Case:
    """A synthetic frame with what real frames have and ``synthetic_case`` lacks, each of
    which INT8 rounding finds hard: hundreds of anti-aliased hair strands, one to two
    pixels wide and partly transparent; a wide translucent halo and a thin wire; a subject
    cut by the frame's side and bottom edges whose clothes take the background's colours
    (within a few levels) on one side; a finely textured background (weave, grain, tiles);
    sensor noise in the frame and in the captured background alike; and a captured
    background taken by a hand that moved: shifted by a pixel or two, turned by a fraction
    of a degree and exposed a few percent differently. Ground truth as ``synthetic_case``."""
    import cv2

    rng = np.random.default_rng(seed + 20_000)  # never the plain frame of the same seed's draws
    scale = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Background: smooth shading, a fine weave and grain at a few pixels' period, shelves.
    background = 0.2 + 0.6 * _smooth_noise(rng, height, width, 5, 3)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(3.0, 6.0)
    weave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    grain = _smooth_noise(rng, height, width, max(8, scale // 6), 1)[..., 0] - 0.5
    background += (0.06 * weave + 0.25 * grain)[..., None] * rng.uniform(0.5, 1.0, 3)
    for _ in range(60):  # a cluttered room: books, frames, shelves, with hard edges and corners
        y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
        h, w = int(rng.integers(scale // 30 + 2, scale // 6)), int(rng.integers(scale // 30 + 2, scale // 6))
        background[y0 : y0 + h, x0 : x0 + w] = rng.random(3) * 0.9 + 0.05
    tile = max(4, scale // 24)
    tiles = (np.arange(height)[:, None] // tile + np.arange(width) // tile) % 2
    floor = slice(height * 3 // 4, None)
    background[floor] *= 0.8 + 0.2 * tiles[floor, :, None]
    background = np.clip(background, 0, 1).astype(np.float32)

    # The subject: off centre, so its shoulder leaves the frame at a side and the bottom.
    side = rng.choice([-1, 1])
    cx = width * (0.5 + side * rng.uniform(0.2, 0.28))
    cy = height * rng.uniform(0.38, 0.5)
    head_ry, head_rx = 0.24 * scale, 0.17 * scale
    head = ((yy - cy) / head_ry) ** 2 + ((xx - cx) / head_rx) ** 2
    body = ((yy - height * 1.05) / (0.5 * scale)) ** 2 + ((xx - cx) / (0.55 * scale)) ** 2
    distance = np.minimum(np.sqrt(head) - 1, np.sqrt(body) - 1) * 0.2 * scale
    # Soft edges of changing width (motion blur, defocus): 1 px on one side to ~4% on the other.
    edge = max(1.0, scale / 300) + (scale / 25) * np.clip((xx - cx) * side / (0.4 * scale), 0, 1)
    alpha = np.clip(0.5 - distance / edge, 0, 1).astype(np.float32)

    # A translucent halo of fly-away hair around the top of the head, patchy as hair is.
    halo_distance = np.sqrt(head) - 1
    patches = _smooth_noise(rng, height, width, max(6, scale // 12), 1)[..., 0]
    halo = np.clip(1 - halo_distance / 0.35, 0, 1) * (yy < cy) * (halo_distance > -0.05) * patches * 0.7
    alpha = np.maximum(alpha, halo.astype(np.float32))

    # Strands: curved anti-aliased lines from the scalp, most 1 px, some 2 px, partly transparent.
    lines = []
    for _ in range(int(rng.integers(250, 350))):
        a0 = rng.uniform(-np.pi * 0.95, -np.pi * 0.05)
        length = rng.uniform(0.05, 0.3) * scale
        bend = rng.uniform(-2.5, 2.5)
        t = np.linspace(0, 1, 24)[:, None]
        theta = a0 + bend * t[:, 0] * rng.uniform(0.3, 1.0)
        start = np.array([cx + np.cos(a0) * head_rx * 0.9, cy + np.sin(a0) * head_ry * 0.9])
        steps = np.stack([np.cos(theta), np.sin(theta)], 1) * length / 24
        points = start + np.cumsum(steps, 0)
        lines.append((points, rng.uniform(0.25, 1.0), 1 if rng.random() < 0.8 else 2))
    # Thin wires: a headset cable and the frame of glasses, 1 px, opaque.
    for _ in range(3):
        x0 = cx + rng.uniform(-1, 1) * head_rx
        points = np.stack([np.linspace(x0, x0 + rng.uniform(-0.3, 0.3) * scale, 32), np.linspace(cy, height, 32)], 1)
        points[:, 0] += np.sin(np.linspace(0, rng.uniform(2, 6), 32)) * scale * 0.02
        lines.append((points, 1.0, 1))
    strands = _strokes((height, width), lines)
    alpha = np.maximum(alpha, strands)

    # Foreground: hair dark or fair, skin, clothes; on the clothes' far side, the background's
    # own colours within a few levels (a grey shirt before a grey wall).
    foreground = 0.15 + 0.6 * _smooth_noise(rng, height, width, 10, 3) * rng.uniform(0.4, 1.0, 3)
    hair = rng.uniform(0.05, 0.8) * rng.uniform(0.8, 1.0, 3)
    hairy = (halo_distance > -0.15) & (yy < cy)
    foreground[hairy] = hair + 0.05 * rng.standard_normal((int(hairy.sum()), 3))
    foreground[strands > 0] = hair
    close = ((xx - cx) * -side > 0.05 * scale) & (yy > cy + head_ry * 0.8)
    delta = rng.uniform(0.015, 0.04) * rng.choice([-1, 1], 3)
    foreground[close] = background[close] + delta
    foreground = np.clip(foreground, 0, 1).astype(np.float32)

    noise = rng.uniform(1.5, 4.0) / 255
    composite = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    composite += rng.normal(0, noise, composite.shape) * (0.5 + composite)  # shot noise grows with light
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-0.4, 0.4), 1.0)
    matrix[:, 2] += rng.uniform(0.7, 2.0, 2) * rng.choice([-1, 1], 2)
    moved = cv2.warpAffine(background, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    captured = moved * rng.uniform(0.94, 1.06) + rng.normal(0, noise, moved.shape) * (0.5 + moved)
    return Case(f"hard-{seed}", _u8(composite), _u8(captured), alpha, foreground, background)


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


# The kinds of synthetic frame, by name: ``plain`` (``synthetic_case``: calibration, validation
# and benchmarks, whose numbers were recorded with it) and ``hard`` (``hard_case``: what
# verify judges, as hard for INT8 as real frames were measured to be).
FAMILIES = {"plain": synthetic_case, "hard": hard_case}


def synthetic_cases(
    height: int, width: int, count: int, use: str = "verify", start: int = 0, family: str = "plain"
) -> list[Case]:
    """``count`` synthetic frames of ``family`` (a key of ``FAMILIES``) for ``use``
    (``seeds_for``): the same frames every time, and never another use's."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    make = FAMILIES[family]
    return [make(height, width, seed) for seed in seeds_for(use, count, start)]


def _check_aspect(path: Path, height: int, width: int) -> None:
    frame_height, frame_width = image_size(path)
    if not same_aspect((frame_height, frame_width), (height, width)):
        raise InputError(
            f"{path} is {frame_width}x{frame_height}, an aspect other than the model's {width}x{height}: "
            "calibrate on frames shaped like the deployment's"
        )


def image_names(folder: Path) -> list[str]:
    """The frames of an Open Model Zoo HumanMatting folder (``com/``'s images, sorted), read
    before any of them is: ``InputError`` for a folder that is not one, or holds none."""
    folder = Path(folder)
    com, bgr = folder / "com", folder / "bgr"
    if not folder.is_dir():
        raise InputError(f"images folder {folder} does not exist or is not a folder")
    if not com.is_dir() or not bgr.is_dir():
        raise InputError(f"{folder} needs com/ and bgr/ subfolders (Open Model Zoo HumanMatting layout)")
    names = sorted(p.name for p in com.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise InputError(f"{com} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return names


def image_cases(
    folder: Path, height: int, width: int, same_aspect: bool = False, limit: int | None = None
) -> list[Case]:
    """Open Model Zoo HumanMatting layout: ``com/``, ``bgr/`` and optional ``pha/``, ``fgr/``.
    ``same_aspect``: refuse frames, and their backgrounds, whose aspect differs from
    ``width / height`` (resizing would stretch them); ``limit``: read only the first frames
    (sorted by name)."""
    folder = Path(folder)
    com, bgr = folder / "com", folder / "bgr"
    names = image_names(folder)
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
