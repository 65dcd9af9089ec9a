"""Every arithmetic a user runs is verified: f32, and the device's default (bf16 on CPUs
that have it), in matte, verify and the bars that judge them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from exporter.data import synthetic_case
from exporter.eager import EagerRunner
from exporter.matte import matte
from exporter.runtime import default_inference_precision, load_runner
from exporter.tolerances import OFF_BY_ONE_LEVEL
from exporter.verify import verify
from exporter.verify.compare import (
    BARS,
    REDUCED_ARITHMETIC_BARS,
    SYNTHETIC_INT8_BARS,
    bars_for,
    compare_output,
)


@pytest.mark.slow
def test_matte_in_f32_reproduces_the_eager_alpha(golden_irs, weights, tmp_path):
    """``--inference-precision f32``: the written alpha is the eager model's, to 8-bit rounding."""
    from exporter.checkpoint import build_model
    from exporter.config import ExportConfig

    case = synthetic_case(192, 320, 7)
    Image.fromarray(case.src).save(tmp_path / "src.png")
    Image.fromarray(case.bgr).save(tmp_path / "bgr.png")
    summary = matte(golden_irs["FP32"], tmp_path / "src.png", tmp_path / "bgr.png", out=tmp_path / "out",
                    outputs=("alpha",), inference_precision="f32")  # fmt: skip
    assert summary.inference_precision == "f32"
    assert any("in f32 arithmetic" in line for line in summary.lines(tmp_path / "out"))
    config = ExportConfig.from_metadata(load_runner(golden_irs["FP32"]).metadata)
    eager = EagerRunner(build_model(config, weights), config, weights.label).infer(case.feeds())["pha"][0, 0]
    with Image.open(tmp_path / "out/src_alpha.png") as image:
        alpha = np.asarray(image, dtype=np.float64) / 255
    assert np.abs(alpha - eager).max() <= OFF_BY_ONE_LEVEL


def test_matte_says_which_arithmetic_ran(golden_irs, tmp_path):
    case = synthetic_case(192, 320, 8)
    Image.fromarray(case.src).save(tmp_path / "src.png")
    summary = matte(golden_irs["FP32"], tmp_path / "src.png", tmp_path / "src.png", out=tmp_path / "out",
                    outputs=("alpha",))  # fmt: skip
    assert summary.inference_precision == default_inference_precision()


def test_verify_checks_f32_and_the_device_default(golden_irs, weights):
    """On a CPU with bf16 both arithmetics are verified and reported; elsewhere f32 alone."""
    report = verify([golden_irs["FP32"]], weights, cases=1)
    arithmetics = [a.arithmetic for a in report.artifacts]
    assert arithmetics == list(dict.fromkeys(["f32", default_inference_precision()]))
    assert report.passed
    f32 = report.artifacts[0]
    assert f32.outputs["pha"].max_abs <= BARS["FP32"].max_abs
    for reduced in report.artifacts[1:]:
        assert reduced.name.endswith(f"[openvino, {reduced.arithmetic}]")
        # Computed in bf16, not silently f32: it differs, by far more than f32 does.
        assert reduced.outputs["pha"].mean_abs > 100 * f32.outputs["pha"].mean_abs
    only = verify([golden_irs["FP32"]], weights, cases=1, inference_precision="f32")
    assert [a.arithmetic for a in only.artifacts] == ["f32"]


@pytest.mark.parametrize(
    "precision, arithmetic, synthetic, expected",
    [
        ("FP32", "f32", False, BARS["FP32"]),
        ("FP32", "bf16", False, REDUCED_ARITHMETIC_BARS),
        ("FP16", "f16", False, REDUCED_ARITHMETIC_BARS),
        ("INT8", "bf16", False, BARS["INT8"]),  # INT8's bars already allow 8-bit error
        ("FP32", "bf16", True, SYNTHETIC_INT8_BARS),
        ("FP32", "f32", True, BARS["FP32"]),
    ],
)
def test_bars_for_each_arithmetic(precision, arithmetic, synthetic, expected):
    assert bars_for(precision, arithmetic, synthetic, BARS, set()) == expected


def test_reduced_arithmetic_bars_catch_a_visible_error():
    """A bf16 run whose alpha is off by 0.1 on a quarter of the frame fails."""
    reference = np.random.default_rng(0).random((1, 1, 64, 64)).astype(np.float32)
    broken = reference.copy()
    broken[..., :16, :] += 0.1
    assert not compare_output("pha", reference, broken, REDUCED_ARITHMETIC_BARS)
    assert compare_output("pha", reference, reference + 1e-4, REDUCED_ARITHMETIC_BARS)


def test_an_unknown_arithmetic_is_refused(golden_irs, weights):
    from exporter.errors import ConfigError

    message = "inference precision 'f64' is not one of auto, f32, bf16, f16"
    with pytest.raises(ConfigError, match=message):
        load_runner(golden_irs["FP32"], inference_precision="f64")
    with pytest.raises(ConfigError, match=message):
        verify([golden_irs["FP32"]], weights, cases=1, inference_precision="f64")
