"""The published BackgroundMattingV2 backbones, as data (arXiv 2012.07810).

Everything that differs between ``pytorch_mobilenetv2.pth``, ``pytorch_resnet50.pth`` and
``pytorch_resnet101.pth`` is one ``Backbone`` entry here, in the spirit of timm's model
registry: the encoder, the channels it hands to ASPP and to the decoder's skips, the
checkpoint's file name and the exported model's name. Adding a backbone is one encoder
file and one entry in ``BACKBONES``. The entries name their encoder builder by import path,
so this table (and the configuration and command line that read it) needs no torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "Backbone", "get_backbone"]


@dataclass(frozen=True)
class Backbone:
    """One published backbone.

    Args:
        name: the original's ``--model-backbone`` value, and the key here.
        title: how people write it.
        encoder: ``module:function`` building the encoder from its input channels (6:
            source and background stacked).
        channels: channels of the encoder's 1/16 output, ASPP's input.
        skip_channels: channels of the encoder's 1/8, 1/4 and 1/2 outputs, the decoder's skips.
    """

    name: str
    title: str
    encoder: str
    channels: int
    skip_channels: tuple[int, int, int]

    def build_encoder(self, in_channels: int = 6) -> object:
        """The encoder (a ``torch.nn.Module``); imports torch and the encoder's module."""
        module, function = self.encoder.split(":")
        return getattr(importlib.import_module(module), function)(in_channels)

    @property
    def model_name(self) -> str:
        """The exported model's name, as Open Model Zoo names ``background-matting-mobilenetv2``."""
        return f"background-matting-{self.name}"

    @property
    def checkpoint_name(self) -> str:
        """The file name the original repository publishes the weights under."""
        return f"pytorch_{self.name}.pth"


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("mobilenetv2", "MobileNetV2", "exporter.model.mobilenetv2:MobileNetV2Encoder", 320, (32, 24, 16)),
        Backbone("resnet50", "ResNet-50", "exporter.model.resnet:resnet50_encoder", 2048, (512, 256, 64)),
        Backbone("resnet101", "ResNet-101", "exporter.model.resnet:resnet101_encoder", 2048, (512, 256, 64)),
    )
}
DEFAULT_BACKBONE = "mobilenetv2"


def get_backbone(name: str) -> Backbone:
    """The entry for ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"backbone {name!r} is not one of {', '.join(BACKBONES)}") from None
