"""The deployment side reads artifacts without torch; what an artifact carries."""

from __future__ import annotations

import os
import re
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


# --- hostile artifacts: one error line each --------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x08\x07\x12\x07pytorch"], ids=["empty", "11-byte-protobuf"])
def test_an_onnx_of_nothing_is_refused(data, tmp_path, cli, one_error):
    # Before: protobuf read them as a model of defaults; `info` printed "nodes 0" and exited 0.
    path = tmp_path / "nothing.onnx"
    path.write_bytes(data)
    with pytest.raises(ArtifactError, match="its graph has no nodes"):
        artifact_metadata(path)
    one_error(cli("info", path), "is not an ONNX model: its graph has no nodes")


@pytest.mark.parametrize("offset", ["abc", "²", "-1", "1e3", " 7"])
def test_an_ir_whose_offsets_are_not_byte_counts_is_one_error_line(offset, golden_irs, tmp_path, cli, one_error):
    # Before: ValueError: invalid literal for int() (info, matte --model, verify).
    xml = tmp_path / "m.xml"
    text = golden_irs["FP32"].read_text()
    xml.write_text(re.sub(r'offset="\d+"', f'offset="{offset}"', text, count=1))
    xml.with_suffix(".bin").symlink_to(golden_irs["FP32"].with_suffix(".bin"))
    with pytest.raises(ArtifactError, match="which are not byte counts"):
        artifact_metadata(xml)
    one_error(cli("info", xml), "which are not byte counts")


@pytest.fixture(scope="module")
def external_artifact(golden_onnx, tmp_path_factory) -> Path:
    """The golden export with its weights in ``w.bin`` beside it."""
    import onnx

    path = tmp_path_factory.mktemp("external-artifact") / "m.onnx"
    onnx.save(onnx.load(str(golden_onnx)), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def pointed(external_artifact: Path, folder: Path, location: str, **fields: str) -> Path:
    """A copy of ``external_artifact`` in ``folder`` whose first initializer reads ``location``."""
    import onnx

    folder.mkdir()
    os.link(external_artifact.with_name("w.bin"), folder / "w.bin")
    model = onnx.load(str(external_artifact), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    entries = {e.key: e.value for e in tensor.external_data} | {"location": location} | fields
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    return folder / "m.onnx"


# kind -> (location, other fields, what the one error line says, whether `ir` may open it)
EXTERNAL = {
    "absolute": ("/etc/passwd", {}, "outside the model's folder", True),
    "parent": ("../outside.bin", {}, "outside the model's folder", True),
    "link-to-dev-zero": ("zero.bin", {}, "a link that leaves the model's folder", False),
    "fifo": ("pipe.bin", {}, "which is not a regular file", False),
    "offset-not-a-number": ("w.bin", {"offset": "²"}, "offset or length that is not a number", True),
    "beyond-the-file": ("w.bin", {"offset": str(1 << 40)}, "which holds", True),
}


@pytest.mark.parametrize("kind", EXTERNAL)
def test_external_data_of_an_artifact_stays_in_its_folder(kind, external_artifact, tmp_path, cli, one_error):
    # Before: metadata was read without a look at the external data; `ir --onnx` then failed in
    # OpenVINO with a traceback (or blocked on a FIFO, or read /dev/zero).
    location, fields, fragment, convertible = EXTERNAL[kind]
    model = pointed(external_artifact, tmp_path / "m", location, **fields)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    (model.parent / "zero.bin").symlink_to("/dev/zero")
    os.mkfifo(model.parent / "pipe.bin")
    with pytest.raises(ArtifactError, match=re.escape(fragment)):
        artifact_metadata(model)
    if convertible:  # before the fix, the others would block or fill memory instead of failing
        result = cli("ir", "--onnx", model, "--precision", "fp32", "--output", tmp_path / "o.xml")
        one_error(result, fragment)
        assert not (tmp_path / "o.xml").exists()


def test_a_graph_openvino_refuses_is_one_error_line(golden_onnx, tmp_path, cli, one_error):
    # Before: ov.convert_model's report as a traceback, exit 1.
    import onnx

    model = onnx.load(str(golden_onnx))
    next(n for n in model.graph.node if n.op_type == "Conv").op_type = "NoSuchOp"
    path = tmp_path / "unknown-op.onnx"
    path.write_bytes(model.SerializeToString())
    result = cli("ir", "--onnx", path, "--precision", "fp32", "--output", tmp_path / "o.xml")
    one_error(result, f"--onnx {path} cannot be converted by OpenVINO: ")
    assert not (tmp_path / "o.xml").exists()


@pytest.mark.parametrize("suffix", [".onnx", ".xml"])
def test_a_name_over_255_bytes_is_one_error_line(suffix, tmp_path, cli, one_error):
    # Before: OSError: [Errno 36] File name too long, from Path.exists() (info, matte, ir).
    path = tmp_path / f"{'a' * 300}{suffix}"
    with pytest.raises(ArtifactError, match="cannot be read: File name too long"):
        artifact_metadata(path)
    one_error(cli("info", path), "cannot be read: File name too long")
    if suffix == ".onnx":
        one_error(cli("ir", "--onnx", path, "--precision", "fp32"), "cannot be read: File name too long")
