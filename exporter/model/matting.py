"""BackgroundMattingV2 (arXiv 2012.07810) with any of its published backbones.

``MattingBase`` (encoder, ASPP, decoder at one resolution) and ``MattingRefine`` (the base
at ``backbone_scale``, then the patch refiner at full resolution), computing what
PeterL1n/BackgroundMattingV2's classes of the same names compute, with the same
state_dict keys, so the official ``pytorch_mobilenetv2.pth``, ``pytorch_resnet50.pth`` and
``pytorch_resnet101.pth`` load with ``strict=True``. The backbone is chosen by name from
``exporter.backbones``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from exporter.backbones import DEFAULT_BACKBONE, get_backbone
from exporter.model.aspp import ASPP
from exporter.model.decoder import Decoder
from exporter.model.refiner import Refiner

__all__ = ["MattingBase", "MattingRefine"]


class MattingBase(nn.Module):
    """Encoder-decoder producing coarse alpha, foreground, error and hidden features.

    Args:
        backbone: ``mobilenetv2``, ``resnet50`` or ``resnet101`` (``BACKBONES``).

    Inputs:
        src, bgr: ``(B, 3, H, W)`` source and captured background, RGB, float, 0..1.

    Returns:
        pha ``(B, 1, H, W)`` alpha 0..1; fgr ``(B, 3, H, W)`` foreground RGB 0..1;
        err ``(B, 1, H, W)`` predicted error 0..1; hid ``(B, 32, H, W)`` features >= 0.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE) -> None:
        super().__init__()
        spec = get_backbone(backbone)
        self.backbone = spec.build_encoder(6)
        self.aspp = ASPP(spec.channels, (3, 6, 9))
        self.decoder = Decoder([256, 128, 64, 48, 1 + 3 + 1 + 32], [*spec.skip_channels, 6])

    def coarse(self, src_bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """From ``cat([src, bgr])``: pha (clamped), fgr residual (not yet added to src),
        err (clamped), hid (ReLU)."""
        x, *shortcuts = self.backbone(src_bgr)
        x = self.decoder(self.aspp(x), *shortcuts)
        return x[:, 0:1].clamp(0.0, 1.0), x[:, 1:4], x[:, 4:5].clamp(0.0, 1.0), x[:, 5:].relu()

    def forward(
        self, src: torch.Tensor, bgr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pha, fgr, err, hid = self.coarse(torch.cat([src, bgr], dim=1))
        return pha, (fgr + src).clamp(0.0, 1.0), err, hid


class MattingRefine(MattingBase):
    """The base at reduced resolution, refined to full resolution on 4x4 patches.

    Args:
        backbone: ``mobilenetv2``, ``resnet50`` or ``resnet101`` (``BACKBONES``).
        backbone_scale: downsampling of the inputs for the base, at most 1/2
            (1/4 for HD, 1/8 for 4K).
        refine_mode: ``sampling``, ``thresholding`` or ``full``.
        refine_sample_pixels: pixels refined in ``sampling`` mode (80,000 for HD).
        refine_threshold: error threshold for ``thresholding``.
        refine_kernel_size: 3 (the official weights) or 1.
        refine_prevent_oversampling: keep coarse values where the error is not positive.

    Inputs:
        src, bgr: ``(B, 3, H, W)`` RGB, float, 0..1; H and W divisible by 4.

    Returns:
        pha ``(B, 1, H, W)`` alpha 0..1; fgr ``(B, 3, H, W)`` foreground RGB 0..1;
        pha_sm, fgr_sm, err_sm ``(B, C, h, w)`` the coarse results at
        ``h = floor(H * backbone_scale)``; ref_sm ``(B, 1, H/4, W/4)``, 1 where refined.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        backbone_scale: float = 1 / 4,
        refine_mode: str = "sampling",
        refine_sample_pixels: int = 80_000,
        refine_threshold: float = 0.1,
        refine_kernel_size: int = 3,
        refine_prevent_oversampling: bool = True,
    ) -> None:
        if not 0 < backbone_scale <= 0.5:
            raise ValueError(f"backbone_scale {backbone_scale} is not in (0, 1/2]")
        super().__init__(backbone)
        self.backbone_scale = backbone_scale
        self.refiner = Refiner(
            refine_mode,
            refine_sample_pixels,
            refine_threshold,
            refine_kernel_size,
            refine_prevent_oversampling,
        )

    def forward(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height, width = src.shape[2:]
        if src.shape != bgr.shape or height % 4 or width % 4:
            raise ValueError(
                f"src {tuple(src.shape)} and bgr {tuple(bgr.shape)} must be equal, with height and width divisible by 4"
            )
        return self.forward_stacked(torch.cat([src, bgr], dim=1))

    def forward_stacked(self, src_bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``forward`` on ``cat([src, bgr])`` ``(B, 6, H, W)``: each full-resolution step
        (resize, crop) then runs once on six channels instead of twice on three."""
        height, width = src_bgr.shape[2:]
        if torch.jit.is_tracing():
            # As the original: traced, the size stays a function of the input's (floor(H * scale)),
            # so a --dynamic export runs at any size; a static export folds it to a constant.
            src_bgr_sm = F.interpolate(
                src_bgr, scale_factor=self.backbone_scale, mode="bilinear", align_corners=False,
                recompute_scale_factor=True,
            )  # fmt: skip
        else:
            # The original's interpolate(scale_factor, recompute_scale_factor=True) is this size.
            small = (math.floor(height * self.backbone_scale), math.floor(width * self.backbone_scale))
            src_bgr_sm = F.interpolate(src_bgr, small, mode="bilinear", align_corners=False)
        pha_sm, fgr_sm, err_sm, hid_sm = self.coarse(src_bgr_sm)
        pha, fgr, ref_sm = self.refiner(src_bgr, pha_sm, fgr_sm, err_sm, hid_sm)
        return (
            pha.clamp(0.0, 1.0),
            (fgr + src_bgr[:, :3]).clamp(0.0, 1.0),
            pha_sm,
            (fgr_sm + src_bgr_sm[:, :3]).clamp(0.0, 1.0),
            err_sm,
            ref_sm,
        )
