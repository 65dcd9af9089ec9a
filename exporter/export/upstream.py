"""The original repository's export recipe, kept as a benchmark baseline only.

PeterL1n/BackgroundMattingV2's ``export_onnx.py`` defaults crop patches with RoIAlign,
write them back with a pixel-wise ScatterElements, and find them with NonZero, so the
number of patches (and every shape after it) is data-dependent; Open Model Zoo converted
that graph at a fixed 720p input. ``bgm-export bench`` exports this alongside ours so that
both are timed in one run on one machine. It computes the same numbers as our model
(the crops land on pixel centres, so RoIAlign's bilinear sampling is exact).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from exporter.checkpoint import Weights, build_model
from exporter.config import ExportConfig
from exporter.export.onnx import BANNED_OPS, OnnxExport, export_module
from exporter.model import MattingRefine
from exporter.model.refiner import Refiner, gather_patches, window_pixels

__all__ = ["OriginalRecipe", "UpstreamRefiner", "export_upstream_onnx"]


class _RoiAlignCrop(torch.autograd.Function):
    """Square crops at ``(rows, cols) * stride``; exported as ONNX RoiAlign like upstream's
    ``torchvision.ops.roi_align(x, boxes, size, sampling_ratio=1)``."""

    @staticmethod
    def forward(ctx, x, rows, cols, size: int, stride: int):
        return gather_patches(x, rows[None], cols[None], size, stride)

    @staticmethod
    def symbolic(g, x, rows, cols, size: int, stride: int):
        def as_float(v):
            return g.op("Cast", v, to_i=1)

        stride_c = g.op("Constant", value_t=torch.tensor(float(stride)))
        half = g.op("Constant", value_t=torch.tensor(0.5))
        extent = g.op("Constant", value_t=torch.tensor(float(size)))
        x1 = g.op("Sub", g.op("Mul", as_float(cols), stride_c), half)
        y1 = g.op("Sub", g.op("Mul", as_float(rows), stride_c), half)

        def column(v):  # Unsqueeze takes its axes as an attribute before opset 13
            if g.opset < 13:
                return g.op("Unsqueeze", v, axes_i=[1])
            return g.op("Unsqueeze", v, g.op("Constant", value_t=torch.tensor([1])))

        boxes = g.op(
            "Concat", *[column(v) for v in (x1, y1, g.op("Add", x1, extent), g.op("Add", y1, extent))], axis_i=1
        )
        batch = g.op("Mul", rows, g.op("Constant", value_t=torch.tensor(0, dtype=torch.int64)))
        # Before opset 16, RoiAlign has no coordinate_transformation_mode: it is always
        # output_half_pixel, as torchvision's roi_align(aligned=False) that upstream exports.
        mode = {"coordinate_transformation_mode_s": "output_half_pixel"} if g.opset >= 16 else {}
        return g.op(
            "RoiAlign",
            x,
            boxes,
            batch,
            output_height_i=size,
            output_width_i=size,
            sampling_ratio_i=1,
            spatial_scale_f=1.0,
            mode_s="avg",
            **mode,
        )


class UpstreamRefiner(Refiner):
    """``Refiner`` in sampling mode as the original computes it (batch 1): its own order of
    resizes and concatenations, NonZero, two RoIAlign crops at half and one at full
    resolution, and a pixel-wise ScatterElements."""

    def forward(self, src_bgr, pha, fgr, err, hid):
        height, width = src_bgr.shape[2:]
        half, quarter = (height // 2, width // 2), (height // 4, width // 4)
        err = F.interpolate(err, quarter, mode="bilinear", align_corners=False)
        flat = err.flatten(1)
        index = flat.topk(self.sample_pixels // 16, dim=1).indices
        ref = torch.zeros_like(flat).scatter(1, index, 1.0)
        if self.prevent_oversampling:
            ref = ref * flat.gt(0).to(flat.dtype)
        where = torch.nonzero(ref[0])[:, 0]
        rows = torch.div(where, quarter[1], rounding_mode="trunc")
        cols = where - rows * quarter[1]

        x = F.interpolate(torch.cat([hid, pha, fgr], dim=1), half, mode="bilinear", align_corners=False)
        x = _RoiAlignCrop.apply(F.pad(x, (3, 3, 3, 3)), rows, cols, 8, 2)
        y = F.interpolate(src_bgr, half, mode="bilinear", align_corners=False)
        y = _RoiAlignCrop.apply(F.pad(y, (3, 3, 3, 3)), rows, cols, 8, 2)
        x = F.interpolate(self._stage1(torch.cat([x, y], dim=1)), scale_factor=2.0, mode="nearest")
        y = _RoiAlignCrop.apply(F.pad(src_bgr, (2, 2, 2, 2)), rows, cols, 8, 4)
        patches = self._stage2(torch.cat([x, y], dim=1))

        out = F.interpolate(torch.cat([pha, fgr], dim=1), (height, width), mode="bilinear", align_corners=False)
        channels = out.shape[1]
        pixel = window_pixels(rows[None], cols[None], 4, 4, height, width)[0]
        pixel = pixel[:, None] + (torch.arange(channels) * (height * width))[None, :, None, None]
        out = out.reshape(-1).scatter(0, pixel.reshape(-1), patches.reshape(-1)).reshape(out.shape)
        return out[:, :1], out[:, 1:], ref.reshape(err.shape)


class OriginalRecipe(nn.Module):
    """The original ``MattingRefine.forward`` behind Model Optimizer's
    ``--reverse_input_channels --scale 255``: a flip and a scale per input, separate
    resizes of ``src`` and ``bgr``, and ``UpstreamRefiner``."""

    def __init__(self, model: MattingRefine) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        src, bgr = src.flip(1) / 255.0, bgr.flip(1) / 255.0
        height, width = src.shape[2:]
        small = (math.floor(height * self.model.backbone_scale), math.floor(width * self.model.backbone_scale))
        src_sm = F.interpolate(src, small, mode="bilinear", align_corners=False)
        bgr_sm = F.interpolate(bgr, small, mode="bilinear", align_corners=False)
        pha_sm, fgr_sm, err_sm, hid_sm = self.model.coarse(torch.cat([src_sm, bgr_sm], dim=1))
        pha, fgr, _ = self.model.refiner(torch.cat([src, bgr], dim=1), pha_sm, fgr_sm, err_sm, hid_sm)
        return pha.clamp(0.0, 1.0), (fgr + src).clamp(0.0, 1.0)


def export_upstream_onnx(config: ExportConfig, weights: Weights, output: Path) -> OnnxExport:
    """Export with the original recipe (sampling mode only); not a deployable artifact."""
    config = config.replace(refine_mode="sampling")
    model = build_model(config, weights)
    refiner = UpstreamRefiner("sampling", config.sample_pixels, config.threshold)
    refiner.load_state_dict(model.refiner.state_dict())
    model.refiner = refiner.eval()
    allowed = BANNED_OPS - {"NonZero", "RoiAlign"}
    return export_module(OriginalRecipe(model).eval(), config, weights.label, output, banned=allowed)
