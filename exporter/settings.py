"""What an export is made of, resolved once for the command line and the Python API alike:
the preset, then the settings the weights file states, then the options given.

A TorchScript wrapper of the original holds its refine settings as attributes and an ONNX
export holds them as graph constants (``Weights.settings``): they replace the preset's
values, since the file was made with them; an option given replaces both, since the user
asked for it. Whether the result fits in memory is asked before any work starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.backbones import BACKBONES
from exporter.config import PRESETS, ExportConfig, quoted
from exporter.errors import ConfigError
from exporter.resources import require_memory

if TYPE_CHECKING:  # (the command line imports this module, and must not wait for torch)
    from exporter.checkpoint import Weights

__all__ = [
    "BENCH_OPTIONS",
    "DEFAULT_PRESET",
    "NOT_OPTIONS",
    "OPTION_FIELDS",
    "bench_mode",
    "option_names",
    "resolve_export",
]

DEFAULT_PRESET = "720p"

# ExportConfig fields that are not export options, each with why. Every other field is one
# (``OPTION_FIELDS``), so a field added to ExportConfig is an option of every export, or is
# added here on purpose (tests/test_cli.py checks that the command line declares each one).
NOT_OPTIONS = {
    # The weights decide it: ``backbone=`` only chooses the default checkpoint and the
    # synthetic recipe, and is checked against a given checkpoint.
    "backbone": "read from the checkpoint",
    # Each command sets it: ONNX is always FP32, and ``ir`` takes ``--precision``.
    "precision": "set by the command that writes the artifact",
}
OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(ExportConfig) if f.name not in NOT_OPTIONS)


def option_names(names: Iterable[str]) -> str:
    """``height, sample_pixels`` as the command line spells them: ``--height, --sample-pixels``."""
    return ", ".join(f"--{name.replace('_', '-')}" for name in names)


def _preset(name: str | None) -> ExportConfig:
    if name is None:
        return PRESETS[DEFAULT_PRESET]
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"preset {quoted(name)} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _checkpoint(checkpoint: object) -> Path | None:
    """``checkpoint`` as a path, or ``ConfigError`` for what no file can be named by (the API
    takes any object; ``Path`` would raise TypeError, and ``stat`` ValueError for a NUL)."""
    if checkpoint is None:
        return None
    path = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise ConfigError(f"checkpoint {quoted(checkpoint)} is not a path (a str or a pathlib.Path)")
    if "\x00" in path:
        raise ConfigError(f"checkpoint {quoted(path)} holds a NUL character, which no file name can")
    if not path:  # Path("") is ".", which would be refused as a directory
        raise ConfigError("checkpoint is an empty path; give a file")
    return Path(path)


def _check_arguments(backbone: object, on_warning: object) -> None:
    if backbone is not None and not isinstance(backbone, str):
        raise ConfigError(f"backbone {quoted(backbone)} is not one of {', '.join(BACKBONES)}")
    if on_warning is not None and not callable(on_warning):
        raise ConfigError(f"on_warning {quoted(on_warning)} is not a function of one message")


def _options(options: dict[str, object]) -> dict[str, object]:
    unknown = [name for name in options if name not in OPTION_FIELDS]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: not export options; they are {', '.join(OPTION_FIELDS)}")
    options = {name: value for name, value in options.items() if value is not None}
    if isinstance(options.get("extra_outputs"), str):  # the command line's "err,ref"; ExportConfig checks the names
        options["extra_outputs"] = tuple(n.strip() for n in str(options["extra_outputs"]).split(",") if n.strip())
    return options


def resolve_export(
    checkpoint: Path | str | None = None,
    backbone: str | None = None,
    preset: str | None = None,
    *,
    on_warning: Callable[[str], None] | None = None,
    **options: object,
) -> tuple[ExportConfig, Weights]:
    """The export's settings and its weights.

    Args:
        checkpoint: the original's weights (any form ``resolve_weights`` reads); None: the
            backbone's default checkpoint if it exists, else synthetic weights.
        backbone: the model when no checkpoint is given; checked against one that is.
        preset: a key of ``PRESETS`` (default ``720p``), the base of every setting.
        on_warning: told the weights' warning (synthetic weights, settings the file states)
            as soon as the weights are read, before a later refusal; it is also
            ``Weights.warning``.
        options: ``OPTION_FIELDS`` values (None: not given); ``extra_outputs`` also as a
            comma-separated string.

    Raises ``ConfigError`` for settings that are invalid or need more memory than this
    machine has now; a size too large for the memory before the weights are read (a large
    checkpoint is not loaded to refuse a size given by mistake).
    """
    # Every argument's type before torch is imported: a mistake costs no seconds.
    path = _checkpoint(checkpoint)
    _check_arguments(backbone, on_warning)
    base = _preset(preset)
    options = _options(options)
    try:
        wanted = base.replace(**options)
    except ConfigError as exc:  # unless the file states the settings that make it valid (a scale, a sample)
        early = exc
    else:
        early = None
        # A file never states a size, and the memory needed depends on the size alone.
        require_memory(wanted)
    from exporter.checkpoint import resolve_weights

    weights = resolve_weights(path, backbone)
    if weights.warning and on_warning is not None:
        on_warning(weights.warning)
    stated = {name: value for name, value in weights.settings.items() if name not in options}
    if early is not None and not stated:
        raise early
    config = base.replace(backbone=weights.backbone, **stated, **options)
    require_memory(config)
    return config, weights


# bench's modes: ``export`` (export every variant and time it), ``matte`` (time ``matte`` on
# one IR), ``server`` (time a V2 server) and ``web`` (one ONNX in the browser module beside the
# native runtimes); the option that chooses each; and the modes each option applies in (an
# option not named here, ``json_path``, applies in every mode). Here rather than in
# exporter.bench, which imports torch: ``bench --web`` and ``--server`` must not load it.
BENCH_MODES = ("server", "web", "matte")
_EXPORTING = ("checkpoint", "backbone", "preset", "height", "width", "sample_pixels", "model_type", "profile")
BENCH_OPTIONS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_EXPORTING, ("export",)),
    "runs": ("export", "web"),
    "matte": ("matte",),
    "frames": ("matte", "server"),
    **dict.fromkeys(("server", "model_name", "clients", "local", "timeout"), ("server",)),
    **dict.fromkeys(("web", "warmup", "chromium"), ("web",)),
    "inference_precision": ("export", "matte", "server"),  # --web times OpenVINO in f32, as ONNX Runtime computes
    "cpu_isa": ("export", "matte", "web"),  # the kernels of this process's OpenVINO, not a server's
}
# Why a mode refuses the options of the export: what fixes the model there.
_FIXED_BY = {
    "server": "the server fixes the model",
    "matte": "the IR fixes the model",
    "web": "the ONNX fixes the model, and OpenVINO runs it in f32 as ONNX Runtime does",
}


def _verb(names: list[str]) -> str:
    return "applies" if len(names) == 1 else "apply"


def bench_mode(options: dict[str, object]) -> str:
    """The mode the given ``options`` (option name -> value; None or False: not given) ask
    for: ``server``, ``web`` or ``matte`` when that option is given, else ``export``; raises
    ``ConfigError`` when two modes are asked for, or naming every option given that does not
    apply in the mode."""
    given = [name for name, value in options.items() if value is not None and value is not False]
    modes = [name for name in BENCH_MODES if name in given]
    if len(modes) > 1:
        raise ConfigError(f"{option_names(modes)} are separate modes of bench: give one of them")
    mode = modes[0] if modes else "export"
    refused = [name for name in given if mode not in BENCH_OPTIONS.get(name, (mode,))]
    # Options of another mode are named with the modes they belong to; the export's, with
    # what fixes the model in this one.
    by_modes: dict[tuple[str, ...], list[str]] = {}
    for name in refused:
        by_modes.setdefault(BENCH_OPTIONS[name], []).append(name)
    for owners, names in by_modes.items():
        if "export" not in owners:
            where = " or ".join(f"--{owner}" for owner in owners)
            raise ConfigError(f"{option_names(names)} {_verb(names)} with {where} only")
    if refused:
        raise ConfigError(f"{option_names(refused)} cannot apply with --{mode}: {_FIXED_BY[mode]}")
    return mode
