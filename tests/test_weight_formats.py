"""The original's other published forms of the weights as ``--checkpoint``: TorchScript
archives (fp32, fp16) and ONNX exports (six outputs or the fork's two), built here small from
our model (``originals.py``), and every file that must be refused."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from originals import original_onnx, torchscript_archive

from exporter.checkpoint import build_model, resolve_weights
from exporter.errors import CheckpointError
from exporter.files import sha256_of
from helpers import BACKBONES, GOLDEN_CONFIG


@pytest.fixture(scope="module")
def originals(tmp_path_factory, weights) -> dict[str, Path]:
    """The MobileNetV2 synthetic weights in each published form."""
    root = tmp_path_factory.mktemp("originals")
    return {
        "torchscript_fp32": torchscript_archive(weights, root / "torchscript_mobilenetv2_fp32.pth"),
        "torchscript_fp16": torchscript_archive(weights, root / "torchscript_mobilenetv2_fp16.pth", half=True),
        "onnx_six": original_onnx(weights, root / "onnx_mobilenetv2_hd.onnx", outputs=6),
        "onnx_two": original_onnx(weights, root / "bgm_mobilenetv2.onnx", outputs=2, opset=11, dynamic=False),
    }


def outputs_of(weights, config=GOLDEN_CONFIG) -> list[torch.Tensor]:
    torch.manual_seed(1)
    src, bgr = torch.rand(1, 3, config.height, config.width), torch.rand(1, 3, config.height, config.width)
    with torch.no_grad():
        return list(build_model(config, weights)(src, bgr))


@pytest.mark.parametrize("form", ["torchscript_fp32", "onnx_six", "onnx_two"])
def test_every_form_gives_the_same_model(form, originals, weights):
    resolved = resolve_weights(originals[form])
    kind = form.split("_")[0]
    assert resolved.kind == kind and resolved.backbone == "mobilenetv2" and not resolved.synthetic
    assert resolved.label.startswith(f"sha256:{sha256_of(originals[form])} ({kind}")
    for ours, theirs in zip(outputs_of(resolved), outputs_of(weights), strict=True):
        assert float((ours - theirs).abs().max()) < 1e-5


def test_torchscript_fp32_holds_exactly_the_state_dict(originals, weights):
    resolved = resolve_weights(originals["torchscript_fp32"])
    assert set(resolved.state_dict) == set(weights.state_dict)
    assert all(torch.equal(resolved.state_dict[k], weights.state_dict[k]) for k in weights.state_dict)


def test_torchscript_fp16_is_cast_and_labelled(originals, weights):
    resolved = resolve_weights(originals["torchscript_fp16"])
    assert "float16 weights cast to float32" in resolved.label
    assert all(v.dtype != torch.float16 for v in resolved.state_dict.values())
    for ours, theirs in zip(outputs_of(resolved)[:2], outputs_of(weights)[:2], strict=True):
        assert float((ours - theirs).abs().mean()) < 3e-3  # the FP16 bar's mean |d|


@pytest.mark.slow
def test_torchscript_settings_are_the_exports_defaults(originals, tmp_path, weights, cli):
    path = torchscript_archive(
        weights, tmp_path / "t.pth", backbone_scale=0.125, refine_mode="thresholding", refine_threshold=0.2
    )
    resolved = resolve_weights(path)
    assert resolved.settings == {
        "backbone_scale": 0.125, "refine_mode": "thresholding", "sample_pixels": 256, "threshold": 0.2
    }  # fmt: skip
    assert "used as this export's defaults" in resolved.warning
    result = cli("onnx", "--checkpoint", path, "--height", 128, "--width", 128, "--threshold", 0.3,
                 "--output", tmp_path / "m.onnx", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert (metadata["backbone_scale"], metadata["refine_mode"], metadata["threshold"]) == (
        "0.125",
        "thresholding",
        "0.3",
    )
    assert metadata["checkpoint_format"] == "torchscript" and metadata["checkpoint"] == resolved.label
    assert "states backbone scale 0.125" in result.stderr


@pytest.mark.parametrize("form", ["onnx_six", "onnx_two"])
def test_onnx_settings_are_read_from_the_graph(form, originals):
    resolved = resolve_weights(originals[form])
    assert resolved.settings == {"backbone_scale": 0.25, "refine_mode": "sampling", "sample_pixels": 16_000}
    assert "batch norms folded" in resolved.label


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_backbone_is_detected_from_a_torchscript_archive(backbone, recipe_weights, tmp_path):
    path = torchscript_archive(recipe_weights(backbone), tmp_path / f"torchscript_{backbone}_fp32.pth")
    assert resolve_weights(path).backbone == backbone


@pytest.mark.slow
@pytest.mark.parametrize("form", ["torchscript_fp32", "onnx_six"])
def test_cli_exports_from_each_form_and_names_it(form, originals, tmp_path, cli):
    out = tmp_path / "m.onnx"
    result = cli("onnx", "--checkpoint", originals[form], "--height", 64, "--width", 64, "--sample-pixels", 256,
                 "--output", out, "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    metadata = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert metadata["checkpoint_format"] == form.split("_")[0]
    assert metadata["checkpoint"].startswith(f"sha256:{sha256_of(originals[form])}")


# --- refusals ------------------------------------------------------------------------------


def code_in_data_pkl(tmp_path: Path) -> Path:
    """A TorchScript-looking archive whose data.pkl would run a shell command."""

    class Evil:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/code/__torch__.py", "")
        archive.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
    return path


def another_torchscript(tmp_path: Path) -> Path:
    path = tmp_path / "linear.pth"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


def another_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "other.onnx"
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))
    torch.onnx.export(conv.eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, input_names=["x"])
    return path


def two_inputs_other_net(tmp_path: Path) -> Path:
    """Two inputs like ours, the right number of convolutions, one of the wrong shape."""
    path = tmp_path / "close.onnx"
    model = onnx.load(str(tmp_path.parent / "originals0" / "onnx_mobilenetv2_hd.onnx"))
    first = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == first.input[1])
    array = onnx.numpy_helper.to_array(weight)[:, :, :1, :1].copy()  # a 1x1 stem instead of 3x3
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(path))
    return path


def prevent_oversampling_off(tmp_path: Path, weights) -> Path:
    return torchscript_archive(weights, tmp_path / "no-prevent.pth", prevent_oversampling=False)


def truncated_torchscript(tmp_path: Path, originals) -> Path:
    path = tmp_path / "cut.pth"
    path.write_bytes(originals["torchscript_fp32"].read_bytes()[:100_000])
    return path


REFUSED = {
    "code-in-data-pkl": (code_in_data_pkl, "was refused: its TorchScript data holds more than modules and tensors"),
    "torchscript-of-another-network": (another_torchscript, "is not a BackgroundMattingV2 MobileNetV2 TorchScript"),
    "onnx-of-another-network": (another_onnx, "is an ONNX model with inputs ['x'], not BackgroundMattingV2's"),
    "onnx-with-a-wrong-conv": (two_inputs_other_net, "does not match the BackgroundMattingV2 MobileNetV2 at backbone"),
    "prevent-oversampling-off": (prevent_oversampling_off, "sets refine_prevent_oversampling = False"),
    "truncated-torchscript": (truncated_torchscript, "is truncated or corrupt"),
}


def make_refused(kind, tmp_path, originals, weights) -> tuple[Path, str]:
    build, fragment = REFUSED[kind]
    params = build.__code__.co_varnames[: build.__code__.co_argcount]
    extra = {"weights": weights, "originals": originals}
    return build(tmp_path, *(extra[p] for p in params[1:])), fragment


@pytest.mark.parametrize("kind", REFUSED)
def test_a_file_of_another_kind_is_refused_with_one_line(kind, tmp_path, originals, weights, cli, one_error):
    path, fragment = make_refused(kind, tmp_path, originals, weights)
    with pytest.raises(CheckpointError, match=None) as info:
        resolve_weights(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    result = cli("onnx", "--checkpoint", path, "--output", tmp_path / "m.onnx")
    one_error(result, fragment)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "pwned").exists()


def test_an_artifact_of_this_project_is_pointed_to_ir(golden_onnx, tmp_path, cli, one_error):
    result = cli("onnx", "--checkpoint", golden_onnx, "--output", tmp_path / "m.onnx")
    one_error(
        result, f"is an artifact of bgm-export, not a checkpoint: convert it with `bgm-export ir --onnx {golden_onnx}`"
    )
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("form", ["torchscript_fp32", "onnx_six"])
def test_the_wrong_backbone_option_is_refused(form, originals, tmp_path, cli, one_error):
    result = cli("onnx", "--checkpoint", originals[form], "--backbone", "resnet50", "--output", tmp_path / "m.onnx")
    one_error(result, "holds the MobileNetV2 model, but --backbone resnet50 was given")
    assert not (tmp_path / "m.onnx").exists()


def test_the_builders_make_what_the_original_publishes(originals):
    six, two = (onnx.load(str(originals[k])) for k in ("onnx_six", "onnx_two"))
    assert [o.name for o in six.graph.output] == ["pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"]
    assert [o.name for o in two.graph.output] == ["pha", "fgr"]
    assert six.opset_import[0].version == 12 and two.opset_import[0].version == 11
    assert {"RoiAlign", "ScatterElements", "NonZero"} <= {n.op_type for n in six.graph.node}
    assert six.graph.input[0].type.tensor_type.shape.dim[2].dim_param  # dynamic height
    assert np.all([d.HasField("dim_value") for d in two.graph.input[0].type.tensor_type.shape.dim])


# --- 720p parity (the bar): slow ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("form", ["torchscript_fp32", "onnx_six", "onnx_two"])
def test_each_form_exports_to_the_fp32_bars_at_720p(form, weights, tmp_path):
    from exporter.config import PRESETS
    from exporter.export.onnx import export_onnx
    from exporter.verify import verify

    build = {
        "torchscript_fp32": lambda p: torchscript_archive(weights, p, refine_sample_pixels=80_000),
        "onnx_six": lambda p: original_onnx(weights, p, size=(288, 512), sample_pixels=80_000),
        "onnx_two": lambda p: original_onnx(weights, p, outputs=2, opset=11, dynamic=False, size=(720, 1280),
                                            sample_pixels=80_000),
    }[form]  # fmt: skip
    source = resolve_weights(build(tmp_path / f"{form}.{'onnx' if 'onnx' in form else 'pth'}"))
    config = PRESETS["720p"].replace(**source.settings)
    assert config == PRESETS["720p"]  # the file states the HD settings it was made with
    artifact = export_onnx(config, source, tmp_path / "m.onnx").path
    report = verify([artifact], weights, cases=1, inference_precision="f32")  # the eager model of the original
    assert report.passed, [(a.name, a.outputs) for a in report.artifacts]


@pytest.mark.slow
def test_the_fp16_torchscript_meets_the_fp16_bars(originals, weights, tmp_path):
    from exporter.export.openvino import export_ir_from_weights
    from exporter.verify import verify

    source = resolve_weights(originals["torchscript_fp16"])
    xml = export_ir_from_weights(GOLDEN_CONFIG, source, tmp_path / "FP16" / "m.xml", "FP16").xml
    report = verify([xml], weights, cases=1, inference_precision="f32")
    assert report.passed and {a.precision for a in report.artifacts} == {"FP16"}


def test_the_built_original_onnx_computes_the_originals_goldens(originals, golden, golden_rgb):
    import onnxruntime as ort

    from exporter.verify.compare import BARS, compare_output

    session = ort.InferenceSession(str(originals["onnx_six"]), providers=["CPUExecutionProvider"])
    pha, fgr, _, _, err_sm, ref_sm = session.run(None, {"src": golden_rgb[0].numpy(), "bgr": golden_rgb[1].numpy()})
    for name, got, key in (("pha", pha, "sampling_pha"), ("fgr", fgr, "sampling_fgr"), ("err_sm", err_sm, "coarse_err"),
                           ("ref_sm", ref_sm, "sampling_ref")):  # fmt: skip
        assert compare_output(name, golden[key], got, BARS["FP32"]).passed, name
