"""Writing files: atomically, never over an input, and checked before long work."""

from __future__ import annotations

import os
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


def _nodes(tmp_path: Path) -> dict[str, Path]:
    """A FIFO and a character device (/dev/null's numbers) made in ``tmp_path``, never the
    real /dev: mknod needs root (the CI container's user)."""
    import os
    import stat

    fifo, device = tmp_path / "fifo.json", tmp_path / "null.json"
    os.mkfifo(fifo)
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        return {"fifo": fifo}
    return {"fifo": fifo, "device": device}


def test_a_device_or_fifo_is_refused_as_an_output_and_left_as_it_was(tmp_path):
    """Renaming a file into place over /dev/null (as root) would put a file where the device
    was: an existing output must be a regular file, also behind a link, checked before the work
    (check_writable) and by the writer itself (write_json, atomic_outputs)."""
    import stat

    for kind, node in _nodes(tmp_path).items():
        link = tmp_path / f"link-to-{kind}"
        link.symlink_to(node)
        for path in (node, link):
            with pytest.raises(OutputError, match="exists and is not a regular file"):
                check_writable(path)
            with pytest.raises(OutputError, match="exists and is not a regular file"):
                write_json({"a": 1}, path)
        mode = node.lstat().st_mode
        assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode), kind
        assert link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_output_behind_a_link_replaces_the_file_and_keeps_the_link(tmp_path):
    """As `>` writes through a link: renaming over the link itself would put a file where it
    was (/dev/stdout, redirected to a file, as root)."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "n.json"
    target.write_text("old")
    link = tmp_path / "n.json"
    link.symlink_to(target)
    check_writable(link)
    write_json({"a": 1}, link)
    assert link.is_symlink() and target.read_text() == '{\n  "a": 1\n}\n'


@pytest.mark.parametrize("what", ["web", "chromium", "checkpoint"])
def test_bench_json_never_overwrites_an_input(what, tmp_path, cli, one_error):
    """bench --web M --json M wrote its JSON over the model (exit 0); so could --chromium C
    --json C and --checkpoint W --json W. Refused before any work (the files are not real)."""
    model, chromium, weights = tmp_path / "v.onnx", tmp_path / "chromium", tmp_path / "w.pth"
    for path in (model, chromium, weights):
        path.write_text(f"the {path.name}")
    argv = {
        "web": ["--web", model, "--json", model],
        "chromium": ["--web", model, "--chromium", chromium, "--json", chromium],
        "checkpoint": ["--checkpoint", weights, "--json", weights],
    }[what]
    result = cli("bench", *argv)
    one_error(result, "refusing to overwrite it")
    assert all(path.read_text() == f"the {path.name}" for path in (model, chromium, weights))


def test_an_empty_checkpoint_path_is_named_empty():
    """Path("") is ".": the refusal said "checkpoint . is a directory"."""
    from exporter.errors import ConfigError
    from exporter.settings import resolve_export

    with pytest.raises(ConfigError, match="checkpoint is an empty path"):
        resolve_export(checkpoint="")


def test_an_output_named_through_dev_or_proc_is_refused_even_when_it_is_a_file(tmp_path):
    """`verify --json /dev/stdout > log` replaced log whole (what was printed to it before was
    lost): a descriptor's file is not an output of its own."""
    log = tmp_path / "log"
    log.write_text("printed before\n")
    with log.open("a") as handle:
        fd_path = Path(f"/proc/self/fd/{handle.fileno()}")
        for path in (fd_path, Path(f"/dev/fd/{handle.fileno()}")):
            with pytest.raises(OutputError, match="is a stream or descriptor"):
                check_writable(path)
            with pytest.raises(OutputError, match="is a stream or descriptor"):
                write_json({"a": 1}, path)
    assert log.read_text() == "printed before\n"


@pytest.mark.parametrize("length", [300, 250])
def test_a_name_too_long_is_one_error_before_any_work(length, tmp_path):
    """300 characters gave a traceback (the link check raised ENAMETOOLONG); 250 passed the
    early checks and failed after minutes of work, on the name of the folder written in first."""
    path = tmp_path / ("a" * length + ".xml")
    with pytest.raises(OutputError, match="too long"):
        check_writable(path)
    with pytest.raises(OutputError, match="too long"), atomic_outputs(path, path.with_suffix(".bin")):
        raise AssertionError("no work starts")
    assert list(tmp_path.iterdir()) == []
    check_writable(tmp_path / ("a" * 200 + ".xml"))  # within the limit with the folder's extra


def test_two_writers_of_one_pair_never_leave_one_file_of_each(tmp_path, monkeypatch):
    """The .xml and .bin of two runs could interleave (A's .bin, B's .bin, B's .xml, A's .xml):
    each pair's renames hold a lock on the folder. A slow file system is made by a pause
    after A's .bin is renamed, where B's pair lands unless the lock keeps it out."""
    import threading
    import time

    from exporter import files

    replace = os.replace

    renamed = threading.Event()  # A's .bin is in place

    def slow_replace(source, target):
        first = Path(source).read_text() == "A"
        replace(source, target)
        if first and str(target).endswith(".bin"):  # B's whole pair lands meanwhile, unless locked out
            renamed.set()
            time.sleep(0.1)

    monkeypatch.setattr(files.os, "replace", slow_replace)
    xml, binary = tmp_path / "m.xml", tmp_path / "m.bin"

    def write(tag: str) -> None:
        with atomic_outputs(xml, binary) as (x, b):
            x.write_text(tag)
            b.write_text(tag)
            if tag == "B":
                assert renamed.wait(5)

    for _ in range(5):
        threads = [threading.Thread(target=write, args=(tag,)) for tag in "AB"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert xml.read_text() == binary.read_text()
        renamed.clear()
