"""BackgroundMattingV2 in plain PyTorch, key-compatible with the official weights of every
published backbone (MobileNetV2, ResNet-50, ResNet-101)."""

from exporter.model.backbones import BACKBONES, DEFAULT_BACKBONE, Backbone, get_backbone
from exporter.model.matting import MattingBase, MattingRefine
from exporter.model.refiner import REFINE_MODES

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "REFINE_MODES", "Backbone", "MattingBase", "MattingRefine", "get_backbone"]
