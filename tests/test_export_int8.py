"""INT8: the mechanism on synthetic weights at a small size (quality is measured on trained
weights, see exporter.tolerances): metadata, determinism, calibration folders, accuracy
control, verification bars that catch a broken INT8 model, and every bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from exporter import tolerances as tol
from exporter.artifact import read_ir_metadata
from exporter.cli import app
from exporter.errors import ConfigError, InputError
from exporter.export.int8 import INT8_FP_LAYERS, Int8Options, agreement_score, int8_options
from exporter.export.openvino import export_ir
from exporter.info import artifact_info
from exporter.verify import verify
from exporter.verify.compare import BARS, SYNTHETIC_INT8_BARS
from exporter.verify.data import synthetic_case

runner = CliRunner()
H, W = 192, 320  # the golden ONNX's size


def frames_folder(root: Path, count: int, size: tuple[int, int] = (H, W), black: bool = False) -> Path:
    """``count`` frames in the Open Model Zoo layout, ``size`` (H, W)."""
    for sub in ("com", "bgr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        case = synthetic_case(*size, seed=500 + i)
        src, bgr = (np.zeros_like(case.src), np.zeros_like(case.bgr)) if black else (case.src, case.bgr)
        Image.fromarray(src).save(root / "com" / f"{i:03d}.png")
        Image.fromarray(bgr).save(root / "bgr" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def int8_ir(tmp_path_factory, golden_onnx) -> Path:
    return export_ir(golden_onnx, tmp_path_factory.mktemp("int8") / "INT8" / "golden.xml", "INT8").xml


def test_metadata_says_how_it_was_made(int8_ir):
    metadata = read_ir_metadata(int8_ir)
    assert metadata["precision"] == "INT8"
    assert metadata["int8_calibration"] == "synthetic"
    assert metadata["int8_calibration_frames"] == str(tol.INT8_CALIBRATION_FRAMES)
    assert metadata["int8_max_drop"] == "none"
    assert metadata["int8_fp_layers"] == "/refiner/conv4/Conv"
    assert metadata["nncf_version"].startswith("3.")
    assert metadata["backbone"] == "mobilenetv2"
    assert artifact_info(int8_ir).metadata["int8_fp_layers"] == metadata["int8_fp_layers"]
    assert INT8_FP_LAYERS == (r"/refiner/conv4/.*",)


def test_weights_are_eight_bit(int8_ir, golden_irs):
    fp32_bin = golden_irs["FP32"].with_suffix(".bin").stat().st_size
    assert int8_ir.with_suffix(".bin").stat().st_size < 0.3 * fp32_bin
    assert artifact_info(int8_ir).ops["FakeQuantize"] > 50


def test_refiner_conv1_runs_in_eight_bits(int8_ir):
    """The quantizer barrier keeps refiner.conv1's input quantizer below the zero padding,
    so the CPU plugin runs the costliest layer with 8-bit arithmetic."""
    import openvino as ov

    from exporter.images import to_model_input

    compiled = ov.Core().compile_model(str(int8_ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    case = synthetic_case(H, W, 1)
    request.infer({"src": to_model_input(case.src), "bgr": to_model_input(case.bgr)})
    kernels = {p.node_name: p.exec_type for p in request.profiling_info}
    assert kernels["/refiner/conv1/Conv/WithoutBiases"].endswith("I8"), kernels["/refiner/conv1/Conv/WithoutBiases"]
    assert not kernels["/refiner/conv4/Conv/WithoutBiases"].endswith("I8")


def test_deterministic_bytes(int8_ir, golden_onnx, tmp_path):
    again = export_ir(golden_onnx, tmp_path / "again.xml", "INT8")
    assert again.xml.read_bytes() == int8_ir.read_bytes()
    assert again.bin.read_bytes() == int8_ir.with_suffix(".bin").read_bytes()


def test_good_int8_verifies_with_the_synthetic_bars(int8_ir, weights):
    report = verify([int8_ir], weights, cases=2)
    assert report.passed, [c for a in report.artifacts for o in a.outputs.values() for c in o.checks]
    (result,) = report.artifacts
    assert result.precision == "INT8" and result.accuracy  # metric rises are judged
    assert result.outputs["pha"].mean_abs <= SYNTHETIC_INT8_BARS.mean_abs
    assert any("synthetic INT8 bars" in w for w in report.warnings)
    # The trained-weights bars are tighter: synthetic weights' INT8 does not meet them.
    strict = verify([int8_ir], weights, cases=2, bars={"INT8": BARS["INT8"]})
    assert not strict.passed


def test_black_frame_calibration_is_caught(golden_onnx, weights, tmp_path):
    """Calibrated on black frames, the activation ranges are wrong: the INT8 bars fail."""
    folder = frames_folder(tmp_path / "black", 4, black=True)
    options = Int8Options(calibration=folder, frames=4)
    broken = export_ir(golden_onnx, tmp_path / "broken.xml", "INT8", int8=options).xml
    report = verify([broken], weights, cases=2)
    assert not report.passed
    failed = {c.name for a in report.artifacts for o in a.outputs.values() for c in o.checks if not c.passed}
    failed |= {c.name for a in report.artifacts for c in a.accuracy if not c.passed}
    assert failed, "a broken INT8 model passed every bar"


def test_calibration_folder_and_accuracy_control(golden_onnx, tmp_path):
    folder = frames_folder(tmp_path / "frames", 6)
    options = Int8Options(calibration=folder, frames=4, max_drop=50.0, validation_frames=2)
    result = export_ir(golden_onnx, tmp_path / "ac.xml", "INT8", int8=options)
    metadata = read_ir_metadata(result.xml)
    assert metadata["int8_calibration"].startswith("folder sha256:") and str(folder) not in metadata["int8_calibration"]
    assert metadata["int8_calibration_frames"] == "4" and metadata["int8_max_drop"] == "50.0"
    assert "quantize with accuracy control" in result.durations


def test_agreement_score_is_never_zero_for_a_perfect_model():
    pha = np.full((1, 1, 4, 4), 0.5, np.float32)
    assert agreement_score(pha, pha) == 100.0
    assert agreement_score(pha, pha + 0.01) == pytest.approx(90.0)


def test_int8_options_only_for_int8():
    assert int8_options("FP32", None, None, None) is None
    with pytest.raises(ConfigError, match="--calibration-frames, --max-drop apply to --precision INT8 only"):
        int8_options("FP16", None, 4, 1.0)
    with pytest.raises(ConfigError, match="--calibration applies to --precision INT8 only, not FP32"):
        int8_options("FP32", Path("frames"), None, None)
    assert int8_options("INT8", None, None, None).frames == tol.INT8_CALIBRATION_FRAMES


@pytest.mark.parametrize("drop", [-1.0, math.nan, math.inf])
def test_bad_max_drop(drop):
    with pytest.raises(ConfigError, match="max drop"):
        Int8Options(max_drop=drop).validate()


def bad_input(kind: str, root: Path) -> tuple[list[str], str]:
    """CLI arguments for one bad INT8 input, and what the message must say."""
    folder = root / "frames"
    if kind == "empty-folder":
        (folder / "com").mkdir(parents=True)
        (folder / "bgr").mkdir()
        return ["--calibration", str(folder)], "holds no images"
    if kind == "no-bgr":
        frames_folder(folder, 2)
        for path in (folder / "bgr").iterdir():
            path.unlink()
        (folder / "bgr").rmdir()
        return ["--calibration", str(folder)], "needs com/ and bgr/ subfolders"
    if kind == "unreadable-image":
        frames_folder(folder, 2)
        (folder / "com" / "000.png").write_bytes(b"not a png")
        (folder / "bgr" / "000.png").write_bytes(b"not a png")
        return ["--calibration", str(folder), "--calibration-frames", "2"], "cannot read image"
    if kind == "too-few-frames":
        frames_folder(folder, 2)
        return ["--calibration", str(folder), "--calibration-frames", "5"], "has 2 frames; 5 calibration frames"
    if kind == "other-aspect":
        frames_folder(folder, 2, size=(200, 200))
        return ["--calibration", str(folder), "--calibration-frames", "2"], "an aspect other than the model's"
    if kind == "missing-folder":
        return ["--calibration", str(root / "nope")], "does not exist or is not a folder"
    if kind == "negative-drop":
        return ["--max-drop", "-1"], "max drop -1.0 is not a number >= 0"
    if kind == "nan-drop":
        return ["--max-drop", "nan"], "max drop nan is not a number >= 0"
    if kind == "zero-frames":
        return ["--calibration-frames", "0"], "Invalid value for '--calibration-frames': Input should be greater"
    raise AssertionError(kind)


BAD = [
    "empty-folder",
    "no-bgr",
    "unreadable-image",
    "too-few-frames",
    "other-aspect",
    "missing-folder",
    "negative-drop",
    "nan-drop",
    "zero-frames",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_int8_input_is_one_line_exit_two_and_writes_nothing(kind, golden_onnx, tmp_path):
    args, message = bad_input(kind, tmp_path)
    out = tmp_path / "out" / "INT8" / "m.xml"
    result = runner.invoke(
        app, ["ir", "--onnx", str(golden_onnx), "--precision", "INT8", "--output", str(out), "--quiet", *args]
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("precision, message", [("int4", "Invalid value for '--precision': Value error, 'int4'")])
def test_unknown_precision(precision, message, golden_onnx, tmp_path):
    result = runner.invoke(
        app, ["ir", "--onnx", str(golden_onnx), "--precision", precision, "--output", str(tmp_path / "m.xml")]
    )
    assert result.exit_code == 2 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_int8_prints_what_stayed_in_floating_point(golden_onnx, tmp_path):
    out = tmp_path / "INT8" / "m.xml"
    result = runner.invoke(app, ["ir", "--onnx", str(golden_onnx), "--precision", "INT8", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "kept in floating point: /refiner/conv4/Conv" in result.stdout
    assert "calibrated on synthetic composites" in result.stderr
    assert "quantize" in result.stdout and out.is_file()


def test_input_error_for_a_folder_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        Int8Options(calibration=path).validate()
