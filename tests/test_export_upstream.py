"""The original export recipe, kept as bench's baseline: it is what it claims to be."""

from __future__ import annotations

import numpy as np
import onnx

from conftest import GOLDEN_CONFIG
from exporter.export.upstream import export_upstream_onnx
from exporter.runtime import load_runner
from exporter.tolerances import FP32_ATOL


def test_original_recipe_graph_and_numbers(weights, golden, golden_bgr255, tmp_path):
    path = export_upstream_onnx(GOLDEN_CONFIG, weights, tmp_path / "upstream.onnx").path
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"NonZero", "RoiAlign", "ScatterElements"} <= ops
    for runtime in ("onnxruntime", "openvino"):
        outputs = load_runner(path, runtime).run(*golden_bgr255)
        np.testing.assert_allclose(outputs["pha"], golden["sampling_pha"], rtol=0, atol=FP32_ATOL)
        np.testing.assert_allclose(outputs["fgr"], golden["sampling_fgr"], rtol=0, atol=FP32_ATOL)
