"""Refiner of BackgroundMattingV2 (arXiv 2012.07810), with static shapes.

The original PeterL1n/BackgroundMattingV2 ``Refiner`` picks 4x4 patches of the
quarter-resolution error map, finds them with ``nonzero`` and refines only those, so the
number of patches, and every shape after it, depends on the data. This one computes the
same numbers with shapes fixed by the resolution alone, so the graph exports without
NonZero, If or Loop:

- ``sampling``: always the top ``sample_pixels // 16`` patches by error. Where the selected
  error is not positive the coarse value is kept, which is what ``prevent_oversampling``
  means in the original.
- ``thresholding``: every patch is refined (as ``full``) and the refined value is kept only
  where the error exceeds the threshold.
- ``full``: every patch, computed as whole-image convolutions.

Patches are cropped by index gathers and written back with one scatter; both move values
without arithmetic, so results equal the original's up to convolution rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exporter.config import REFINE_MODES

__all__ = ["REFINE_MODES", "Refiner", "gather_patches", "top_patches", "window_pixels"]

# Channels: coarse hidden 32, then the refiner's stages, as in the original.
_CHANNELS = (32, 24, 16, 12, 4)


def window_pixels(
    rows: torch.Tensor, cols: torch.Tensor, size: int, stride: int, height: int, width: int
) -> torch.Tensor:
    """Flat indices, into ``B`` stacked ``height x width`` planes, of the ``size``-square
    windows whose corners are ``(rows, cols) * stride``; ``rows``/``cols`` are ``(B, K)``.
    Returns ``(B, K, size, size)``."""
    offsets = torch.arange(size, device=rows.device)
    pixel = (rows * stride)[:, :, None, None] + offsets[:, None]
    pixel = pixel * width + (cols * stride)[:, :, None, None] + offsets
    plane = torch.arange(rows.shape[0], device=rows.device) * (height * width)
    return pixel + plane[:, None, None, None]


def top_patches(err: torch.Tensor, sample_pixels: int) -> tuple[torch.Tensor, ...]:
    """The ``sample_pixels // 16`` 4x4 patches with the largest error of ``err``
    ``(B, 1, H/4, W/4)``, as the original samples them: their errors and flat indices,
    largest first, and their grid ``rows`` and ``cols``, each ``(B, K)``."""
    quarter_h, quarter_w = err.shape[2:]
    flat = err.flatten(1)
    count = sample_pixels // 16
    if not 0 < count <= flat.shape[1]:
        raise ValueError(
            f"sample_pixels {sample_pixels} selects {count} patches; "
            f"a {4 * quarter_h}x{4 * quarter_w} image has 1..{flat.shape[1]}"
        )
    score, index = flat.topk(count, dim=1, sorted=True)
    rows = torch.div(index, quarter_w, rounding_mode="trunc")  # indices are >= 0
    return score, index, rows, index - rows * quarter_w


def gather_patches(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """Crop ``size``-square windows whose corners are ``(rows, cols) * stride``.

    ``x`` is ``(B, C, H, W)`` (already padded); ``rows``/``cols`` are ``(B, K)`` patch grid
    coordinates. Returns ``(B * K, C, size, size)``.
    """
    batch, channels, height, width = x.shape
    pixel = window_pixels(rows, cols, size, stride, height, width)
    # Channels-last, so each gathered row is one pixel's contiguous channel vector; the
    # runtimes' convolutions want that layout anyway, which cancels the final permute.
    flat = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    patches = torch.index_select(flat, 0, pixel.reshape(-1))
    return patches.reshape(-1, size, size, channels).permute(0, 3, 1, 2)


class Refiner(nn.Module):
    """Refines the coarse result to full resolution on 4x4 patches.

    Args:
        mode: ``sampling`` (a fixed number of patches with the largest error),
            ``thresholding`` (patches whose error exceeds ``threshold``) or ``full``.
        sample_pixels: pixels to refine in ``sampling`` mode; ``sample_pixels // 16``
            patches.
        threshold: error threshold, 0..1, for ``thresholding``.
        kernel_size: 3 (the official weights) or 1.
        prevent_oversampling: in ``sampling``, keep the coarse value of selected patches
            whose error is not positive. ``False`` only for speed tests.

    Inputs:
        src_bgr: ``(B, 6, H, W)`` full-resolution source and background stacked, RGB,
            0..1; H and W divisible by 4.
        pha: ``(B, 1, Hc, Wc)`` coarse alpha; fgr: ``(B, 3, Hc, Wc)`` coarse foreground
            residual; err: ``(B, 1, Hc, Wc)`` coarse error; hid: ``(B, 32, Hc, Wc)``.

    Returns:
        pha ``(B, 1, H, W)`` (not clamped), fgr residual ``(B, 3, H, W)``, and
        ref ``(B, 1, H/4, W/4)``: 1 where a 4x4 patch was refined, else 0.
    """

    def __init__(
        self,
        mode: str = "sampling",
        sample_pixels: int = 80_000,
        threshold: float = 0.1,
        kernel_size: int = 3,
        prevent_oversampling: bool = True,
    ) -> None:
        super().__init__()
        if mode not in REFINE_MODES:
            raise ValueError(f"refine mode {mode!r} is not one of {', '.join(REFINE_MODES)}")
        if kernel_size not in (1, 3):
            raise ValueError(f"refine kernel size {kernel_size} is not 1 or 3")
        self.mode = mode
        self.sample_pixels = sample_pixels
        self.threshold = threshold
        self.kernel_size = kernel_size
        self.prevent_oversampling = prevent_oversampling

        c = _CHANNELS
        self.conv1 = nn.Conv2d(c[0] + 6 + 4, c[1], kernel_size, bias=False)
        self.bn1 = nn.BatchNorm2d(c[1])
        self.conv2 = nn.Conv2d(c[1], c[2], kernel_size, bias=False)
        self.bn2 = nn.BatchNorm2d(c[2])
        self.conv3 = nn.Conv2d(c[2] + 6, c[3], kernel_size, bias=False)
        self.bn3 = nn.BatchNorm2d(c[3])
        self.conv4 = nn.Conv2d(c[3], c[4], kernel_size, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def _stage1(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))

    def _stage2(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv4(self.relu(self.bn3(self.conv3(x))))

    def forward(
        self,
        src_bgr: torch.Tensor,
        pha: torch.Tensor,
        fgr: torch.Tensor,
        err: torch.Tensor,
        hid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        height, width = src_bgr.shape[2:]
        half = (height // 2, width // 2)
        quarter = (height // 4, width // 4)
        # Everything the first stage sees, at half resolution: 32 + 1 + 3 + 6 channels.
        features = torch.cat(
            [
                F.interpolate(torch.cat([hid, pha, fgr], dim=1), half, mode="bilinear", align_corners=False),
                F.interpolate(src_bgr, half, mode="bilinear", align_corners=False),
            ],
            dim=1,
        )
        if self.mode == "full":
            out = self._refine_all(features, src_bgr)
            ref = torch.ones_like(src_bgr[:, :1, : quarter[0], : quarter[1]])
            return out[:, :1], out[:, 1:], ref

        coarse = F.interpolate(torch.cat([pha, fgr], dim=1), (height, width), mode="bilinear", align_corners=False)
        err = F.interpolate(err, quarter, mode="bilinear", align_corners=False)
        if self.mode == "thresholding":
            ref = err.gt(self.threshold).to(src_bgr.dtype)
            refined = self._refine_all(features, src_bgr)
            mask = F.interpolate(ref, (height, width), mode="nearest")
            out = torch.where(mask > 0, refined, coarse)
        else:
            out, ref = self._refine_top_k(features, src_bgr, coarse, err)
        return out[:, :1], out[:, 1:], ref

    def _refine_all(self, features: torch.Tensor, src_bgr: torch.Tensor) -> torch.Tensor:
        """Every patch at once: the patch computation slid over the whole image."""
        height, width = src_bgr.shape[2:]
        if self.kernel_size == 3:
            x = self._stage1(F.pad(features, (3, 3, 3, 3)))
            x = F.interpolate(x, (height + 4, width + 4), mode="nearest")
            y = F.pad(src_bgr, (2, 2, 2, 2))
        else:
            x = F.interpolate(self._stage1(features), (height, width), mode="nearest")
            y = src_bgr
        return self._stage2(torch.cat([x, y], dim=1))

    def _refine_top_k(
        self,
        features: torch.Tensor,
        src_bgr: torch.Tensor,
        coarse: torch.Tensor,
        err: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, height, width = coarse.shape
        score, index, rows, cols = top_patches(err, self.sample_pixels)

        pad = 3 if self.kernel_size == 3 else 0
        x = gather_patches(F.pad(features, (pad,) * 4), rows, cols, 2 + 2 * pad, 2)
        x = self._stage1(x)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        pad = 2 if self.kernel_size == 3 else 0
        y = gather_patches(F.pad(src_bgr, (pad,) * 4), rows, cols, 4 + 2 * pad, 4)
        patches = self._stage2(torch.cat([x, y], dim=1))  # (B * K, 4, 4, 4)

        # Flat positions of each patch's 16 pixels in one channel plane of ``coarse``.
        pixel = window_pixels(rows, cols, 4, 4, height, width).reshape(1, -1).expand(channels, -1)

        values = patches.transpose(0, 1).reshape(channels, -1)
        planes = coarse.transpose(0, 1).reshape(channels, -1)
        selected = torch.ones_like(score)
        if self.prevent_oversampling:
            selected = score.gt(0).to(score.dtype)
            keep = (selected > 0).reshape(1, -1, 1).expand(channels, -1, 16).reshape(channels, -1)
            values = torch.where(keep, values, torch.gather(planes, 1, pixel))
        out = planes.scatter(1, pixel, values)
        out = out.reshape(channels, batch, height, width).transpose(0, 1)
        ref = torch.zeros_like(err).flatten(1).scatter(1, index, selected)
        return out, ref.reshape(err.shape)
