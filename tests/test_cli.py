"""The command line: exit codes, messages, and what each command prints."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from typer.core import TyperGroup

from exporter.errors import ArtifactError, Terminated
from exporter.redact import MAX_PRINTED
from helpers import CLI_COMMAND

SMALL = ["--height", "128", "--width", "192", "--sample-pixels", "8000"]


@pytest.mark.slow
def test_onnx_then_ir_from_onnx(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ here: the synthetic weights, with a warning
    result = cli("onnx", *SMALL, "--output", "m.onnx")
    assert result.exit_code == 0, result.output
    assert "warning: no checkpoint given" in result.stderr
    stages = ("load", "export", "simplify", "check", "save", "nodes", "sha256")
    assert [stage for stage in stages if stage not in result.stdout] == [], result.stdout
    result = cli("ir", "--onnx", "m.onnx", "--precision", "fp16")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models/FP16/background-matting-mobilenetv2.xml").is_file()
    assert (tmp_path / "models/FP16/background-matting-mobilenetv2.bin").is_file()
    assert "convert" in result.stdout and "bin" in result.stdout


@pytest.mark.slow
def test_a_weight_variant_does_not_replace_the_fp32_export_by_default(tmp_path, monkeypatch, cli):
    """``onnx --onnx-weights FP16`` without --output writes beside the FP32 export, not over
    it: ``ir`` converts that one, and refuses a variant."""
    monkeypatch.chdir(tmp_path)
    assert cli("onnx", *SMALL, "--quiet").exit_code == 0
    fp32 = tmp_path / "models/background-matting-mobilenetv2.onnx"
    before = fp32.read_bytes()
    result = cli("onnx", *SMALL, "--onnx-weights", "fp16", "--quiet")
    assert result.exit_code == 0, result.output
    assert fp32.read_bytes() == before
    assert (tmp_path / "models/background-matting-mobilenetv2-fp16.onnx").stat().st_size < len(before) * 0.6


@pytest.mark.slow
def test_ir_without_onnx_exports_first_and_leaves_no_onnx(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    result = cli("ir", *SMALL, "--precision", "FP32", "--output", "out/m.xml", "--quiet")
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
        (["verify", "--family", "odd"], "Invalid value for '--family'"),
        (
            ["verify", "--family", "plain", "--images", "x"],
            "--family applies to synthetic composites, not to --images x",
        ),
        (["onnx", "--bogus"], "No such option: --bogus (see "),
        (["exprot"], "No such command 'exprot'."),
        (["onnx", "--output", "m.xml"], "ONNX output m.xml must end in .onnx"),
        (["onnx", "--output", "folder/"], "ONNX output folder must end in .onnx"),
        (["onnx", "--height", "100000", "--width", "100000"], "100000x100000 needs about 4501.2 GB of memory"),
        (["ir", "--precision", "FP32", "--onnx", "missing.onnx"], "artifact missing.onnx does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_two(args, message, tmp_path, monkeypatch, cli, one_error):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.onnx").write_bytes(b"")
    # One error line, last (a warning about the synthetic weights may come before it).
    one_error(cli(*args), message)
    assert list(tmp_path.iterdir()) == [tmp_path / "x.onnx"]  # nothing made, no folder left


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip() == "bgm-export 0.1.0"


@pytest.mark.parametrize(
    "argv",
    [
        ["onnx", "--checkpoint", "CHECKPOINT", "--output", "CHECKPOINT"],
        ["info", "ONNX", "--json", "ONNX"],
        ["verify", "ONNX", "--json", "LINK"],
        ["card", "ONNX", "--output", "ONNX"],
    ],
    ids=["onnx", "info", "verify-through-a-link", "card"],
)
def test_an_output_never_overwrites_an_input(argv, golden_onnx, tmp_path, weights, cli, one_error):
    """onnx --checkpoint P --output P, info A --json A, verify A --json A, card A --output A
    (also through a symbolic link): exit 2, the input untouched."""
    import torch

    onnx_copy = tmp_path / "m.onnx"
    onnx_copy.write_bytes(golden_onnx.read_bytes())
    checkpoint = tmp_path / "w.onnx"  # named so that only the input rule can refuse it
    torch.save(weights.state_dict, checkpoint)
    (tmp_path / "link.onnx").symlink_to(onnx_copy)
    before = {p: p.read_bytes() for p in (onnx_copy, checkpoint)}
    places = {"CHECKPOINT": checkpoint, "ONNX": onnx_copy, "LINK": tmp_path / "link.onnx"}
    result = cli(*(places.get(arg, arg) for arg in argv))
    one_error(result, "refusing to overwrite it")
    assert result.stderr.count("\n") == 1, result.stderr
    assert all(p.read_bytes() == data for p, data in before.items())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["verify", "ONNX", "--seed", "-1", "--cases", "1"], "Invalid value for '--seed'"),
        (["verify", "ONNX", "--report", "REPORT"], "is a file; give a folder for the PNG reports"),
        (
            ["ir", "--onnx", "ONNX", "--precision", "FP32", "--height", "360", "--opset", "16", "--quiet"],
            "--height, --opset cannot apply with --onnx: the ONNX file fixes the export",
        ),
        (
            ["ir", "--onnx", "ONNX", "--precision", "FP32", "--preset", "1080p", "--quiet"],
            "--preset cannot apply with --onnx",
        ),
    ],
    ids=["verify-seed", "verify-report-file", "ir-export-options", "ir-preset"],
)
def test_bad_usage_found_by_the_adversarial_pass(argv, message, golden_onnx, tmp_path, cli, one_error):
    """verify --seed -1, verify --report <a file>, ir --onnx X with export options."""
    report_file = tmp_path / "report.png"
    report_file.write_text("x")
    one_error(cli(*({"ONNX": golden_onnx, "REPORT": report_file}.get(arg, arg) for arg in argv)), message)
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


# A child that stops inside the command line's imports (at Typer, its first heavy one) and says
# so: the signal then arrives at a known point of start-up, whatever the machine's load.
STALL_IN_IMPORTS = """
import importlib.abc, sys, time
class Stall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "typer":
            print("importing", flush=True)
            time.sleep(60)
        return None
sys.meta_path.insert(0, Stall())
sys.argv = ["bgm-export", "--version"]
from exporter.__main__ import main
main()
"""


SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"), (signal.SIGHUP, 129, "terminated")]


def stalled(module: str, *argv: str) -> subprocess.Popen:
    """``bgm-export ARGV`` in a child that stops at the import of ``module`` once it has said
    "importing": a signal sent then arrives at a known point, whatever the machine's load."""
    code = STALL_IN_IMPORTS.replace('"typer"', repr(module))
    code = code.replace('["bgm-export", "--version"]', repr(["bgm-export", *argv]))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout.readline() == b"importing\n"
    return child


def ended_by(child: subprocess.Popen, signum: int) -> tuple[int, str]:
    try:
        child.send_signal(signum)
        _, stderr = child.communicate(timeout=5)
    finally:
        child.kill()
        child.wait()
    return child.returncode, stderr.decode()


@pytest.mark.parametrize("signum, code, word", SIGNALS)
def test_a_signal_during_start_up_ends_it_with_one_line(signum, code, word):
    child = stalled("typer", "--version")
    assert ended_by(child, signum) == (code, f"error: {word} while starting\n")


@pytest.mark.parametrize("signum, code, word", SIGNALS)
def test_a_signal_inside_a_command_ends_it_with_one_line(signum, code, word):
    """SIGHUP (a closed terminal) too: its default would kill the command before any ``finally``
    removed a temporary file."""
    child = stalled("exporter.info", "info", "--backbone", "mobilenetv2")
    assert ended_by(child, signum) == (code, f"error: {word}; no partial output was left\n")


@pytest.mark.parametrize(
    "raised, code, word", [(KeyboardInterrupt(), 130, "interrupted"), (Terminated(), 143, "terminated")]
)
def test_a_signal_while_typer_parses_is_not_a_silent_130(raised, code, word, monkeypatch, cli, one_error):
    """Typer turns any KeyboardInterrupt while it parses into a silent exit 130, SIGTERM's too."""

    def interrupted(*args, **kwargs):
        raise raised

    monkeypatch.setattr(TyperGroup, "make_context", interrupted)
    one_error(cli("info", "--backbone", "mobilenetv2"), word, code=code)


def test_standard_output_that_cannot_be_written_is_one_line():
    with open("/dev/full", "wb") as full:
        result = subprocess.run([*CLI_COMMAND, "--version"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (
        2,
        "error: cannot write to standard output: No space left on device\n",
    )


@pytest.mark.parametrize("argv", [["--version"], ["info", "--backbone", "mobilenetv2"]], ids=["callback", "command"])
def test_a_reader_that_left_ends_the_command_quietly(argv):
    """``bgm-export ... | head``: the reader closed the pipe before we wrote (its read end is
    closed before the command starts, so the write always fails): 141 as SIGPIPE gives, nothing
    on stderr (Python's own "Exception ignored ... BrokenPipeError" at exit included, which
    buffered output, as a user's shell has it, shows at exit: not PYTHONUNBUFFERED)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    read, write = os.pipe()
    os.close(read)
    try:
        result = subprocess.run(
            [*CLI_COMMAND, *argv], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, env=env
        )
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    # Nothing about it: the synthetic weights' warning is all (the command's own, before it wrote).
    assert [line for line in result.stderr.splitlines() if not line.startswith("warning: no checkpoint")] == []


def test_names_from_files_and_peers_print_as_one_escaped_line(cli, one_error, tmp_path):
    """A newline in a path (or a key, or a server's answer) cannot forge a second error line, a
    terminal escape is shown, not obeyed, and a megabyte of it is cut to a line."""
    forged = tmp_path / "x\nwarning: forged \x1b]0;title\x07"
    result = cli("info", "--checkpoint", forged)
    one_error(result, "x\\nwarning: forged \\x1b]0;title\\x07")
    assert result.stderr.count("\n") == 1
    result = cli("onnx", "--preset", "z" * 1_000_000)
    one_error(result, "characters left out")
    assert len(result.stderr) < 2 * MAX_PRINTED


def test_the_installed_command_is_the_entry_point_that_handles_start_up():
    """The console script runs ``exporter.__main__:main`` (importing the CLI inside its signal
    handling), not the Typer app directly."""
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "bgm-export"]
    assert script.value == "exporter.__main__:main"


# ---- the export options are ExportConfig's fields; --help says what it should ----


def unaccounted(config_class: type) -> list[str]:
    """Fields of ``config_class`` that are neither an option the command line declares nor
    excluded on purpose (``settings.NOT_OPTIONS``)."""
    import dataclasses

    from exporter.cli import FIELD_OPTIONS
    from exporter.settings import NOT_OPTIONS

    return [f.name for f in dataclasses.fields(config_class) if f.name not in {*FIELD_OPTIONS, *NOT_OPTIONS}]


def test_every_export_config_field_is_an_option_or_excluded_on_purpose():
    import dataclasses

    from exporter.cli import EXPORT_OPTIONS, FIELD_OPTIONS
    from exporter.config import ExportConfig
    from exporter.settings import NOT_OPTIONS, OPTION_FIELDS

    assert unaccounted(ExportConfig) == []
    assert set(FIELD_OPTIONS) == set(OPTION_FIELDS)  # no declaration of a field that is gone or excluded
    assert list(EXPORT_OPTIONS) == ["checkpoint", "backbone", "preset", *OPTION_FIELDS]
    assert all(NOT_OPTIONS.values())  # each exclusion says why
    # A field added without a declaration is caught:
    grown = dataclasses.make_dataclass("Grown", [("new_setting", int, 0)], bases=(ExportConfig,), frozen=True)
    assert unaccounted(grown) == ["new_setting"]


@pytest.mark.parametrize("command", ["onnx", "ir"])
def test_each_field_option_reaches_the_settings(command, monkeypatch, cli, one_error):
    """Every declared field is an option of both exports (but --onnx-weights, which only ONNX
    has) and arrives at ``resolve_export``."""
    from exporter import cli as module
    from exporter.cli import FIELD_OPTIONS
    from exporter.errors import ConfigError

    received: dict[str, object] = {}

    def resolve(*args: object, **kwargs: object) -> None:
        received.update(kwargs)
        raise ConfigError("stopped here")

    monkeypatch.setattr(module, "resolve_export", resolve)
    argv = ["--threshold", "0.2", "--extra-outputs", "err", "--dynamic", "--preset", "4k"]
    argv += ["--precision", "FP32"] if command == "ir" else ["--onnx-weights", "fp16"]
    one_error(cli(command, *argv), "stopped here")
    assert received["threshold"] == 0.2 and received["extra_outputs"] == "err" and received["dynamic"] is True
    assert received["preset"] == "4k" and received.get("onnx_weights") == ("FP16" if command == "onnx" else None)
    help_text = cli(command, "--help").stdout
    missing = [name for name in FIELD_OPTIONS if f"--{name.replace('_', '-')}" not in help_text]
    assert missing == ([] if command == "onnx" else ["onnx_weights"])
    if command == "ir":
        one_error(cli("ir", "--onnx-weights", "FP16"), "No such option: --onnx-weights")


def command_options(app) -> list[tuple[str, object]]:
    """``(command, option)`` for every option of every command of ``app`` and the app's own."""
    import typer._click as click
    import typer.main

    group = typer.main.get_command(app)
    context = click.Context(group)
    found = [("", param) for param in group.get_params(context)]
    for name in getattr(group, "commands", {}):
        command = group.get_command(context, name)
        found += [(name, param) for param in command.get_params(click.Context(command, parent=context))]
    return [(name, param) for name, param in found if param.param_type_name == "option"]


def silent_defaults(app) -> list[str]:
    """Options that take a value, are not required, and say nothing of their default: Typer
    shows a default that is not None itself."""
    return [
        f"{command} {param.opts[0]}"
        for command, param in command_options(app)
        if not param.is_flag
        and not param.required
        and param.default is None
        and "default" not in (param.help or "").lower()
    ]


def demo_app(cls: type | None = None):
    """A command with a flag and an option whose help omits its default, to show the checks catch them."""
    demo = typer.Typer()

    @demo.command(**({"cls": cls} if cls else {}))
    def go(
        fast: Annotated[bool, typer.Option("--fast", help="Go fast.")] = False,
        speed: Annotated[Optional[int], typer.Option(help="How fast.")] = None,
    ) -> None:
        pass

    @demo.command()
    def other() -> None:
        pass

    return demo


def test_every_option_says_its_default():
    from exporter.cli import app

    assert silent_defaults(app) == []
    assert silent_defaults(demo_app()) == ["go --speed"]


def test_help_shows_no_value_label_after_a_flag(cli):
    """Typer labels a flag ``<bool>`` as if it took a value (--quiet <bool>); not ours."""
    from typer.testing import CliRunner

    from exporter.cli import Command, app

    flags = [(command, param.opts[0]) for command, param in command_options(app) if param.is_flag]
    assert ("", "--version") in flags and ("onnx", "--dynamic") in flags and ("onnx", "--help") in flags
    for command in ["", *sorted({command for command, _ in flags if command})]:
        shown = cli(*([command] if command else []), "--help")
        assert shown.exit_code == 0 and "--help" in shown.stdout and "<bool>" not in shown.stdout, command
    runner = CliRunner()
    assert "<bool>" in runner.invoke(demo_app(), ["go", "--help"]).stdout  # what Typer does unasked
    assert "<bool>" not in runner.invoke(demo_app(Command), ["go", "--help"]).stdout


def test_a_written_file_is_named_on_one_line_whatever_its_name():
    """A newline in --output split the summary's xml / bin lines in two."""
    from exporter.cli import size_line

    line = size_line("xml", Path("out/a\nb.xml"), 1_000_000, "ab" * 32)
    assert "\n" not in line and "a\\nb.xml" in line
