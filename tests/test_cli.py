"""The command line: exit codes, messages, and what each command prints."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import ArtifactError

runner = CliRunner()
SMALL = ["--height", "128", "--width", "192", "--sample-pixels", "8000"]


def test_onnx_then_ir_from_onnx(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: the synthetic weights, with a warning
    result = runner.invoke(app, ["onnx", *SMALL, "--output", "m.onnx"])
    assert result.exit_code == 0, result.output
    assert "warning: no checkpoint given" in result.stderr
    for stage in ("load", "export", "simplify", "check", "save", "nodes", "sha256"):
        assert stage in result.stdout
    result = runner.invoke(app, ["ir", "--onnx", "m.onnx", "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models/FP16/background-matting-mobilenetv2.xml").is_file()
    assert (tmp_path / "models/FP16/background-matting-mobilenetv2.bin").is_file()
    assert "convert" in result.stdout and "bin" in result.stdout


def test_ir_without_onnx_exports_first_and_leaves_no_onnx(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["ir", *SMALL, "--precision", "FP32", "--output", "out/m.xml", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.bin", "m.xml"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["onnx", "--height", "721"], "height 721 is not valid at backbone scale 0.25"),
        (["onnx", "--preset", "8k"], "Invalid value for '--preset': Value error, '8k' is not one of"),
        (["onnx", "--refine-mode", "magic"], "Invalid value for '--refine-mode'"),
        (["ir", "--precision", "INT4", "--onnx", "x.onnx"], "Invalid value for '--precision'"),
        (["bench", "--runs", "abc"], "Invalid value for '--runs': Input should be a valid integer"),
        (["bench", "--runs", "0"], "Invalid value for '--runs': Input should be greater than or equal to 1"),
        (["verify", "--cases", "0"], "Invalid value for '--cases'"),
        (["onnx", "--bogus"], "No such option: --bogus (see "),
        (["exprot"], "No such command 'exprot'."),
        (["onnx", "--output", "m.xml"], "ONNX output m.xml must end in .onnx"),
        (["onnx", "--output", "folder/"], "ONNX output folder must end in .onnx"),
        (["onnx", "--height", "100000", "--width", "100000"], "100000x100000 needs about 4501.2 GB of memory"),
        (["ir", "--precision", "FP32", "--onnx", "missing.onnx"], "artifact missing.onnx does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_two(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.onnx").write_bytes(b"")
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    # One error line, last (a warning about the synthetic weights may come before it).
    *_, last = result.stderr.splitlines()
    assert last.startswith("error: ") and message in last and result.stderr.count("error:") == 1, result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == [tmp_path / "x.onnx"]  # nothing made, no folder left


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == "bgm-export 0.1.0"


def test_an_output_never_overwrites_an_input(golden_onnx, tmp_path, weights):
    """onnx --checkpoint P --output P, info A --json A, verify A --json A, card A --output A
    (also through a symbolic link): exit 2, the input untouched."""
    import torch

    onnx_copy = tmp_path / "m.onnx"
    onnx_copy.write_bytes(golden_onnx.read_bytes())
    checkpoint = tmp_path / "w.onnx"  # named so that only the input rule can refuse it
    torch.save(weights.state_dict, checkpoint)
    (tmp_path / "link.onnx").symlink_to(onnx_copy)
    before = {p: p.read_bytes() for p in (onnx_copy, checkpoint)}
    for argv in (
        ["onnx", "--checkpoint", str(checkpoint), "--output", str(checkpoint)],
        ["info", str(onnx_copy), "--json", str(onnx_copy)],
        ["verify", str(onnx_copy), "--json", str(tmp_path / "link.onnx")],
        ["card", str(onnx_copy), "--output", str(onnx_copy)],
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert "refusing to overwrite it" in result.stderr and result.stderr.count("\n") == 1, argv
    assert all(p.read_bytes() == data for p, data in before.items())


def test_bad_usage_found_by_the_adversarial_pass(golden_onnx, tmp_path):
    """verify --seed -1, verify --report <a file>, ir --onnx X with export options."""
    report_file = tmp_path / "report.png"
    report_file.write_text("x")
    cases = [
        (["verify", str(golden_onnx), "--seed", "-1", "--cases", "1"], "Invalid value for '--seed'"),
        (["verify", str(golden_onnx), "--report", str(report_file)], "is a file; give a folder for the PNG reports"),
        (
            ["ir", "--onnx", str(golden_onnx), "--precision", "FP32", "--height", "360", "--opset", "16"],
            "--height, --opset cannot apply with --onnx: the ONNX file fixes the export",
        ),
        (
            ["ir", "--onnx", str(golden_onnx), "--precision", "FP32", "--preset", "1080p"],
            "--preset cannot apply with --onnx",
        ),
    ]
    for argv, message in cases:
        result = runner.invoke(app, [*argv, "--quiet"] if argv[0] == "ir" else argv)
        assert result.exit_code == 2, (argv, result.output)
        assert message in result.stderr and "Traceback" not in result.output, (argv, result.stderr)
    assert report_file.read_text() == "x"


def test_verify_refuses_metadata_copied_from_another_model(weights, tmp_path):
    import onnx

    from exporter.config import ExportConfig
    from exporter.export.onnx import export_onnx
    from exporter.verify import verify

    small = export_onnx(ExportConfig(height=128, width=192, sample_pixels=4000), weights, tmp_path / "s.onnx").path
    model = onnx.load(str(small))
    for prop in model.metadata_props:
        if prop.key == "resolution":
            prop.value = "192x320"
    onnx.save(model, str(tmp_path / "lying.onnx"))
    with pytest.raises(ArtifactError, match=r"takes inputs of shape \[1, 3, 128, 192\] \(src\), but its metadata says"):
        verify([tmp_path / "lying.onnx"], weights, cases=1)
