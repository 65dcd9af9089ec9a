"""The CPU's instruction sets that decide which kernels OpenVINO runs, and so how INT8 computes.

An INT8 convolution sums u8 x s8 products. Without VNNI (AVX2, AVX-512 without VNNI) oneDNN
multiplies them in pairs summed into 16 bits with saturation (``vpmaddubsw``); with VNNI
(``avx512_vnni``, ``avx_vnni``) or AMX the sums are 32-bit and do not saturate. One INT8 IR
therefore gives different results on different CPUs (issue 30: alpha mean |d| 4.4e-3 with
VNNI, 5.0e-3 with AVX2 kernels, same IR, same frames). So every report names the ISA
(``cpu_isa``), an INT8 IR records the one it was calibrated and checked on (``ISA_KEY``), and
loading it on a CPU of another kernel class warns once (``warn_isa_mismatch``).

oneDNN's ``ONEDNN_MAX_CPU_ISA`` (and OpenVINO's ``OV_CPU_MAX_ISA`` for its own kernels) cap the
ISA; both are read once, when OpenVINO's CPU plugin loads. ``limit_cpu_isa`` sets them for this
process, so that an AVX-512 VNNI machine computes INT8 as an AVX2 one does: the kernels'
arithmetic, not their timing. Torch-free: the deployment side imports it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from exporter.errors import ConfigError, shown

__all__ = [
    "CAP_VARIABLES",
    "ISA_CPU_KEY",
    "ISA_KEY",
    "ONEDNN_ISAS",
    "Isa",
    "IsaLevel",
    "check_kernels",
    "cpu_isa",
    "isa_metadata",
    "isa_mismatch",
    "limit_cpu_isa",
    "plugin_loaded",
    "probe_kernels",
    "warn_isa_mismatch",
]

CPUINFO = Path("/proc/cpuinfo")
# The INT8 IR's metadata: the kernel class it was calibrated (and, made from a checkpoint,
# verified) with, and that machine's description.
ISA_KEY = "int8_isa"
ISA_CPU_KEY = "int8_cpu"
OVERFLOW_FIX_KEY = "int8_overflow_fix"  # written by exporter.export.int8
# oneDNN's cap (its convolutions: the INT8 arithmetic) and OpenVINO's for its own kernels
# (Interpolate, TopK, Reduce kept AVX-512 under ONEDNN_MAX_CPU_ISA=AVX2 alone); set together.
CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA")
_LEGACY_CAP = "DNNL_MAX_CPU_ISA"  # oneDNN's older name, read when the new one is not set
_NO_CAP = ("", "ALL", "DEFAULT")

# OpenVINO's names for kernel families in its runtime model's ``primitiveType``
# (``jit_avx2_I8``, ``brgconv_avx512_1x1_I8``, ``brgconv_avx512_amx_I8``), lowest first.
KERNEL_FAMILIES = ("sse42", "avx", "avx2", "avx512", "amx")


@dataclass(frozen=True)
class IsaLevel:
    """One value of ``ONEDNN_MAX_CPU_ISA``: the ``/proc/cpuinfo`` flags it needs (its own and
    those of the levels it includes) and the kernel family OpenVINO then names."""

    name: str
    flags: tuple[str, ...]
    family: str


_AVX2 = ("sse4_1", "avx", "avx2", "fma")
_AVX512 = (*_AVX2, "avx512f", "avx512bw", "avx512vl", "avx512dq")
_BF16 = (*_AVX512, "avx512_vnni", "avx512_bf16")
_FP16 = (*_BF16, "avx512_fp16")
_AMX = (*_FP16, "amx_tile", "amx_int8", "amx_bf16")
# oneDNN's ISA names (cpu_isa_traits.hpp), in its order; AVX2_VNNI is not below AVX512_CORE.
ONEDNN_ISAS: dict[str, IsaLevel] = {
    level.name: level
    for level in (
        IsaLevel("SSE41", ("sse4_1",), "sse42"),
        IsaLevel("AVX", ("sse4_1", "avx"), "avx"),
        IsaLevel("AVX2", _AVX2, "avx2"),
        IsaLevel("AVX2_VNNI", (*_AVX2, "avx_vnni"), "avx2"),
        IsaLevel("AVX2_VNNI_2", (*_AVX2, "avx_vnni", "avx_vnni_int8", "avx_ne_convert"), "avx2"),
        IsaLevel("AVX512_CORE", _AVX512, "avx512"),
        IsaLevel("AVX512_CORE_VNNI", (*_AVX512, "avx512_vnni"), "avx512"),
        IsaLevel("AVX512_CORE_BF16", _BF16, "avx512"),
        IsaLevel("AVX512_CORE_FP16", _FP16, "avx512"),
        IsaLevel("AVX512_CORE_AMX", _AMX, "amx"),
        IsaLevel("AVX512_CORE_AMX_FP16", (*_AMX, "amx_fp16"), "amx"),
    )
}
# Every flag a level needs: what ``Isa.flags`` keeps of /proc/cpuinfo.
ISA_FLAGS = frozenset(flag for level in ONEDNN_ISAS.values() for flag in level.flags)
# The flags a report shows (those that change which kernels run; bench's line since issue 23).
SHOWN_FLAGS = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_fp16")

_SUMS_32 = "INT8 products summed in 32 bits (VNNI)"
_SUMS_16 = "INT8 products summed in pairs into 16 bits with saturation (vpmaddubsw, no VNNI)"
# The INT8 kernel classes, best first: a name, the flags it needs, how it sums INT8 products.
KERNEL_CLASSES: tuple[tuple[str, frozenset[str], str], ...] = (
    ("AMX", frozenset(_AMX), "INT8 on AMX tiles, products summed in 32 bits"),
    ("AVX-512 VNNI", frozenset((*_AVX512, "avx512_vnni")), _SUMS_32),
    ("AVX2 VNNI", frozenset((*_AVX2, "avx_vnni")), _SUMS_32),
    ("AVX-512", frozenset(_AVX512), _SUMS_16),
    ("AVX2", frozenset(_AVX2), _SUMS_16),
    ("pre-AVX2", frozenset(), "INT8 on SSE4.1 or AVX kernels (no AVX2)"),
)


@dataclass(frozen=True)
class Isa:
    """What this CPU offers OpenVINO's kernels, and what the cap (``ONEDNN_MAX_CPU_ISA``) leaves."""

    model: str
    cores: int
    flags: frozenset[str]  # of ``ISA_FLAGS``, those the CPU has
    cap: str | None = None  # oneDNN's name of the cap, where one is set
    # The primitive types of ``limit_cpu_isa``'s probe, where the cap was checked.
    kernels: tuple[str, ...] = field(default=())

    @property
    def usable(self) -> frozenset[str]:
        """The flags kernels may use: the CPU's, less what the cap leaves out."""
        if self.cap is None:
            return self.flags
        return self.flags & frozenset(ONEDNN_ISAS[self.cap].flags)

    def _kernel_class(self) -> tuple[str, frozenset[str], str]:
        return next(entry for entry in KERNEL_CLASSES if entry[1] <= self.usable)

    @property
    def kernel_isa(self) -> str:
        """The INT8 kernel class: ``AMX``, ``AVX-512 VNNI``, ``AVX2 VNNI``, ``AVX-512``, ``AVX2``."""
        return self._kernel_class()[0]

    @property
    def int8_arithmetic(self) -> str:
        return self._kernel_class()[2]

    @property
    def vnni(self) -> bool:
        return self.kernel_isa in ("AMX", "AVX-512 VNNI", "AVX2 VNNI")

    @property
    def bf16(self) -> bool:
        """Whether OpenVINO's default arithmetic (``auto``) is bf16 here."""
        return bool({"avx512_bf16", "amx_bf16"} & self.usable)

    @property
    def levels(self) -> list[str]:
        """The ``ONEDNN_MAX_CPU_ISA`` values this CPU can be capped at."""
        return [name for name, level in ONEDNN_ISAS.items() if set(level.flags) <= self.flags]

    @property
    def description(self) -> str:
        """``AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2) on <model>, 2 cores; avx2 avx512f avx512_vnni``."""
        cap = f" ({CAP_VARIABLES[0]}={self.cap})" if self.cap else ""
        flags = [flag for flag in SHOWN_FLAGS if flag in self.flags] or ["none of " + ", ".join(SHOWN_FLAGS)]
        return f"{self.kernel_isa} kernels{cap} on {self.model}, {self.cores} cores; {' '.join(flags)}"

    def to_dict(self) -> dict:
        return {
            "description": self.description,
            "model": self.model,
            "cores": self.cores,
            "flags": sorted(self.flags),
            "cap": self.cap,
            "kernel_isa": self.kernel_isa,
            "int8_arithmetic": self.int8_arithmetic,
            "vnni": self.vnni,
            "bf16": self.bf16,
            "kernels": list(self.kernels),
        }


def _level(name: str) -> IsaLevel:
    level = ONEDNN_ISAS.get(name.strip().upper())
    if level is None:
        raise ConfigError(f"CPU ISA {shown(name)} is not one of oneDNN's: {', '.join(ONEDNN_ISAS)}")
    return level


def _cap(environ: Mapping[str, str]) -> str | None:
    """The cap oneDNN reads from ``environ``, as it reads it: the first of its two names that is
    set and not empty, upper-cased (checked: ``avx2`` gives ``jit_avx2`` kernels), not stripped
    (a padded value is one it ignores); None for none (or a value it ignores)."""
    value = (environ.get(CAP_VARIABLES[0]) or environ.get(_LEGACY_CAP) or "").upper()
    return value if value in ONEDNN_ISAS else None


def cpu_isa(cpuinfo: str | None = None, environ: Mapping[str, str] | None = None) -> Isa:
    """This CPU's model, cores and ISA flags from ``/proc/cpuinfo`` (or the text ``cpuinfo``),
    with the cap set in ``environ`` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # the first processor's block is every core's
        if ":" in line:
            key, value = (part.strip() for part in line.split(":", 1))
            fields.setdefault(key, value)
    model = fields.get("model name") or ("?" if cpuinfo else f"no {CPUINFO}")
    flags = frozenset(fields.get("flags", "").split()) & ISA_FLAGS
    return Isa(model, os.cpu_count() or 1, flags, _cap(environ))


def isa_metadata(isa: Isa | None = None) -> dict[str, str]:
    """What an INT8 IR made here records of this machine (``ISA_KEY``, ``ISA_CPU_KEY``)."""
    isa = isa or cpu_isa()
    return {ISA_KEY: isa.kernel_isa, ISA_CPU_KEY: isa.description}


def isa_mismatch(path: Path | str, metadata: Mapping[str, str], isa: Isa | None = None) -> str | None:
    """What differs when the INT8 IR at ``path`` runs here on kernels of another class than
    those it was calibrated and checked with; None when it does not (or it does not say)."""
    recorded = metadata.get(ISA_KEY)
    if metadata.get("precision") != "INT8" or not recorded:
        return None
    # 7-bit weights (NNCF's overflow fix on every layer, exporter.export.int8) never saturate
    # the 16-bit pair sums of CPUs without VNNI: every kernel class computes the same sums.
    if metadata.get(OVERFLOW_FIX_KEY) == "enable":
        return None
    isa = isa or cpu_isa()
    if recorded == isa.kernel_isa:
        return None
    where = metadata.get(ISA_CPU_KEY) or f"{recorded} kernels"
    return (
        f"{shown(str(path))} is INT8 calibrated and checked on {shown(where)}, and runs here on {isa.description}: "
        f"{isa.int8_arithmetic}, so its results differ from those checked; `bgm-export verify {shown(str(path))} "
        "--images DIR` on this machine, with frames of your own, judges them"
    )


_log = logging.getLogger("bgm-export.isa")
_warned: set[tuple[str, str, str]] = set()
_warned_lock = threading.Lock()


def warn_isa_mismatch(path: Path | str, metadata: Mapping[str, str]) -> str | None:
    """Say ``isa_mismatch`` once a process for each IR and machine: on the ``bgm-export.isa``
    logger where logging is set up (a server's log), else as one ``warning:`` line on stderr
    (a command's). Returns what was said, or None. Never refuses: the IR may well be good
    enough here, which only ``verify`` on this machine can tell."""
    isa = cpu_isa()
    message = isa_mismatch(path, metadata, isa)
    if message is None:
        return None
    key = (str(path), metadata.get(ISA_KEY, ""), isa.kernel_isa)
    with _warned_lock:
        if key in _warned:
            return None
        _warned.add(key)
    if _log.hasHandlers():
        _log.warning(message)
    else:  # logging's last resort prints the bare message: a command's warnings say what they are
        from exporter.redact import printable

        sys.stderr.write(f"warning: {printable(message)}\n")
    return message


def kernel_family(primitive_type: str) -> str | None:
    """The ISA family an OpenVINO primitive type names (``brgconv_avx512_amx_I8``: ``amx``)."""
    return next((family for family in reversed(KERNEL_FAMILIES) if family in primitive_type), None)


# The layers whose kernels are oneDNN's convolutions: the INT8 arithmetic.
_CONVOLUTIONS = ("Convolution", "Deconvolution")


def check_kernels(name: str, kernels: Iterable[tuple[str, str]]) -> None:
    """``ConfigError`` unless the kernels (layer type, primitive type) of a model compiled under
    the cap ``name`` show it took effect: none of a family above the cap's, and a convolution of
    a family at or below it (oneDNN has no INT8 convolution for some ISAs: under an AVX cap it
    runs SSE4.1's). OpenVINO's names do not tell VNNI apart: AVX512_CORE and
    AVX512_CORE_VNNI look alike here."""
    level = _level(name)
    top = KERNEL_FAMILIES.index(level.family)
    kernels = list(kernels)
    above = sorted({p for _, p in kernels if (f := kernel_family(p)) and KERNEL_FAMILIES.index(f) > top})
    convolutions = sorted({p for t, p in kernels if t in _CONVOLUTIONS})
    if above or not any(kernel_family(p) for p in convolutions):
        shown_kernels = ", ".join(above or convolutions) or "none"
        raise ConfigError(
            f"{CAP_VARIABLES[0]}={level.name} did not take effect: OpenVINO ran "
            f"{'kernels above it' if above else 'convolutions'}: {shown_kernels}"
        )


def plugin_loaded() -> bool:
    """Whether OpenVINO's CPU plugin is loaded in this process (it stays once loaded)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("openvino_intel_cpu_plugin" in line for line in maps)
    except OSError:  # no /proc: what this package loaded is all that can be told
        from exporter import runtime

        return bool(runtime._core)


def _probe_model() -> object:
    """An INT8 convolution as NNCF leaves one (a FakeQuantize on the activations, i8 weights
    scaled back to float): OpenVINO runs it on oneDNN's INT8 kernels."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 16, 8, 8], np.float32, name="x")
    low, high = ops.constant(np.float32(0)), ops.constant(np.float32(2.55))
    quantized = ops.fake_quantize(x, low, high, low, high, 256)
    weights = ops.multiply(
        ops.convert(ops.constant(np.ones((16, 16, 3, 3), np.int8)), np.float32),
        ops.constant(np.full((16, 1, 1, 1), 0.01, np.float32)),
    )
    y = ops.convolution(quantized, weights, [1, 1], [1, 1], [1, 1], [1, 1])
    return ov.Model([y], [x], "isa-probe")


def probe_kernels() -> list[tuple[str, str]]:
    """The (layer type, primitive type) of every kernel OpenVINO's CPU plugin runs the probe
    with in this process (loading the plugin if it is not yet)."""
    from exporter.runtime import openvino_core

    compiled = openvino_core().compile_model(_probe_model(), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    kernels = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "primitiveType" in info and "layerType" in info:
            kernels.append((info["layerType"].astype(str), info["primitiveType"].astype(str)))
    return kernels


def limit_cpu_isa(name: str) -> Isa:
    """Cap OpenVINO's CPU kernels in this process at oneDNN's ISA ``name`` (``AVX2``,
    ``AVX512_CORE_VNNI``, ...; any case), to judge an INT8 IR as a CPU with only that ISA
    computes it. ``ConfigError`` for a name oneDNN does not know, an ISA this CPU lacks (a cap
    only lowers), OpenVINO's CPU plugin already loaded here under another cap (the cap is read
    once, when it loads: start a new process), or a cap that did not take effect (a probe's
    kernels checked by ``check_kernels``). Returns the ISA now in force, with the probe's
    kernels. The cap stays for the process's life, and its children inherit it."""
    level = _level(name)
    isa = cpu_isa()
    missing = [flag for flag in level.flags if flag not in isa.flags]
    if missing:
        levels = ", ".join(isa.levels) or "none"
        raise ConfigError(
            f"CPU ISA {level.name} needs {' '.join(missing)}, which this CPU ({isa.model}) lacks; a cap can only "
            f"lower the kernels it runs: it can take {levels}"
        )
    current = {variable: os.environ.get(variable, "").strip().upper() for variable in CAP_VARIABLES}
    if plugin_loaded() and any(value != level.name for value in current.values()):
        loaded = ", ".join(f"{v}={value}" for v, value in current.items() if value) or "no cap"
        raise ConfigError(
            f"OpenVINO's CPU plugin is already loaded in this process ({loaded}), and reads "
            f"{CAP_VARIABLES[0]} only when it loads: cap it at {level.name} in a new process "
            f"(--cpu-isa on the command, or {CAP_VARIABLES[0]}={level.name} {CAP_VARIABLES[1]}={level.name} "
            "in its environment)"
        )
    for variable in CAP_VARIABLES:
        os.environ[variable] = level.name
    kernels = probe_kernels()
    check_kernels(level.name, kernels)
    return replace(cpu_isa(), kernels=tuple(sorted({p for _, p in kernels if kernel_family(p)})))
