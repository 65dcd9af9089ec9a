"""ONNX export: parity in two runtimes, graph structure, metadata, determinism, safe writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporter.checkpoint import build_model
from exporter.config import ExportConfig
from exporter.data import synthetic_case
from exporter.errors import ExportError, OutputError
from exporter.export import onnx as onnx_export
from exporter.export.onnx import BANNED_OPS, check_graph, export_onnx
from exporter.images import to_model_input
from exporter.runtime import load_runner
from exporter.tolerances import FP32_ATOL
from helpers import GOLDEN_CONFIG

RUNTIMES = ("onnxruntime", "openvino")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_golden_inputs_reproduce_original_outputs(runtime, golden_onnx, golden, golden_feeds):
    """BGR 0..255 into the file gives what the original gave on RGB/255."""
    outputs = load_runner(golden_onnx, runtime).infer(golden_feeds)
    np.testing.assert_allclose(outputs["pha"], golden["sampling_pha"], rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(outputs["fgr"], golden["sampling_fgr"], rtol=0, atol=FP32_ATOL)


def eager(config: ExportConfig, weights, src_bgr255: np.ndarray, bgr_bgr255: np.ndarray):
    model = build_model(config, weights)

    def rgb(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x[:, ::-1])) / 255

    with torch.no_grad():
        pha, fgr, *_ = model(rgb(src_bgr255), rgb(bgr_bgr255))
    return {"pha": pha.numpy(), "fgr": fgr.numpy()}


@pytest.fixture(scope="module", params=["sampling", "thresholding", "full"])
def refine_mode_export(request, weights, tmp_path_factory) -> tuple[Path, dict, dict]:
    """One refine mode exported at 128x192, a frame, and the eager model's outputs on it."""
    config = ExportConfig(height=128, width=192, refine_mode=request.param, sample_pixels=8_000, threshold=0.2)
    path = export_onnx(config, weights, tmp_path_factory.mktemp(request.param) / "m.onnx").path
    case = synthetic_case(128, 192, seed=3)
    feeds = {"src": to_model_input(case.src), "bgr": to_model_input(case.bgr)}
    return path, feeds, eager(config, weights, feeds["src"], feeds["bgr"])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_each_refine_mode_matches_eager(refine_mode_export, runtime):
    path, feeds, expected = refine_mode_export
    got = load_runner(path, runtime).infer(feeds)
    for name in ("pha", "fgr"):
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=FP32_ATOL, err_msg=name)


def test_graph_is_static_and_deployable(golden_onnx):
    model = onnx.load(str(golden_onnx))
    assert check_graph(model) == []
    ops = {n.op_type for n in model.graph.node}
    assert not ops & BANNED_OPS
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)

    def shape(value):
        return [d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [(i.name, shape(i)) for i in inferred.graph.input] == [("src", [1, 3, 192, 320]), ("bgr", [1, 3, 192, 320])]
    assert [(o.name, shape(o)) for o in inferred.graph.output] == [("pha", [1, 1, 192, 320]), ("fgr", [1, 3, 192, 320])]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in inferred.graph.input)


def test_preprocessing_is_in_the_graph(golden_onnx, golden_feeds, golden):
    """Feeding RGB 0..1 (what the original wanted) must not work: swap and scale are inside."""
    runner = load_runner(golden_onnx, "onnxruntime")
    src, bgr = golden_feeds["src"], golden_feeds["bgr"]
    wrong = runner.infer(
        {"src": np.ascontiguousarray(src[:, ::-1]) / 255, "bgr": np.ascontiguousarray(bgr[:, ::-1]) / 255}
    )
    assert np.abs(wrong["pha"] - golden["sampling_pha"]).max() > 0.05


def test_check_graph_catches_banned_and_dynamic():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("NonZero", ["src"], ["idx"])],
        "g",
        [onnx.helper.make_tensor_value_info("src", onnx.TensorProto.FLOAT, [1, 3, "h", 8])],
        [onnx.helper.make_tensor_value_info("idx", onnx.TensorProto.INT64, [4, "n"])],
    )
    problems = " ".join(check_graph(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])))
    assert "banned ops: NonZero" in problems and "without a static shape" in problems
    assert "inputs/outputs are" in problems


def test_metadata(golden_onnx):
    model = onnx.load(str(golden_onnx))
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata == {
        "model_name": "background-matting-mobilenetv2",
        "backbone": "mobilenetv2",
        "color_order": "BGR",
        "input_scale": "255",
        "layout": "NCHW",
        "output_color_order": "RGB",
        "resolution": "192x320",
        "backbone_scale": "0.25",
        "refine_mode": "sampling",
        "sample_pixels": "16000",
        "threshold": "0.3",
        "opset": "17",
        "precision": "FP32",
        "model_type": "refine",
        "extra_outputs": "",
        "outputs": "pha,fgr",
        "dynamic": "false",
        "checkpoint": "synthetic bgmv2-synthetic-v1 seed 0",
        "checkpoint_format": "synthetic",
        "tool": "bgm-export 0.1.0",
        "nodes_before_simplify": metadata["nodes_before_simplify"],
    }
    # The count before onnxsim, recorded beside the graph it simplified: larger than what is left.
    assert int(metadata["nodes_before_simplify"]) > len(model.graph.node) > 0


def test_deterministic_bytes(golden_onnx, weights, tmp_path):
    again = export_onnx(GOLDEN_CONFIG, weights, tmp_path / "again.onnx").path
    assert again.read_bytes() == golden_onnx.read_bytes()


def test_failed_export_leaves_existing_file_untouched(weights, tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"good")
    monkeypatch.setattr(onnx_export, "check_graph", lambda model, banned, *more: ["banned ops: NonZero"])
    with pytest.raises(ExportError, match="banned ops"):
        export_onnx(GOLDEN_CONFIG, weights, target)
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_interrupted_export_leaves_no_partial_file(tmp_path):
    """SIGINT while the file is being written: nothing at the output path, no litter."""
    target = tmp_path / "m.onnx"
    script = f"""
import os, signal, pathlib
# A shell's background job starts with SIGINT ignored, and Python then keeps it ignored:
# make Ctrl-C what it is in a terminal, wherever the test runs.
signal.signal(signal.SIGINT, signal.default_int_handler)
from exporter.checkpoint import synthetic_weights
from exporter.config import ExportConfig
from exporter.export import onnx as e
real = e.atomic_outputs
import contextlib
@contextlib.contextmanager
def slow(*paths):
    with real(*paths) as tmps:
        yield tmps
        tmps[0].write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGINT)
e.atomic_outputs = slow
config = ExportConfig(height=128, width=192, sample_pixels=8000)
e.export_onnx(config, synthetic_weights(), pathlib.Path({str(target)!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_a_clear_error(weights, tmp_path, monkeypatch):
    # Permission bits do not stop root (CI), so the permission answer is what is faked.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    with pytest.raises(OutputError, match="output folder .*locked is not writable"):
        export_onnx(GOLDEN_CONFIG, weights, locked / "m.onnx")
    assert list(locked.iterdir()) == []


def test_output_under_a_file_is_a_clear_error(weights, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create output folder"):
        export_onnx(GOLDEN_CONFIG, weights, tmp_path / "file" / "m.onnx")


def test_output_that_is_a_directory_is_a_clear_error(weights, tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        export_onnx(GOLDEN_CONFIG, weights, tmp_path)


@pytest.fixture(scope="module")
def export_720p(weights, tmp_path_factory) -> dict:
    """The 720p preset's ONNX (its export result), IR FP32 and FP16, a frame, and the eager
    model's outputs on it: made once for the 720p tests (all slow)."""
    from exporter.export.openvino import export_ir

    config = ExportConfig()
    root = tmp_path_factory.mktemp("720p")
    result = export_onnx(config, weights, root / "m.onnx")
    case = synthetic_case(720, 1280, seed=0)
    feeds = {"src": to_model_input(case.src), "bgr": to_model_input(case.bgr)}
    return {
        "result": result,
        "onnx": result.path,
        **{p: export_ir(result.path, root / p / "m.xml", p).xml for p in ("FP32", "FP16")},
        "feeds": feeds,
        "expected": eager(config, weights, feeds["src"], feeds["bgr"]),
    }


@pytest.mark.slow
def test_720p_is_simplified(export_720p):
    result = export_720p["result"]
    assert result.nodes_after < result.nodes_before


@pytest.mark.slow
@pytest.mark.parametrize("artifact, runtime", [("onnx", "onnxruntime"), ("onnx", "openvino"), ("FP32", "openvino")])
def test_720p_matches_eager(export_720p, artifact, runtime):
    got = load_runner(export_720p[artifact], runtime).infer(export_720p["feeds"])
    assert got["pha"].shape == (1, 1, 720, 1280) and got["fgr"].shape == (1, 3, 720, 1280)
    for name in ("pha", "fgr"):
        np.testing.assert_allclose(got[name], export_720p["expected"][name], rtol=0, atol=FP32_ATOL, err_msg=name)


@pytest.mark.slow
def test_720p_fp16_is_close_on_average(export_720p):
    from exporter.tolerances import FP16_MEAN_ATOL

    got = load_runner(export_720p["FP16"], "openvino").infer(export_720p["feeds"])
    for name in ("pha", "fgr"):
        error = np.abs(got[name] - export_720p["expected"][name]).mean()
        assert error <= FP16_MEAN_ATOL, f"{name}: mean |d| {error}"
