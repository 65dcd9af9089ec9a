"""What an export is made of, resolved once for the command line and the Python API alike:
the preset, then the settings the weights file states, then the options given.

A TorchScript wrapper of the original holds its refine settings as attributes and an ONNX
export holds them as graph constants (``Weights.settings``): they replace the preset's
values, since the file was made with them; an option given replaces both, since the user
asked for it. Whether the result fits in memory is asked before any work starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.config import PRESETS, ExportConfig
from exporter.errors import ConfigError
from exporter.resources import require_memory

if TYPE_CHECKING:  # (the command line imports this module, and must not wait for torch)
    from exporter.checkpoint import Weights

__all__ = ["DEFAULT_PRESET", "NOT_OPTIONS", "OPTION_FIELDS", "option_names", "resolve_export"]

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
    if name not in PRESETS:
        raise ConfigError(f"preset {name!r} is not one of {', '.join(PRESETS)}")
    return PRESETS[name]


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
    from exporter.checkpoint import resolve_weights

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
    weights = resolve_weights(None if checkpoint is None else Path(checkpoint), backbone)
    if weights.warning and on_warning is not None:
        on_warning(weights.warning)
    stated = {name: value for name, value in weights.settings.items() if name not in options}
    if early is not None and not stated:
        raise early
    config = base.replace(backbone=weights.backbone, **stated, **options)
    require_memory(config)
    return config, weights
