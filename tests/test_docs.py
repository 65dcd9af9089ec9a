"""The docs cannot drift from the code: docs/cli.md is what the commands' help renders, every
``bgm-export`` command line shown in README.md and docs/ names a command and options that
exist, every quoted speed carries the command and the CPU it came from, and every command line
of the README users had before the docs moved (tests/data/old_readme_commands.txt) still
parses or fails naming its replacement."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter import clidocs

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OLD_README_COMMANDS = Path(__file__).parent / "data" / "old_readme_commands.txt"

# The README is a guide a newcomer reads in five minutes (issue 29); the reference is docs/.
README_MAX_LINES = 150
# A measurement's command and CPU must be this close to it: a table and the paragraph under it.
MEASUREMENT_REACH = 25

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# In a code block a command starts a line, or follows a pipe, `&&`, `;` or `$ `; a path before
# the program name (.venv/bin/) is allowed.
BLOCK_COMMAND = re.compile(r"(?:^|[|;&(]\s*)(?:\$\s+)?(?:[\w.~/-]*/)?bgm-export\s+(?=\S)")
INLINE_COMMAND = re.compile(r"^\s*(?:\$\s+)?(?:[\w.~/-]*/)?bgm-export\s+(?=\S)")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
# A number quoted as a speed: frames a second, milliseconds with a decimal or a range (a bound
# such as "within 200 ms" is not one), and x speed-ups with a decimal.
MEASUREMENT = re.compile(
    r"\d[\d,.]*\s*(?:frames/s|fps|frames per second)\b"
    r"|\d+\.\d+\s*ms\b|\d+(?:\.\d+)?\s*[-–]\s*\d+(?:\.\d+)?\s*ms\b"
    r"|\b\d+\.\d+x\b"
)
# A table whose header names a speed column.
SPEED_HEADER = re.compile(r"^\s*\|.*\b(?:ms|frames/s|fps)\b.*\|\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CPU_FLAGS = re.compile(r"\b(?:avx2|avx512\w*|avx_vnni|amx_\w+|neon|sse4_2)\b")


@dataclass(frozen=True)
class CommandLine:
    """One ``bgm-export`` command line found in Markdown: where, and its words after the program."""

    where: str
    words: tuple[str, ...]


def _cut(text: str) -> str:
    """The command's own part of a shell line: up to a pipe, ``;``, ``&&``, a redirection or a
    comment outside brackets (``[A | B]`` and ``camera:N|URL`` are the usage's alternatives)."""
    depth = 0
    for i, char in enumerate(text):
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth = max(0, depth - 1)
        elif depth == 0 and i > 0 and text[i - 1].isspace():
            rest = text[i:]
            if (char == "|" and rest[1:2].isspace()) or char == ";" or rest.startswith("&&"):
                return text[:i]
            if char == ">" or (char == "#" and rest[1:2] in (" ", "")):
                return text[:i]
    return text


def _words(command: str) -> tuple[str, ...]:
    return tuple(command.replace("[", " ").replace("]", " ").split())


def _logical_lines(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """A code block's lines with backslash continuations joined."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in block:
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        joined.append((number, line))
    if pending is not None:
        joined.append(pending)
    return joined


def command_lines(markdown: str, name: str = "<text>", commands: frozenset[str] = frozenset()) -> list[CommandLine]:
    """Every ``bgm-export ...`` command line of a Markdown text: in code blocks, and in inline
    code that starts with ``bgm-export`` (or, given ``commands``, with one of those commands
    and an option: ``matte --align``)."""
    found: list[CommandLine] = []
    lines = markdown.splitlines()
    block: list[tuple[int, str]] | None = None
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                for start, logical in _logical_lines(block):
                    for match in BLOCK_COMMAND.finditer(logical):
                        words = _words(_cut(logical[match.end() :]))
                        found.append(CommandLine(f"{name}:{start}", words))
                block = None
            continue
        if block is not None:
            block.append((number, line))
            continue
        for span in INLINE_CODE.findall(line.replace("\\|", "|")):
            match = INLINE_COMMAND.match(span)
            if match:
                found.append(CommandLine(f"{name}:{number}", _words(_cut(span[match.end() :]))))
                continue
            words = _words(_cut(span))
            if len(words) > 1 and words[0] in commands and words[1].startswith("-"):
                found.append(CommandLine(f"{name}:{number}", words))
    return found


def problems(command_line: CommandLine, tree) -> list[str]:
    """What in a command line does not exist in the CLI: its command, or an option of it."""
    words = list(command_line.words)
    root_options = {opt for p in tree.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
    while words and words[0].startswith("-"):
        option = words.pop(0).split("=")[0]
        if option not in root_options:
            return [f"{command_line.where}: bgm-export has no option {option}"]
    if not words:
        return []
    name = words[0]
    if name.isupper() or not re.fullmatch(r"[a-z][a-z0-9-]*", name):  # COMMAND, a placeholder
        return []
    command = tree.commands.get(name)
    if command is None:
        return [f"{command_line.where}: no command `bgm-export {name}` (commands: {', '.join(tree.commands)})"]
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
    found = []
    for word in words[1:]:
        match = OPTION.fullmatch(word.split("=")[0])
        if match and match.group(1) not in known and len(match.group(1)) > 1:
            found.append(f"{command_line.where}: `bgm-export {name}` has no option {match.group(1)}")
    return found


def unsourced_measurements(markdown: str, name: str = "<text>") -> list[str]:
    """Lines quoting a speed without a ``bgm-export`` command within MEASUREMENT_REACH lines, or
    without a CPU flags line (avx2 ...) in the same section (## heading)."""
    lines = markdown.splitlines()
    section_of, section = [], 0
    for line in lines:
        if re.match(r"^#{1,2} ", line):
            section += 1
        section_of.append(section)
    commands = [i for i, line in enumerate(lines) if "bgm-export " in line and re.search(r"bgm-export [a-z]", line)]
    cpus = {section_of[i] for i, line in enumerate(lines) if CPU_FLAGS.search(line)}
    found = []
    for i, line in enumerate(lines):
        if not (MEASUREMENT.search(line) or SPEED_HEADER.match(line)):
            continue
        if not any(abs(i - c) <= MEASUREMENT_REACH for c in commands):
            found.append(f"{name}:{i + 1}: a speed with no bgm-export command within {MEASUREMENT_REACH} lines")
        if section_of[i] not in cpus:
            found.append(f"{name}:{i + 1}: a speed with no CPU flags line (avx2 ...) in its section")
    return found


def guide_too_long(markdown: str) -> str | None:
    lines = len(markdown.splitlines())
    return f"{lines} lines; a guide has fewer than {README_MAX_LINES}" if lines >= README_MAX_LINES else None


def broken_links(markdown: str, path: Path) -> list[str]:
    """Relative links (files, and #anchors of Markdown files) that lead nowhere."""
    found = []
    for target in LINK.findall(markdown):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            found.append(f"{path.name}: {target} does not exist")
        elif anchor and resolved.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(encoding="utf-8"), re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            if anchor not in slugs:
                found.append(f"{path.name}: {target} names no heading of {resolved.name}")
    return found


@pytest.fixture(scope="module")
def tree():
    return clidocs.command_tree()


def test_cli_md_is_what_the_commands_help_renders():
    message = clidocs.stale()
    assert message is None, message


def test_a_stale_cli_md_is_reported_with_the_command_that_regenerates_it(tmp_path):
    stale = tmp_path / "cli.md"
    stale.write_text(clidocs.render().replace("--sample-pixels", "--samples", 1))
    message = clidocs.stale(stale)
    assert message is not None and clidocs.REGENERATE in message and "stale" in message
    assert clidocs.stale(tmp_path / "missing.md") is not None
    stale.write_text(clidocs.render())
    assert clidocs.stale(stale) is None


def test_clidocs_what_it_cannot_do_is_one_error_line(tmp_path, capsys):
    """--check on a file that is not UTF-8 (or missing), --write onto a folder: exit 2 and one
    ``error:`` line, no traceback; --write writes the given path, not docs/cli.md."""
    (tmp_path / "latin1.md").write_bytes(b"\xff\xfe r\xe9f\xe9rence")
    (tmp_path / "folder.md").mkdir()
    cases = [
        (["--check"], "latin1.md", "cannot be read (it is not UTF-8 text)"),
        (["--check"], "missing.md", "cannot be read (No such file or directory)"),
        (["--write"], "folder.md", "is a directory"),
        (["--wrong"], "missing.md", "usage: python -m exporter.clidocs"),
    ]
    for argv, name, message in cases:
        assert clidocs.main(argv, tmp_path / name) == 2, (argv, name)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert clidocs.main(["--write"], tmp_path / "new" / "cli.md") == 0
    assert (tmp_path / "new" / "cli.md").read_text(encoding="utf-8") == clidocs.render()
    assert clidocs.main(["--check"], tmp_path / "new" / "cli.md") == 0


class _FullStream:
    """A standard output whose writes fail as /dev/full's do (no fileno: nothing is dup'ed)."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("stdout", [None, _FullStream()], ids=["closed", "full"])
def test_clidocs_on_a_closed_or_full_stdout_is_one_error_line(stdout, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdout", stdout)
    assert clidocs.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "standard output" in err, err


def test_onnx_weights_refusal_names_the_values_as_the_help_does(cli, one_error):
    """Typer's own refusal said "Value error, 'bf16' is not one of 'fp32', 'fp16', 'int8'"."""
    result = cli("onnx", "--onnx-weights", "bf16")
    one_error(result, "'bf16' is not one of FP32, FP16, INT8")
    assert "Value error" not in result.stderr
    assert "| `--onnx-weights <FP32\\|FP16\\|INT8>` |" in clidocs.render()
    from exporter.cli import _onnx_weights

    assert [_onnx_weights(v) for v in ("fp16", "Int8", "FP32")] == ["FP16", "INT8", "FP32"]


def test_cli_md_renders_plain_markdown_of_every_command_and_option(tree):
    text = clidocs.render()
    assert "╭" not in text and "<bool>" not in text
    for name, command in tree.commands.items():
        assert f"## `bgm-export {name}`" in text
        for param in command.params:
            for opt in param.opts if param.param_type_name == "option" else ():
                assert opt in text, (name, opt)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_and_option_the_docs_show_exists(path, tree):
    found = command_lines(path.read_text(encoding="utf-8"), path.name, frozenset(tree.commands))
    assert [p for line in found for p in problems(line, tree)] == []


def test_the_readme_is_a_guide_under_150_lines():
    assert guide_too_long((ROOT / "README.md").read_text(encoding="utf-8")) is None
    assert guide_too_long("line\n" * README_MAX_LINES) == "150 lines; a guide has fewer than 150"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_of_the_docs_leads_somewhere(path):
    assert broken_links(path.read_text(encoding="utf-8"), path) == []


def test_a_link_to_a_moved_file_or_heading_is_reported():
    text = "[a](docs/verify.md) [b](docs/gone.md) [c](docs/serving.md#the-repository) [d](docs/serving.md#speed)"
    assert broken_links(text, ROOT / "README.md") == [
        "README.md: docs/gone.md does not exist",
        "README.md: docs/serving.md#speed names no heading of serving.md",
    ]


def test_the_readme_shows_commands():
    # Guards the parser itself: were it to find nothing, every doc would pass.
    found = command_lines((ROOT / "README.md").read_text(encoding="utf-8"), "README.md")
    assert {line.words[0] for line in found} >= {"onnx", "ir", "verify", "matte", "serve", "web", "bench"}


def test_a_renamed_option_or_an_unknown_command_is_reported(tree):
    text = "\n".join(
        [
            "Run `bgm-export matte --model m.xml --src a.png --bgr b.png --colour 0,0,0` or:",
            "",
            "```sh",
            "bgm-export onnx --height 192 --width 320 \\",
            "    --sample-pixel 16000   # renamed",
            "bgm-export export --precision FP32",
            "ffmpeg -i x -f rawvideo - | bgm-export matte --src - --size 1280x720 --bgr b.png --out - | ffplay -",
            "```",
            "",
            "| `bgm-export info [ARTIFACT \\| --checkpoint P \\| --backbone-name B]` | info |",
            "and `verify --case 4`, but `verify --cases 4` and `bgm-export --version` are fine.",
        ]
    )
    found = [p for line in command_lines(text, "t.md", frozenset(tree.commands)) for p in problems(line, tree)]
    assert found == [
        "t.md:1: `bgm-export matte` has no option --colour",
        "t.md:4: `bgm-export onnx` has no option --sample-pixel",
        f"t.md:6: no command `bgm-export export` (commands: {', '.join(tree.commands)})",
        "t.md:10: `bgm-export info` has no option --backbone-name",
        "t.md:11: `bgm-export verify` has no option --case",
    ]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_quoted_speed_carries_its_command_and_cpu(path):
    assert unsourced_measurements(path.read_text(encoding="utf-8"), path.name) == []


def test_a_speed_without_its_command_or_cpu_is_reported():
    sourced = [
        "## Speed",
        "",
        "`bgm-export bench --preset 720p` on avx2 avx512f:",
        "",
        "| IR | latency ms | frames/s |",
        "|---|---|---|",
        "| FP32 | 63.2 | 17.50 |",
    ]
    assert unsourced_measurements("\n".join(sourced)) == []
    no_cpu = "\n".join(line.replace(" on avx2 avx512f", "") for line in sourced)
    assert unsourced_measurements(no_cpu) == ["<text>:5: a speed with no CPU flags line (avx2 ...) in its section"]
    far = "\n".join(["## Other", "", "It ran at 26.9 frames/s, 2.12x the original.", *[""] * 30, *sourced])
    assert unsourced_measurements(far) == [
        "<text>:3: a speed with no bgm-export command within 25 lines",
        "<text>:3: a speed with no CPU flags line (avx2 ...) in its section",
    ]
    # Bounds are not measurements.
    assert unsourced_measurements("## Bounds\n\nEvery probe within 200 ms; a 20 s timeout.") == []


def _old_commands() -> list[CommandLine]:
    lines = OLD_README_COMMANDS.read_text(encoding="utf-8").splitlines()
    return [
        CommandLine(f"{OLD_README_COMMANDS.name}:{n}", _words(line.split("bgm-export", 1)[1]))
        for n, line in enumerate(lines, 1)
        if line.strip() and not line.startswith("#")
    ]


def replacement_missing(command_line: CommandLine, tree) -> list[str]:
    """The problems of an old command line that the CLI does not answer with a message naming a
    replacement: Click's usage error for a renamed option must suggest an option that exists."""
    from typer.testing import CliRunner

    from exporter.cli import app

    unanswered = []
    for problem in problems(command_line, tree):
        option = problem.rsplit(" ", 1)[-1]
        name = command_line.words[0]
        result = CliRunner().invoke(app, [name, option, "x"])
        command = tree.commands.get(name)
        known = {opt for p in command.params for opt in p.opts} if command else set()
        named = re.findall(r"--[a-z][\w-]*", result.output)
        if result.exit_code != 2 or not any(opt in known and opt != option for opt in named):
            unanswered.append(f"{problem}, and the CLI names no replacement: {result.output.strip()!r}")
    return unanswered


def test_the_old_readme_command_lines_still_parse_or_name_their_replacement(tree):
    old = _old_commands()
    assert len(old) >= 20  # the file is the old README's command lines, not an empty list
    assert [p for line in old for p in replacement_missing(line, tree)] == []


def test_an_old_command_line_whose_option_is_gone_is_reported(tree):
    gone = CommandLine("old:1", ("matte", "--model", "m.xml", "--backdrop", "x.png"))
    assert replacement_missing(gone, tree)
    # Click's own suggestion for a near spelling names the option that replaced it.
    near = CommandLine("old:2", ("verify", "--case", "4"))
    assert replacement_missing(near, tree) == []
