"""Bad input found by the adversarial pass (issue 9): each answered by one ``error:`` line,
the documented exit code, and nothing partial left behind."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter import files, resources
from exporter.config import ExportConfig
from exporter.errors import ConfigError, OutputError
from exporter.verify.compare import BARS, overridden_bars

SMALL = ["--height", "128", "--width", "192", "--sample-pixels", "8000"]


def made_in(folder: Path) -> list[str]:
    """What a command left in ``folder``; onnxruntime's import leaves ``.ses`` in every run."""
    return sorted(p.name for p in folder.iterdir() if p.name != ".ses")


def cli_process(tmp_path: Path, code: str, *argv: str) -> subprocess.CompletedProcess:
    """``bgm-export argv`` in a fresh interpreter, after ``code`` (which arranges a signal),
    with its own temporary folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    script = f"{code}\nfrom exporter.cli import app\napp({list(argv)!r}, prog_name='bgm-export')\n"
    env = {**os.environ, "TMPDIR": str(scratch)}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)


# A real SIGTERM, sent by the process to itself while the first output file is half written.
TERMINATE_WHILE_WRITING = """
import contextlib, os, signal
from exporter.export import openvino
real = openvino.atomic_outputs
@contextlib.contextmanager
def terminated(*paths):
    with real(*paths) as temporaries:
        yield temporaries
        temporaries[-1].write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGTERM)
openvino.atomic_outputs = terminated
"""


@pytest.mark.slow
def test_sigterm_while_ir_writes_exits_143_and_leaves_nothing(tmp_path):
    """``ir`` without ``--onnx``: its temporary ONNX, the half-written IR and the output
    folder it created are all gone."""
    result = cli_process(
        tmp_path, TERMINATE_WHILE_WRITING, "ir", "--precision", "FP32", *SMALL, "--output", "out/m.xml", "-q"
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.splitlines()[-1] == "error: terminated; no partial output was left"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    assert made_in(tmp_path / "tmp") == []


def test_sigterm_while_matte_writes_exits_143_and_leaves_nothing(golden_irs, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (192, 320, 3), dtype=np.uint8)).save(frames / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (192, 320, 3), dtype=np.uint8)).save(tmp_path / "bgr.png")
    code = """
import os, signal, threading
from exporter.pipeline import sinks
real = sinks.save_png
once = threading.Event()
def terminated(image, path):
    real(image, path)
    if not once.is_set():
        once.set()
        os.kill(os.getpid(), signal.SIGTERM)
sinks.save_png = terminated
"""
    argv = ["matte", "--model", str(golden_irs["FP32"]), "--src", "frames", "--bgr", "bgr.png", "--out", "out"]
    result = cli_process(tmp_path, code, *argv)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bgr.png", "frames", "tmp"]
    assert made_in(tmp_path / "tmp") == []


@pytest.fixture()
def ir_copy(golden_irs, tmp_path) -> Path:
    for suffix in (".xml", ".bin"):
        shutil.copy(golden_irs["FP32"].with_suffix(suffix), tmp_path / f"m{suffix}")
    return tmp_path / "m.xml"


@pytest.mark.parametrize("command", ["verify", "info", "matte"])
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_bin_is_named(ir_copy, tmp_path, damage, command, cli, one_error):
    bin_path = ir_copy.with_suffix(".bin")
    if damage == "missing":
        bin_path.unlink()
        message = f"{bin_path} is missing: an IR's weights live beside its .xml"
    else:
        size = bin_path.stat().st_size
        bin_path.write_bytes(bin_path.read_bytes()[:1000])
        message = f"{bin_path} is 1,000 bytes, smaller than the {size:,} its .xml expects"
    image = tmp_path / "a.png"
    Image.new("RGB", (320, 192)).save(image)
    argv = {
        "verify": ["verify", ir_copy, "--cases", "1"],
        "info": ["info", ir_copy],
        "matte": ["matte", "--model", ir_copy, "--src", image, "--bgr", image],
    }[command]
    one_error(cli(*argv), message)


@pytest.fixture(scope="module")
def unfit_models(tmp_path_factory, golden_onnx, weights) -> Path:
    """bare.onnx: the golden without metadata; lying.onnx: a 128x192 export carrying the
    golden's metadata; other.onnx: no matting model, with the golden's metadata."""
    import onnx

    from exporter.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("unfit")
    bare = onnx.load(str(golden_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(root / "bare.onnx"))
    small = export_onnx(ExportConfig(height=128, width=192, sample_pixels=4000), weights, root / "s.onnx").path
    lying = onnx.load(str(small))
    del lying.metadata_props[:]
    lying.metadata_props.extend(onnx.load(str(golden_onnx)).metadata_props)
    onnx.save(lying, str(root / "lying.onnx"))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    other = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    other.metadata_props.extend(onnx.load(str(golden_onnx)).metadata_props)
    onnx.save(other, str(root / "other.onnx"))
    return root


@pytest.mark.parametrize("command", ["matte", "ir"])
@pytest.mark.parametrize(
    "name, message",
    [
        ("bare.onnx", "bare.onnx carries no bgm-export metadata; was it made by bgm-export?"),
        (
            "lying.onnx",
            "lying.onnx takes inputs of shape [1, 3, 128, 192] (src), but its metadata says [1, 3, 192, 320]",
        ),
        (
            "other.onnx",
            "other.onnx has inputs ['x'] and outputs ['y']; a matting model has ['src', 'bgr'] and ['pha', 'fgr']",
        ),
    ],
    ids=["bare", "lying", "other"],
)
def test_artifacts_without_or_with_copied_metadata_are_refused(
    unfit_models, name, message, command, tmp_path, cli, one_error
):
    model = unfit_models / name
    image = tmp_path / "a.png"
    Image.new("RGB", (320, 192)).save(image)
    if command == "matte":
        one_error(cli("matte", "--model", model, "--src", image, "--bgr", image, "--out", tmp_path / "out"), message)
    else:
        one_error(cli("ir", "--onnx", model, "--precision", "FP32", "--output", tmp_path / "out" / "m.xml"), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_a_full_disk_in_ir_is_named_and_leaves_nothing(golden_onnx, tmp_path, monkeypatch, cli, one_error):
    """OpenVINO's writer says only ``basic_ios::clear: iostream error``; the free space says why."""
    import openvino as ov

    def full(model, path, **kwargs):
        Path(path).write_bytes(b"half")
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(ov, "save_model", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    out = tmp_path / "models" / "FP32" / "m.xml"
    one_error(cli("ir", "--onnx", golden_onnx, "--precision", "FP32", "--output", out),
              f"cannot write {out}: no space left on the device")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_verify_report_is_named_and_leaves_nothing(golden_onnx, tmp_path, monkeypatch, cli, one_error):
    def full(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    result = cli("verify", golden_onnx, "--cases", "1", "--report", tmp_path / "report")
    one_error(result, "_onnxruntime.png: no space left on the device")
    assert list(tmp_path.iterdir()) == []


def test_a_resolution_that_cannot_fit_in_memory_is_refused_before_work(weights, golden_onnx, monkeypatch):
    from exporter.export.onnx import export_onnx
    from exporter.verify import verify

    config = ExportConfig(height=16000, width=16000)
    assert resources.estimated_memory(config) == pytest.approx(1.2e9 + 450 * 16000**2)
    monkeypatch.setattr(resources, "available_memory", lambda: 8e9)
    with pytest.raises(ConfigError, match=r"16000x16000 needs about 116\.4 GB of memory .* 8\.0 GB is available"):
        export_onnx(config, weights, Path("never-written.onnx"))
    assert not Path("never-written.onnx").exists()
    monkeypatch.setattr(resources, "available_memory", lambda: 1e9)  # verify's eager reference too
    with pytest.raises(ConfigError, match=r"192x320 needs about 1\.2 GB of memory .* 1\.0 GB is available"):
        verify([golden_onnx], weights, cases=1)
    monkeypatch.setattr(resources, "available_memory", lambda: None)  # no /proc/meminfo: no guess
    resources.require_memory(config)


@pytest.mark.parametrize("option", [["--preset", "4k"], ["--backbone", "resnet50"]], ids=["preset", "backbone"])
def test_info_of_an_artifact_refuses_model_options(option, golden_onnx, cli, one_error):
    one_error(cli("info", golden_onnx, *option), f"{option[0]} cannot apply to an artifact")


def test_a_failed_write_removes_the_folders_it_created(tmp_path):
    target = tmp_path / "a" / "b" / "m.onnx"
    with pytest.raises(OutputError, match="no space left on the device"):
        with files.atomic_outputs(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyboardInterrupt), files.atomic_outputs(tmp_path / "kept" / "new" / "m.onnx"):
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]


def test_bar_overrides_change_only_what_is_given():
    assert overridden_bars() == {} and overridden_bars(fp32_max_abs=None) == {}
    bars = overridden_bars(fp32_max_abs=1e-3, fp32_patch_share=0.5)
    assert list(bars) == ["FP32"] and (bars["FP32"].max_abs, bars["FP32"].patch_share) == (1e-3, 0.5)
    assert bars["FP32"].patch_delta == BARS["FP32"].patch_delta


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_a_bar_override_is_a_number_at_least_zero(value):
    with pytest.raises(ConfigError, match=f"--fp16-mean-abs {value}: a bar is a number >= 0"):
        overridden_bars(fp16_mean_abs=value)


@pytest.mark.parametrize("argv", [["verify", "--cases", "1"], ["info"]], ids=["verify", "info"])
def test_a_bin_of_another_ir_is_named(argv, ir_copy, golden_irs, cli, one_error):
    """The FP16 .xml beside the FP32 .bin (twice as long as it needs): OpenVINO would fail
    with a message naming neither file."""
    shutil.copy(golden_irs["FP16"], ir_copy)
    size, needed = ir_copy.with_suffix(".bin").stat().st_size, golden_irs["FP16"].with_suffix(".bin").stat().st_size
    message = f"is {size:,} bytes, larger than the {needed:,} its .xml expects: the .bin does not belong to this .xml"
    one_error(cli(argv[0], ir_copy, *argv[1:]), message)


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "--json"],
        ["verify", "--cases", "1", "--json"],
        ["verify", "--cases", "1", "--report"],
        ["card", "--output"],
    ],
    ids=["info-json", "verify-json", "verify-report", "card"],
)
def test_an_output_never_overwrites_the_bin_of_an_input(argv, ir_copy, tmp_path, cli, one_error):
    """info A.xml --json A.bin, verify A.xml --json A.bin, card A.xml --output A.bin: an
    IR is its .xml and its .bin, and neither is written over."""
    bin_path = ir_copy.with_suffix(".bin")
    before = bin_path.read_bytes()
    result = cli(argv[0], ir_copy, *argv[1:], bin_path)
    one_error(result, f"output {bin_path} is {bin_path}, the weights of the input {ir_copy}")
    assert bin_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


def test_a_bar_for_a_precision_not_verified_is_refused(golden_onnx, cli, one_error):
    result = cli("verify", golden_onnx, "--fp16-mean-abs", "0.1", "--fp16-patch-share", "0.5")
    one_error(result, "--fp16-mean-abs, --fp16-patch-share apply to FP16 artifacts, and none is verified (the "
              "artifacts are FP32)")  # fmt: skip
    assert "reference" not in result.stderr  # refused before the work
