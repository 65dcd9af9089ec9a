"""info, bench and card: what they count and write (no timing is asserted)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import GOLDEN_CONFIG
from exporter.bench import bench
from exporter.cli import app
from exporter.config import ExportConfig
from exporter.info import artifact_info, checkpoint_info

runner = CliRunner()


def conv_gflops(config: ExportConfig) -> dict[str, float]:
    """Hand count of the refiner's convolutions: 2 x MACs on the sampled 8x8 patches."""
    k = config.patches
    macs = k * (36 * 42 * 24 * 9 + 16 * 24 * 16 * 9 + 36 * 22 * 12 * 9 + 16 * 12 * 4 * 9)
    return {"refiner": 2 * macs / 1e9}


def test_onnx_info(golden_onnx):
    info = artifact_info(golden_onnx)
    assert info.gflops_by_block["refiner"] == pytest.approx(conv_gflops(GOLDEN_CONFIG)["refiner"], rel=1e-9)
    assert set(info.gflops_by_block) == {"backbone", "aspp", "decoder", "refiner"}
    assert info.nodes < info.nodes_before_simplify
    assert 4.9e6 < info.graph_parameters < 5.1e6
    assert info.ops["Conv"] == 65 and "NonZero" not in info.ops
    assert info.metadata["color_order"] == "BGR"


def test_ir_info_counts_the_same_flops(golden_onnx, golden_irs):
    onnx_flops = artifact_info(golden_onnx).gflops
    for xml in golden_irs.values():
        info = artifact_info(xml)
        assert info.gflops == pytest.approx(onnx_flops, rel=1e-6)
        assert len(info.files) == 2 and info.metadata["resolution"] == "192x320"


@pytest.mark.slow
def test_checkpoint_info_at_720p(weights):
    info = checkpoint_info(ExportConfig(), weights)
    assert info.trainable_parameters == 5_006_839
    # The base network alone is 6.69 GFLOPs, the published figure's bulk; the refiner adds
    # 4.74 on 5,000 patches (see the info issue's note).
    base = sum(v for k, v in info.gflops_by_block.items() if k != "refiner")
    assert base == pytest.approx(6.6903, abs=1e-3)
    assert info.gflops_by_block["refiner"] == pytest.approx(conv_gflops(ExportConfig())["refiner"], rel=1e-9)


def test_info_cli(golden_onnx, tmp_path):
    result = runner.invoke(app, ["info", str(golden_onnx), "--json", str(tmp_path / "i.json")])
    assert result.exit_code == 0, result.output
    assert "GFLOPs" in result.stdout and "Conv 65" in result.stdout
    assert json.loads((tmp_path / "i.json").read_text())["format"] == "onnx"
    missing = runner.invoke(app, ["info", str(tmp_path / "none.onnx")])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


@pytest.mark.slow
def test_bench_small(weights):
    report = bench(ExportConfig(height=128, width=192, sample_pixels=8_000), weights, runs=1, profile=True)
    names = [(r.name, r.inference) for r in report.rows]
    assert names[:2] == [("eager PyTorch", "f32"), ("ONNX", "f32")]
    assert {name for name, _ in names} == {
        "eager PyTorch",
        "ONNX",
        "IR FP32",
        "IR FP16",
        "IR INT8",
        "original recipe IR FP32",
    }
    assert [r.inference for r in report.rows if r.name == "IR INT8"] == ["f32", names[-1][1]]
    assert all(r.median_ms > 0 and r.throughput_fps > 0 for r in report.rows)
    assert all(len(r.profile) == 10 for r in report.rows if r.runtime == "openvino")


@pytest.mark.slow
def test_bench_cli(tmp_path):
    args = ["bench", "--height", "128", "--width", "192", "--sample-pixels", "8000", "--runs", "1"]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert "IR FP32 (f32) vs original recipe IR FP32 (f32): latency x" in result.stdout
    assert "IR INT8 (f32) vs IR FP32 (f32): latency x" in result.stdout
    assert "IR INT8 (f32) vs original recipe IR FP32 (f32): latency x" in result.stdout
    assert len(json.loads((tmp_path / "b.json").read_text())["rows"]) == 9
    assert runner.invoke(app, ["bench", "--runs", "0"]).exit_code == 2


def test_card(golden_onnx, golden_irs, tmp_path):
    target = tmp_path / "card.md"
    result = runner.invoke(
        app, ["card", str(golden_onnx), str(golden_irs["FP16"]), "--cases", "1", "--output", str(target)]
    )
    assert result.exit_code == 0, result.output
    text = target.read_text()
    info = artifact_info(golden_onnx)
    assert f"| GFlops | {info.gflops:.4f} |" in text
    assert f"| MParams | {info.graph_parameters / 1e6:.3f} |" in text
    assert "| Metric | Original model | Converted model |" in text and "| alpha MAD |" in text
    assert "Expected color order: `BGR`" in text and "Made from synthetic weights" in text
    assert "shape: `1, 3, 192, 320`" in text
    assert "Precisions (changes against the original model on the same cases):" in text
    assert "| ms per frame (verify, f32 arithmetic) |" in text
    assert text.count("| PASSED |") == 3


def test_card_refuses_artifacts_of_different_models(golden_onnx, weights, tmp_path):
    from exporter.export.onnx import export_onnx

    other = export_onnx(ExportConfig(height=128, width=192, sample_pixels=4000), weights, tmp_path / "s.onnx").path
    target = tmp_path / "card.md"
    result = runner.invoke(app, ["card", str(golden_onnx), str(other), "--cases", "1", "--output", str(target)])
    assert result.exit_code == 2
    assert "describes one model at one resolution; these artifacts are mobilenetv2 128x192, mobilenetv2 192x320" in (
        result.stderr
    )
    assert not target.exists()


def test_outputs_are_checked_before_the_work(golden_onnx, tmp_path):
    (tmp_path / "file").write_text("x")
    for argv in (
        ["bench", "--height", "128", "--width", "192", "--json", str(tmp_path / "file" / "b.json")],
        ["verify", str(golden_onnx), "--json", str(tmp_path / "file" / "v.json")],
        ["card", str(golden_onnx), "--output", str(tmp_path / "file" / "card.md")],
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and "is not a folder" in result.stderr, (argv, result.output)
        assert "exporting" not in result.stderr and "reference" not in result.stderr
