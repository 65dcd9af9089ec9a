"""Writing files: atomically, never over an input, and checked before long work."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.artifact import artifact_files
from exporter.errors import OutputError
from exporter.files import atomic_outputs, check_not_input, check_writable, sha256_of, write_json


def test_atomic_outputs_rename_on_success_and_clean_on_failure(tmp_path):
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    with atomic_outputs(xml, bin_) as (xml_tmp, bin_tmp):
        assert xml_tmp.stem == bin_tmp.stem and xml_tmp.parent != tmp_path
        xml_tmp.write_text("x")
        bin_tmp.write_text("b")
    assert xml.read_text() == "x" and bin_.read_text() == "b"
    with pytest.raises(RuntimeError), atomic_outputs(xml) as (temporary,):
        temporary.write_text("half")
        raise RuntimeError("boom")
    assert xml.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_check_not_input_follows_links(tmp_path):
    source = tmp_path / "in.onnx"
    source.write_text("model")
    (tmp_path / "link.onnx").symlink_to(source)
    with pytest.raises(OutputError, match="is the input"):
        check_not_input(tmp_path / "link.onnx", source)
    check_not_input(tmp_path / "other.json", source, "synthetic bgmv2-synthetic-v1", None)
    check_not_input(None, source)


def test_check_not_input_guards_every_file_of_an_artifact(tmp_path):
    """An IR is its .xml and its .bin; an .onnx (or any other file) is itself alone."""
    xml, bin_ = tmp_path / "m.xml", tmp_path / "m.bin"
    xml.write_text("xml")
    bin_.write_text("bin")
    assert artifact_files(xml) == [xml, bin_] and artifact_files(tmp_path / "m.onnx") == [tmp_path / "m.onnx"]
    with pytest.raises(OutputError, match=f"output {bin_} is {bin_}, the weights of the input {xml}; refusing"):
        check_not_input(bin_, xml)
    with pytest.raises(OutputError, match=f"output {xml} is the input {xml}; refusing"):
        check_not_input(xml, xml)
    check_not_input(tmp_path / "m.bin", tmp_path / "m.onnx")  # an .onnx has no .bin
    bin_.unlink()
    check_not_input(bin_, xml)  # nothing there to lose: the missing .bin is the reader's to name


def test_check_writable_creates_nothing(tmp_path):
    check_writable(tmp_path / "a" / "b" / "m.xml")
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is not a folder"):
        check_writable(tmp_path / "file" / "m.xml")
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe file is gone


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_check_writable_tries_for_real():
    """/proc passes the permission bits for root, and takes no files: found before the work."""
    with pytest.raises(OutputError, match="cannot write in /proc"):
        check_writable(Path("/proc/bench.json"))


def test_write_json_and_sha256(tmp_path):
    path = tmp_path / "n.json"
    write_json({"a": 1}, path)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert sha256_of(path) == "5e36b6560513586ced65eca0e8b025fe88edbcab82ba2cb67a5fcb2d7b202383"


def test_staging_folder_leaves_nothing_on_failure_and_refuses_a_file(tmp_path):
    from exporter.files import staging_folder

    root = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError), staging_folder(root, "t") as staging:
        assert staging.parent == root and staging.name.startswith(".t-")
        (staging / "a.png").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert not (tmp_path / "new").exists()  # the folders it made are gone
    with staging_folder(root, "t") as staging:
        (staging / "a.png").write_bytes(b"x")
        (staging / "a.png").replace(root / "a.png")
    assert [p.name for p in root.iterdir()] == ["a.png"]  # the staging folder itself is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"), staging_folder(tmp_path / "file", "t"):
        pass
