"""Export configuration: presets, validation with the nearest valid sizes, metadata."""

from __future__ import annotations

import re

import pytest

from exporter.config import PRESETS, SAMPLE_SHARE, WEB_PRESET, ExportConfig, sample_pixels_for
from exporter.errors import ConfigError


def test_presets_are_the_originals_settings():
    assert (PRESETS["720p"].height, PRESETS["720p"].width, PRESETS["720p"].sample_pixels) == (720, 1280, 80_000)
    hd = PRESETS["1080p"]
    assert (hd.height, hd.width, hd.backbone_scale, hd.sample_pixels) == (1080, 1920, 0.25, 80_000)
    uhd = PRESETS["4k"]
    assert (uhd.height, uhd.width, uhd.backbone_scale, uhd.sample_pixels) == (2160, 3840, 0.125, 320_000)
    for preset in PRESETS.values():
        assert preset.validate() is preset


@pytest.mark.parametrize("name, size, pixels", [("360p", (360, 640), 20_000), ("480p", (480, 640), 26_672)])
def test_webcam_presets_refine_the_720p_share(name, size, pixels):
    """80,000 of 1280x720's pixels (8.68%) are refined; a webcam size keeps that share, in
    whole 4x4 patches: 640x480 x 8.68% = 26,666.7 -> 1,667 patches."""
    preset = PRESETS[name]
    assert (preset.height, preset.width, preset.backbone_scale, preset.sample_pixels) == (*size, 0.25, pixels)
    assert sample_pixels_for(*size) == pixels and pixels % 16 == 0
    assert abs(pixels - size[0] * size[1] * SAMPLE_SHARE) <= 8  # the nearest whole patch
    assert sample_pixels_for(720, 1280) == PRESETS["720p"].sample_pixels


def test_web_preset_is_the_recommended_size():
    assert WEB_PRESET in PRESETS and PRESETS["web"] == PRESETS[WEB_PRESET] == PRESETS["360p"]


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"height": 722},
            "height 722 is not valid at backbone scale 0.25: sizes must be multiples of 4, "
            "at least 64; nearest valid: 720 or 724",
        ),
        (
            {"width": 30},
            "width 30 is not valid at backbone scale 0.25: sizes must be multiples of 4, "
            "at least 64; nearest valid: 64",
        ),
        ({"height": 1084, "backbone_scale": 0.125}, "multiples of 8, at least 128; nearest valid: 1080 or 1088"),
        ({"backbone_scale": 0.6}, "backbone scale 0.6 is not in (0, 0.5]"),
        ({"refine_mode": "magic"}, "refine mode 'magic' is not one of sampling, thresholding, full"),
        ({"sample_pixels": 10_000_000}, "sample pixels 10000000 is not in 16..921600"),
        ({"opset": 9}, "opset 9 is not in 13..21"),
        ({"precision": "INT4"}, "precision 'INT4' is not one of FP32, FP16, INT8"),
        ({"onnx_weights": "BF16"}, "ONNX weights 'BF16' is not one of FP32, FP16, INT8"),
        ({"refine_mode": "thresholding", "threshold": 1.5}, "threshold 1.5 is not in [0, 1)"),
        # Recorded in the metadata in every mode, so checked in every mode.
        ({"refine_mode": "full", "sample_pixels": -5}, "sample pixels -5 is below 16 (one 4x4 patch)"),
        ({"refine_mode": "full", "threshold": float("nan")}, "threshold nan is not a finite number"),
        ({"height": 720.0}, "height 720.0 is not a whole number"),
        ({"backbone_scale": True}, "backbone scale True is not a finite number"),
        # Beyond a float: math.isfinite raised OverflowError; below 1/65536, 16 / scale did.
        ({"threshold": 10**400}, "threshold <an integer of 1,329 bits> is not a finite number"),
        ({"backbone_scale": 1e-320}, "backbone scale 1e-320 is below 1/65536, the smallest supported"),
        ({"sample_pixels": 1 << 63}, "sample pixels 9223372036854775808 is beyond what an int64 holds"),
        # Each field its type: a list or a dict was looked up in a table (TypeError), a string
        # or a 2 was a config whose ``dynamic`` was neither True nor False.
        ({"dynamic": "yes"}, "dynamic 'yes' is not True or False"),
        ({"dynamic": 1}, "dynamic 1 is not True or False"),
        ({"backbone": ["mobilenetv2"]}, "backbone ['mobilenetv2'] is not one of mobilenetv2, resnet50, resnet101"),
        ({"refine_mode": {}}, "refine mode {} is not one of sampling"),
        ({"precision": ["FP32"]}, "precision ['FP32'] is not one of FP32"),
        ({"onnx_weights": None}, "ONNX weights None is not one of FP32"),
        ({"extra_outputs": "err"}, "extra outputs 'err' is not a list of names of err, ref"),
        ({"extra_outputs": ("err", 1)}, "extra outputs ('err', 1) is not a list of names"),
    ],
)
def test_invalid_configs_name_the_problem(changes, message):
    """Construction validates: an ``ExportConfig`` that exists is a valid one."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExportConfig(**changes)
    with pytest.raises(ConfigError) as info:
        ExportConfig().replace(**changes)
    assert message in str(info.value)


def test_the_smallest_scale_still_has_sizes():
    """At the floor, the rule that refuses a smaller scale still names a valid size."""
    with pytest.raises(ConfigError, match="sizes must be multiples of 65536, at least 1048576"):
        ExportConfig(backbone_scale=1 / 65536)
    assert ExportConfig(backbone_scale=1 / 65536, height=1 << 20, width=1 << 20).min_size == 1 << 20


def test_metadata_round_trip():
    config = PRESETS["4k"].replace(refine_mode="thresholding", threshold=0.2)
    metadata = config.metadata("sha256:abc")
    assert metadata["color_order"] == "BGR" and metadata["input_scale"] == "255"
    assert metadata["resolution"] == "2160x3840" and metadata["checkpoint"] == "sha256:abc"
    assert ExportConfig.from_metadata(metadata) == config


@pytest.mark.parametrize("storage", ["FP16", "INT8"])
def test_onnx_weights_round_trip(storage):
    config = PRESETS["web"].replace(onnx_weights=storage)
    metadata = config.metadata("sha256:abc")
    assert metadata["onnx_weights"] == storage
    assert ExportConfig.from_metadata(metadata) == config


def test_fp32_weights_are_not_written_and_read_as_fp32():
    """The default's metadata is what it was before the key existed (its export byte for byte),
    and an artifact without the key, older or FP32, reads back as FP32."""
    metadata = PRESETS["720p"].metadata("sha256:abc")
    assert "onnx_weights" not in metadata
    assert ExportConfig.from_metadata(metadata).onnx_weights == "FP32"


def test_metadata_missing_key_is_a_clear_error():
    with pytest.raises(ConfigError, match="metadata is incomplete"):
        ExportConfig.from_metadata({"resolution": "720x1280"})
