"""The network equals the original, for every published backbone: state_dict layout and
every golden output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.checkpoint import build_model
from exporter.images import to_eager_input
from exporter.model import MattingBase, MattingRefine
from exporter.tolerances import GOLDEN_ATOL
from helpers import BACKBONES, DATA

MODES = ("sampling", "thresholding", "full")


# The reference README's entry and trainable-parameter counts.
SIZES = {"mobilenetv2": (382, 5_006_839), "resnet50": (394, 40_247_703), "resnet101": (700, 59_239_831)}


def manifest(backbone: str) -> list[tuple[str, list[int], str]]:
    rows = []
    for line in (DATA / f"state_dict_{backbone}.tsv").read_text().splitlines():
        name, shape, dtype = line.split("\t")
        rows.append((name, [int(d) for d in shape.strip("[]").split(",") if d.strip()], dtype))
    return rows


def rgb(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_eager_input(image))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_state_dict_matches_manifest_exactly(backbone):
    ours = [
        (name, list(t.shape), str(t.dtype).removeprefix("torch."))
        for name, t in MattingRefine(backbone).state_dict().items()
    ]
    assert ours == manifest(backbone)
    assert len(ours) == SIZES[backbone][0]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_trainable_parameters(backbone):
    assert sum(p.numel() for p in MattingRefine(backbone).parameters()) == SIZES[backbone][1]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_base_is_refine_without_refiner(backbone):
    refine = [n for n in MattingRefine(backbone).state_dict() if not n.startswith("refiner.")]
    assert list(MattingBase(backbone).state_dict()) == refine


@pytest.mark.parametrize("backbone", BACKBONES)
def test_base_matches_golden(backbone, load_golden, recipe_weights):
    golden, weights = load_golden(backbone), recipe_weights(backbone)
    model = MattingBase(backbone).eval()
    model.load_state_dict({k: v for k, v in weights.state_dict.items() if not k.startswith("refiner.")})
    with torch.no_grad():
        pha, fgr, err, hid = model(rgb(golden["src_rgb_u8"]), rgb(golden["bgr_rgb_u8"]))
    for name, ours in (("pha", pha), ("fgr", fgr), ("err", err)):
        np.testing.assert_allclose(ours.numpy(), golden[f"base_{name}"], rtol=0, atol=GOLDEN_ATOL, err_msg=name)
    np.testing.assert_allclose(hid.mean((2, 3)).numpy(), golden["base_hid_mean"], rtol=0, atol=GOLDEN_ATOL)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode", MODES)
def test_refine_matches_golden(mode, backbone, load_golden, golden_config, recipe_weights):
    golden, weights = load_golden(backbone), recipe_weights(backbone)
    model = build_model(golden_config(backbone).replace(refine_mode=mode), weights)
    with torch.no_grad():
        pha, fgr, _, _, err_sm, ref = model(rgb(golden["src_rgb_u8"]), rgb(golden["bgr_rgb_u8"]))
    np.testing.assert_allclose(pha.numpy(), golden[f"{mode}_pha"], rtol=0, atol=GOLDEN_ATOL)
    np.testing.assert_allclose(fgr.numpy(), golden[f"{mode}_fgr"], rtol=0, atol=GOLDEN_ATOL)
    np.testing.assert_allclose(err_sm.numpy(), golden["coarse_err"], rtol=0, atol=GOLDEN_ATOL)
    np.testing.assert_array_equal(ref.numpy(), golden[f"{mode}_ref"])


@pytest.mark.parametrize(
    "backbone, sampled, thresholded", [("mobilenetv2", 1000, 222), ("resnet50", 800, 27), ("resnet101", 800, 7)]
)
def test_golden_patch_counts(backbone, sampled, thresholded, load_golden):
    # The reference README's counts; if these move, the goldens are not the ones documented.
    golden = load_golden(backbone)
    assert golden["sampling_ref"].sum() == sampled
    assert golden["thresholding_ref"].sum() == thresholded


def test_sampling_without_prevent_oversampling_refines_exactly_k(golden_rgb, weights):
    model = MattingRefine(refine_sample_pixels=16_000, refine_prevent_oversampling=False).eval()
    model.load_state_dict(weights.state_dict)
    with torch.no_grad():
        ref = model(*golden_rgb)[5]
    assert ref.sum().item() == 1000


def test_prevent_oversampling_keeps_coarse_where_error_is_zero(weights):
    """Zero error everywhere: nothing may be refined, the output is the upsampled coarse."""
    model = MattingRefine(refine_sample_pixels=16_000).eval()
    model.load_state_dict(weights.state_dict)
    model.decoder.conv4.weight.data[4].zero_()
    model.decoder.conv4.bias.data[4] = -1.0  # err = clamp(-1) = 0
    src = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pha, _, pha_sm, _, err_sm, ref = model(src, src.flip(3))
    assert err_sm.max().item() == 0 and ref.sum().item() == 0
    coarse = torch.nn.functional.interpolate(pha_sm, (128, 192), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pha, coarse.clamp(0, 1), rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_kernel_size_one_runs(mode, golden_rgb):
    model = MattingRefine(refine_mode=mode, refine_sample_pixels=16_000, refine_kernel_size=1).eval()
    with torch.no_grad():
        pha, fgr, *_ = model(*golden_rgb)
    assert pha.shape == (1, 1, 192, 320) and fgr.shape == (1, 3, 192, 320)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"backbone_scale": 0.75}, "backbone_scale"),
        ({"refine_mode": "magic"}, "refine mode"),
        ({"refine_kernel_size": 5}, "kernel size"),
        ({"backbone": "vgg16"}, "backbone 'vgg16' is not one of mobilenetv2, resnet50, resnet101"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MattingRefine(**kwargs)


def test_sizes_not_divisible_by_four_are_refused():
    with pytest.raises(ValueError, match="divisible by 4"):
        MattingRefine()(torch.zeros(1, 3, 130, 192), torch.zeros(1, 3, 130, 192))
