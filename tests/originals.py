"""Builders of the original repository's other published files, made here from our model at
small sizes (no downloaded model in the repository):

- ``torchscript_archive``: what ``export_torchscript.py`` writes: a scripted wrapper holding
  the network as ``model`` with the refine settings hoisted as attributes; fp32 or fp16.
- ``original_onnx``: what ``export_onnx.py`` writes: inputs ``src``/``bgr`` RGB 0..1, RoiAlign
  crops, a pixel-wise ScatterElements, NonZero, opset 12, dynamic batch/height/width, the six
  outputs (``pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm``) or Open Model Zoo's fork's two.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from exporter.checkpoint import Weights
from exporter.export.upstream import UpstreamRefiner
from exporter.model import MattingRefine

SIX_OUTPUTS = ("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm")


def refine_model(weights: Weights, **kwargs: object) -> MattingRefine:
    model = MattingRefine(weights.backbone, **kwargs)
    model.load_state_dict(weights.state_dict, strict=True)
    return model.eval()


class TorchScriptWrapper(nn.Module):
    """The original's ``export_torchscript.py`` wrapper: the network as ``model``, its refine
    settings hoisted to the top so a user can change them before saving."""

    def __init__(self, model: nn.Module, source: MattingRefine) -> None:
        super().__init__()
        self.model = model
        self.backbone_scale = float(source.backbone_scale)
        self.refine_mode = str(source.refiner.mode)
        self.refine_sample_pixels = int(source.refiner.sample_pixels)
        self.refine_threshold = float(source.refiner.threshold)
        self.refine_prevent_oversampling = bool(source.refiner.prevent_oversampling)

    def forward(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pha, fgr, *_ = self.model(src, bgr)
        return pha, fgr


def torchscript_archive(
    weights: Weights, path: Path, *, half: bool = False, prevent_oversampling: bool = True, **kwargs: object
) -> Path:
    """``torchscript_<backbone>_fp32.pth`` (or ``_fp16``), from ``weights``."""
    source = refine_model(weights, refine_sample_pixels=kwargs.pop("refine_sample_pixels", 256), **kwargs)
    side = max(64, math.ceil(math.sqrt(source.refiner.sample_pixels // 16) / 8) * 32)  # room for the sample
    example = torch.rand(1, 3, side, side)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(source, (example, example.clone()), check_trace=False)
    wrapper = TorchScriptWrapper(traced, source)
    wrapper.refine_prevent_oversampling = prevent_oversampling
    scripted = torch.jit.script(wrapper)
    if half:
        scripted = scripted.half()
    scripted.save(str(path))
    return path


class OriginalOnnx(nn.Module):
    """The original ``MattingRefine.forward`` as its ONNX export computes it: RGB 0..1 in,
    separate resizes of src and bgr, ``UpstreamRefiner`` (NonZero, RoiAlign, ScatterElements)."""

    def __init__(self, model: MattingRefine, outputs: int) -> None:
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scale = self.model.backbone_scale
        src_sm = F.interpolate(
            src, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=True
        )
        bgr_sm = F.interpolate(
            bgr, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=True
        )
        pha_sm, fgr_sm, err_sm, hid_sm = self.model.coarse(torch.cat([src_sm, bgr_sm], dim=1))
        pha, fgr, ref_sm = self.model.refiner(torch.cat([src, bgr], dim=1), pha_sm, fgr_sm, err_sm, hid_sm)
        out = (pha.clamp(0.0, 1.0), (fgr + src).clamp(0.0, 1.0), pha_sm, (fgr_sm + src_sm).clamp(0.0, 1.0), err_sm,
               ref_sm)  # fmt: skip
        return out[: self.outputs]


def original_onnx(
    weights: Weights,
    path: Path,
    *,
    outputs: int = 6,
    opset: int = 12,
    dynamic: bool = True,
    size: tuple[int, int] = (192, 320),
    sample_pixels: int = 16_000,
    backbone_scale: float = 0.25,
) -> Path:
    """``onnx_mobilenetv2_hd.onnx`` (six outputs) or Open Model Zoo's ``bgm_mobilenetv2.onnx``
    (two), from ``weights``."""
    model = refine_model(weights, backbone_scale=backbone_scale, refine_sample_pixels=sample_pixels)
    refiner = UpstreamRefiner("sampling", sample_pixels, 0.1)
    refiner.load_state_dict(model.refiner.state_dict())
    model.refiner = refiner.eval()
    names = list(SIX_OUTPUTS[:outputs])
    example = torch.rand(1, 3, *size)
    axes = {"batch": 0, "height": 2, "width": 3}
    dynamic_axes = {n: {i: a for a, i in axes.items()} for n in ["src", "bgr", *names]} if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            OriginalOnnx(model, outputs).eval(),
            (example, example.clone()),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["src", "bgr"],
            output_names=names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return path
