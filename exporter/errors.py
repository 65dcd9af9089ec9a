"""The errors a user can cause. Library code raises them; only the CLI prints them."""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BgmExportError",
    "CheckpointError",
    "ConfigError",
    "ExportError",
    "InputError",
    "OutputError",
]


class BgmExportError(Exception):
    """Base of every user-facing error; the CLI prints its message and exits ``exit_code``."""

    exit_code = 2


class CheckpointError(BgmExportError):
    """A checkpoint that is missing, unreadable, unsafe, or not this architecture."""


class ConfigError(BgmExportError):
    """An export configuration that cannot be built (resolution, scale, sample count, ...)."""


class OutputError(BgmExportError):
    """An output path that cannot be written."""


class ArtifactError(BgmExportError):
    """An ONNX or IR file that is missing, unreadable or not a matting model."""


class InputError(BgmExportError):
    """Images, videos or folders given as input that cannot be used."""


class ExportError(BgmExportError):
    """The exported graph failed a structural check (banned op, dynamic shape, checker)."""

    exit_code = 1
