"""The refine model's deployment graph: what ``MattingRefine`` computes in ``sampling``
mode, from BGR 0..255 inputs, with as few passes over full-resolution tensors as the
outputs allow.

The plain graph (``exporter.export.onnx.BGRInputs`` around ``MattingRefine``) reverses and
scales both inputs at full resolution, resizes six channels to half resolution and 42
to half and full resolution, pads them, gathers 8x8 windows of 42 channels for every patch
and upsamples every patch's features. On a CPU those data movements took most of the time
(``bench --profile``: convolutions were 40% of it at 720p). Here the arithmetic is the
same, rearranged:

- the inputs are downsampled raw; the channel reversal and the 1/255 are applied to the
  small result, or folded into the weights of the convolutions that read raw pixels;
- bilinear downsampling by a power of two averages two rows and two columns, so it is
  two whole rows added and a constant matrix product on blocks of columns (no resize of
  a full-resolution image), and each input is converted to the device's arithmetic once;
- the refiner's first stage runs on the whole half-resolution map (two convolutions, the
  coarse features' and the image's, so no concatenation or padding is materialised) and
  each patch takes its 4x4 window of the result: what a patch computed from its 8x8
  window, without gathering 42 channels 64 times a patch;
- the coarse features are not resized to half resolution: a bilinear 2x upsampling
  followed by a 3x3 convolution is a 3x3 convolution of the coarse map per output phase,
  exact but near the image's edge (the convolution's zero padding), so the patches at the
  edge take their windows from the original computation on four thin strips;
- the second stage runs on the patches side by side in one wide image; its nearest 2x
  upsampling followed by a 3x3 convolution is one 2x2 convolution per output phase, and
  its image half reads 8x8 crops of the raw inputs;
- the coarse alpha and foreground are upsampled to full resolution by a fixed 3x3
  convolution per output phase, plane by plane (a bilinear resize of one to three
  channels ran at a fraction of memory speed), each foreground plane added to the
  source's plane of its colour;
- upsampling phases are computed a row phase at a time, channels-last, and interleaved a
  whole row at a time (no depth-to-space).

Every step is exact up to float rounding: ``verify`` compares the export against the
plain ``MattingRefine`` under the usual bars, and the patches chosen are the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from exporter.model.decoder import Decoder
from exporter.model.matting import MattingRefine
from exporter.model.refiner import Refiner, top_patches

__all__ = ["STACKED_RGB", "DeployRefine", "deploy_applies"]

# src and bgr stacked as they arrive (B, G, R, B, G, R), to the model's RGB RGB.
STACKED_RGB = (2, 1, 0, 5, 4, 3)
# Stage-one rows (columns) whose windows the patches of the outer two rows (columns) read.
STRIP = 6


def deploy_applies(model: nn.Module, dynamic: bool) -> bool:
    """Whether ``DeployRefine`` computes ``model``: ``sampling`` (preventing oversampling)
    with 3x3 refiner kernels, a backbone scale of 1/2, 1/4, 1/8 ..., and a static size (the
    slices and windows are laid out for one)."""
    if not isinstance(model, MattingRefine) or dynamic:
        return False
    factor = round(1 / model.backbone_scale)
    power_of_two = factor >= 2 and factor & (factor - 1) == 0
    return (
        model.refiner.mode == "sampling"
        and model.refiner.kernel_size == 3
        and model.refiner.prevent_oversampling
        and power_of_two
        and 1 / factor == model.backbone_scale
    )


class Downsample(nn.Module):
    """Bilinear (align_corners=False) downsampling of raw pixels by a power of two: output
    pixel ``i`` sits between input pixels ``factor * i + factor / 2 - 1`` and the next,
    half each, so it is the mean of a 2x2 block. The two rows are added (whole rows, planar),
    and the columns of each block of ``_column_block`` are averaged by a constant matrix
    product: a 2x2 average pool ran at a third of memory speed (720p, bf16, one stream: 2.4
    ms a plane of three channels), strided column slices as reference kernels. A module so
    that its ops have a name (INT8 keeps them in floating point)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        factor, first = self.factor, self.factor // 2 - 1
        groups = x.reshape(batch * channels, height // factor, factor, width)
        rows = groups[:, :, first : first + 1] + groups[:, :, first + 1 : first + 2]
        block = _column_block(width, factor)
        # From a list, so that the export records one constant, not the ops that build it.
        taps = (first, first + 1)
        weights = torch.tensor(
            [[0.25 * (j // factor == i and j % factor in taps) for i in range(block // factor)] for j in range(block)]
        )
        out = torch.matmul(rows.reshape(-1, block), weights)
        return out.reshape(batch, channels, height // factor, width // factor)


def _column_block(width: int, factor: int) -> int:
    """Columns averaged by one matrix product: 32 where the width allows, else the largest
    power of two that divides it (at least ``factor``, which does)."""
    block = max(32, factor)
    while width % block:
        block //= 2
    return block


def _bilinear_phases(factor: int) -> torch.Tensor:
    """``(factor, 3)``: the weights of input pixels ``i - 1, i, i + 1`` in output pixel
    ``factor * i + p`` of bilinear (align_corners=False) upsampling by ``factor``."""
    weights = torch.zeros(factor, 3, dtype=torch.float64)
    for phase in range(factor):
        offset = (phase + 0.5) / factor - 0.5
        if offset < 0:
            weights[phase, 0], weights[phase, 1] = -offset, 1 + offset
        else:
            weights[phase, 1], weights[phase, 2] = 1 - offset, offset
    return weights


def _interleave_rows(rows: list[torch.Tensor], channels: int) -> torch.Tensor:
    """``(N, channels, f * h, f * w)`` from the ``f`` row phases of an upsampling by ``f``,
    each ``(N, f * channels, h, w)`` with its channels ordered (column phase, channel).
    Channels-last, each is its output rows already (``w`` pixels of ``f`` column phases),
    so the rows need only be interleaved, a whole row at a time, which OpenVINO writes in
    place; a depth-to-space of all the phases moved a pixel's few values at a time (1.2-1.9
    ms for a plane of 720p, one stream)."""
    factor, (batch, _, height, width) = len(rows), rows[0].shape
    lines = [row.permute(0, 2, 3, 1).reshape(batch, height, 1, factor * width, channels) for row in rows]
    out = torch.cat(lines, dim=2).reshape(batch, factor * height, factor * width, channels)
    if channels == 1:  # the same memory either way: a reshape, not a transposition, to export
        return out.reshape(batch, 1, factor * height, factor * width)
    return out.permute(0, 3, 1, 2)


class Upsample(nn.Module):
    """Bilinear upsampling by an integer factor of a ``(N, 1, h, w)`` map: edge padding
    (the resize clamps at the border) and fixed 3x3 convolutions giving the ``factor**2``
    output phases, a convolution for each row phase (``_interleave_rows``)."""

    def __init__(self, factor: int, scale: float = 1.0) -> None:
        super().__init__()
        phases = _bilinear_phases(factor)
        kernel = torch.einsum("pi,qj->pqij", phases, phases).reshape(factor * factor, 1, 3, 3)
        self.register_buffer("kernel", kernel.float() * scale)
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor, padded = self.factor, F.pad(x, (1, 1, 1, 1), mode="replicate")
        return _interleave_rows(
            [F.conv2d(padded, self.kernel[a * factor : (a + 1) * factor]) for a in range(factor)], 1
        )


def _fold_bn(conv_weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv_weight * scale[:, None, None, None], bn.bias - bn.running_mean * scale


def _nearest_then_conv(weight: torch.Tensor) -> torch.Tensor:
    """``(4 * out, in, 2, 2)``: a nearest 2x upsampling followed by ``weight``'s 3x3 valid
    convolution, as one 2x2 convolution per output phase (as a depth-to-space orders
    them: channel ``out * 4 + a * 2 + b`` is phase ``(a, b)``). Output row
    ``2m + a`` reads input rows ``(2m + a + t) // 2`` for taps ``t = 0, 1, 2``: rows ``m, m + 1``
    with taps ``(w0 + w1, w2)`` for ``a = 0`` and ``(w0, w1 + w2)`` for ``a = 1``."""

    def phases(w: torch.Tensor) -> torch.Tensor:  # (..., 3) -> (2 phases, ..., 2 taps)
        even = torch.stack([w[..., 0] + w[..., 1], w[..., 2]], dim=-1)
        odd = torch.stack([w[..., 0], w[..., 1] + w[..., 2]], dim=-1)
        return torch.stack([even, odd])

    rows = phases(weight.transpose(-1, -2)).transpose(-1, -2)  # (a, out, in, 2, 3)
    both = phases(rows)  # (b, a, out, in, 2, 2)
    # pixel_shuffle's channel order: out * 4 + a * 2 + b.
    return both.permute(2, 1, 0, 3, 4, 5).reshape(-1, weight.shape[1], 2, 2)


def _bilinear_then_conv(weight: torch.Tensor, factor: int) -> list[torch.Tensor]:
    """Bilinear (align_corners=False) upsampling by ``factor`` followed by ``weight``'s 3x3
    convolution, as 3x3 convolutions of the coarse map, one per output row phase ``a``,
    each ``(factor * out, in, 3, 3)`` with its channels ordered (column phase, channel).
    Output row ``factor * m + a`` reads upsampled rows ``factor * m + a + t - 1`` (taps
    ``t``), each a blend of two of the coarse rows ``m - 1, m, m + 1``: exact wherever the
    upsampled map is the coarse map's resize (away from zero padding)."""
    phases = _bilinear_phases(factor)  # upsampled rows factor * m + 0 .. factor - 1
    # Upsampled rows factor * m - 1 .. factor * m + factor, over coarse rows m - 1 .. m + 1:
    # the row before is the last phase of m - 1, the row after the first phase of m + 1.
    rows = torch.zeros(factor + 2, 3, dtype=torch.float64)
    rows[0, :2], rows[1:-1], rows[-1, 1:] = phases[-1, 1:], phases, phases[0, :2]
    blend = torch.stack([rows[a : a + 3] for a in range(factor)])  # (phase, tap, coarse row)
    w = weight.double()
    return [
        torch.cat([torch.einsum("oitu,tx,uy->oixy", w, blend[a], blend[b]) for b in range(factor)]).float()
        for a in range(factor)
    ]


def _conv(weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 0) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=padding, bias=bias is not None)
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def _pick(channels: list[int], total: int) -> nn.Conv2d:
    """A 1x1 convolution copying ``channels`` of ``total``, exactly in any arithmetic (one
    weight of 1 an output). On a CPU a channel slice of a channels-last map ran as a
    reference kernel, and a slice feeding an output made the plugin convert the whole map
    to f32 first; a convolution writes its few channels at once, in the map's arithmetic."""
    weight = torch.zeros(len(channels), total, 1, 1)
    weight[range(len(channels)), channels] = 1.0
    return _conv(weight)


def _side_by_side(top: torch.Tensor, left: torch.Tensor, rows: int, cols: int, width: int) -> torch.Tensor:
    """``(rows, K, cols)``: flat indices into a ``width``-wide plane of the ``rows x cols``
    windows at ``(top, left)`` (each ``(K,)``), row ``i`` of every window before row
    ``i + 1`` of any: the windows side by side in one wide image, ``rows`` high."""
    first = top.reshape(1, -1, 1) + torch.arange(rows).reshape(-1, 1, 1)
    return first * width + left.reshape(1, -1, 1) + torch.arange(cols).reshape(1, 1, -1)


def _window_index(rows: torch.Tensor, cols: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(4, K, 2)``: the stage-one windows of the patches at ``rows, cols`` (``_side_by_side``'s
    order) as pixel-pair indices into the map's pairs followed by the four strips' (top,
    bottom, left, right: ``_PatchRefiner._strips``), for a ``height x width`` half-resolution
    image. A patch of the outer two rows reads a top or bottom strip (as wide as the map),
    one of the outer two columns otherwise a left or right one (``STRIP`` wide); the others
    read the map."""
    pairs, side = (width + 2) // 2, STRIP // 2  # a row of the map, of a side strip
    top = (height + 2) * pairs  # where each strip starts in the table
    bottom = top + STRIP * pairs
    left = bottom + STRIP * pairs
    right = left + (height + 2) * side
    last_row, last_col = height // 2 - 2, width // 2 - 2  # the patch grid's, less one
    row = rows * 2  # the window's first stage-one row
    in_map = row * pairs + cols
    first = torch.where(
        rows < 2,
        in_map + top,
        torch.where(
            rows >= last_row,
            (row - (height + 2 - STRIP)) * pairs + cols + bottom,
            torch.where(
                cols < 2,
                row * side + cols + left,
                torch.where(cols >= last_col, row * side + cols - last_col + right, in_map),
            ),
        ),
    )
    beside = (rows >= 2) & (rows < last_row) & ((cols < 2) | (cols >= last_col))
    pitch = torch.where(beside, side, pairs)
    return first.reshape(1, -1, 1) + torch.arange(4).reshape(-1, 1, 1) * pitch.reshape(1, -1, 1) + torch.arange(2)


class _Head(nn.Module):
    """The decoder with its last convolution's output channels reordered to what the
    refiner reads first: hid, pha, fgr, then err (the original's order is pha, fgr, err,
    hid), each with its own activation (ReLU, clamp, none, clamp) as one per-channel
    clamp. The refiner then convolves all 37 channels (err with zero weights), so they are
    not split: the original's per-channel split of its 37 channels is a strided copy the
    CPU runs as a reference kernel (4.9 ms a frame at 720p, bf16, one stream); what else
    reads a few of them copies them by a 1x1 convolution (``_pick``)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder
        order = [*range(5, 37), 0, 1, 2, 3, 4]
        with torch.no_grad():
            self.conv4 = _conv(decoder.conv4.weight[order], decoder.conv4.bias[order], padding=1)
        inf = torch.inf
        self.register_buffer("low", torch.tensor([0.0] * 33 + [-inf] * 3 + [0.0]).reshape(1, 37, 1, 1))
        self.register_buffer("high", torch.tensor([inf] * 32 + [1.0] + [inf] * 3 + [1.0]).reshape(1, 37, 1, 1))

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 37 channels, activated, and as they are (err is activated on its own:
        ``ErrorMap``)."""
        x = self.conv4(self.decoder.head_input(*features))
        return torch.minimum(torch.maximum(x, self.low), self.high), x


class Rows(nn.Module):
    """``table``'s rows at ``index`` (any shape, flattened): a module so that its op has a
    name (INT8 keeps the quantizer of what reads the rows after the gather, not on the
    whole table)."""

    def forward(self, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.index_select(table, 0, index.reshape(-1))


class _PatchRefiner(nn.Module):
    """``Refiner``'s four convolutions rearranged (names kept, so INT8's per-layer rules
    still find ``refiner.conv4``).

    Stage one runs on whole maps: ``conv1`` on the 37 coarse channels (zero weights for
    err) resized to half resolution, as the row phases ``conv1_phases`` of the coarse map
    itself (``_windows``), and ``conv1_image`` on the raw half-resolution image, both
    padded by 3 as the original pads its windows; then ``conv2``. Stage two runs on the
    patches side by side in one wide image, ``K`` patches wide: ``conv3`` as 2x2
    convolutions, one per phase of the nearest upsampling, on the stage-one windows (a
    convolution for each row phase, ``_interleave_rows``), ``conv3_image`` on the raw 8x8
    crops, and ``conv4``. Each patch's columns stay at its own offset in every layer, the
    columns that straddle two patches are computed and dropped, and no layout
    transposition is needed on either side. Wide,
    not tall: the CPU's convolutions work along rows, and on 4- to 8-pixel rows of 4 to 12
    channels they ran at a third of the speed (720p, bf16, one stream: conv4 6.8 ms a
    frame, conv3_image 5.9).
    """

    def __init__(self, refiner: Refiner, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.windows = Rows()  # the stage-one windows' pixel pairs
        with torch.no_grad():
            weight, bias = _fold_bn(refiner.conv1.weight, refiner.bn1)
            coarse_weight = F.pad(weight[:, :36], (0, 0, 0, 0, 0, 1))
            self.conv1 = _conv(coarse_weight, bias, padding=3)
            # (None at a scale of 1: conv1 then runs on the coarse map as it is.)
            self.conv1_phases = nn.ModuleList(
                _conv(kernel, bias.repeat(scale))
                for kernel in (_bilinear_then_conv(coarse_weight, scale) if scale > 1 else [])
            )
            self.conv1_image = _conv(weight[:, 36:][:, STACKED_RGB] / 255.0, padding=3)
            weight, bias = _fold_bn(refiner.conv2.weight, refiner.bn2)
            self.conv2 = _conv(weight, bias)
            weight, bias = _fold_bn(refiner.conv3.weight, refiner.bn3)
            # conv3 reads stage one's channels (conv2's), then the image's 6.
            out, features = weight.shape[0], self.conv2.out_channels
            phases = _nearest_then_conv(weight[:, :features]).reshape(out, 2, 2, features, 2, 2)  # out, a, b
            self.conv3 = nn.ModuleList(
                _conv(phases[:, a].transpose(0, 1).reshape(2 * out, features, 2, 2), bias.repeat(2)) for a in range(2)
            )
            self.conv3_image = _conv(weight[:, features:][:, STACKED_RGB] / 255.0)
            # The foreground residual in 0..255 steps, as the source it is added to arrives.
            scale = torch.tensor([1.0, 255.0, 255.0, 255.0])
            self.conv4 = _conv(refiner.conv4.weight * scale[:, None, None, None], refiner.conv4.bias * scale)

    def forward(
        self, coarse: torch.Tensor, image: torch.Tensor, crops: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """``(4, 4 * K * 4)``: refined pha and 255 x fgr residual of the patches at ``rows, cols``,
        side by side (row ``i`` of every patch, then row ``i + 1``), from ``coarse`` (37
        channels, at ``1 / scale`` of half resolution), the raw half-resolution ``image`` (6)
        and the patches' raw 8x8 crops side by side ``(1, 6, 8, K * 8)``."""
        windows = self._windows(coarse, image, rows, cols)
        # Patch k's valid columns: 4k..4k+2 after conv3, 8k..8k+5 after the interleaving (as
        # after conv3_image on its crops), 8k..8k+3 after conv4.
        upsampled = _interleave_rows([conv(windows) for conv in self.conv3], self.conv3_image.out_channels)
        out = self.conv4(torch.relu(upsampled + self.conv3_image(crops)))
        out = F.pad(out, (0, 4)).reshape(4, 4, -1, 8)[..., :4]
        return out.reshape(4, -1)

    def _stage_one(self, conv1: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(conv1 + self.conv1_image(image))))

    def _windows(
        self, coarse: torch.Tensor, image: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """``(1, 16, 4, K * 4)``: each patch's 4x4 window of stage one at ``(2r, 2c)`` of the
        padded map, side by side, gathered channels-last two pixels an index (the width is
        even: the input's is a multiple of 4): a 32-float row an index ran in a seventh of
        the time of a 16-float row (720p, f32: 0.9 ms a frame against 6.4)."""
        height, width = image.shape[2:]
        if self.scale == 1:  # no resize: conv1 runs on the map itself
            index = _side_by_side(rows * 2, cols, 4, 2, (width + 2) // 2)
            return _as_windows(self.windows(_pixel_pairs(self._stage_one(self.conv1(coarse), image)), index))
        # conv1 of the resized map as row-phase convolutions of the coarse map (its edge
        # replicated, as the resize clamps): a quarter of the pixels, 48 output channels
        # rather than 24, and no resized map of 37 channels (720p, bf16, one stream: conv1
        # 15.4 ms and the resize 3.4). Exact but within 3 pixels of the image's edge, where
        # conv1 reads its zero padding; the patches of the outer two rows and columns, whose
        # windows reach there, take theirs from the original computation on strips.
        scale, padded = self.scale, F.pad(coarse, (2, 2, 2, 2), mode="replicate")
        conv1 = _interleave_rows([conv(padded) for conv in self.conv1_phases], self.conv1.out_channels)
        if scale > 2:  # the phases start at row -scale; the padded map at row -2
            conv1 = conv1[:, :, scale - 2 : scale + height + 2, scale - 2 : scale + width + 2]
        # One table, the map's pixel pairs then the strips', and one gather from it: the
        # patches' indices are chosen per patch (5,000 at 720p), not per gathered pair.
        stage1 = [self._stage_one(conv1, image), *self._strips(coarse, image)]
        table = torch.cat([_pixel_pairs(part) for part in stage1])
        return _as_windows(self.windows(table, _window_index(rows, cols, height, width)))

    def _strips(self, coarse: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        """Stage one at the image's top, bottom, left and right edges (``STRIP`` rows or
        columns each), as the original computes it."""
        scale = self.scale
        # Coarse rows enough for the first STRIP stage-one rows: upsampled rows 0..STRIP (the
        # windows, conv2 and conv1 each reach a row further), each a blend of two.
        count = math.floor((STRIP + 0.5) / scale - 0.5) + 2
        return [
            self._strip(coarse[:, :, :count], image[:, :, : scale * count])[:, :, :STRIP],
            self._strip(coarse[:, :, -count:], image[:, :, -scale * count :])[:, :, -STRIP:],
            self._strip(coarse[:, :, :, :count], image[:, :, :, : scale * count])[:, :, :, :STRIP],
            self._strip(coarse[:, :, :, -count:], image[:, :, :, -scale * count :])[:, :, :, -STRIP:],
        ]

    def _strip(self, coarse: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Stage one as the original computes it (the coarse map resized, conv1 on it), on
        a strip at the image's edge; exact at the strip's outer edge."""
        resized = F.interpolate(coarse, image.shape[2:], mode="bilinear", align_corners=False)
        return self._stage_one(self.conv1(resized), image)


def _pixel_pairs(stage1: torch.Tensor) -> torch.Tensor:
    """``(H * W / 2, 2 * C)``: ``(1, C, H, W)`` channels-last, two pixels a row."""
    channels, height, width = stage1.shape[1:]
    return stage1.permute(0, 2, 3, 1).reshape(height * width // 2, 2 * channels)


def _as_windows(pairs: torch.Tensor) -> torch.Tensor:
    """``(1, C, 4, K * 4)`` from the gathered pixel pairs of the windows' rows, ``(4 * K * 2,
    2 * C)`` (``_side_by_side``'s order)."""
    return pairs.reshape(1, 4, -1, pairs.shape[1] // 2).permute(0, 3, 1, 2)


class Crops(nn.Module):
    """``(6, 8 * K * 8)``: each patch's 8x8 crop of the raw ``src`` and ``bgr`` at
    ``(4r - 2, 4c - 2)``, zero outside the image (the original pads by 2 and crops), side
    by side (row ``i`` of every crop, then row ``i + 1``). A module so that its ops have a
    name: INT8 quantizes the crops, not the full-resolution inputs they are gathered from."""

    def forward(self, src: torch.Tensor, bgr: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        height, width = src.shape[2:]
        offsets = torch.arange(8)
        y = (rows * 4 - 2).reshape(1, -1) + offsets.reshape(-1, 1)  # (8, K)
        x = (cols * 4 - 2).reshape(-1, 1) + offsets  # (K, 8)
        inside = ((y >= 0) & (y < height)).reshape(8, -1, 1) & ((x >= 0) & (x < width)).reshape(1, -1, 8)
        pixel = y.clamp(0, height - 1).reshape(8, -1, 1) * width + x.clamp(0, width - 1).reshape(1, -1, 8)
        pixel, inside = pixel.reshape(-1), inside.reshape(1, -1).to(src.dtype)
        crops = [torch.index_select(image.reshape(3, height * width), 1, pixel) for image in (src, bgr)]
        return torch.cat(crops, dim=0) * inside


class ErrorMap(nn.Module):
    """``err_sm`` from the head's 37 channels before their activation, activated on its
    own. What decides the patches feeds the outputs through indices only, so the CPU
    plugin keeps it all in f32; from the activated channels, their activation ran in f32
    between two conversions (2.6 ms a frame at 720p, bf16, one stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.pick = _pick([36], 37)

    def forward(self, head: torch.Tensor) -> torch.Tensor:
        return self.pick(head).clamp(0.0, 1.0)


class Select(nn.Module):
    """The patches to refine (``top_patches``): their grid ``rows`` and ``cols``, whether
    each one's error is positive (``prevent_oversampling``: the others keep the coarse
    value), and ``ref_sm``."""

    def __init__(self, sample_pixels: int) -> None:
        super().__init__()
        self.sample_pixels = sample_pixels

    def forward(self, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        score, index, rows, cols = top_patches(err, self.sample_pixels)
        selected = score[0].gt(0)
        ref_sm = torch.zeros_like(err).flatten(1).scatter(1, index, selected.reshape(1, -1).to(err.dtype))
        return rows[0], cols[0], selected, ref_sm.reshape(err.shape)


class Compose(nn.Module):
    """The full-resolution outputs: the coarse alpha and foreground residual upsampled
    (``Upsample``), the source added, the refined patches written over them; the foreground
    clamped before the write, the same numbers as clamping after with one pass fewer (the
    upsampled alpha needs no clamp)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.planes = _pick([32, 33, 34, 35], 37)  # pha, fgr of the coarse map
        self.upsample = Upsample(factor)
        self.upsample_255 = Upsample(factor, scale=255.0)

    def forward(
        self,
        src: torch.Tensor,
        coarse: torch.Tensor,
        patches: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        selected: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = src.shape[2:]
        pixel = _side_by_side(rows * 4, cols * 4, 4, 4, width).reshape(1, -1)  # as the refiner orders patches
        # No clamp of the upsampled alpha: the head clamps the coarse alpha to 0..1, and the
        # upsampling weights are non-negative dyadic fractions summing to 1, so, rounding
        # being monotonic, no sum of them leaves 0..1 (f32 and bf16 alike).
        pha_sm, *fgr_sm = self.planes(coarse).split(1, dim=1)
        pha = self.upsample(pha_sm).reshape(1, height * width)
        # Each foreground plane plus its source plane (R + R: the source is BGR), in the
        # source's 0..255 steps (the upsampling scaled by 255), clamped, then x 1/255 in the
        # same pass: no reversed copy of the source, no separate pass to scale it.
        up = [self.upsample_255(plane) for plane in fgr_sm]
        planes = src.reshape(3, 1, height, width).split(1)[::-1]
        fgr = torch.cat([(u + s).clamp(0.0, 255.0) * (1 / 255) for u, s in zip(up, planes, strict=True)])
        fgr = fgr.reshape(3, height * width)
        # The source under the patches, gathered from it, not sliced out of the crops (a
        # strided slice of the crops ran as a reference kernel, 1.8 ms a frame at 720p, f32),
        # and added unscaled to the 255 x residual (a 1/255 before the gather was moved onto
        # the whole source by the CPU plugin: 0.6 ms).
        inner = torch.index_select(src.reshape(3, -1), 1, pixel[0])[[2, 1, 0]]
        pha_values = patches[:1].clamp(0.0, 1.0)
        fgr_values = (patches[1:] + inner).clamp(0.0, 255.0) * (1 / 255)
        keep = selected.reshape(1, -1, 1).expand(4, -1, 4).reshape(1, -1)
        pha_values = torch.where(keep, pha_values, torch.index_select(pha, 1, pixel[0]))
        fgr_values = torch.where(keep, fgr_values, torch.index_select(fgr, 1, pixel[0]))
        pha = pha.scatter(1, pixel, pha_values).reshape(1, 1, height, width)
        fgr = fgr.scatter(1, pixel.expand(3, -1), fgr_values).reshape(1, 3, height, width)
        return pha, fgr


class DeployRefine(nn.Module):
    """``MattingRefine`` (``sampling``, batch 1) as deployed, as a pipeline of named stages
    (INT8 quantizes the convolutions of ``decoder`` and ``refiner`` and the base network's,
    and leaves the arithmetic of ``downsample``, ``error``, ``select``, ``crops`` and
    ``compose`` alone).

    Inputs: ``src``, ``bgr`` ``(1, 3, H, W)`` float, **BGR, 0..255**.
    Returns the ``outputs`` named, of ``pha (1, 1, H, W)``, ``fgr (1, 3, H, W)`` RGB 0..1,
    ``err_sm`` and ``ref_sm``, as ``BGRInputs(model)`` does.
    """

    def __init__(self, model: MattingRefine, outputs: tuple[str, ...]) -> None:
        super().__init__()
        if not deploy_applies(model, dynamic=False):
            raise ValueError("DeployRefine computes sampling mode with 3x3 refiner kernels at a 1/2**n scale")
        self.model = model
        self.outputs = outputs
        self.factor = round(1 / model.backbone_scale)
        self.downsample = Downsample(self.factor)
        self.downsample_half = Downsample(2)
        self.decoder = _Head(model.decoder)
        self.error = ErrorMap()
        self.select = Select(model.refiner.sample_pixels)
        self.crops = Crops()
        self.refiner = _PatchRefiner(model.refiner, self.factor // 2)
        self.compose = Compose(self.factor)

    def forward(self, src: torch.Tensor, bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height, width = src.shape[2:]
        small = torch.cat([self.downsample(src), self.downsample(bgr)], dim=1)
        rgb = torch.index_select(small, 1, torch.tensor(STACKED_RGB)) / 255.0
        x, *shortcuts = self.model.backbone(rgb)
        coarse, head = self.decoder(self.model.aspp(x), *shortcuts)  # hid, pha, fgr, err
        err_sm = self.error(head)

        err = err_sm  # the resize to a quarter of the size is the identity at a scale of 1/4
        if self.factor != 4:
            err = F.interpolate(err_sm, (height // 4, width // 4), mode="bilinear", align_corners=False)
        rows, cols, selected, ref_sm = self.select(err)

        image = torch.cat([self.downsample_half(src), self.downsample_half(bgr)], dim=1)
        crops = self.crops(src, bgr, rows, cols)  # (6, 8 * K * 8): raw BGR BGR
        patches = self.refiner(coarse, image, crops.reshape(1, 6, 8, -1), rows, cols)  # pha, 255 x fgr residual
        pha, fgr = self.compose(src, coarse, patches, rows, cols, selected)
        found = {"pha": pha, "fgr": fgr, "err_sm": err_sm, "ref_sm": ref_sm}
        return tuple(found[name] for name in self.outputs)
