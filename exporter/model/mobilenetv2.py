"""MobileNetV2 encoder of BackgroundMattingV2 (arXiv 2012.07810).

The backbone of PeterL1n/BackgroundMattingV2's ``MobileNetV2Encoder``: torchvision's
MobileNetV2 (arXiv 1801.04381) with a 6-channel stem (source and background stacked), the
last 1x1 block and the classifier removed, and output stride 16 kept by dilating the last
stages instead of striding. Submodule names follow torchvision's, because they are the
official checkpoint's keys (``backbone.features.N.conv.M...``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBNReLU", "InvertedResidual", "MobileNetV2Encoder"]

# (expand ratio t, output channels c, repeats n, first stride s), torchvision's table.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class ConvBNReLU(nn.Sequential):
    """Conv-BN-ReLU6 as ``[conv, norm, act]``, which is why checkpoint keys carry ``.0.``/``.1.``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand (1x1), depthwise (3x3), project (1x1, linear).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: depthwise stride, 1 or 2.
        expand_ratio: hidden channels are ``in_channels * expand_ratio``.
        dilation: depthwise dilation (2 in the encoder's last stages, keeping stride 16).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_channels, hidden, kernel_size=1))  # pw
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden, dilation=dilation),  # dw
            nn.Conv2d(hidden, out_channels, 1, bias=False),  # pw-linear
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 features 0..17 with output stride 16, returning every scale for the decoder.

    Block 14 (the first 160-channel block) has stride 1 instead of 2, and blocks 15..17
    use dilation 2, as in the original encoder.

    Args:
        in_channels: channels of the input, 6 for ``cat([src, bgr])``.

    Shapes (input ``(B, in_channels, H, W)``):
        returns ``x4 (B, 320, H/16, W/16)``, ``x3 (B, 32, H/8, W/8)``,
        ``x2 (B, 24, H/4, W/4)``, ``x1 (B, 16, H/2, W/2)`` and the input ``x0``
        (sizes rounded up by each stride-2 convolution).
    """

    def __init__(self, in_channels: int = 6) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU(in_channels, 32, stride=2)]
        channels = 32
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                index = len(features)
                stride = s if i == 0 else 1
                dilation = 1
                if index == 14:
                    stride = 1
                elif index >= 15:
                    dilation = 2
                features.append(InvertedResidual(channels, c, stride, t, dilation))
                channels = c
        self.features = nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = x
        x = self.features[0:2](x)
        x1 = x
        x = self.features[2:4](x)
        x2 = x
        x = self.features[4:7](x)
        x3 = x
        x4 = self.features[7:](x)
        return x4, x3, x2, x1, x0
