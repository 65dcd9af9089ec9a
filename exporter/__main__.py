"""The ``bgm-export`` command's entry point (and ``python -m exporter``).

Importing the command line takes a second or more (Typer, NumPy, the runtimes' bindings):
a Ctrl-C or SIGTERM in that time must end the command like one during its work — one line,
exit 130 or 143, no traceback. So this module imports nothing heavy, takes SIGTERM (and
SIGHUP) as ``Terminated`` from its first line, and only then imports the CLI.
"""

from __future__ import annotations

import signal
import sys

from exporter.errors import TERMINATING_SIGNALS, interruption, raise_terminated

__all__ = ["main"]


def main() -> None:
    for signum in TERMINATING_SIGNALS:
        signal.signal(signum, raise_terminated)
    try:
        from exporter.cli import app
    except KeyboardInterrupt as exc:
        what, code = interruption(exc)
        sys.stderr.write(f"error: {what} while starting\n")
        sys.exit(code)
    try:
        app(prog_name="bgm-export")
    except KeyboardInterrupt as exc:  # between the command's own handling and Typer's (building it, exiting)
        what, code = interruption(exc)
        sys.stderr.write(f"error: {what}\n")
        sys.exit(code)


if __name__ == "__main__":
    main()
