"""ResNet-50/101 encoders of BackgroundMattingV2 (arXiv 2012.07810).

The backbone of PeterL1n/BackgroundMattingV2's ``ResNetEncoder``: torchvision's ResNet
(arXiv 1512.03385) with bottleneck blocks, a 6-channel stem (source and background
stacked), the last stage dilated instead of strided (output stride 16, torchvision's
``replace_stride_with_dilation=[False, False, True]``), and no pooling or classifier.
Submodule names follow torchvision's, because they are the official checkpoints' keys
(``backbone.conv1``, ``backbone.layerN.M.convK``, ``.downsample.0/1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Bottleneck", "ResNetEncoder", "resnet50_encoder", "resnet101_encoder"]


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (the stride and dilation live here, as torchvision's v1.5), 1x1 expand x4.

    Args:
        in_channels: input channels.
        planes: the bottleneck's width; the output has ``planes * 4`` channels.
        stride: stride of the 3x3 convolution.
        dilation: dilation (and padding) of the 3x3 convolution.
        downsample: projection of the identity when the shape changes, ``[conv1x1, bn]``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet stages with output stride 16, returning every scale for the decoder.

    Args:
        layers: bottleneck blocks per stage, ``(3, 4, 6, 3)`` for ResNet-50,
            ``(3, 4, 23, 3)`` for ResNet-101.
        in_channels: channels of the input, 6 for ``cat([src, bgr])``.

    Shapes (input ``(B, in_channels, H, W)``):
        returns ``x4 (B, 2048, H/16, W/16)``, ``x3 (B, 512, H/8, W/8)``,
        ``x2 (B, 256, H/4, W/4)``, ``x1 (B, 64, H/2, W/2)`` and the input ``x0``
        (sizes rounded up by each stride-2 step).
    """

    def __init__(self, layers: Sequence[int], in_channels: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._channels = 64
        self._dilation = 1
        self.layer1 = self._stage(64, layers[0])
        self.layer2 = self._stage(128, layers[1], stride=2)
        self.layer3 = self._stage(256, layers[2], stride=2)
        self.layer4 = self._stage(512, layers[3], stride=2, dilate=True)

    def _stage(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        """torchvision's ``_make_layer``: a dilated stage keeps its first block at the
        previous dilation and trades the stride for dilation in the rest."""
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [Bottleneck(self._channels, planes, stride, previous_dilation, downsample)]
        self._channels = out_channels
        layers += [Bottleneck(out_channels, planes, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x0 = x
        x = self.relu(self.bn1(self.conv1(x)))
        x1 = x
        x = self.layer1(self.maxpool(x))
        x2 = x
        x = self.layer2(x)
        x3 = x
        x4 = self.layer4(self.layer3(x))
        return x4, x3, x2, x1, x0


def resnet50_encoder(in_channels: int = 6) -> ResNetEncoder:
    return ResNetEncoder((3, 4, 6, 3), in_channels)


def resnet101_encoder(in_channels: int = 6) -> ResNetEncoder:
    return ResNetEncoder((3, 4, 23, 3), in_channels)
