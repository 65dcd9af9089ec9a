"""The Python API behaves as the command line does, without it: settings resolution, the
memory refusal, bench's modes and the IR's warnings are the library's, not the CLI's."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from exporter import checkpoint, resources
from exporter.config import PRESETS
from exporter.errors import ConfigError, shown
from exporter.settings import resolve_export

# What a TorchScript wrapper of the original states (its hoisted refine settings).
STATED = {"backbone_scale": 0.125, "refine_mode": "thresholding", "sample_pixels": 16_000}


@pytest.fixture()
def stating(weights, monkeypatch):
    """``resolve_weights`` gives ``weights`` stating ``settings``; records each call."""
    calls: list[tuple] = []

    def use(settings: dict[str, object]) -> None:
        stated = dataclasses.replace(weights, settings=dict(settings), warning="checkpoint states it")

        def resolve(path, backbone):
            calls.append((path, backbone))
            return stated

        monkeypatch.setattr(checkpoint, "resolve_weights", resolve)

    use({})
    return SimpleNamespace(use=use, calls=calls)


def test_settings_are_the_preset_then_what_the_file_states_then_what_is_given(stating):
    preset = PRESETS["1080p"]
    config, _ = resolve_export(preset="1080p")
    assert config == preset  # nothing stated, nothing given
    stating.use(STATED)
    config, _ = resolve_export(preset="1080p")
    assert (config.height, config.width) == (preset.height, preset.width)  # the preset's, not stated
    assert {name: getattr(config, name) for name in STATED} == STATED  # the file's over the preset's
    config, _ = resolve_export(preset="1080p", sample_pixels=32_000, refine_mode=None)
    assert config.sample_pixels == 32_000  # given over stated; None is not given
    assert (config.backbone_scale, config.refine_mode) == (0.125, "thresholding")


def test_the_weights_decide_the_backbone_and_their_warning_is_told(stating):
    told: list[str] = []
    config, weights = resolve_export("w.pth", "mobilenetv2", on_warning=told.append)
    assert stating.calls == [(Path("w.pth"), "mobilenetv2")]
    assert config.backbone == weights.backbone and told == ["checkpoint states it"]


def test_the_memory_refusal_is_a_typed_error_before_the_weights_are_read(stating, monkeypatch):
    monkeypatch.setattr(resources, "available_memory", lambda: 2e9)
    with pytest.raises(ConfigError, match=r"1080x1920 needs about 2\.1 GB of memory .* 2\.0 GB is available"):
        resolve_export(preset="1080p")
    assert stating.calls == []  # refused before a checkpoint was loaded
    config, _ = resolve_export(preset="720p")  # 1.6 GB fits
    assert config.height == 720


def test_settings_a_file_states_may_make_a_refused_size_valid(stating):
    """40x64 is too small at the preset's scale 1/4, not at the scale 1/2 the file states: the
    early refusal waits for the file (and stands when the file states nothing)."""
    size = {"height": 40, "width": 64}
    with pytest.raises(ConfigError, match="height 40 is not valid at backbone scale 0.25"):
        resolve_export(**size)
    stating.use({"backbone_scale": 0.5, "sample_pixels": 1600})
    config, _ = resolve_export(**size)
    assert (config.height, config.backbone_scale) == (40, 0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "8k"}, "preset '8k' is not one of 720p, 1080p"),
        ({"precision": "FP16"}, "precision: not export options; they are height, width"),
        ({"backbone": "resnet50", "bogus": 1}, "bogus: not export options"),
    ],
)
def test_what_is_not_a_setting_is_a_typed_error(kwargs, message, stating):
    with pytest.raises(ConfigError, match=message):
        resolve_export(**kwargs)
    assert stating.calls == []


# Arguments of the wrong type or beyond any number's range: each was a TypeError, ValueError
# or OverflowError from inside the library before it was a ConfigError (issue: API boundary).
WRONG_ARGUMENTS = [
    ({"threshold": 10**400}, "threshold <an integer of 1,329 bits> is not a finite number"),
    ({"backbone_scale": 10**400}, "backbone scale <an integer of 1,329 bits> is not a finite number"),
    ({"backbone_scale": 5e-324}, "backbone scale 5e-324 is below 1/65536"),
    ({"extra_outputs": 5}, "extra outputs 5 is not a list of names of err, ref"),
    ({"extra_outputs": [["err"]]}, "extra outputs [['err']] is not a list of names"),
    ({"extra_outputs": b"err"}, "extra outputs b'err' is not a list of names"),
    ({"model_type": {}}, "model type {} is not one of refine, base"),
    ({"model_type": ["base"]}, "model type ['base'] is not one of refine, base"),
    ({"dynamic": "yes"}, "dynamic 'yes' is not True or False"),
    ({"dynamic": 2}, "dynamic 2 is not True or False"),
    ({"height": 10**5000}, "height <an integer of 16,610 bits> is beyond what an int64 holds"),
    ({"preset": ["web"]}, "preset ['web'] is not one of 720p"),
    ({"preset": {}}, "preset {} is not one of 720p"),
    ({"backbone": ["resnet50"]}, "backbone ['resnet50'] is not one of mobilenetv2"),
    ({"backbone": {}}, "backbone {} is not one of mobilenetv2"),
    ({"checkpoint": 5}, "checkpoint 5 is not a path"),
    ({"checkpoint": ["x"]}, "checkpoint ['x'] is not a path"),
    ({"checkpoint": b"/tmp/x"}, "checkpoint b'/tmp/x' is not a path"),
    ({"checkpoint": "/tmp/a\0b"}, "checkpoint '/tmp/a\\x00b' holds a NUL character"),
    ({"on_warning": 5}, "on_warning 5 is not a function of one message"),
]


@pytest.mark.parametrize("kwargs, message", WRONG_ARGUMENTS, ids=[shown(kwargs) for kwargs, _ in WRONG_ARGUMENTS])
def test_arguments_of_the_wrong_type_are_typed_errors(kwargs, message, stating):
    """Every argument of ``resolve_export`` checked at the boundary; an export setting by
    ``ExportConfig`` itself (``dynamic="yes"`` was a config whose ``dynamic`` was 'yes')."""
    with pytest.raises(ConfigError) as info:
        resolve_export(**{"preset": "web", **kwargs})
    assert message in str(info.value)


def test_a_scale_no_size_fits_is_one_error_line(stating, cli, one_error, tmp_path):
    """``16 / 5e-324`` overflowed in ``min_size``: a traceback, before the scale had a floor."""
    result = cli("onnx", "--preset", "web", "--backbone-scale", "5e-324", "--output", tmp_path / "m.onnx")
    one_error(result, "backbone scale 5e-324 is below 1/65536")
    assert list(tmp_path.iterdir()) == []


def test_extra_outputs_as_the_command_line_writes_them(stating):
    assert resolve_export(extra_outputs="ref, err")[0].extra_outputs == ("err", "ref")
    assert resolve_export(extra_outputs=("ref",))[0].extra_outputs == ("ref",)


def test_the_api_needs_no_command_line():
    """``resolve_export`` runs in a process that never imports Typer (synthetic weights)."""
    code = (
        "import sys; from exporter.settings import resolve_export; config, weights = resolve_export(preset='4k'); "
        "print(config.height, weights.synthetic, 'typer' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.stdout.split() == ["2160", "True", "False"], result.stderr


# ---- bench's modes ----

EXPORTING = {"checkpoint": Path("c.pth"), "preset": "1080p", "runs": 3, "profile": True}


@pytest.mark.parametrize(
    "options, mode",
    [
        ({}, "export"),
        ({**EXPORTING, "json_path": Path("b.json"), "inference_precision": "f32", "profile": False}, "export"),
        ({"matte": Path("m.xml"), "frames": 3, "json_path": Path("b.json")}, "matte"),
        ({"server": "grpc://127.0.0.1:1", "frames": 3, "model_name": "m", "clients": 2, "timeout": 5.0}, "server"),
        ({"web": Path("m.onnx"), "runs": 3, "warmup": 0, "chromium": Path("c"), "json_path": Path("b.json")}, "web"),
    ],
)
def test_bench_modes(options, mode):
    from exporter.settings import bench_mode

    assert bench_mode(options) == mode


@pytest.mark.parametrize(
    "options, message",
    [
        ({"timeout": 5.0}, "--timeout applies with --server only"),
        ({"matte": Path("m.xml"), "clients": 2, "local": Path("l.xml")}, "--clients, --local apply with --server only"),
        ({"frames": 3}, "--frames applies with --matte or --server only"),
        ({"matte": Path("m.xml"), **EXPORTING}, "--checkpoint, --preset, --runs, --profile cannot apply with --matte"),
        ({"server": "grpc://h:1", "runs": 3}, "--runs cannot apply with --server: the server fixes the model$"),
        ({"server": "grpc://h:1", "matte": Path("m")}, "--server, --matte are separate modes of bench: give one"),
        ({"web": Path("m.onnx"), "server": "grpc://h:1"}, "--server, --web are separate modes of bench: give one"),
        ({"warmup": 1, "chromium": Path("c")}, "--warmup, --chromium apply with --web only"),
        ({"matte": Path("m.xml"), "warmup": 0}, "--warmup applies with --web only"),
        ({"web": Path("m.onnx"), "frames": 3}, "--frames applies with --matte or --server only"),
        ({"web": Path("m.onnx"), "preset": "web"}, "--preset cannot apply with --web: the ONNX fixes the model"),
        ({"web": Path("m.onnx"), "inference_precision": "bf16"}, "--inference-precision cannot apply with --web"),
    ],
)
def test_bench_refuses_options_of_another_mode(options, message):
    from exporter.settings import bench_mode

    with pytest.raises(ConfigError, match=message):
        bench_mode(options)


# ---- the IR's warnings ----


def test_an_int8_ir_says_what_verify_would_in_its_warnings(golden_config, weights, tmp_path, monkeypatch):
    """``export_checked_ir`` verifies an INT8 IR it made and returns each missed bar as a
    warning; an FP16 IR is not verified (the export and conversion are stand-ins here: the real
    ones are tests/test_export_int8.py's)."""
    from exporter import checked_ir
    from exporter.export import openvino

    def converted(onnx_path, output, precision, **kwargs):
        return openvino.IRExport(output, output.with_suffix(".bin"), precision, golden_config("mobilenetv2"),
                                 "", "", 0, 0)  # fmt: skip

    monkeypatch.setattr(
        openvino, "export_onnx", lambda config, weights, path, **kw: SimpleNamespace(path=path, durations={})
    )
    monkeypatch.setattr(openvino, "export_ir", converted)
    verified: list[Path] = []
    monkeypatch.setattr(checked_ir, "verify", lambda paths, weights: verified.extend(paths))
    missed: list[str] = []
    monkeypatch.setattr(checked_ir, "missed_bars", lambda result: missed)
    config = golden_config("mobilenetv2")
    fp16 = checked_ir.export_checked_ir(config, weights, tmp_path / "FP16" / "m.xml", "FP16")
    assert (fp16.warnings, verified) == ([], [])
    int8 = checked_ir.export_checked_ir(config, weights, tmp_path / "INT8" / "m.xml", "INT8")
    assert int8.warnings == [] and verified == [tmp_path / "INT8" / "m.xml"]  # verified, every bar held
    missed.append("pha patches off by > 0.05 0.0303 > 0.02 (f32)")
    int8 = checked_ir.export_checked_ir(config, weights, tmp_path / "INT8" / "m.xml", "INT8")
    (warning,) = int8.warnings
    assert warning.startswith(f"{tmp_path / 'INT8' / 'm.xml'} misses verify's INT8 bars on 4 synthetic composites: ")
    assert "pha patches off by > 0.05 0.0303 > 0.02 (f32)." in warning
