"""IR conversion: FP32 and FP16 parity, metadata in rt_info, sizes, determinism, safe writes."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.artifact import read_ir_metadata
from exporter.errors import ArtifactError, ConfigError, OutputError
from exporter.export import openvino as ir_export
from exporter.export.openvino import export_ir
from exporter.runtime import load_runner
from exporter.tolerances import FP16_MEAN_ATOL, FP32_ATOL


def test_fp32_ir_reproduces_original(golden_irs, golden, golden_feeds):
    outputs = load_runner(golden_irs["FP32"], "openvino").infer(golden_feeds)
    np.testing.assert_allclose(outputs["pha"], golden["sampling_pha"], rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(outputs["fgr"], golden["sampling_fgr"], rtol=0, atol=FP32_ATOL)


def test_fp16_ir_is_close_on_average(golden_irs, golden, golden_feeds):
    outputs = load_runner(golden_irs["FP16"], "openvino").infer(golden_feeds)
    for name in ("pha", "fgr"):
        error = np.abs(outputs[name] - golden[f"sampling_{name}"]).mean()
        assert 0 < error <= FP16_MEAN_ATOL, f"{name}: mean |d| {error}"


def test_fp16_weights_are_half(golden_irs):
    fp32 = golden_irs["FP32"].with_suffix(".bin").stat().st_size
    fp16 = golden_irs["FP16"].with_suffix(".bin").stat().st_size
    assert 0.49 < fp16 / fp32 < 0.52


@pytest.mark.parametrize("precision", ["FP32", "FP16"])
def test_rt_info_metadata(precision, golden_irs):
    metadata = read_ir_metadata(golden_irs[precision])
    assert metadata["precision"] == precision
    assert metadata["color_order"] == "BGR" and metadata["input_scale"] == "255"
    assert metadata["resolution"] == "192x320" and metadata["sample_pixels"] == "16000"
    assert metadata["checkpoint"] == "synthetic bgmv2-synthetic-v1 seed 0"


@pytest.mark.parametrize("precision", ["FP32", pytest.param("FP16", marks=pytest.mark.slow)])
def test_deterministic_bytes(precision, golden_onnx, golden_irs, tmp_path):
    again = export_ir(golden_onnx, tmp_path / "again.xml", precision)
    assert again.xml.read_bytes() == golden_irs[precision].read_bytes()
    assert again.bin.read_bytes() == golden_irs[precision].with_suffix(".bin").read_bytes()


def test_default_path_is_omz_layout(golden_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(export_ir(golden_onnx, None, "FP16").xml) == "models/FP16/background-matting-mobilenetv2.xml"


def test_failed_save_leaves_existing_pair_untouched(golden_onnx, tmp_path, monkeypatch):
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_text("old xml")
    bin_.write_text("old bin")

    def broken_save(model, path, compress_to_fp16):
        with open(path, "w") as handle:
            handle.write("<half")
        raise RuntimeError("disk full")

    import openvino

    monkeypatch.setattr(openvino, "save_model", broken_save)
    # OpenVINO's own words, since the disk has room: this is no full disk.
    with pytest.raises(OutputError, match="cannot write .*m.xml: disk full"):
        ir_export.export_ir(golden_onnx, xml, "FP32")
    assert (xml.read_text(), bin_.read_text()) == ("old xml", "old bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_bad_arguments(golden_onnx, golden_irs, tmp_path):
    with pytest.raises(ConfigError, match="precision 'INT4'"):
        export_ir(golden_onnx, tmp_path / "m.xml", "INT4")
    with pytest.raises(ConfigError, match="must end in .xml"):
        export_ir(golden_onnx, tmp_path / "m.bin", "FP32")
    with pytest.raises(ArtifactError, match="does not exist"):
        export_ir(tmp_path / "missing.onnx", tmp_path / "m.xml", "FP32")
    with pytest.raises(ArtifactError, match="is an IR; give the .onnx it was converted from"):
        export_ir(golden_irs["FP32"], tmp_path / "m.xml", "FP16")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="not a readable ONNX model"):
        export_ir(tmp_path / "junk.onnx", tmp_path / "m.xml", "FP32")
