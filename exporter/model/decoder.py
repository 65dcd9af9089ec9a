"""Decoder of BackgroundMattingV2's base network (arXiv 2012.07810).

Upsamples the ASPP output step by step to the backbone's input resolution, concatenating
the encoder's feature map at each scale (as PeterL1n/BackgroundMattingV2's ``Decoder``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Decoder"]


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    """Four 3x3 conv stages, each after a bilinear 2x upsample and a skip concatenation.

    Args:
        channels: ``[aspp_out, c1, c2, c3, out]``; ``[256, 128, 64, 48, 37]`` here.
        feature_channels: skip channels at 1/8, 1/4, 1/2 and 1/1; ``[32, 24, 16, 6]``.

    Shapes: ``x4 (B, channels[0], H/16, W/16)`` plus skips ``x3 .. x0`` ->
    ``(B, channels[4], H, W)``.
    """

    def __init__(self, channels: Sequence[int], feature_channels: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(feature_channels[0] + channels[0], channels[1], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[1])
        self.conv2 = nn.Conv2d(feature_channels[1] + channels[1], channels[2], 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[2])
        self.conv3 = nn.Conv2d(feature_channels[2] + channels[2], channels[3], 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels[3])
        self.conv4 = nn.Conv2d(feature_channels[3] + channels[3], channels[4], 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        """``x4, x3, x2, x1, x0`` as the class says."""
        return self.conv4(self.head_input(*features))

    def head_input(
        self,
        x4: torch.Tensor,
        x3: torch.Tensor,
        x2: torch.Tensor,
        x1: torch.Tensor,
        x0: torch.Tensor,
    ) -> torch.Tensor:
        """What ``conv4`` reads: the third stage's output upsampled, with the input image."""
        x = self.relu(self.bn1(self.conv1(torch.cat([_upsample_to(x4, x3), x3], dim=1))))
        x = self.relu(self.bn2(self.conv2(torch.cat([_upsample_to(x, x2), x2], dim=1))))
        x = self.relu(self.bn3(self.conv3(torch.cat([_upsample_to(x, x1), x1], dim=1))))
        return torch.cat([_upsample_to(x, x0), x0], dim=1)
