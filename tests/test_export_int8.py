"""INT8: the mechanism on synthetic weights at a small size (quality is measured on trained
weights, see exporter.tolerances): metadata, determinism, calibration folders, accuracy
control, verification bars that catch a broken INT8 model, and every bad input."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from exporter import tolerances as tol
from exporter.artifact import read_ir_metadata
from exporter.data import synthetic_case
from exporter.errors import ArtifactError, ConfigError, InputError
from exporter.export.int8 import (
    INT8_FIXED_LAYERS,
    INT8_FP_LAYERS,
    INT8_OVERFLOW_FIX,
    INT8_QUANTIZER_BARRIERS,
    TARGET_FP32,
    TARGET_TRUTH,
    Int8Options,
    agreement_score,
    calibration_frames,
    int8_options,
)
from exporter.export.openvino import export_ir
from exporter.info import artifact_info, format_info
from exporter.isa import CAP_VARIABLES, cpu_isa
from exporter.runtime import default_inference_precision
from exporter.verify import verify
from exporter.verify.compare import BARS, SYNTHETIC_INT8_BARS
from helpers import GOLDEN_CONFIG, huge_png

H, W = 192, 320  # the golden ONNX's size


def frames_folder(root: Path, count: int, size: tuple[int, int] = (H, W), black: bool = False, pha: int = 0) -> Path:
    """``count`` frames in the Open Model Zoo layout, ``size`` (H, W); the last ``pha`` of
    them with their true alpha in ``pha/``."""
    for sub in ("com", "bgr", "pha") if pha else ("com", "bgr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        case = synthetic_case(*size, seed=500 + i)
        src, bgr = (np.zeros_like(case.src), np.zeros_like(case.bgr)) if black else (case.src, case.bgr)
        Image.fromarray(src).save(root / "com" / f"{i:03d}.png")
        Image.fromarray(bgr).save(root / "bgr" / f"{i:03d}.png")
        if i >= count - pha:
            Image.fromarray((case.pha * 255).astype(np.uint8)).save(root / "pha" / f"{i:03d}.png")
    return root


# Every test that quantizes (``int8_ir`` included, made once a session) is slow: NNCF takes
# seconds per run. The checks of options, frames and bad input that stop before NNCF are not.


@pytest.mark.slow
def test_metadata_says_how_it_was_made(int8_ir, golden_onnx):
    metadata = read_ir_metadata(int8_ir)
    assert metadata["precision"] == "INT8"
    assert metadata["int8_calibration"] == "synthetic hard"  # the family: plain and hard make other models
    assert metadata["int8_calibration_frames"] == str(tol.INT8_CALIBRATION_FRAMES)
    assert metadata["int8_max_drop"] == "none"
    assert metadata["int8_validation_target"] == "none"
    assert metadata["int8_fp_layers"] == "/refiner/conv4/Conv"
    assert metadata["int8_overflow_fix"] == "enable"  # 7-bit weights: the same on every CPU
    assert metadata["nncf_version"].startswith("3.")
    assert metadata["backbone"] == "mobilenetv2"
    assert artifact_info(int8_ir).metadata["int8_fp_layers"] == metadata["int8_fp_layers"]
    # The layers INT8_FP_LAYERS names in the FP32 graph are the ones that stayed in floating point.
    convolutions = [node.name for node in onnx.load(str(golden_onnx)).graph.node if node.op_type == "Conv"]
    named = [name for name in convolutions if any(re.fullmatch(pattern, name) for pattern in INT8_FP_LAYERS)]
    assert metadata["int8_fp_layers"].split(",") == named


@pytest.mark.slow
def test_weights_are_eight_bit(int8_ir, golden_irs):
    fp32_bin = golden_irs["FP32"].with_suffix(".bin").stat().st_size
    assert int8_ir.with_suffix(".bin").stat().st_size < 0.3 * fp32_bin
    assert artifact_info(int8_ir).ops["FakeQuantize"] > 50


@pytest.mark.slow
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


def test_every_int8_rule_names_ops_of_the_deployed_graph(golden_onnx):
    """NNCF finds the ops to keep in floating point by name: a pattern that names nothing
    quantizes what it was written to protect, and says nothing. OpenVINO keeps the ONNX
    nodes' names, which carry the module's path (``/compose/...``)."""
    names = [node.name for node in onnx.load(str(golden_onnx)).graph.node]
    for pattern in (*INT8_FP_LAYERS, *INT8_FIXED_LAYERS, *INT8_QUANTIZER_BARRIERS):
        assert any(re.fullmatch(pattern, name) for name in names), pattern


@pytest.mark.slow
def test_no_quantizer_before_the_refiners_resize(int8_ir):
    """The bilinear resize of the coarse maps is a barrier: the CPU cannot resize in 8
    bits, so a quantizer on its input ran as a fake quantization in floating point."""
    import openvino as ov

    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(int8_ir).get_ordered_ops()}
    assert ops["/refiner/Resize"].input_value(0).get_node().get_type_name() != "FakeQuantize"
    assert ops["/refiner/conv1/Conv/WithoutBiases"].input_value(0).get_node().get_type_name() == "FakeQuantize"


@pytest.mark.slow
def test_the_window_gather_is_quantized_after_not_before(int8_ir):
    """conv3's input is quantized after the refiner gathers the stage-one windows, not on
    the whole table of pixel pairs it gathers from (three times as many at 720p)."""
    import openvino as ov

    ops = ov.Core().read_model(int8_ir).get_ordered_ops()
    (gather,) = [op for op in ops if op.get_type_name() == "Gather" and op.get_friendly_name().startswith("/refiner/")]
    assert gather.get_friendly_name().startswith("/refiner/windows/")
    assert gather.input_value(0).get_node().get_type_name() != "FakeQuantize"
    assert {i.get_node().get_type_name() for i in gather.output(0).get_target_inputs()} == {"FakeQuantize"}


@pytest.mark.slow
def test_int8_quantizes_conv1s_phases_and_not_the_error_map(int8_ir):
    """conv1's row phases, the refiner's costliest layers, run in 8 bits; the 1x1 copy of
    the error channel does not: rounded to 8 bits, the errors would choose other patches."""
    import openvino as ov

    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(int8_ir).get_ordered_ops()}
    for phase in range(2):
        conv = ops[f"/refiner/conv1_phases.{phase}/Conv/WithoutBiases"]
        assert conv.input_value(0).get_node().get_type_name() == "FakeQuantize"
    pick = ops["/error/pick/Conv"]
    assert pick.input_value(0).get_node().get_type_name() != "FakeQuantize"
    assert pick.input_value(1).get_node().get_output_element_type(0).get_type_name() == "f32"


@pytest.mark.slow
def test_deterministic_bytes(int8_ir, golden_onnx, tmp_path):
    again = export_ir(golden_onnx, tmp_path / "again.xml", "INT8")
    assert again.xml.read_bytes() == int8_ir.read_bytes()
    assert again.bin.read_bytes() == int8_ir.with_suffix(".bin").read_bytes()


@pytest.mark.slow
def test_good_int8_verifies_with_the_synthetic_bars(int8_ir, weights):
    report = verify([int8_ir], weights, cases=2)
    assert report.passed, [c for a in report.artifacts for o in a.outputs.values() for c in o.checks]
    # In f32 and in the device's default arithmetic (what matte and users run), both judged.
    assert [a.arithmetic for a in report.artifacts] == list(dict.fromkeys(["f32", default_inference_precision()]))
    result = report.artifacts[0]
    assert result.precision == "INT8" and result.accuracy  # metric rises are judged
    assert result.outputs["pha"].mean_abs <= SYNTHETIC_INT8_BARS.mean_abs
    assert any("synthetic INT8 bars" in w for w in report.warnings)
    # The trained-weights bars are tighter: synthetic weights' INT8 does not meet them.
    strict = verify([int8_ir], weights, cases=2, bars={"INT8": BARS["INT8"]}, inference_precision="f32")
    assert not strict.passed


@pytest.mark.slow
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


@pytest.mark.slow
def test_calibration_folder_and_accuracy_control(golden_onnx, tmp_path):
    folder = frames_folder(tmp_path / "frames", 6)
    options = Int8Options(calibration=folder, frames=4, max_drop=50.0, validation_frames=2)
    result = export_ir(golden_onnx, tmp_path / "ac.xml", "INT8", int8=options)
    metadata = read_ir_metadata(result.xml)
    assert metadata["int8_calibration"].startswith("folder sha256:") and str(folder) not in metadata["int8_calibration"]
    assert metadata["int8_calibration_frames"] == "4" and metadata["int8_max_drop"] == "50.0"
    # No pha/: the agreement is with the FP32 model, and the IR says so, as does info.
    assert metadata["int8_validation_target"] == TARGET_FP32 == "fp32"
    assert "int8_validation_target = fp32" in format_info(artifact_info(result.xml))
    assert "quantize with accuracy control" in result.durations


@pytest.mark.parametrize(
    "pha, max_drop, target",
    [(0, 1.0, TARGET_FP32), (6, 1.0, TARGET_TRUTH), (2, 1.0, TARGET_TRUTH), (0, None, None), (6, None, None)],
)
def test_one_validation_target_for_every_frame(pha, max_drop, target, tmp_path):
    """The truth when every validation frame (the last two of six) has pha/, the FP32 model
    when none has; without accuracy control, none is needed."""
    folder = frames_folder(tmp_path / "frames", 6, pha=pha)
    options = Int8Options(calibration=folder, frames=4, max_drop=max_drop, validation_frames=2)
    frames = calibration_frames(GOLDEN_CONFIG, options, synthetic=True)  # the size floor spares these weights
    assert frames.target == target
    assert len(frames.calibration) == 4 and len(frames.validation) == (2 if max_drop is not None else 0)
    # A trained model below the size floor: the drop's limit there bounds the distance from the
    # FP32 model, so accuracy control compares with it even where pha/ gives the truth.
    trained = calibration_frames(GOLDEN_CONFIG, options, synthetic=False).target
    assert trained == (TARGET_FP32 if target == TARGET_TRUTH else target)


def test_synthetic_validation_is_against_fp32():
    frames = calibration_frames(GOLDEN_CONFIG, Int8Options(frames=2, max_drop=1.0, validation_frames=2))
    assert frames.target == TARGET_FP32 and frames.source == "synthetic hard"
    # Calibration and validation frames are the named uses' seeds, never verify's (0..).
    # The hard composites: ranges calibrated on the plain ones clip real frames' (issue 30).
    assert [case.name for case in frames.calibration] == ["hard-1000", "hard-1001"]
    assert [case.name for case in frames.validation] == ["hard-2000", "hard-2001"]


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


@pytest.mark.parametrize("drop", [-1.0, math.nan, math.inf, True])
def test_bad_max_drop(drop):
    with pytest.raises(ConfigError, match="max drop"):
        Int8Options(max_drop=drop)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"frames": 0}, "calibration frames 0 is not a positive whole number"),
        ({"frames": 2.5}, "calibration frames 2.5 is not"),
        ({"frames": True}, "calibration frames True is not"),
        ({"validation_frames": 0}, "validation frames 0 is not"),
    ],
)
def test_int8_options_check_themselves_on_construction(changes, message):
    """As ExportConfig: an Int8Options that exists is a valid one, no .validate() to forget."""
    with pytest.raises(ConfigError, match=message):
        Int8Options(**changes)
    assert not hasattr(Int8Options, "validate")


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
    if kind == "other-aspect-bgr":  # com/ is right, its background would be stretched
        frames_folder(folder, 2)
        Image.fromarray(synthetic_case(200, 200, 1).bgr).save(folder / "bgr" / "001.png")
        return ["--calibration", str(folder), "--calibration-frames", "2"], "bgr/001.png is 200x200, an aspect other"
    if kind == "decompression-bomb":
        frames_folder(folder, 2)
        huge_png(folder / "com" / "000.png", 20_000, 12_000)
        return ["--calibration", str(folder), "--calibration-frames", "2"], "com/000.png is larger than the"
    if kind == "frames-beyond-memory":
        return ["--calibration-frames", "100000000"], "100,000,000 calibration frames at 192x320 need about"
    if kind == "pha-for-some-frames":
        frames_folder(folder, 12, pha=1)  # 4 calibration + 8 validation frames, the last with pha/
        return (
            ["--calibration", str(folder), "--calibration-frames", "4", "--max-drop", "1"],
            "holds the true alpha of 1 of the 8 validation frames",
        )
    if kind == "bin-is-a-folder":
        return [], "m.bin is a directory"
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
    "other-aspect-bgr",
    "decompression-bomb",
    "frames-beyond-memory",
    "pha-for-some-frames",
    "bin-is-a-folder",
    "missing-folder",
    "negative-drop",
    "nan-drop",
    "zero-frames",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_int8_input_is_one_line_exit_two_and_writes_nothing(kind, golden_onnx, tmp_path, cli, one_error):
    args, message = bad_input(kind, tmp_path)
    out = tmp_path / "out" / "INT8" / "m.xml"
    if kind == "bin-is-a-folder":
        out.with_suffix(".bin").mkdir(parents=True)
    # Not quiet: no stage may have started before the error.
    result = cli("ir", "--onnx", golden_onnx, "--precision", "INT8", "--output", out, *args)
    one_error(result, message)
    assert "quantize" not in result.stdout and "convert" not in result.stdout
    if kind == "bin-is-a-folder":
        assert [p.name for p in out.parent.iterdir()] == ["m.bin"]
    else:
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("precision, message", [("int4", "Invalid value for '--precision': Value error, 'int4'")])
def test_unknown_precision(precision, message, golden_onnx, tmp_path, cli, one_error):
    one_error(cli("ir", "--onnx", golden_onnx, "--precision", precision, "--output", tmp_path / "m.xml"), message)
    assert list(tmp_path.iterdir()) == []


def test_frames_beyond_memory_are_refused_before_the_onnx_export(weights, tmp_path, monkeypatch):
    from exporter.export import openvino

    def never(*args, **kwargs):
        raise AssertionError("the ONNX export started")

    monkeypatch.setattr(openvino, "export_onnx", never)
    options = Int8Options(frames=100_000_000, max_drop=1.0)
    with pytest.raises(ConfigError, match=r"100,000,008 calibration and validation frames at 192x320 need about "):
        openvino.export_ir_from_weights(GOLDEN_CONFIG, weights, tmp_path / "m.xml", "INT8", int8=options)
    assert list(tmp_path.iterdir()) == []


def test_int8_of_trained_weights_below_720p_is_refused_before_any_work(weights, tmp_path, cli, one_error):
    """Issue 30, item 4: below INT8_MIN_PIXELS plain INT8 of a trained model misses its bars
    on hard frames, so it is refused, with the reason, before the ONNX export (a checkpoint
    file counts as trained: only the synthetic recipe is known not to be)."""
    import torch

    checkpoint = tmp_path / "model.pth"
    torch.save(weights.state_dict, checkpoint)
    out = tmp_path / "out" / "m.xml"
    for size in (["--preset", "360p"], ["--height", "540", "--width", "960", "--sample-pixels", "45000"]):
        result = cli("ir", "--checkpoint", checkpoint, "--precision", "INT8", *size, "--output", out)
        one_error(result, "is refused: below 921,600 pixels (1280x720), 8-bit rounding misses INT8's bars")
        assert "--precision FP16" in result.stderr and "--max-drop" in result.stderr
        # Nothing said of calibration frames that will never be made.
        assert "calibrated on synthetic composites" not in result.stderr
    # A drop that allows more than the bars would let the plain INT8 through: refused too.
    result = cli("ir", "--checkpoint", checkpoint, "--precision", "INT8", "--preset", "360p", "--max-drop", "100")
    one_error(result, "with --max-drop 100 is refused: below 921,600 pixels (1280x720) that drop allows plain INT8")
    assert not out.parent.exists()


def test_int8_size_floor_spares_synthetic_weights_and_accuracy_control():
    from exporter.export.int8 import check_int8_size

    small = GOLDEN_CONFIG  # 192x320
    with pytest.raises(ConfigError, match=r"INT8 of a 320x192 frame \(61,440 pixels\) is refused"):
        check_int8_size(small, Int8Options(), synthetic=False)
    check_int8_size(small, Int8Options(), synthetic=True)  # judged by the synthetic bars
    check_int8_size(small, Int8Options(max_drop=1.0), synthetic=False)
    check_int8_size(small, Int8Options(max_drop=5.0), synthetic=False)  # alpha mean |d| 5e-3: the bar
    with pytest.raises(ConfigError, match="with --max-drop 5.01 is refused"):
        check_int8_size(small, Int8Options(max_drop=5.01), synthetic=False)
    check_int8_size(small.replace(height=720, width=1280, sample_pixels=80_000), Int8Options(), synthetic=False)


@pytest.mark.parametrize(
    "label",
    [
        "sha256:" + "0" * 64,
        "synthetic bgmv2-synthetic-v10 seed 0",  # a look-alike of the recipe's name
        "",
    ],
)
def test_int8_from_an_onnx_of_trained_weights_below_720p_is_refused(label, golden_onnx, tmp_path, cli, one_error):
    """From --onnx, the checkpoint its metadata names decides: not the synthetic recipe's, refused."""
    import onnx

    model = onnx.load(str(golden_onnx))
    for prop in model.metadata_props:
        if prop.key == "checkpoint":
            prop.value = label
    trained = tmp_path / "trained.onnx"
    onnx.save(model, str(trained))
    out = tmp_path / "out" / "m.xml"
    one_error(
        cli("ir", "--onnx", trained, "--precision", "INT8", "--output", out),
        "INT8 of a 320x192 frame (61,440 pixels) is refused",
    )
    assert not out.parent.exists()


def test_seeds_of_another_use_are_refused_before_the_onnx_export(weights, tmp_path, monkeypatch):
    """1,001 synthetic calibration frames would reach into the validation frames' seeds, and a
    folder may hold fewer frames than asked for: refused before minutes of export, as the
    memory and the size are."""
    from exporter.export import openvino

    def never(*args, **kwargs):
        raise AssertionError("the ONNX export started")

    monkeypatch.setattr(openvino, "export_onnx", never)
    folder = frames_folder(tmp_path / "two", 2)
    with pytest.raises(InputError, match="has 2 frames; 4 calibration frames were asked for"):
        openvino.export_ir_from_weights(
            GOLDEN_CONFIG, weights, tmp_path / "m.xml", "INT8", int8=Int8Options(calibration=folder, frames=4)
        )
    with pytest.raises(ConfigError, match="would reuse the validation frames' seeds"):
        openvino.export_ir_from_weights(
            GOLDEN_CONFIG, weights, tmp_path / "m.xml", "INT8", int8=Int8Options(frames=1001)
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]


@pytest.mark.slow
def test_cli_int8_prints_what_stayed_in_floating_point(golden_onnx, tmp_path, cli):
    out = tmp_path / "INT8" / "m.xml"
    result = cli("ir", "--onnx", golden_onnx, "--precision", "INT8", "--output", out)
    assert result.exit_code == 0, result.output
    assert "kept in floating point: /refiner/conv4/Conv" in result.stdout
    assert "calibrated on synthetic composites" in result.stderr
    assert "quantize" in result.stdout and out.is_file()
    assert "Statistics collection" in result.stdout  # NNCF's progress bars, when not quiet


@pytest.mark.slow
def test_quiet_int8_draws_no_progress_bars(golden_onnx, tmp_path, cli):
    out = tmp_path / "INT8" / "m.xml"
    result = cli("ir", "--onnx", golden_onnx, "--precision", "INT8", "--output", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and out.is_file()
    assert "Statistics collection" not in result.output and "Applying" not in result.output


@pytest.mark.slow
def test_info_counts_every_weight_of_an_int8_ir(int8_ir, golden_irs):
    """8-bit weights are weights: the INT8 IR has the FP32 IR's 5,025,126 parameters, not
    only the floating-point constants left beside them (the IR keeps some constants the
    ONNX shares once per use: each downsampling matrix once a matrix product, for one)."""
    fp32, int8 = artifact_info(golden_irs["FP32"]), artifact_info(int8_ir)
    assert int8.graph_parameters == fp32.graph_parameters == 5_025_126
    assert artifact_info(golden_irs["FP16"]).graph_parameters == 5_025_126


@pytest.mark.slow
def test_an_int8_xml_beside_an_fp32_bin_is_named(int8_ir, golden_irs, tmp_path, cli, one_error):
    xml = tmp_path / "m.xml"
    xml.write_bytes(int8_ir.read_bytes())
    xml.with_suffix(".bin").write_bytes(golden_irs["FP32"].with_suffix(".bin").read_bytes())
    with pytest.raises(ArtifactError, match=r"larger than the 5,194,654 its .xml expects: the .bin does not belong"):
        artifact_info(xml)
    one_error(cli("info", xml), "the .bin does not belong to this .xml")


def test_input_error_for_a_folder_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        Int8Options(calibration=path)


@pytest.mark.slow
def test_ir_says_when_its_int8_misses_the_bars(tmp_path, cli):
    """`ir` verifies the INT8 IR it made and warns when a bar is missed (at 192x320 the
    synthetic calibration of trained weights does): calibrated on black frames, it is."""
    size = ["--height", "192", "--width", "320", "--sample-pixels", "16000", "--quiet"]
    good = cli("ir", "--precision", "INT8", *size, "--output", tmp_path / "good" / "m.xml")
    assert good.exit_code == 0, good.output
    assert "misses verify's INT8 bars" not in good.stderr
    folder = frames_folder(tmp_path / "black", 4, black=True)
    out = tmp_path / "bad" / "m.xml"
    bad = cli("ir", "--precision", "INT8", *size, "--calibration", folder, "--calibration-frames", "4", "--output", out)
    assert bad.exit_code == 0, bad.output
    assert f"{out} misses verify's INT8 bars on 4 synthetic composites: " in bad.stderr
    assert "patches off by > 0.05" in bad.stderr and out.is_file()


# --- issue 30: one INT8 IR, the same results with and without VNNI ---------------------------

# A child process's OpenVINO with its kernels capped at AVX2 (the cap is read once, when the
# CPU plugin loads): how a CPU without VNNI computes INT8, on any AVX2 machine.
AVX2_ENV = {**os.environ, **dict.fromkeys(CAP_VARIABLES, "AVX2")}
needs_avx2 = pytest.mark.skipif("avx2" not in cpu_isa().flags, reason="the CPU has no AVX2")

# One 1x1 convolution of 32 u8 inputs at 255 by weights of one magnitude (8-bit 127 or 7-bit
# 63) and alternating sign per output channel: its exact sum is 32 x 255 x w. Prints that,
# what OpenVINO computed, and the kernel it ran.
SATURATION_PROBE = """
import json, numpy as np, openvino as ov, openvino.opset13 as ops
def model(weight):
    x = ops.parameter([1, 32, 2, 2], np.float32, name="x")
    lo, hi, wlo, whi = (ops.constant(np.float32(v)) for v in (0, 255, -128, 127))
    w = np.full((2, 32, 1, 1), weight, np.float32)
    w[1] *= -1
    y = ops.convolution(ops.fake_quantize(x, lo, hi, lo, hi, 256),
                        ops.fake_quantize(ops.constant(w), wlo, whi, wlo, whi, 256), [1, 1], [0, 0], [0, 0], [1, 1])
    return ov.Model([y], [x])
out = {}
for weight in (127, 63):
    compiled = ov.Core().compile_model(model(weight), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(np.full((1, 32, 2, 2), 255, np.float32))[0][0, 0, 0, 0]
    kernels = [op.get_rt_info()["primitiveType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
               if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    out[weight] = [float(got), 32 * 255 * weight, kernels]
print(json.dumps(out))
"""


@needs_avx2
def test_eight_bit_weights_saturate_on_avx2_kernels_and_seven_bit_ones_do_not():
    """The cause of issue 30, in one convolution: without VNNI, u8 x s8 products are summed in
    pairs into 16 bits with saturation, so 8-bit weights lose (255 x 127 x 2 > 32767) what
    7-bit ones (the overflow fix, 255 x 64 x 2 <= 32767) keep."""
    result = subprocess.run(
        [sys.executable, "-c", SATURATION_PROBE], env=AVX2_ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    got, exact, kernels = probe["127"]
    assert kernels == ["jit_avx2_1x1_I8"], kernels  # the cap took effect
    assert got == 16 * 32767 < exact  # each of the 16 pair sums saturated
    got, exact, kernels = probe["63"]
    assert got == exact


def test_nncf_gets_the_overflow_fix_on_every_layer(monkeypatch):
    """Both ways of quantizing ask NNCF for 7-bit weights everywhere, not its default of the
    first layer only."""
    import nncf
    from nncf.quantization.advanced_parameters import OverflowFix

    from exporter.export import int8 as int8_module

    given = {}

    class Stop(Exception):
        pass

    def record(name):
        def call(*args, **kwargs):
            given[name] = kwargs
            raise Stop

        return call

    monkeypatch.setattr(nncf, "quantize", record("quantize"))
    monkeypatch.setattr(nncf, "quantize_with_accuracy_control", record("accuracy control"))
    monkeypatch.setattr(int8_module, "_validation_items", lambda *args: [])
    case = synthetic_case(8, 8, 0)
    frames = int8_module.Frames([case], [case], "synthetic", TARGET_FP32)
    for options in (Int8Options(frames=1), Int8Options(frames=1, max_drop=1.0, validation_frames=1)):
        with pytest.raises(Stop):
            int8_module.quantize_model(object(), frames, options, progress=False)
    assert given["quantize"]["advanced_parameters"].overflow_fix == OverflowFix.ENABLE
    assert given["accuracy control"]["advanced_quantization_parameters"].overflow_fix == OverflowFix.ENABLE
    assert INT8_OVERFLOW_FIX == OverflowFix.ENABLE.value


def _wide_weights(xml: Path) -> list[str]:
    """Convolutions (not depthwise: oneDNN's depthwise INT8 kernels do not sum in pairs) whose
    8-bit weights exceed 64 in magnitude, the most 7 bits give."""
    import openvino as ov

    wide = []
    for op in ov.Core().read_model(xml).get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0).get_type_name() != "i8":
            continue
        node = op
        while node.get_type_name() not in ("Convolution", "GroupConvolution") and node.get_output_size():
            node = next(iter(node.output(0).get_target_inputs())).get_node()
        if node.get_type_name() == "Convolution" and np.abs(op.get_data().astype(np.int16)).max() > 64:
            wide.append(node.get_friendly_name())
    return wide


def _widened(xml: Path, out: Path) -> Path:
    """``xml`` with every convolution's 7-bit weights doubled (at most 127) and their scale halved:
    about the same numbers where sums do not saturate, 8-bit weights where they do."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.Core().read_model(xml)
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant" or op.get_output_element_type(0).get_type_name() != "i8":
            continue
        convert = next(iter(op.output(0).get_target_inputs())).get_node()
        multiply = next(iter(convert.output(0).get_target_inputs())).get_node()
        conv = next(iter(multiply.output(0).get_target_inputs())).get_node()
        if conv.get_type_name() != "Convolution" or multiply.get_type_name() != "Multiply":
            continue
        scale = multiply.input_value(1).get_node()
        op.output(0).replace(
            ops.constant((op.get_data().astype(np.int16) * 2).clip(-127, 127).astype(np.int8)).output(0)
        )
        scale.output(0).replace(ops.constant(scale.get_data() / 2).output(0))
    ov.save_model(model, out, compress_to_fp16=False)
    return out


# Runs an IR on verify's first synthetic case: saves its alpha, prints its INT8 convolutions' kernels.
RUN_IR = """
import json, sys, numpy as np, openvino as ov
from exporter.data import synthetic_case
compiled = ov.Core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
np.save(sys.argv[2], compiled(synthetic_case(192, 320, 0).feeds())[compiled.output("pha")])
rt = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
kernels = {r["primitiveType"].astype(str) for r in rt if r["layerType"].astype(str) == "Convolution"}
print(json.dumps(sorted(k for k in kernels if k.endswith("I8"))))
"""


def _alpha(xml: Path, out: Path, env: dict[str, str] | None = None) -> tuple[np.ndarray, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", RUN_IR, str(xml), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return np.load(out), json.loads(result.stdout)


@pytest.mark.slow
@needs_avx2
def test_int8_computes_the_same_on_avx2_and_vnni_kernels(int8_ir, tmp_path):
    """7-bit weights: the IR's alpha on AVX2 kernels is what the CPU's own (VNNI here) gives,
    to float rounding. On a CPU without VNNI both runs use AVX2 kernels, and only the
    widened IR's saturation is checked."""
    assert _wide_weights(int8_ir) == []
    native, _ = _alpha(int8_ir, tmp_path / "native.npy")
    avx2, kernels = _alpha(int8_ir, tmp_path / "avx2.npy", AVX2_ENV)
    assert kernels and all(k.startswith("jit_avx2") for k in kernels), kernels
    assert np.abs(native - avx2).max() <= 1e-5
    # Negative: the same IR with 8-bit weights (doubled, at half the scale) saturates on AVX2.
    wide = _widened(int8_ir, tmp_path / "wide.xml")
    assert len(_wide_weights(wide)) > 30
    wide_avx2, _ = _alpha(wide, tmp_path / "wide_avx2.npy", AVX2_ENV)
    assert np.abs(wide_avx2 - avx2).mean() > 10 * np.abs(native - avx2).mean() + 1e-4
