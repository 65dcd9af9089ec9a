"""``--model-type base``: MattingBase exported (outputs pha, fgr, err, hid at the input's
resolution), checked against the original implementation's goldens, and followed by
verify, info and matte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.artifact import artifact_metadata
from exporter.config import ExportConfig
from exporter.errors import ArtifactError
from exporter.runtime import runners_for
from exporter.verify.compare import BARS, compare_output
from helpers import GOLDEN_CONFIG

BASE_CONFIG = GOLDEN_CONFIG.replace(model_type="base")


@pytest.fixture(scope="module")
def base_onnx(tmp_path_factory, weights) -> Path:
    from exporter.export.onnx import export_onnx

    return export_onnx(BASE_CONFIG, weights, tmp_path_factory.mktemp("base") / "base.onnx").path


def test_base_meets_the_fp32_bars_against_the_originals_goldens(base_onnx, golden, golden_feeds):
    for runner in runners_for(base_onnx):
        got = runner.infer(golden_feeds)
        assert list(got) == ["pha", "fgr", "err", "hid"]
        for name in ("pha", "fgr", "err"):
            result = compare_output(name, golden[f"base_{name}"], got[name], BARS["FP32"])
            assert result.passed, (runner.name, result)
        hid_mean = got["hid"].mean(axis=(2, 3))
        assert np.abs(hid_mean - golden["base_hid_mean"]).max() <= 1e-4, runner.name


def test_base_artifact_says_what_it_is(base_onnx):
    metadata = artifact_metadata(base_onnx)
    assert metadata["model_type"] == "base" and metadata["outputs"] == "pha,fgr,err,hid"
    assert metadata["model_name"] == "background-matting-mobilenetv2-base"
    assert ExportConfig.from_metadata(metadata) == BASE_CONFIG
    model = onnx.load(str(base_onnx))
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes == {"pha": [1, 1, 192, 320], "fgr": [1, 3, 192, 320], "err": [1, 1, 192, 320],
                      "hid": [1, 32, 192, 320]}  # fmt: skip


def test_base_metadata_on_a_refine_graph_is_caught(golden_onnx, tmp_path):
    model = onnx.load(str(golden_onnx))
    for prop in model.metadata_props:
        if prop.key == "model_type":
            prop.value = "base"
    onnx.save(model, str(tmp_path / "lying.onnx"))
    with pytest.raises(ArtifactError, match=r"a matting model has \['src', 'bgr'\] and \['pha', 'fgr', 'err'"):
        artifact_metadata(tmp_path / "lying.onnx")


@pytest.mark.slow
def test_verify_and_info_follow_the_base_model(base_onnx, weights):
    from exporter.info import artifact_info
    from exporter.verify import verify

    report = verify([base_onnx], weights, cases=1)
    assert report.passed
    assert {name for a in report.artifacts for name in a.outputs} == {"pha", "fgr", "err", "hid"}
    assert artifact_info(base_onnx).metadata["model_type"] == "base"


@pytest.mark.slow
def test_matte_runs_a_base_model(base_onnx, golden, tmp_path):
    from PIL import Image

    from exporter.matte import matte, parse_background, parse_source

    Image.fromarray(golden["src_rgb_u8"]).save(tmp_path / "src.png")
    Image.fromarray(golden["bgr_rgb_u8"]).save(tmp_path / "bgr.png")
    matte(base_onnx, parse_source(str(tmp_path / "src.png")), parse_background(str(tmp_path / "bgr.png")),
          out=tmp_path / "out", inference_precision="f32")  # fmt: skip
    alpha = np.asarray(Image.open(next((tmp_path / "out").glob("*alpha*.png"))))
    assert np.abs(alpha / 255.0 - golden["base_pha"][0, 0]).max() <= 1 / 255 + 1e-6


def test_an_unknown_model_type_is_one_error(cli, one_error, tmp_path):
    result = cli("onnx", "--model-type", "mattingbase", "--output", tmp_path / "m.onnx")
    one_error(result, "mattingbase")
    assert not (tmp_path / "m.onnx").exists()


def test_the_base_model_has_its_own_default_path():
    from exporter.config import default_artifact_path

    assert default_artifact_path(BASE_CONFIG.model_name, "FP32") == Path(
        "models/FP32/background-matting-mobilenetv2-base.xml"
    )


# --- --extra-outputs err,ref ---------------------------------------------------------------

EXTRA_CONFIG = GOLDEN_CONFIG.replace(extra_outputs=("ref", "err"))


@pytest.fixture(scope="module")
def extra_onnx(tmp_path_factory, weights) -> Path:
    from exporter.export.onnx import export_onnx

    return export_onnx(EXTRA_CONFIG, weights, tmp_path_factory.mktemp("extra") / "extra.onnx").path


def test_extra_outputs_meet_the_fp32_bars_against_the_originals_goldens(extra_onnx, golden, golden_feeds):
    for runner in runners_for(extra_onnx):
        got = runner.infer(golden_feeds)
        assert list(got) == ["pha", "fgr", "err_sm", "ref_sm"]
        expected = {"pha": "sampling_pha", "fgr": "sampling_fgr", "err_sm": "coarse_err", "ref_sm": "sampling_ref"}
        for name, key in expected.items():
            result = compare_output(name, golden[key], got[name], BARS["FP32"])
            assert result.passed, (runner.name, result)


def test_extra_outputs_are_recorded_and_the_default_is_unchanged(extra_onnx, golden_onnx):
    metadata = artifact_metadata(extra_onnx)
    assert metadata["extra_outputs"] == "err,ref" and metadata["outputs"] == "pha,fgr,err_sm,ref_sm"
    assert ExportConfig.from_metadata(metadata) == EXTRA_CONFIG
    assert [o.name for o in onnx.load(str(golden_onnx)).graph.output] == ["pha", "fgr"]
    assert artifact_metadata(golden_onnx)["outputs"] == "pha,fgr"


@pytest.mark.parametrize(
    ("value", "message"),
    [("err,bogus", "extra outputs err,bogus: each at most once, of err, ref"),
     ("err,err", "extra outputs err,err: each at most once"),
     ],
)  # fmt: skip
def test_bad_extra_outputs_are_one_error(value, message, cli, one_error, tmp_path):
    result = cli("onnx", "--extra-outputs", value, "--output", tmp_path / "m.onnx")
    one_error(result, message)
    assert not (tmp_path / "m.onnx").exists()


def test_extra_outputs_with_the_base_model_are_one_error(cli, one_error, tmp_path):
    result = cli("onnx", "--model-type", "base", "--extra-outputs", "err", "--output", tmp_path / "m.onnx")
    one_error(result, "extra outputs apply to the refine model; the base model has err already")
    assert not (tmp_path / "m.onnx").exists()


def test_extra_output_metadata_on_a_plain_graph_is_caught(golden_onnx, tmp_path):
    model = onnx.load(str(golden_onnx))
    for prop in model.metadata_props:
        if prop.key == "extra_outputs":
            prop.value = "err"
    onnx.save(model, str(tmp_path / "lying.onnx"))
    with pytest.raises(ArtifactError, match=r"and \['pha', 'fgr', 'err_sm'\]"):
        artifact_metadata(tmp_path / "lying.onnx")


def test_matte_writes_err_and_ref_when_asked(extra_onnx, golden, tmp_path, cli):
    from PIL import Image

    Image.fromarray(golden["src_rgb_u8"]).save(tmp_path / "src.png")
    Image.fromarray(golden["bgr_rgb_u8"]).save(tmp_path / "bgr.png")
    result = cli("matte", "--model", extra_onnx, "--src", tmp_path / "src.png", "--bgr", tmp_path / "bgr.png",
                 "--out", tmp_path / "out", "--outputs", "alpha,err,ref", "--inference-precision", "f32")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["src_alpha.png", "src_err.png", "src_ref.png"]
    ref = np.asarray(Image.open(tmp_path / "out" / "src_ref.png"))
    expected = np.repeat(np.repeat(golden["sampling_ref"][0, 0], 4, axis=0), 4, axis=1) * 255
    assert ref.shape == (192, 320) and np.array_equal(ref, expected)
    err = np.asarray(Image.open(tmp_path / "out" / "src_err.png")) / 255.0
    assert err.shape == (192, 320) and abs(err.mean() - golden["coarse_err"].mean()) < 2e-2


def test_matte_refuses_err_from_a_model_without_it(golden_onnx, golden, tmp_path, cli, one_error):
    from PIL import Image

    Image.fromarray(golden["src_rgb_u8"]).save(tmp_path / "src.png")
    result = cli("matte", "--model", golden_onnx, "--src", tmp_path / "src.png", "--bgr", tmp_path / "src.png",
                 "--out", tmp_path / "out", "--outputs", "err")  # fmt: skip
    one_error(result, "has no err_sm output; export it with --extra-outputs err")
    assert not (tmp_path / "out").exists()


# --- --dynamic -----------------------------------------------------------------------------

DYNAMIC_CONFIG = GOLDEN_CONFIG.replace(dynamic=True)


@pytest.fixture(scope="module")
def dynamic_onnx(tmp_path_factory, weights) -> Path:
    from exporter.export.onnx import export_onnx

    return export_onnx(DYNAMIC_CONFIG, weights, tmp_path_factory.mktemp("dynamic") / "dynamic.onnx").path


def test_dynamic_meets_the_goldens_and_runs_at_another_size(dynamic_onnx, golden, golden_feeds, weights):
    import torch

    from exporter.checkpoint import build_model

    assert DYNAMIC_CONFIG.second_resolution() == (144, 240)
    for runner in runners_for(dynamic_onnx):
        got = runner.infer(golden_feeds)
        for name in ("pha", "fgr"):
            assert compare_output(name, golden[f"sampling_{name}"], got[name], BARS["FP32"]).passed, runner.name
    other = DYNAMIC_CONFIG.replace(height=144, width=240)
    rng = np.random.default_rng(0)
    feeds = {name: rng.uniform(0, 255, (1, 3, 144, 240)).astype(np.float32) for name in ("src", "bgr")}
    with torch.no_grad():
        eager = build_model(other, weights)(
            *(torch.from_numpy(feeds[n][:, ::-1] / 255).float() for n in ("src", "bgr"))
        )
    for runner in runners_for(dynamic_onnx, resolution=(144, 240)):  # OpenVINO reshapes, then compiles
        assert runner.input_shape == (1, 3, 144, 240)
        got = runner.infer(feeds)
        for name, expected in zip(("pha", "fgr"), eager[:2], strict=False):
            assert compare_output(name, expected.numpy(), got[name], BARS["FP32"]).passed, runner.name


def test_dynamic_graph_is_free_in_height_and_width_only(dynamic_onnx, golden_onnx):
    from exporter.export.onnx import check_graph

    model = onnx.load(str(dynamic_onnx))
    dims = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]}  # fmt: skip
    assert dims == {"src": [1, 3, "height", "width"], "bgr": [1, 3, "height", "width"],
                    "pha": [1, 1, "height", "width"], "fgr": [1, 3, "height", "width"]}  # fmt: skip
    assert check_graph(model, dynamic=True, outputs=("pha", "fgr")) == []
    metadata = artifact_metadata(dynamic_onnx)
    assert metadata["dynamic"] == "true" and metadata["model_name"] == "background-matting-mobilenetv2-dynamic"
    assert artifact_metadata(golden_onnx)["dynamic"] == "false"


@pytest.mark.slow
def test_a_dynamic_graph_with_nonzero_is_still_refused(tmp_path, weights):
    from originals import original_onnx

    from exporter.export.onnx import check_graph

    model = onnx.load(str(original_onnx(weights, tmp_path / "o.onnx", outputs=2)))
    problems = check_graph(model, dynamic=True)
    assert any("banned ops" in p and "NonZero" in p and "RoiAlign" in p for p in problems)


def test_dynamic_metadata_on_a_static_graph_is_caught(golden_onnx, tmp_path):
    from exporter.runtime import load_runner

    model = onnx.load(str(golden_onnx))
    for prop in model.metadata_props:
        if prop.key == "dynamic":
            prop.value = "true"
    onnx.save(model, str(tmp_path / "lying.onnx"))
    with pytest.raises(
        ArtifactError,
        match=r"takes inputs of shape \[1, 3, 192, 320\] \(src\), but its metadata says \[1, 3, 144, 240\]",
    ):
        load_runner(tmp_path / "lying.onnx", "onnxruntime", resolution=(144, 240))


@pytest.mark.parametrize("source", ["--onnx", "--dynamic"])
def test_int8_of_a_dynamic_export_is_one_error(source, dynamic_onnx, tmp_path, cli, one_error):
    given = ["--onnx", dynamic_onnx] if source == "--onnx" else ["--dynamic"]
    result = cli("ir", "--precision", "INT8", *given, "--output", tmp_path / "m.xml")
    one_error(result, "INT8 is made from a static export only")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_verify_checks_a_dynamic_ir_at_two_resolutions(dynamic_onnx, weights, tmp_path):
    from exporter.export.openvino import export_ir
    from exporter.verify import verify

    xml = export_ir(dynamic_onnx, tmp_path / "FP32" / "dynamic.xml", "FP32").xml
    report = verify([dynamic_onnx, xml], weights, cases=1, inference_precision="f32")
    assert report.passed
    sizes = {(a.path.suffix, a.config.height, a.config.width) for a in report.artifacts}
    assert sizes == {(s, *hw) for s in (".onnx", ".xml") for hw in ((192, 320), (144, 240))}
    assert all(" at " in a.name for a in report.artifacts)


@pytest.mark.slow
def test_dynamic_meets_the_fp32_bars_at_720p_and_540p_from_one_file(weights, tmp_path):
    from exporter.config import PRESETS
    from exporter.export.onnx import export_onnx
    from exporter.verify import verify

    dynamic = export_onnx(PRESETS["720p"].replace(dynamic=True), weights, tmp_path / "d.onnx").path
    report = verify([dynamic], weights, cases=1, inference_precision="f32")
    assert report.passed
    assert {(a.config.height, a.config.width) for a in report.artifacts} == {(720, 1280), (540, 960)}


def test_info_counts_a_dynamic_model_at_its_stated_size(dynamic_onnx, golden_onnx):
    from exporter.info import artifact_info

    dynamic, static = artifact_info(dynamic_onnx), artifact_info(golden_onnx)
    for block in ("backbone", "aspp", "decoder"):
        assert dynamic.gflops_by_block[block] == pytest.approx(static.gflops_by_block[block], rel=1e-6)
    # A dynamic export is the plain graph (the deployed one is laid out for one size): its
    # refiner convolves every sampled patch's 8x8 window, 2 x MACs.
    k = DYNAMIC_CONFIG.patches
    macs = k * (36 * 42 * 24 * 9 + 16 * 24 * 16 * 9 + 36 * 22 * 12 * 9 + 16 * 12 * 4 * 9)
    assert dynamic.gflops_by_block["refiner"] == pytest.approx(2 * macs / 1e9, rel=1e-9)
    assert dynamic.ops.get("Shape", 0) > 0 and "Shape" not in static.ops  # the shape arithmetic


@pytest.mark.slow
def test_the_card_follows_base_and_dynamic_models(base_onnx, dynamic_onnx, weights, tmp_path):
    from exporter.card import write_card

    write_card([base_onnx], tmp_path / "base.md", weights, cases=1)
    text = (tmp_path / "base.md").read_text()
    assert "# background-matting-mobilenetv2-base" in text and "name: `hid`, shape: `1, 32, 192, 320`" in text
    assert "MattingBase: no refiner" in text
    write_card([dynamic_onnx], tmp_path / "dynamic.md", weights, cases=1)  # verified at two sizes, shown at one
    assert "Height and width are free" in (tmp_path / "dynamic.md").read_text()


@pytest.mark.slow
def test_bench_follows_the_base_model(weights, bench_without_pauses):
    from exporter.bench import bench, format_bench

    report = bench(GOLDEN_CONFIG.replace(model_type="base", height=128, width=192), weights, runs=1)
    names = {r.name for r in report.rows}
    assert {"eager PyTorch", "ONNX", "IR FP32", "IR INT8"} <= names
    assert not any("original" in name for name in names) and report.ratios() == []  # the recipe has a refiner
    assert "background-matting-mobilenetv2-base at 128x192, no refiner" in format_bench(report)


@pytest.mark.slow
def test_reduced_precision_reports_diagnostic_outputs_without_judging_them(base_onnx, weights, tmp_path):
    from exporter.export.openvino import export_ir
    from exporter.verify import verify

    xml = export_ir(base_onnx, tmp_path / "FP16" / "base.xml", "FP16").xml
    report = verify([xml], weights, cases=1, inference_precision="f32")
    assert report.passed
    (run,) = report.artifacts
    assert run.outputs["hid"].checks == [] and run.outputs["hid"].mean_abs > 0  # reported, not judged
    assert run.outputs["pha"].checks and run.outputs["err"].checks  # judged by the FP16 bars
