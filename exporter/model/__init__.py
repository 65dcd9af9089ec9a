"""BackgroundMattingV2 (MobileNetV2) in plain PyTorch, key-compatible with the official weights."""

from exporter.model.matting import MattingBase, MattingRefine
from exporter.model.refiner import REFINE_MODES

__all__ = ["REFINE_MODES", "MattingBase", "MattingRefine"]
