"""The deployment side reads artifacts without torch; what an artifact carries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.artifact import INPUT_NAMES, OUTPUT_NAMES, artifact_metadata, read_ir_metadata, read_onnx_metadata
from exporter.errors import ArtifactError


@pytest.mark.parametrize(
    "module",
    [
        "exporter.matte",
        "exporter.runtime",
        "exporter.info",
        "exporter.align",
        "exporter.cli",
        "exporter.config",
        "exporter.serve",
        "exporter.remote",
        "exporter.repository",
    ],
)
def test_deployment_side_imports_no_torch(module):
    """torch costs seconds and gigabytes a deployment does not need (STYLE.md)."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_metadata_of_both_formats(golden_onnx, golden_irs):
    import onnx

    onnx_metadata = read_onnx_metadata(golden_onnx)
    assert artifact_metadata(golden_onnx) == onnx_metadata
    ir_metadata = read_ir_metadata(golden_irs["FP32"])
    assert {k: v for k, v in ir_metadata.items() if k != "precision"} == {
        k: v for k, v in onnx_metadata.items() if k != "precision"
    }
    # The names the deployment side feeds and reads are the ones the exported graph has.
    graph = onnx.load(str(golden_onnx)).graph
    assert tuple(i.name for i in graph.input) == INPUT_NAMES == ("src", "bgr")
    assert tuple(o.name for o in graph.output) == OUTPUT_NAMES == ("pha", "fgr")


def test_files_that_are_not_artifacts(tmp_path):
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ArtifactError, match="neither .onnx nor .xml"):
        artifact_metadata(tmp_path / "m.txt")
    with pytest.raises(ArtifactError, match="does not exist"):
        artifact_metadata(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ArtifactError, match="is not a readable ONNX model"):
        artifact_metadata(tmp_path / "bad.onnx")
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(ArtifactError, match="is a directory; give an .onnx or .xml file"):
        artifact_metadata(tmp_path / "d.onnx")
    with pytest.raises(ArtifactError, match="artifact /dev/null is not a regular file"):
        artifact_metadata(Path("/dev/null"))
