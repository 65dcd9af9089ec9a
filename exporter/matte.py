"""Background replacement with an exported model: images, folders of frames, or video.

Frames of any size are letterboxed (aspect kept, centred, zero padding) to the model's
resolution, as Open Model Zoo's demo wrapper does, fed as BGR 0..255, and the results are
cropped and resized back. Per frame it writes the alpha (8-bit PNG), the foreground (RGBA
PNG) and the composite over a colour, an image or a video; for a video, also a video of the
composites. Everything is written into a staging folder first, so a failure leaves nothing
half-written in the output folder.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exporter.errors import InputError, OutputError
from exporter.runtime import Runner, load_runner
from exporter.verify.data import IMAGE_SUFFIXES, read_image, to_model_input

__all__ = ["MatteResult", "MatteSummary", "Matter", "letterbox", "matte", "parse_target"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEVICES = ("CPU", "GPU", "NPU", "AUTO")


@dataclass
class MatteResult:
    """One frame at its own size: alpha ``(H, W)`` 0..1, foreground ``(H, W, 3)`` RGB 0..1,
    composite ``(H, W, 3)`` RGB uint8."""

    pha: np.ndarray
    fgr: np.ndarray
    composite: np.ndarray


@dataclass
class MatteSummary:
    frames: int
    seconds: float
    files: list[Path]
    warnings: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


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

    def model_outputs(self, src_rgb: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw ``pha``/``fgr`` on the letterboxed frame."""
        canvas, _ = letterbox(src_rgb, self.height, self.width)
        return self.runner.run(to_model_input(canvas), self._bgr_input)

    def __call__(self, src_rgb: np.ndarray, target: np.ndarray) -> MatteResult:
        if src_rgb.shape[:2] != self.size:
            raise InputError(f"frame of {src_rgb.shape[1]}x{src_rgb.shape[0]} after a background of "
                             f"{self.size[1]}x{self.size[0]}: frames of one run must share a size")  # fmt: skip
        out = self.model_outputs(src_rgb)
        top, left, h, w = self.box
        height, width = self.size
        pha = _resize(out["pha"][0, 0, top : top + h, left : left + w], width, height)
        fgr = _resize(out["fgr"][0].transpose(1, 2, 0)[top : top + h, left : left + w], width, height)
        pha = np.clip(pha, 0, 1)
        fgr = np.clip(fgr, 0, 1)
        target = _resize(target, width, height).astype(np.float32) / 255
        composite = pha[..., None] * fgr + (1 - pha[..., None]) * target
        return MatteResult(pha, fgr, np.clip(np.rint(composite * 255), 0, 255).astype(np.uint8))


def _open_video(path: Path):  # noqa: ANN202 - cv2.VideoCapture
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InputError(f"cannot read video {path}")
    ok, _ = capture.read()
    if not ok:
        raise InputError(f"video {path} has no readable frame")
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return capture


def _video_frames(capture) -> Iterator[np.ndarray]:  # noqa: ANN001 - cv2.VideoCapture
    import cv2

    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


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
        first = read_image(files[0])
        frames = ((p.stem, read_image(p)) for p in files)
        return _Source([p.stem for p in files], frames, len(files), first.shape[:2])
    if path.suffix.lower() in VIDEO_SUFFIXES:
        capture = _open_video(path)
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        size = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
        frames = ((f"frame_{i:06d}", frame) for i, frame in enumerate(_video_frames(capture)))
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
        frames = list(_video_frames(_open_video(path)))
        return lambda index: frames[index % len(frames)]
    image = read_image(path)
    return lambda index: image


def _save_png(image: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A folder inside ``out`` whose files are moved into ``out`` only on success."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".matte-", suffix=".partial", dir=out))
    except OSError as exc:
        raise OutputError(f"cannot write in {out}: {exc.strerror}") from None
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            item.replace(out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def matte(
    model: Path,
    src: Path,
    bgr: Path,
    *,
    target: str = "0,255,0",
    out: Path = Path("matte"),
    device: str = "CPU",
    on_frame: Callable[[int, int], None] | None = None,
) -> MatteSummary:
    """Matte every frame of ``src`` against background image ``bgr`` and write the results."""
    import cv2

    if device.split(":")[0] not in DEVICES:
        raise InputError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    model = Path(model)
    if model.suffix not in (".xml", ".onnx"):
        raise InputError(f"model {model} is neither .xml nor .onnx")
    source = _source(src)
    background = read_image(Path(bgr))
    backdrop = parse_target(target)
    warnings = []
    if background.shape[:2] != source.size:
        warnings.append(
            f"background {background.shape[1]}x{background.shape[0]} resized to the source's "
            f"{source.size[1]}x{source.size[0]}"
        )
        background = _resize(background, source.size[1], source.size[0])
    # Deployment arithmetic (the device's default), not verification's f32.
    matter = Matter(load_runner(model, "openvino", device, f32=False), background)

    written: list[Path] = []
    frames = 0
    start = time.perf_counter()
    with _staging(Path(out)) as staging:
        writer = None
        if source.names is None:
            height, width = source.size
            writer = cv2.VideoWriter(str(staging / "composite.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                                     source.fps, (width, height))  # fmt: skip
        try:
            for index, (name, image) in enumerate(source.frames):
                colour = backdrop if isinstance(backdrop, tuple) else None
                target_image = (
                    np.broadcast_to(np.array(colour, np.uint8), (*source.size, 3)) if colour else backdrop(index)
                )
                result = matter(image, np.ascontiguousarray(target_image))
                alpha = np.rint(result.pha * 255).astype(np.uint8)
                rgba = np.dstack([np.rint(result.fgr * 255).astype(np.uint8), alpha])
                _save_png(alpha, staging / f"{name}_alpha.png")
                _save_png(rgba, staging / f"{name}_fgr.png")
                _save_png(result.composite, staging / f"{name}_composite.png")
                if writer is not None:
                    writer.write(cv2.cvtColor(result.composite, cv2.COLOR_RGB2BGR))
                frames += 1
                if on_frame:
                    on_frame(frames, source.total)
        finally:
            if writer is not None:
                writer.release()
        written = [Path(out) / p.name for p in sorted(staging.iterdir())]
    return MatteSummary(frames, time.perf_counter() - start, written, warnings)
