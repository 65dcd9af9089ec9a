"""The original export recipe, kept as bench's baseline: it is what it claims to be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from exporter.export.upstream import export_upstream_onnx
from exporter.runtime import load_runner
from exporter.tolerances import FP32_ATOL
from helpers import GOLDEN_CONFIG


@pytest.fixture(scope="module")
def upstream_onnx(weights, tmp_path_factory) -> Path:
    return export_upstream_onnx(GOLDEN_CONFIG, weights, tmp_path_factory.mktemp("upstream") / "upstream.onnx").path


def test_original_recipe_graph(upstream_onnx):
    """The data-dependent ops the original export needs, and this package's export avoids."""
    ops = {node.op_type for node in onnx.load(str(upstream_onnx)).graph.node}
    assert {"NonZero", "RoiAlign", "ScatterElements"} <= ops


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_original_recipe_reproduces_original_outputs(upstream_onnx, runtime, golden, golden_feeds):
    outputs = load_runner(upstream_onnx, runtime).infer(golden_feeds)
    np.testing.assert_allclose(outputs["pha"], golden["sampling_pha"], rtol=0, atol=FP32_ATOL)
    np.testing.assert_allclose(outputs["fgr"], golden["sampling_fgr"], rtol=0, atol=FP32_ATOL)
