"""Atrous Spatial Pyramid Pooling of BackgroundMattingV2 (arXiv 2012.07810).

DeepLabV3's ASPP (arXiv 1706.05587) as torchvision builds it, which the original
PeterL1n/BackgroundMattingV2 imports: a 1x1 branch, one dilated 3x3 branch per rate, an
image-pooling branch, then a 1x1 projection. Names (``aspp.convs.N``, ``aspp.project``) are
the official checkpoint's keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ASPP", "ASPPConv", "ASPPPooling"]


class ASPPConv(nn.Sequential):
    """Dilated 3x3 conv-BN-ReLU branch."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class ASPPPooling(nn.Sequential):
    """Global average pool, 1x1 conv-BN-ReLU, broadcast back to the input's size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        # Bilinear from 1x1 is a broadcast; expand says so without an interpolation op.
        return x.expand(-1, -1, size[0], size[1])


class ASPP(nn.Module):
    """ASPP head.

    Args:
        in_channels: channels of the encoder's last feature map (320 for MobileNetV2).
        atrous_rates: dilation of each 3x3 branch; (3, 6, 9) in BackgroundMattingV2.
        out_channels: channels of every branch and of the projection.

    Shapes: ``(B, in_channels, h, w) -> (B, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, atrous_rates: Sequence[int] = (3, 6, 9), out_channels: int = 256) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            )
        ]
        branches += [ASPPConv(in_channels, out_channels, rate) for rate in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
