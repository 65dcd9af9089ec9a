"""The CPU's ISA in every report, the ISA an INT8 IR records, the warning when it runs on
another, and ``--cpu-isa``: INT8 judged as a CPU with less computes it (exporter.isa, issue 30).

The cap is read once a process, when OpenVINO's CPU plugin loads, and this process's plugin
runs uncapped for every other test: caps that must take effect are set in child processes."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import isa as isa_module
from exporter.bench import MatteBench, format_matte_bench
from exporter.card import _precision_table
from exporter.errors import ConfigError
from exporter.isa import (
    CAP_VARIABLES,
    ISA_CPU_KEY,
    ISA_KEY,
    OVERFLOW_FIX_KEY,
    check_kernels,
    cpu_isa,
    isa_mismatch,
    kernel_family,
    limit_cpu_isa,
    probe_kernels,
)
from exporter.resources import cpu_description
from exporter.runtime import load_runner, openvino_core
from exporter.verify.report import format_report
from exporter.verify.run import VerifyReport
from helpers import CLI_COMMAND

AVX2 = "sse4_1 avx avx2 fma"
AVX512 = f"{AVX2} avx512f avx512bw avx512vl avx512dq"
AVX512_VNNI = f"{AVX512} avx512_vnni"
AMX = f"{AVX512_VNNI} avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16"
EVERY_FLAG = " ".join(sorted(isa_module.ISA_FLAGS))
HOST = cpu_isa(environ={})  # this machine, uncapped


def cpuinfo(flags: str, model: str = "Test CPU") -> str:
    """/proc/cpuinfo as Linux writes it, two processors alike."""
    block = f"processor\t: {{}}\nmodel name\t: {model}\nflags\t\t: fpu sse2 {flags}\n"
    return "\n".join(block.format(i) for i in range(2))


@pytest.fixture()
def no_cap(monkeypatch) -> None:
    for variable in (*CAP_VARIABLES, "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture()
def fake_cpu(monkeypatch, tmp_path, no_cap):
    """``fake_cpu(flags)``: this process's /proc/cpuinfo, as exporter.isa reads it, has ``flags``."""

    def make(flags: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo(flags))
        monkeypatch.setattr(isa_module, "CPUINFO", path)

    return make


@pytest.mark.parametrize(
    ("flags", "cap", "kernel_isa", "vnni", "bf16"),
    [
        (AVX2, None, "AVX2", False, False),
        (f"{AVX2} avx_vnni", None, "AVX2 VNNI", True, False),
        (AVX512, None, "AVX-512", False, False),  # Skylake-X: AVX-512 but pairs saturate as AVX2's do
        (AVX512_VNNI, None, "AVX-512 VNNI", True, False),
        (AVX512_VNNI, "AVX2", "AVX2", False, False),
        (AVX512_VNNI, "avx512_core", "AVX-512", False, False),
        (AMX, None, "AMX", True, True),
        (AMX, "AVX512_CORE_BF16", "AVX-512 VNNI", True, True),
        (AMX, "ALL", "AMX", True, True),  # oneDNN's "no cap"
        (AMX, "AVX3", "AMX", True, True),  # a value oneDNN ignores caps nothing
        ("sse4_1", None, "pre-AVX2", False, False),
    ],
)
def test_the_kernel_class_follows_the_flags_and_the_cap(flags, cap, kernel_isa, vnni, bf16):
    environ = {} if cap is None else {"ONEDNN_MAX_CPU_ISA": cap}
    isa = cpu_isa(cpuinfo(flags), environ)
    assert (isa.kernel_isa, isa.vnni, isa.bf16) == (kernel_isa, vnni, bf16)
    assert ("saturation" in isa.int8_arithmetic) == (kernel_isa in ("AVX2", "AVX-512"))


def test_the_description_names_the_kernels_the_cap_and_the_cpu():
    capped = cpu_isa(cpuinfo(AVX512_VNNI), {"ONEDNN_MAX_CPU_ISA": "avx2"})
    assert capped.description == (
        f"AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2) on Test CPU, {os.cpu_count()} cores; avx2 avx512f avx512_vnni"
    )
    assert cpu_isa(cpuinfo(AVX512_VNNI), {"DNNL_MAX_CPU_ISA": "AVX2"}).cap == "AVX2"  # oneDNN's older name
    # As oneDNN reads them: an empty new name falls back to the older one; a padded value is
    # ignored (no cap), a lower-case one is not.
    assert cpu_isa(cpuinfo(AVX512_VNNI), {"ONEDNN_MAX_CPU_ISA": "", "DNNL_MAX_CPU_ISA": "AVX2"}).cap == "AVX2"
    assert cpu_isa(cpuinfo(AVX512_VNNI), {"ONEDNN_MAX_CPU_ISA": " AVX2"}).cap is None
    assert cpu_isa(cpuinfo(AVX512_VNNI), {"ONEDNN_MAX_CPU_ISA": "avx2"}).cap == "AVX2"
    native = cpu_isa(cpuinfo(AVX512_VNNI), {})
    assert native.description.startswith("AVX-512 VNNI kernels on Test CPU,") and native.cap is None
    assert native.to_dict()["kernel_isa"] == "AVX-512 VNNI" and capped.to_dict()["cap"] == "AVX2"
    assert cpu_isa("", {}).description.endswith("none of " + ", ".join(isa_module.SHOWN_FLAGS))
    assert cpu_isa(cpuinfo(AVX2), {}).levels == ["SSE41", "AVX", "AVX2"]


@pytest.mark.parametrize(
    ("cap", "kernels", "problem"),
    [
        ("AVX2", [("Convolution", "jit_avx2_I8"), ("Subgraph", "jit_avx2_f32"), ("Reorder", "jit_uni_I8")], None),
        ("AVX2", [("Convolution", "brgconv_avx512_I8")], "above it: brgconv_avx512_I8"),
        ("AVX2", [("Convolution", "jit_avx2_I8"), ("Interpolate", "jit_avx512_f32")], "above it: jit_avx512_f32"),
        ("AVX2", [("Convolution", "ref_any_I8")], "convolutions: ref_any_I8"),
        # oneDNN has no INT8 convolution for AVX: under its cap SSE4.1's run, and the cap held.
        ("AVX", [("Convolution", "jit_sse42_I8")], None),
        ("AVX", [("Convolution", "jit_avx2_I8")], "above it: jit_avx2_I8"),
        ("AVX2", [("Subgraph", "jit_avx2_f32")], "convolutions: none"),
        ("AVX512_CORE_VNNI", [("Convolution", "brgconv_avx512_1x1_I8")], None),
        ("AVX512_CORE_BF16", [("Convolution", "brgconv_avx512_amx_I8")], "above it"),
        ("AVX512_CORE_AMX", [("Convolution", "brgconv_avx512_amx_I8")], None),
        ("AVX512_CORE_AMX", [("Convolution", "brgconv_avx512_I8")], None),  # AMX is picked by shape
    ],
)
def test_kernels_show_whether_a_cap_took_effect(cap, kernels, problem):
    if problem is None:
        check_kernels(cap, kernels)
    else:
        with pytest.raises(ConfigError, match=f"ONEDNN_MAX_CPU_ISA={cap} did not take effect: .*{re.escape(problem)}"):
            check_kernels(cap, kernels)


def test_kernel_families_are_read_from_openvino_names():
    assert [kernel_family(n) for n in ("brgconv_avx512_amx_I8", "jit_avx2_1x1_I8", "jit_avx512_f32")] == [
        "amx", "avx2", "avx512"
    ]  # fmt: skip
    assert kernel_family("jit_uni_I8") is None and kernel_family("gemm_mlas_f32") is None


def test_an_isa_the_cpu_lacks_or_that_does_not_exist_is_refused(fake_cpu, cli, one_error, golden_irs):
    fake_cpu(AVX2)
    with pytest.raises(ConfigError, match="AVX512_CORE_VNNI needs avx512f .* avx512_vnni, which this CPU .* lacks"):
        limit_cpu_isa("avx512_core_vnni")
    with pytest.raises(ConfigError, match="it can take SSE41, AVX, AVX2$"):
        limit_cpu_isa("AVX2_VNNI")
    one_error(cli("verify", golden_irs["FP32"], "--cpu-isa", "avx3"), "CPU ISA avx3 is not one of oneDNN's: SSE41")
    assert not any(variable in os.environ for variable in CAP_VARIABLES)  # refused before anything was set


def test_a_cap_is_refused_once_the_plugin_loaded_without_it(fake_cpu, cli, one_error, golden_irs):
    """This process's plugin runs uncapped: a cap asked for now would be silently ignored."""
    openvino_core()  # loaded, if no test has yet
    fake_cpu(EVERY_FLAG)  # whatever this machine has: the refusal is the loaded plugin's
    with pytest.raises(ConfigError, match="already loaded in this process \\(no cap\\).*cap it at AVX2 in a new"):
        limit_cpu_isa("AVX2")
    expected = "OpenVINO's CPU plugin is already loaded in this process"
    one_error(cli("verify", golden_irs["FP32"], "--cpu-isa", "avx2"), expected)
    one_error(cli("bench", "--matte", golden_irs["FP32"], "--frames", "1", "--cpu-isa", "AVX2"), expected)
    assert not any(variable in os.environ for variable in CAP_VARIABLES)
    one_error(cli("bench", "--server", "grpc://127.0.0.1:1", "--cpu-isa", "AVX2"), "--cpu-isa cannot apply with")


def test_a_cap_set_after_the_plugin_loaded_is_caught_by_its_kernels(monkeypatch):
    """The environment says AVX2, but the plugin computed before it did: the probe's kernels
    tell (on a machine whose kernels are above AVX2; on an AVX2 one, the cap is its own)."""
    # A first compilation uncapped: oneDNN reads its cap then (and the plugin's own kernels at
    # load), so that this process's kernels stay the CPU's whatever the test sets after.
    probe_kernels()
    for variable in CAP_VARIABLES:
        monkeypatch.setenv(variable, "AVX2")
    if "avx2" not in HOST.flags:
        pytest.skip("this CPU has no AVX2")
    if {"avx512f", "amx_int8"} & HOST.flags:
        with pytest.raises(ConfigError, match="ONEDNN_MAX_CPU_ISA=AVX2 did not take effect: .*avx512"):
            limit_cpu_isa("AVX2")
    else:
        assert limit_cpu_isa("AVX2").kernel_isa == "AVX2"


CHILD = """
import json, sys
from exporter.errors import ConfigError
from exporter.isa import limit_cpu_isa, plugin_loaded
from exporter.runtime import openvino_core

before = plugin_loaded()
isa = limit_cpu_isa("avx2")
compiled = openvino_core().compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
kernels = sorted({(i["layerType"].astype(str), i["primitiveType"].astype(str))
                  for i in (op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops())
                  if "primitiveType" in i})
again = limit_cpu_isa("AVX2").kernel_isa
try:
    limit_cpu_isa(sys.argv[2])
    other = "accepted"
except ConfigError as exc:
    other = str(exc)
print(json.dumps({"before": before, "isa": isa.to_dict(), "kernels": kernels, "again": again, "other": other}))
"""


def _uncapped_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (*CAP_VARIABLES, "DNNL_MAX_CPU_ISA")}


@pytest.mark.skipif("avx2" not in HOST.flags, reason="this CPU has no AVX2")
def test_the_cap_takes_effect_in_a_new_process(golden_irs):
    """Capped at AVX2 before the plugin loads, every kernel of the FP32 IR is AVX2's (an
    AVX-512 machine runs AVX-512 ones without the cap: checked here, in this process)."""
    other = "AVX512_CORE" if "avx512f" in HOST.flags else "AVX2_VNNI"  # another cap, if the CPU has it
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(golden_irs["FP32"]), other],
        capture_output=True, text=True, timeout=120, env=_uncapped_environment(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["before"] is False
    assert answer["isa"]["description"].startswith("AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2) on ")
    assert answer["isa"]["kernel_isa"] == answer["again"] == "AVX2" and "jit_avx2_I8" in answer["isa"]["kernels"]
    families = {kernel_family(primitive) for _, primitive in answer["kernels"]} - {None}
    assert families == {"avx2"}, answer["kernels"]
    assert any(layer == "Convolution" and "avx2" in primitive for layer, primitive in answer["kernels"])
    if other in HOST.levels:
        assert "already loaded in this process (ONEDNN_MAX_CPU_ISA=AVX2, OV_CPU_MAX_ISA=AVX2)" in answer["other"]
    # Without the cap, this process's plugin picks the CPU's best: what the child was kept from.
    if "avx512f" in HOST.flags and not os.environ.get("ONEDNN_MAX_CPU_ISA"):
        compiled = openvino_core().compile_model(str(golden_irs["FP32"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        primitives = {op.get_rt_info()["primitiveType"].astype(str) for op in compiled.get_runtime_model().get_ops()
                      if "primitiveType" in op.get_rt_info()}  # fmt: skip
        assert any(kernel_family(p) in ("avx512", "amx") for p in primitives)


@pytest.mark.skipif("avx2" not in HOST.flags, reason="this CPU has no AVX2")
def test_verify_with_cpu_isa_reports_the_capped_kernels(golden_irs, tmp_path):
    """`verify --cpu-isa avx2` as users run it: the report's text and JSON name the cap, and
    the kernels that show it took effect are said."""
    numbers = tmp_path / "verify.json"
    result = subprocess.run(
        [*CLI_COMMAND, "verify", str(golden_irs["FP32"]), "--cases", "1", "--cpu-isa", "avx2", "--json", str(numbers)],
        capture_output=True, text=True, timeout=300, env=_uncapped_environment(), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("CPU: "))
    assert line.startswith("CPU: AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2) on ") and "16 bits with saturation" in line
    assert "(checked: jit_avx2_I8" in result.stderr
    cpu = json.loads(numbers.read_text())["cpu"]
    assert cpu["cap"] == "AVX2" and cpu["kernel_isa"] == "AVX2" and cpu["vnni"] is False


def test_every_report_names_the_isa(monkeypatch, no_cap):
    """verify's text and JSON, the card's precision table, and bench's CPU line."""
    isa = cpu_isa(cpuinfo(AVX512_VNNI), {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    report = VerifyReport(checkpoint="synthetic", case_names=["a"], artifacts=[], isa=isa)
    assert f"CPU: {isa.description}; {isa.int8_arithmetic}" in format_report(report).splitlines()
    assert report.to_dict()["cpu"] == isa.to_dict()
    assert f"Measured on {isa.description} ({isa.int8_arithmetic})." in _precision_table(report, [])
    bare = VerifyReport(checkpoint="synthetic", case_names=["a"], artifacts=[])
    assert "CPU: " not in format_report(bare) and bare.to_dict()["cpu"] is None

    assert cpu_description() == cpu_isa().description and cpu_isa().cap is None
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    bench = MatteBench("m.xml", (192, 320), 1, 1.0, 1.0, 1.0, {}, cpu_description())
    assert f"CPU: {cpu_isa().description}" in format_matte_bench(bench)
    assert " kernels (ONEDNN_MAX_CPU_ISA=AVX2) on " in cpu_isa().description


@pytest.mark.slow
def test_an_int8_ir_records_the_isa_it_was_calibrated_on(int8_ir):
    from exporter.artifact import artifact_metadata

    metadata = artifact_metadata(int8_ir)
    here = cpu_isa()
    assert metadata[ISA_KEY] == here.kernel_isa and metadata[ISA_CPU_KEY] == here.description
    assert isa_mismatch(int8_ir, metadata, here) is None  # no warning where it was made


def _crafted_ir(source: Path, folder: Path, precision: str, recorded: str) -> Path:
    """``source`` (an IR) copied with its metadata saying ``precision`` and, if given, the ISA
    it was calibrated with, ``recorded``."""
    folder.mkdir()
    xml = folder / "crafted.xml"
    shutil.copy(source.with_suffix(".bin"), xml.with_suffix(".bin"))
    text = re.sub(r'<precision value="[^"]*"', f'<precision value="{precision}"', source.read_text())
    record = f'<{ISA_KEY} value="{recorded}" /><{ISA_CPU_KEY} value="{recorded} kernels on Test CPU" />'
    xml.write_text(text.replace("</model_info>", f"{record}</model_info>", 1))
    return xml


def test_an_int8_ir_checked_on_another_isa_warns_once_on_load(golden_irs, tmp_path, caplog, monkeypatch, no_cap):
    monkeypatch.setattr(isa_module, "_warned", set())
    here = cpu_isa().kernel_isa
    elsewhere = "AMX" if here != "AMX" else "AVX2"
    crafted = _crafted_ir(golden_irs["FP32"], tmp_path / "elsewhere", "INT8", elsewhere)
    with caplog.at_level(logging.WARNING, logger="bgm-export.isa"):
        for _ in range(2):  # loaded twice (verify's f32 and bf16 runs): said once
            load_runner(crafted, "openvino").close()
    (record,) = [r for r in caplog.records if r.name == "bgm-export.isa"]
    message = record.getMessage()
    assert f"is INT8 calibrated and checked on {elsewhere} kernels on Test CPU, and runs here on " in message
    assert f"runs here on {cpu_isa().description}: {cpu_isa().int8_arithmetic}" in message
    assert "bgm-export verify" in message
    assert "--images DIR" in message and "\n" not in message

    # Not said: the same class, or an IR that is not INT8 (its arithmetic is the CPU's floating point),
    # or one whose 7-bit weights compute the same sums on every class (the overflow fix).
    caplog.clear()
    assert isa_module.isa_mismatch(crafted, {"precision": "INT8", ISA_KEY: elsewhere}) is not None
    assert (
        isa_module.isa_mismatch(crafted, {"precision": "INT8", ISA_KEY: elsewhere, OVERFLOW_FIX_KEY: "enable"}) is None
    )
    for folder, precision, recorded in (("same", "INT8", here), ("fp32", "FP32", elsewhere)):
        load_runner(_crafted_ir(golden_irs["FP32"], tmp_path / folder, precision, recorded), "openvino").close()
    assert not [r for r in caplog.records if r.name == "bgm-export.isa"]


def test_the_warning_is_one_stderr_line_where_logging_is_not_set_up(golden_irs, tmp_path, capsys, monkeypatch):
    """A command (no logging configured) shows it as its other warnings: ``warning: ...``."""
    monkeypatch.setattr(isa_module, "_warned", set())
    monkeypatch.setattr(isa_module._log, "propagate", False)  # pytest's capture handler is on the root
    crafted = _crafted_ir(golden_irs["FP32"], tmp_path / "elsewhere", "INT8", "a machine from elsewhere")
    metadata = {"precision": "INT8", ISA_KEY: "a machine from elsewhere"}
    assert isa_module.warn_isa_mismatch(crafted, metadata) is not None
    assert isa_module.warn_isa_mismatch(crafted, metadata) is None
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {crafted} is INT8 calibrated"), lines
