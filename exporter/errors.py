"""The errors a user can cause. Library code raises them; only the CLI prints them."""

from __future__ import annotations

import reprlib
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
    "StandardOutputClosed",
    "TERMINATING_SIGNALS",
    "Terminated",
    "interruption",
    "raise_terminated",
    "shown",
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
    """SIGTERM (or SIGHUP: the terminal closed), raised in the main thread like Ctrl-C so that
    every ``finally`` that removes a temporary file runs; told apart from Ctrl-C only by the
    exit code (and by a live source, which stops cleanly on either)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signum)
        self.signum = signum


class StandardOutputClosed(OutputError):
    """Whoever read our standard output stopped reading (``| head``): nothing more can be said
    there, so the command ends quietly with the code SIGPIPE gives other tools."""

    exit_code = 128 + signal.SIGPIPE


# The signals that end a command like SIGTERM: every one whose default would kill it without
# running a ``finally`` (a closed terminal sends SIGHUP).
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def raise_terminated(signum: int, frame: object) -> None:
    """The handler of ``TERMINATING_SIGNALS``: ``Terminated`` in the main thread."""
    raise Terminated(signum)


def interruption(exc: KeyboardInterrupt) -> tuple[str, int]:
    """What an interruption is called and its exit code: the shell's 128 + the signal's number."""
    if isinstance(exc, Terminated):
        return "terminated", 128 + exc.signum
    return "interrupted", 128 + signal.SIGINT


# What a message shows of one name or value read from a file: enough to recognise it (the
# longest key of the original's state_dicts has 50 characters), never the megabytes a hostile
# file can hold, nor an integer Python refuses to print (over 4300 digits).
SHOWN_CHARS = 100
_BIG_INT_BITS = 4 * SHOWN_CHARS  # ~120 digits: printed, then cut like any value


class _Shown(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > _BIG_INT_BITS:
            return f"<an integer of {x.bit_length():,} bits>"
        return super().repr_int(x, level)


_SHOWN = _Shown()
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = SHOWN_CHARS
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = 8


def shown(value: object) -> str:
    """``value`` for a message, at most ~``SHOWN_CHARS`` characters: a string as it is (quoted,
    with escapes, if it holds control characters), anything else as its shortened repr."""
    if isinstance(value, str):
        head = value[:SHOWN_CHARS]
        text = head if head.isprintable() else repr(head)
        return text + (f"... ({len(value):,} characters)" if len(value) > SHOWN_CHARS else "")
    return _SHOWN.repr(value)
