"""Whether this machine can hold an export's activations, asked before any work starts."""

from __future__ import annotations

from pathlib import Path

from exporter.config import ExportConfig
from exporter.errors import ConfigError
from exporter.isa import SHOWN_FLAGS as CPU_FLAGS
from exporter.isa import cpu_isa

__all__ = [
    "CASE_BYTES_PER_PIXEL",
    "CPU_FLAGS",
    "cpu_description",
    "estimated_memory",
    "frame_memory",
    "require_frame_memory",
    "require_memory",
]

# Peak resident memory of `bgm-export onnx` (tracing + onnxsim, MobileNetV2), measured with
# /usr/bin/time: 0.91 GB at 360x640 and 1.66 GB at 1080x1920, i.e. ~0.8 GB of libraries and
# weights plus ~416 bytes a pixel; rounded up, and ResNet-101's weights added to the base.
BASE_BYTES = 1.2e9
BYTES_PER_PIXEL = 450
# What one INT8 calibration or validation frame holds while INT8 is made, a pixel: the frame
# as read (src and bgr uint8, 6 bytes; true alpha and foreground float32, 16) and as the
# model's float32 inputs that NNCF's dataset keeps (24). Measured: peak resident memory of
# `ir --precision INT8` at 192x320 rose by 187 MB from 4 to 68 frames, 47.6 bytes a pixel.
FRAME_BYTES_PER_PIXEL = 48
# What one verification case holds while verify runs, a pixel: the frames, their truth and
# background, the reference's outputs and an artifact's. Measured: peak resident memory of
# `verify` of one FP32 IR at 192x320 rose by 297 MiB from 8 to 40 cases, 158 bytes a pixel.
CASE_BYTES_PER_PIXEL = 160


def estimated_memory(config: ExportConfig) -> float:
    """Bytes an export or an eager reference run of ``config`` needs at its peak."""
    return BASE_BYTES + BYTES_PER_PIXEL * config.height * config.width


def available_memory() -> float | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes; None where there is no such file."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def require_memory(config: ExportConfig) -> None:
    """Raise ``ConfigError`` naming both numbers when ``config`` cannot fit in memory now."""
    available = available_memory()
    needed = estimated_memory(config)
    if available is not None and needed > available:
        raise ConfigError(
            f"{config.height}x{config.width} needs about {needed / 1e9:.1f} GB of memory to export or run, "
            f"and {available / 1e9:.1f} GB is available; choose a smaller resolution"
        )


def frame_memory(config: ExportConfig, frames: int, bytes_per_pixel: int = FRAME_BYTES_PER_PIXEL) -> float:
    """Bytes ``frames`` frames at ``config`` hold, at ``bytes_per_pixel`` (INT8 calibration or
    validation frames' by default)."""
    return float(bytes_per_pixel) * config.height * config.width * frames


def require_frame_memory(
    config: ExportConfig, frames: int, what: str = "calibration", bytes_per_pixel: int = FRAME_BYTES_PER_PIXEL
) -> None:
    """Raise ``ConfigError`` naming both numbers when ``frames`` frames at ``config`` cannot
    be held in memory now, before one is read or made (else they grow until the kernel ends
    the process). The frames alone: a floor, for counts that could never fit."""
    available = available_memory()
    needed = frame_memory(config, frames, bytes_per_pixel)
    if available is not None and needed > available:
        raise ConfigError(
            f"{frames:,} {what} frames at {config.height}x{config.width} need about {needed / 1e9:,.1f} GB of "
            f"memory, and {available / 1e9:.1f} GB is available; use fewer frames"
        )


def cpu_description() -> str:
    """The CPU as every timing and report names it: its INT8 kernel class (and the cap on it,
    ``ONEDNN_MAX_CPU_ISA``), model name, cores and the flags that change which kernels
    OpenVINO runs (``exporter.isa``)."""
    return cpu_isa().description
