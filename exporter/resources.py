"""Whether this machine can hold an export's activations, asked before any work starts."""

from __future__ import annotations

from pathlib import Path

from exporter.config import ExportConfig
from exporter.errors import ConfigError

__all__ = ["estimated_memory", "require_memory"]

# Peak resident memory of `bgm-export onnx` (tracing + onnxsim, MobileNetV2), measured with
# /usr/bin/time: 0.91 GB at 360x640 and 1.66 GB at 1080x1920, i.e. ~0.8 GB of libraries and
# weights plus ~416 bytes a pixel; rounded up, and ResNet-101's weights added to the base.
BASE_BYTES = 1.2e9
BYTES_PER_PIXEL = 450


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
