"""docs/cli.md, rendered from the command objects Typer builds, so the reference is the code's.

``python -m exporter.clidocs`` prints it; ``--write`` replaces docs/cli.md; ``--check`` exits 1
when docs/cli.md differs from what the code renders (tests/test_docs.py runs the same check);
what cannot be done (docs/cli.md unreadable or unwritable, standard output closed or full) is
one ``error:`` line and exit 2.
The Markdown is plain (no Rich boxes) and does not depend on the terminal's width.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Any

from exporter.errors import OutputError, StandardOutputClosed
from exporter.files import atomic_outputs
from exporter.redact import printable

__all__ = ["CLI_MD", "REGENERATE", "command_tree", "render", "stale"]

CLI_MD = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
REGENERATE = ".venv/bin/python -m exporter.clidocs --write"


def command_tree() -> Any:
    """The root Click group of ``bgm-export``, as Typer builds it from ``exporter.cli.app``."""
    import typer.main

    from exporter.cli import app

    return typer.main.get_command(app)


def _cell(text: str) -> str:
    # A table cell is one line, and a bare | would end it.
    return " ".join(text.split()).replace("|", "\\|")


def _command(name: str, command: Any, root: Any) -> list[str]:
    from typer._click import Context

    ctx = Context(command, info_name=name, parent=root)
    usage = " ".join(["bgm-export", name, *command.collect_usage_pieces(ctx)])
    lines = [f"## `bgm-export {name}`", "", "```", usage, "```", ""]
    for paragraph in (command.help or "").strip().split("\n\n"):
        lines += [" ".join(paragraph.split()), ""]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    if arguments:
        lines += ["| argument | |", "|---|---|"]
        for param in arguments:
            metavar = param.metavar or param.name.upper()
            required = "required" if param.required else "optional"
            many = ", one or more" if param.nargs == -1 else ""
            lines.append(f"| `{metavar}` | {_cell(param.help or '')} ({required}{many}) |")
        lines.append("")
    if options:
        lines += ["| option | |", "|---|---|"]
        for param in options:
            record = param.get_help_record(ctx)
            if record is not None:
                lines.append(f"| `{_cell(record[0])}` | {_cell(record[1])} |")
        lines.append("")
    return lines


def render() -> str:
    """docs/cli.md as the code defines it today."""
    from typer._click import Context

    group = command_tree()
    root = Context(group, info_name="bgm-export")
    lines = [
        "# Command-line reference",
        "",
        f"<!-- Generated from the commands' help by `{REGENERATE}`; do not edit by hand. -->",
        "",
        " ".join((group.help or "").split()),
        "",
        "Every command exits 0 on success and 2 with one `error: ...` line on stderr for a user's mistake"
        " (`verify`: 1 when a bar is missed); `bgm-export COMMAND --help` prints the same text in the terminal.",
        "",
    ]
    root_options = [p.get_help_record(root) for p in group.params if not p.hidden]
    lines += ["| option of `bgm-export` itself | |", "|---|---|"]
    lines += [f"| `{_cell(record[0])}` | {_cell(record[1])} |" for record in root_options if record]
    lines += ["", "| command | |", "|---|---|"]
    for name, command in group.commands.items():
        summary = (command.short_help or (command.help or "").strip().split("\n\n")[0]).split(". ")[0]
        lines.append(f"| [`{name}`](#bgm-export-{name}) | {_cell(summary.rstrip('.'))} |")
    lines.append("")
    for name, command in group.commands.items():
        lines += _command(name, command, root)
    return "\n".join(lines).rstrip("\n") + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path} cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise OutputError(f"{path} cannot be read (it is not UTF-8 text)") from None


def stale(path: Path = CLI_MD) -> str | None:
    """None when ``path`` holds what :func:`render` gives, else a message naming the fix."""
    expected = render()
    try:
        actual = _read(path)
    except OutputError as exc:
        return f"{exc}: run `{REGENERATE}`"
    if actual == expected:
        return None
    differing = next(
        (n for n, (a, b) in enumerate(zip(actual.splitlines(), expected.splitlines(), strict=False), 1) if a != b),
        min(len(actual.splitlines()), len(expected.splitlines())) + 1,
    )
    return f"{path} is stale (first difference at line {differing}): run `{REGENERATE}`"


def _print(text: str) -> None:
    """``text`` on standard output, flushed here: a closed or full one (``>&-``, ``>/dev/full``)
    is an ``OutputError``, not a traceback now or at exit."""
    if sys.stdout is None:
        raise OutputError("standard output is closed")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        # Python flushes what is left at exit: point it at nothing, so that flush is quiet.
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a stream with no file
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if exc.errno == errno.EPIPE:
            raise StandardOutputClosed("") from None
        raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None


def _error(message: str) -> None:
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            print(f"error: {printable(message)}", file=sys.stderr)


def main(argv: list[str], path: Path = CLI_MD) -> int:
    """``python -m exporter.clidocs [--write | --check]`` on ``path``: 0 done (or up to date),
    1 ``--check`` found it stale, 2 with one ``error:`` line otherwise."""
    try:
        return _main(argv, Path(path))
    except StandardOutputClosed as exc:  # the reader left (`| head`): nothing to say
        return exc.exit_code
    except OutputError as exc:
        _error(str(exc))
        return 2


def _main(argv: list[str], path: Path) -> int:
    if argv == ["--write"]:
        with atomic_outputs(path) as (temporary,):
            temporary.write_text(render(), encoding="utf-8")
        _print(f"wrote {path}\n")
        return 0
    if argv == ["--check"]:
        _read(path)  # unreadable is an error, not "stale"
        message = stale(path)
        if message:
            print(message, file=sys.stderr)
            return 1
        return 0
    if argv:
        _error("usage: python -m exporter.clidocs [--write | --check]")
        return 2
    _print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
