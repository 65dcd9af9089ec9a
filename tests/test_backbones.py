"""ResNet-50 and ResNet-101 beside MobileNetV2: every command, chosen from the checkpoint.

The golden and manifest tests of all three backbones are in ``test_model.py``; here the
ResNet models go through export, conversion, verification and the CLI as MobileNetV2 does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporter.artifact import read_ir_metadata
from exporter.checkpoint import build_model
from exporter.config import ExportConfig
from exporter.export.onnx import BANNED_OPS, BGRInputs, check_graph, export_module, export_onnx
from exporter.export.openvino import export_ir
from exporter.images import to_model_input
from exporter.info import artifact_info
from exporter.runtime import load_runner
from exporter.tolerances import FP32_ATOL
from exporter.verify import verify

RESNETS = ("resnet50", "resnet101")
SMALL = ExportConfig(backbone="resnet50", height=128, width=192, sample_pixels=4_000)

# ResNet exports take seconds each (ResNet-101's ONNX export and simplification, tens): every
# test that makes one is slow. The quick loop keeps the CLI's refusals, which make none.


@pytest.fixture(scope="module", params=RESNETS)
def resnet_artifacts(request, tmp_path_factory, golden_config, recipe_weights) -> tuple[str, Path, dict[str, Path]]:
    """ONNX, IR FP32 and IR FP16 of one ResNet at the golden's setting."""
    backbone = request.param
    root = tmp_path_factory.mktemp(backbone)
    onnx_path = export_onnx(golden_config(backbone), recipe_weights(backbone), root / f"{backbone}.onnx").path
    irs = {p: export_ir(onnx_path, root / p / f"{backbone}.xml", p).xml for p in ("FP32", "FP16")}
    return backbone, onnx_path, irs


@pytest.mark.slow
@pytest.mark.parametrize("artifact, runtime", [("onnx", "onnxruntime"), ("onnx", "openvino"), ("FP32", "openvino")])
def test_resnet_export_reproduces_original_outputs(resnet_artifacts, artifact, runtime, load_golden):
    """BGR 0..255 into each file gives what the original ResNet model gave on RGB/255."""
    backbone, onnx_path, irs = resnet_artifacts
    golden = load_golden(backbone)
    inputs = {"src": to_model_input(golden["src_rgb_u8"]), "bgr": to_model_input(golden["bgr_rgb_u8"])}
    outputs = load_runner(onnx_path if artifact == "onnx" else irs[artifact], runtime).infer(inputs)
    for name in ("pha", "fgr"):
        np.testing.assert_allclose(outputs[name], golden[f"sampling_{name}"], rtol=0, atol=FP32_ATOL, err_msg=name)


@pytest.mark.slow
def test_resnet_graph_is_static_and_named(resnet_artifacts):
    backbone, onnx_path, irs = resnet_artifacts
    model = onnx.load(str(onnx_path))
    assert check_graph(model) == []
    assert not {n.op_type for n in model.graph.node} & BANNED_OPS
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["backbone"] == backbone and metadata["model_name"] == f"background-matting-{backbone}"
    assert metadata["checkpoint"] == f"synthetic bgmv2-synthetic-v1 seed 0 {backbone}"
    for precision, xml in irs.items():
        ir_metadata = read_ir_metadata(xml)
        assert (ir_metadata["backbone"], ir_metadata["precision"]) == (backbone, precision)


@pytest.mark.slow
def test_resnet_artifacts_verify(resnet_artifacts):
    """Without a checkpoint, verify builds each artifact's own backbone from the recipe."""
    backbone, onnx_path, irs = resnet_artifacts
    report = verify([onnx_path, irs["FP32"], irs["FP16"]], cases=1, inference_precision="f32")
    assert report.passed, [c for a in report.artifacts for o in a.outputs.values() for c in o.checks if not c.passed]
    assert report.checkpoint == f"synthetic bgmv2-synthetic-v1 seed 0 {backbone}" and report.synthetic
    assert len(report.artifacts) == 4


@pytest.mark.slow
def test_resnet_info_counts_blocks(resnet_artifacts, golden_config, recipe_weights):
    backbone, onnx_path, irs = resnet_artifacts
    info = artifact_info(onnx_path)
    assert set(info.gflops_by_block) == {"backbone", "aspp", "decoder", "refiner", "other"}
    # The trainable count less what batch-norm folding removes plus what the deployed graph
    # rearranged (conv1's row phases alone add 32,016): within 1% of the trainable count,
    # and pinned.
    trainable = sum(p.numel() for p in build_model(golden_config(backbone), recipe_weights(backbone)).parameters())
    assert abs(info.graph_parameters - trainable) < 0.01 * trainable
    assert info.graph_parameters == {"resnet50": 40_254_222, "resnet101": 59_220_238}[backbone]
    assert artifact_info(irs["FP32"]).gflops == pytest.approx(info.gflops, rel=1e-6)


@pytest.mark.slow
def test_verify_catches_a_broken_resnet_export(tmp_path, recipe_weights):
    """The 6-channel stem scaled by 1.01 (max |d| 5.6e-4 against the 1e-4 bar): the FP32 bars must see it."""
    weights = recipe_weights("resnet50")
    model = build_model(SMALL, weights)
    with torch.no_grad():
        model.backbone.conv1.weight.mul_(1.01)
    path = export_module(BGRInputs(model).eval(), SMALL, weights.label, tmp_path / "broken.onnx").path
    report = verify([path], weights, cases=1, inference_precision="f32")
    assert not report.passed
    assert all(not a.outputs["pha"].passed for a in report.artifacts)


@pytest.mark.slow
def test_resnet_export_is_deterministic(tmp_path, recipe_weights):
    weights = recipe_weights("resnet50")
    one = export_onnx(SMALL, weights, tmp_path / "one.onnx").path
    two = export_onnx(SMALL, weights, tmp_path / "two.onnx").path
    assert one.read_bytes() == two.read_bytes()


@pytest.fixture(scope="module")
def resnet50_checkpoint(tmp_path_factory, recipe_weights) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "my-weights.pth"
    torch.save(recipe_weights("resnet50").state_dict, path)
    return path


@pytest.mark.slow
def test_cli_reads_the_backbone_from_the_checkpoint(resnet50_checkpoint, tmp_path, monkeypatch, cli):
    """No --backbone: the file says ResNet-50; default names follow the model name."""
    monkeypatch.chdir(tmp_path)
    size = ["--height", "128", "--width", "192", "--sample-pixels", "4000"]
    result = cli("onnx", "--checkpoint", resnet50_checkpoint, *size, "--quiet")
    assert result.exit_code == 0, result.output
    onnx_path = Path("models/background-matting-resnet50.onnx")
    assert onnx_path.is_file() and "warning" not in result.output
    result = cli("ir", "--onnx", onnx_path, "--precision", "FP32", "--quiet")
    assert result.exit_code == 0, result.output
    xml = Path("models/FP32/background-matting-resnet50.xml")
    assert read_ir_metadata(xml)["backbone"] == "resnet50"
    result = cli("verify", "--checkpoint", resnet50_checkpoint, "--cases", "1", "--inference-precision", "f32")
    assert result.exit_code == 0, result.output
    assert "VERIFIED: all 3 artifact runs" in result.output


def test_cli_backbone_disagreeing_with_checkpoint_is_exit_two(resnet50_checkpoint, tmp_path, cli):
    out = tmp_path / "m.onnx"
    result = cli("onnx", "--checkpoint", resnet50_checkpoint, "--backbone", "mobilenetv2", "--output", out)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: checkpoint {resnet50_checkpoint} holds the ResNet-50 model, but --backbone mobilenetv2 was given "
        "(leave --backbone out: the checkpoint says which model it is)"
    )
    assert not out.exists()


@pytest.mark.slow
def test_cli_verify_refuses_weights_of_another_backbone(resnet_artifacts, cli, one_error):
    backbone, onnx_path, _ = resnet_artifacts
    result = cli("verify", onnx_path, "--backbone", "mobilenetv2", "--cases", "1")
    one_error(result, f"is the background-matting-{backbone} model, but checkpoint")


def test_cli_unknown_backbone_is_exit_two(tmp_path, cli, one_error):
    result = cli("onnx", "--backbone", "resnet18", "--output", tmp_path / "m.onnx")
    one_error(result, "error: Invalid value for '--backbone': Value error, 'resnet18' is not one of 'mobilenetv2',")
    assert list(tmp_path.iterdir()) == []
