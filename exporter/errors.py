"""The errors a user can cause. Library code raises them; only the CLI prints them."""

from __future__ import annotations

import signal

__all__ = [
    "ArtifactError",
    "BgmExportError",
    "CheckpointError",
    "ConfigError",
    "ExportError",
    "InputError",
    "OutputError",
    "RepositoryError",
    "ServerError",
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


class RepositoryError(BgmExportError):
    """A model repository (``config.json``, ``config.pbtxt``, version folders) that the serving
    engines would refuse, or that an addition would break."""


class ServerError(BgmExportError):
    """A model server that cannot start (a port in use), cannot be reached, or refuses a
    request (the message is the server's)."""


class ExportError(BgmExportError):
    """The exported graph failed a structural check (banned op, dynamic shape, checker)."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every ``finally`` that removes a
    temporary file runs; told apart from Ctrl-C only by the exit code (and by a live source,
    which stops cleanly on either)."""


def raise_terminated(signum: int, frame: object) -> None:
    """The SIGTERM handler: ``Terminated`` in the main thread."""
    raise Terminated


def interruption(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What an interruption is called and its exit code: the shell's 128 + the signal's number."""
    if isinstance(exc, Terminated):
        return "terminated", 128 + signal.SIGTERM
    return "interrupted", 128 + signal.SIGINT
