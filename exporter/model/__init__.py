"""BackgroundMattingV2 in plain PyTorch, key-compatible with the official weights of every
published backbone (MobileNetV2, ResNet-50, ResNet-101)."""

from exporter.backbones import BACKBONES, DEFAULT_BACKBONE, Backbone, get_backbone
from exporter.config import REFINE_MODES
from exporter.model.matting import MattingBase, MattingRefine

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "REFINE_MODES", "Backbone", "MattingBase", "MattingRefine", "get_backbone"]
