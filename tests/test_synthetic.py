"""The synthetic recipe reproduces the reference content hashes, for every backbone."""

from __future__ import annotations

import pytest
import torch

from exporter import backbones
from exporter.synthetic import SYNTHETIC_SEED0_SHA256, content_sha256, synthetic_state_dict
from helpers import BACKBONES


@pytest.mark.parametrize(
    "backbone, digest",
    [
        # The reference README's hashes, written out here so a changed constant cannot hide a changed recipe.
        ("mobilenetv2", "2dd307c1d63ef01d552231a5799d147ebe45419295f8315618a0a33d09c2c12f"),
        ("resnet50", "f63cb0d8af491907338438b2821fdc4c71bd0fdd83ceaeac4d27ead617ac3000"),
        ("resnet101", "e2baa08a99f5a79cdbdc30e967fd2f1f8fa328de383d610159450518604dbc39"),
    ],
)
def test_seed0_reproduces_reference_hash(backbone, digest, recipe_weights):
    assert content_sha256(recipe_weights(backbone).state_dict) == SYNTHETIC_SEED0_SHA256[backbone] == digest


def test_other_seeds_differ_and_repeat():
    one, again = synthetic_state_dict(1), synthetic_state_dict(1)
    assert content_sha256(one) == content_sha256(again) != SYNTHETIC_SEED0_SHA256["mobilenetv2"]


def test_resnet_rule_damps_only_the_last_batch_norm_of_each_bottleneck(recipe_weights):
    state = recipe_weights("resnet50").state_dict
    assert state["backbone.layer1.0.bn3.weight"].max() <= 0.25  # rand * 0.5 + 0.75, then x 0.2
    assert state["backbone.layer1.0.bn2.weight"].min() >= 0.75


def test_every_backbone_has_its_hash_and_its_goldens():
    """A backbone added to the package's table needs its reference hash here and its goldens
    and manifest in tests/data (BACKBONES)."""
    assert list(SYNTHETIC_SEED0_SHA256) == list(backbones.BACKBONES) == list(BACKBONES)


def test_recipe_fixups():
    state = synthetic_state_dict(0)
    assert state["refiner.conv4.bias"].tolist() == [0.5, 0.0, 0.0, 0.0]
    bias = state["decoder.conv4.bias"]
    assert bias[0] == 0.5 and torch.isclose(bias[4], torch.tensor(0.1)) and bias.abs().sum() < 0.61
    assert state["backbone.features.0.1.num_batches_tracked"].dtype == torch.int64
