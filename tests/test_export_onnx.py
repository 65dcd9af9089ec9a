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


# The golden setting's graph (everything but the metadata, which test_metadata pins) as the
# export made it before weight storage existed: printed at commit aba089c with the versions of
# constraints.txt. A default that changes by a byte fails here.
GOLDEN_GRAPH_SHA256 = "8ea82c7874e21ebbfa0e47d8b7d067fe420471526f779c784a818a51a0fda82d"


def test_default_export_is_unchanged_by_weight_storage(golden_onnx, weights, tmp_path):
    import hashlib

    graph = onnx.load(str(golden_onnx)).graph
    assert hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest() == GOLDEN_GRAPH_SHA256
    explicit = export_onnx(GOLDEN_CONFIG.replace(onnx_weights="FP32"), weights, tmp_path / "fp32.onnx").path
    assert explicit.read_bytes() == golden_onnx.read_bytes()


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in model.graph.node for output in node.output}


@pytest.mark.parametrize("storage, largest_share", [("FP16", 0.52), ("INT8", 0.28)])
def test_weight_variants_are_smaller_and_convert_back(storage, largest_share, golden_onnx, onnx_weight_variants):
    """FP16: every large float32 initializer is float16 into a Cast to float32; INT8: every
    convolution's weight (but the layers kept) is int8 per output channel into a
    DequantizeLinear; biases stay float32. Measured 0.505 and 0.262 of the FP32 file."""
    from exporter.export.weights_storage import FP16_MIN_ELEMENTS, INT8_KEPT_LAYERS

    path = onnx_weight_variants[storage]
    assert path.stat().st_size <= largest_share * golden_onnx.stat().st_size
    fp32, model = onnx.load(str(golden_onnx)), onnx.load(str(path))
    assert check_graph(model) == []
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata == {**{p.key: p.value for p in fp32.metadata_props}, "onnx_weights": storage}
    initializers, producers = _initializers(model), _producers(model)
    float_ = onnx.TensorProto.FLOAT
    if storage == "FP16":
        assert not [
            t.name for t in initializers.values() if t.data_type == float_ and np.prod(t.dims) >= FP16_MIN_ELEMENTS
        ]
        halves = {t.name for t in initializers.values() if t.data_type == onnx.TensorProto.FLOAT16}
        assert len(halves) > 50
        consumers = [node for node in model.graph.node if set(node.input) & halves]
        assert len(consumers) == len(halves) and all(
            n.op_type == "Cast" and n.attribute[0].i == float_ for n in consumers
        )
        return
    kept = [
        n for n in fp32.graph.node if n.op_type == "Conv" and any(p.strip(".*") in n.name for p in INT8_KEPT_LAYERS)
    ]
    assert kept and all(initializers[n.input[1]].data_type == float_ for n in kept)
    quantized = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in producers]
    assert len(quantized) + len(kept) == sum(n.op_type == "Conv" for n in fp32.graph.node)
    for conv in quantized:
        dequantize = producers[conv.input[1]]
        levels, scale, zero = (initializers[name] for name in dequantize.input)
        assert dequantize.op_type == "DequantizeLinear" and dequantize.attribute[0].i == 0  # axis 0
        assert (levels.data_type, scale.data_type, zero.data_type) == (
            onnx.TensorProto.INT8,
            float_,
            onnx.TensorProto.INT8,
        )
        assert list(scale.dims) == [levels.dims[0]] and not onnx.numpy_helper.to_array(zero).any()
        assert len(conv.input) < 3 or initializers[conv.input[2]].data_type == float_  # the bias


def test_quantize_per_channel_is_symmetric_per_output_channel():
    from exporter.export.weights_storage import quantize_per_channel

    weight = np.array([[[[0.5, -1.0]]], [[[0.0, 0.0]]], [[[2.54, 0.01]]]], np.float32)  # (3, 1, 1, 2)
    levels, scales = quantize_per_channel(weight, 0)
    np.testing.assert_allclose(scales, [1 / 127, 1.0, 0.02], rtol=1e-6)  # a channel of zeros: scale 1
    assert levels.dtype == np.int8 and levels.reshape(3, 2).tolist() == [[64, -127], [0, 0], [127, 0]]
    assert np.abs(levels * scales[:, None, None, None] - weight).max() <= scales.max() / 2 + 1e-7
    levels, scales = quantize_per_channel(weight.reshape(3, 2), 1)  # MatMul's B: outputs on axis 1
    np.testing.assert_allclose(scales, [2.54 / 127, 1 / 127], rtol=1e-6)


def _tiny_model(
    initializers: list[onnx.TensorProto], nodes: list[onnx.NodeProto], types: dict[str, int] | None = None
) -> onnx.ModelProto:
    """``x`` (1, 4, 4, 4) in, each node's first output out (float32 unless ``types`` says)."""
    from onnx import helper

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 4, 4])
    outputs = [
        helper.make_tensor_value_info(n.output[0], (types or {}).get(n.output[0], onnx.TensorProto.FLOAT), None)
        for n in nodes
    ]
    graph = helper.make_graph(nodes, "tiny", [x], outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


def test_fp16_leaves_small_non_float_and_out_of_range_tensors_alone():
    from onnx import helper, numpy_helper

    from exporter.export.weights_storage import FP16_MIN_ELEMENTS, store_fp16

    rng = np.random.default_rng(0)
    large = rng.normal(size=(FP16_MIN_ELEMENTS // 4, 4)).astype(np.float32)
    tensors = {
        "large": large,
        "small": rng.normal(size=(FP16_MIN_ELEMENTS // 4 - 1, 4)).astype(np.float32),
        "beyond": large * 1e5,  # past float16's 65,504
        "whole": np.arange(FP16_MIN_ELEMENTS, dtype=np.int64),
    }
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name in tensors]
    model = _tiny_model(
        [numpy_helper.from_array(v, k) for k, v in tensors.items()], nodes, {"whole_out": onnx.TensorProto.INT64}
    )
    stored = store_fp16(model)
    types = {t.name: t.data_type for t in stored.graph.initializer}
    assert types == {"small": 1, "beyond": 1, "whole": 7, "large_fp16": onnx.TensorProto.FLOAT16}
    assert [n.op_type for n in stored.graph.node] == ["Cast", "Identity", "Identity", "Identity", "Identity"]
    got = _run(stored, {"x": np.zeros((1, 4, 4, 4), np.float32)})
    assert got["large_out"].dtype == np.float32 and np.array_equal(got["large_out"], large.astype(np.float16))
    assert np.array_equal(got["beyond_out"], tensors["beyond"]) and np.array_equal(got["small_out"], tensors["small"])


def test_int8_quantizes_conv_matmul_gemm_weights_and_keeps_the_rest():
    """Conv weights on axis 0, MatMul's on axis 1, Gemm's by transB; a layer INT8 keeps in
    floating point and a weight two nodes read on different axes stay float32."""
    from onnx import helper, numpy_helper

    from exporter.export.weights_storage import store_int8

    rng = np.random.default_rng(1)
    values = {
        "conv_w": rng.normal(size=(8, 4, 3, 3)),
        "kept_w": rng.normal(size=(8, 4, 3, 3)),
        "mm_w": rng.normal(size=(4, 6)),
        "gemm_w": rng.normal(size=(6, 4)),
        "shared_w": rng.normal(size=(4, 4)),
        "bias": rng.normal(size=(8,)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "bias"], ["conv"], name="/decoder/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "kept_w"], ["kept"], name="/refiner/conv4/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["x"], ["flat"], axis=3),  # (64, 4)
        helper.make_node("MatMul", ["flat", "mm_w"], ["mm"], name="/mm"),
        helper.make_node("Gemm", ["flat", "gemm_w"], ["gemm"], name="/gemm", transB=1),
        helper.make_node("Gemm", ["flat", "shared_w"], ["shared_a"], name="/a", transB=1),
        helper.make_node("MatMul", ["flat", "shared_w"], ["shared_b"], name="/b"),
    ]
    model = _tiny_model([numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()], nodes)
    stored = store_int8(model)
    initializers, producers = _initializers(stored), _producers(stored)
    axes = {node.output[0]: node.attribute[0].i for node in stored.graph.node if node.op_type == "DequantizeLinear"}
    assert axes == {"conv_w": 0, "mm_w": 1, "gemm_w": 0}
    assert all(initializers[name].data_type == onnx.TensorProto.FLOAT for name in ("kept_w", "shared_w", "bias"))
    assert "conv_w" in producers and "conv_w" not in initializers
    feeds = {"x": rng.normal(size=(1, 4, 4, 4)).astype(np.float32)}
    runs = [_run(graph, feeds) for graph in (model, stored)]
    for name in ("conv", "mm", "gemm"):  # within 8-bit rounding, not equal
        error = np.abs(runs[1][name] - runs[0][name]).max()
        assert 0 < error < 0.05 * np.abs(runs[0][name]).max(), name
    for name in ("kept", "shared_a", "shared_b"):
        assert np.array_equal(runs[1][name], runs[0][name]), name


@pytest.mark.parametrize("storage", ["FP16", "INT8"])
def test_ir_refuses_an_onnx_with_reduced_weights(storage, onnx_weight_variants, weights, tmp_path):
    """An IR is made from FP32 weights in its own precision: a rounded ONNX would be rounded
    again and its IR say FP32. Refused before anything is written, either way in."""
    from exporter.errors import ArtifactError, ConfigError
    from exporter.export.openvino import export_ir, export_ir_from_weights

    with pytest.raises(ArtifactError, match=f"stores its weights as {storage}, a variant for ONNX Runtime"):
        export_ir(onnx_weight_variants[storage], tmp_path / "m.xml", "FP32")
    with pytest.raises(ConfigError, match=f"ONNX weights {storage} apply to ONNX artifacts"):
        export_ir_from_weights(GOLDEN_CONFIG.replace(onnx_weights=storage), weights, tmp_path / "w.xml", "FP16")
    assert list(tmp_path.iterdir()) == []


def _restated(path: Path, out: Path, storage: str | None) -> Path:
    """A copy of the ONNX at ``path`` whose metadata says ``storage`` (None: no key, as FP32)."""
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "onnx_weights"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if storage is not None:
        model.metadata_props.add(key="onnx_weights", value=storage)
    onnx.save(model, str(out))
    return out


def test_stored_weights_are_read_from_the_graph(golden_onnx, onnx_weight_variants):
    """What each storage writes is what ``stored_weights`` reads, from the initializers' types
    and their readers (no tensor data); both at once is neither claim."""
    from exporter.export.weights_storage import store_int8, stored_weights

    def load(path: Path) -> onnx.ModelProto:
        return onnx.load(str(path), load_external_data=False)

    assert stored_weights(load(golden_onnx)) == "FP32"
    for storage, path in onnx_weight_variants.items():
        assert stored_weights(load(path)) == storage
    assert stored_weights(store_int8(onnx.load(str(onnx_weight_variants["FP16"])))) == "FP16+INT8"


@pytest.mark.parametrize(
    "source, stated, stored",
    [("FP16", None, "FP16"), (None, "INT8", "FP32"), ("INT8", "FP16", "INT8"), (None, "FP16", "FP32")],
    ids=["fp16-without-key", "fp32-said-int8", "int8-said-fp16", "fp32-said-fp16"],
)
def test_metadata_that_disagrees_with_the_graph_is_refused(
    source, stated, stored, golden_onnx, onnx_weight_variants, tmp_path, cli, one_error
):
    """The ``onnx_weights`` key was believed: an FP16 file without it became an "FP32" IR of
    half weights, an FP32 file marked INT8 was refused by ``ir`` as INT8 (and judged by
    verify's INT8 bars, tests/test_verify.py). Every reader of an artifact's metadata refuses
    the lie, ``ir`` before it writes anything."""
    from exporter.artifact import artifact_metadata
    from exporter.errors import ArtifactError

    path = _restated(golden_onnx if source is None else onnx_weight_variants[source], tmp_path / "m.onnx", stated)
    message = f"metadata says its weights are stored as {stated or 'FP32'}, but the graph stores {stored}"
    with pytest.raises(ArtifactError, match=message):
        artifact_metadata(path)
    one_error(cli("ir", "--onnx", path, "--precision", "FP32", "--output", tmp_path / "m.xml"), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["360p"])  # 480p's settings: test_config.py (the suite's time is bounded)
def test_webcam_presets_export_and_verify(preset, weights, tmp_path, cli):
    """`onnx --preset 360p` (the web preset) and `--preset 480p`, then `verify`: the sample counts
    scaled to the size (20,000 and 26,672) are exported and meet the FP32 bars."""
    from exporter.config import PRESETS

    path = tmp_path / f"{preset}.onnx"
    made = cli("onnx", "--preset", preset, "--output", path, "--quiet")
    assert made.exit_code == 0, made.output
    metadata = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    config = PRESETS[preset]
    assert metadata["resolution"] == f"{config.height}x{config.width}"
    assert metadata["sample_pixels"] == str(config.sample_pixels)
    checked = cli("verify", path, "--cases", "1", "--inference-precision", "f32")
    assert checked.exit_code == 0 and "VERIFIED" in checked.stdout, checked.output
