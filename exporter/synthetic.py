"""The deterministic synthetic checkpoint ``bgmv2-synthetic-v1``.

The official weights cannot be fetched everywhere this tool is tested, so tests, ``make
verify`` and the default export use weights from this recipe: non-degenerate (alpha and
error are continuous and unsaturated, so top-k selection has no ties) but meaningless for
real images. The recipe is the one the reference goldens were computed with; seed 0
reproduces the content hashes in ``SYNTHETIC_SEED0_SHA256``, one per backbone.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict

import torch

from exporter.backbones import DEFAULT_BACKBONE

__all__ = ["SYNTHETIC_NAME", "SYNTHETIC_SEED0_SHA256", "content_sha256", "synthetic_state_dict"]

SYNTHETIC_NAME = "bgmv2-synthetic-v1"
# The reference README's content hashes of seed 0.
SYNTHETIC_SEED0_SHA256 = {
    "mobilenetv2": "2dd307c1d63ef01d552231a5799d147ebe45419295f8315618a0a33d09c2c12f",
    "resnet50": "f63cb0d8af491907338438b2821fdc4c71bd0fdd83ceaeac4d27ead617ac3000",
    "resnet101": "e2baa08a99f5a79cdbdc30e967fd2f1f8fa328de383d610159450518604dbc39",
}
# Without damping the last BatchNorm of each bottleneck, 16-33 random residual blocks
# saturate every output. No MobileNetV2 key matches.
_DAMPED_RESIDUAL = re.compile(r"backbone\.layer\d+\.\d+\.bn3\.weight")
_RESIDUAL_DAMPING = 0.2


def synthetic_state_dict(seed: int = 0, backbone: str = DEFAULT_BACKBONE) -> OrderedDict[str, torch.Tensor]:
    """The recipe's state_dict for ``MattingRefine(backbone)``, in the official key order."""
    from exporter.model import MattingRefine

    manifest = MattingRefine(backbone).state_dict()
    generator = torch.Generator().manual_seed(seed)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, like in manifest.items():
        layer, leaf = name.rsplit(".", 1)
        shape = like.shape
        is_bn = f"{layer}.running_mean" in manifest
        if leaf == "num_batches_tracked":
            value = torch.tensor(0, dtype=torch.int64)
        elif is_bn and leaf == "running_mean":
            value = torch.randn(shape, generator=generator) * 0.1
        elif is_bn and leaf in ("running_var", "weight"):
            value = torch.rand(shape, generator=generator) * 0.5 + 0.75
        elif is_bn and leaf == "bias":
            value = torch.randn(shape, generator=generator) * 0.1
        elif leaf == "weight":
            fan_in = shape[1] * shape[2] * shape[3]
            value = torch.randn(shape, generator=generator) * math.sqrt(2 / fan_in)
        elif leaf == "bias":
            value = torch.zeros(shape)
        else:
            raise AssertionError(f"recipe has no rule for {name}")  # the model changed shape
        out[name] = value
    out["decoder.conv4.weight"] *= 0.05
    out["decoder.conv4.bias"] = torch.zeros(37)
    out["decoder.conv4.bias"][0] = 0.5
    out["decoder.conv4.bias"][4] = 0.1
    out["refiner.conv4.weight"] *= 0.25
    out["refiner.conv4.bias"] = torch.tensor([0.5, 0.0, 0.0, 0.0])
    for name in out:
        if _DAMPED_RESIDUAL.fullmatch(name):
            out[name] *= _RESIDUAL_DAMPING
    return out


def content_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over each entry's UTF-8 name then its contiguous raw bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
