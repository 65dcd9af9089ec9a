"""`bench --web` (exporter/webbench.py): the browser module in headless Chromium beside native
ONNX Runtime and OpenVINO, each row's accuracy judged in the same run. Timings are measured,
never asserted. Without Chromium or Playwright the browser tests skip, except in CI's own run
(test_web.py's `_require`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_web import CHROMIUM, _browser_missing, _dynamic_copy, _ort_missing, _plain_onnx, _require

from exporter import tolerances as tol
from exporter import webbench
from exporter.errors import ArtifactError, InputError
from exporter.runtime import load_runner
from exporter.webbench import bench_web, compare_fp32, format_web_bench
from helpers import CLI_COMMAND

RUNS, WARMUP = 2, 1


def _noise(shape: tuple[int, ...], scale: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _patches_off(shape: tuple[int, ...], count: int) -> np.ndarray:
    """0.5 added in the first pixel of ``count`` 4x4 patches."""
    delta = np.zeros(shape, np.float32)
    n, c, h, w = shape
    for i in range(count):
        y, x = divmod(i, w // 4)
        delta[0, 0, 4 * y, 4 * x] = 0.5
    return delta


# (case, what is added to the reference): both sides of every FP32 bar.
CASES = {
    "rounding noise": lambda s: _noise(s, 1e-6),
    "one patch off": lambda s: _patches_off(s, 1),  # 1 of 3,840 patches: 0.026% <= 0.05%
    "three patches off": lambda s: _patches_off(s, 3),  # 0.078% > 0.05%
    "shifted by 5e-4": lambda s: np.full(s, 5e-4, np.float32),  # no patch off by > 1e-3; max 5e-4 > 1e-4
    "NaN": lambda s: np.full(s, np.nan, np.float32),  # (one NaN pixel is one patch off, as verify counts it)
}


@pytest.mark.parametrize("case", list(CASES))
def test_accuracy_is_judged_by_the_fp32_bars_and_says_what_missed(case):
    """Each browser or native row is judged as verify judges an FP32 artifact; a failure names
    the bars it missed (not a max |d| that passed)."""
    shape = (1, 3, 192, 320)
    reference = np.random.default_rng(1).random(shape, dtype=np.float32)
    comparison = compare_fp32("fgr", reference, reference + CASES[case](shape))
    assert comparison.passed == (case in ("rounding noise", "one patch off")), comparison
    text = webbench.verdict(comparison)
    assert text.startswith("PASSED" if comparison.passed else "FAILED"), text
    if case == "three patches off":
        assert "patches off" in text and "max |d|" not in text, text
    if case == "shifted by 5e-4":
        assert "max |d| outside differing patches 0.0005 > 0.0001" in text and "patches off" not in text, text


def test_runners_take_threads(golden_onnx):
    """The threads bench --web asks of native ONNX Runtime and OpenVINO reach the runtimes (left
    unset, each keeps its own default)."""
    assert load_runner(golden_onnx, "onnxruntime", threads=1)._session.get_session_options().intra_op_num_threads == 1
    assert load_runner(golden_onnx, "onnxruntime")._session.get_session_options().intra_op_num_threads == 0
    runner = load_runner(golden_onnx, "openvino", threads=1)
    try:
        assert runner._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    finally:
        runner.close()


@pytest.mark.parametrize("module", ["exporter.webbench", "exporter.bench"])
def test_imports_no_torch(module):
    """The deployment side: bench --web and what it loads on the way need no torch (bench, which
    exports, does: the check can tell)."""
    code = f"import sys, {module}, exporter.web, onnxruntime, openvino; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == str(module == "exporter.bench")


def _playwright_stub(monkeypatch) -> None:
    """An importable playwright.sync_api, so that the checks after it are reached on any machine."""
    monkeypatch.setitem(sys.modules, "playwright", types.ModuleType("playwright"))
    monkeypatch.setitem(sys.modules, "playwright.sync_api", types.ModuleType("playwright.sync_api"))


@pytest.mark.parametrize(
    "case",
    ["not-ours", "dynamic", "runs", "too-many-runs", "too-much-warmup", "threads", "no-playwright", "no-chromium",
     "no-ort-web", "other-size"],
)  # fmt: skip
def test_bench_web_refuses_bad_input(case, tmp_path, golden_onnx, monkeypatch):
    """Each a typed error naming the problem (or what to install), before a browser starts."""
    from exporter import web

    kwargs: dict = {"chromium": CHROMIUM}
    model = golden_onnx
    if case == "not-ours":
        model, error, expected = _plain_onnx(tmp_path / "plain.onnx"), ArtifactError, "carries no bgm-export metadata"
    elif case == "dynamic":
        model, error, expected = _dynamic_copy(golden_onnx, tmp_path / "d.onnx"), ArtifactError, "--dynamic export"
    elif case in ("runs", "too-many-runs", "too-much-warmup"):
        # Refused before anything else is looked at (here, a Chromium that is not there).
        kwargs["chromium"], error, expected = tmp_path / "nowhere", InputError, "give 1 to 10,000 runs and 0 to 1,000"
        kwargs.update({"runs": {"runs": 0, "too-many-runs": 99999999999999999999999}.get(case, 1),
                       "warmup": webbench.MAX_WEB_WARMUP + 1 if case == "too-much-warmup" else 0})  # fmt: skip
    elif case == "threads":
        kwargs["threads"], error, expected = (2, 0), InputError, "whole numbers of at least 1"
    elif case == "no-playwright":
        monkeypatch.setitem(sys.modules, "playwright.sync_api", None)  # import fails
        error, expected = InputError, "Playwright is not installed: pip install 'bgm-export[web]'"
    elif case == "no-chromium":
        _playwright_stub(monkeypatch)
        kwargs["chromium"], error, expected = tmp_path / "nowhere", InputError, "apt-get install chromium"
    elif case == "no-ort-web":
        _playwright_stub(monkeypatch)
        kwargs["chromium"] = Path(sys.executable)  # any file: the check is that one exists
        monkeypatch.setattr(web.ort_web_dist, "__defaults__", (tmp_path,))
        error, expected = InputError, "run `make setup`"
    else:
        other = tmp_path / "other.onnx"
        proto = onnx.load(str(golden_onnx), load_external_data=False)
        for prop in proto.metadata_props:  # another size, as its inputs and outputs say too
            if prop.key == "resolution":
                prop.value = "384x640"
        for value in [*proto.graph.input, *proto.graph.output]:
            for dim in value.type.tensor_type.shape.dim:
                dim.dim_value *= 2 if dim.dim_value in (192, 320) else 1
        onnx.save(proto, str(other))
        kwargs["browser_model"], error, expected = other, ArtifactError, "the rows must run the same frames"
    with pytest.raises(error, match=None) as raised:
        bench_web(model, **kwargs)
    assert expected in str(raised.value) and "\n" not in str(raised.value), raised.value


# --- in Chromium --------------------------------------------------------------------------------


def _descendants() -> set[int]:
    """The processes this one started, and theirs (Playwright's driver, Chromium's)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.fixture()
def browser_bench(tmp_path, monkeypatch):
    """``run(onnx, **kwargs)``: bench_web with the test's Chromium, its temporary folder in
    ``tmp_path / "tmp"`` and the server's URL recorded (``at``: a call with the progress message
    of each stage named); afterwards, nothing of it is left: no
    folder, no server, no process."""
    _require(_browser_missing())
    _require(_ort_missing())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(webbench, "SETTLE_SECONDS", 0.0)  # timings are not asserted
    before = _descendants()
    urls: list[str] = []

    def run(
        onnx_path: Path,
        interrupt_at: str | None = None,
        at: dict[str, Callable[[str], None]] | None = None,
        **kwargs: object,
    ) -> webbench.WebBench:
        def progress(message: str) -> None:
            if "serving at " in message:
                urls.append(message.split("serving at ")[1].split("/,")[0])
            for stage, call in (at or {}).items():
                if message.startswith(stage):
                    call(message)
            if interrupt_at is not None and message.startswith(interrupt_at):
                raise KeyboardInterrupt

        return bench_web(onnx_path, chromium=CHROMIUM, on_progress=progress, **kwargs)

    yield run
    assert not list(scratch.iterdir()), list(scratch.iterdir())
    assert len(urls) == 1, urls
    host, port = urls[0].removeprefix("http://").split(":")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((host, int(port)), timeout=5):
        pass
    assert _descendants() <= before, "Chromium or Playwright's driver is still running"


@pytest.mark.slow
def test_bench_web_rows(browser_bench, golden_onnx):
    """One run: the module with 1 and 2 WebAssembly threads (as reported by the page), native
    ONNX Runtime with 1 and 2, OpenVINO f32 with 2; every row timed RUNS times and within the
    FP32 bars of native ONNX Runtime; the table with the CPU's flags."""
    result = browser_bench(golden_onnx, runs=RUNS, warmup=WARMUP)
    rows = {(r.runtime, r.threads): r for r in result.rows}
    assert list(rows) == [("onnxruntime-web", 1), ("onnxruntime-web", 2), ("onnxruntime", 1), ("onnxruntime", 2),
                          ("openvino", 2)]  # fmt: skip
    for row in result.rows:
        assert row.threads_used == row.threads and not row.notes, row
        assert len(row.times_ms) == RUNS and all(ms > 0 for ms in row.times_ms) and row.fps > 0, row
    reference = rows["onnxruntime", 2]
    assert reference.reference and reference.ratio == 1.0
    for row in result.rows:
        if row is not reference:
            assert [a.output for a in row.accuracy] == ["pha", "fgr"] and all(row.accuracy), row.accuracy
            assert all(a.max_abs <= tol.FP32_ATOL for a in row.accuracy), row.accuracy
    assert result.passed and result.resolution == (192, 320) and result.frames == webbench.FRAMES
    assert "avx" in result.cpu or "none of" in result.cpu  # the flags, or that it has none of them
    text = format_web_bench(result)
    print(text)
    assert f"CPU: {result.cpu}" in text and "FAILED" not in text
    assert "ONNX Runtime Web 1.30.0, WebAssembly, 2 threads" in text and "OpenVINO" in text
    assert all(row.label in text for row in result.rows)
    assert json.loads(json.dumps(result.to_dict()))["passed"] is True  # bench --json


def _tampered(golden_onnx: Path, path: Path) -> Path:
    """The golden artifact with its largest weight 5% larger: a valid bgm-export ONNX that
    answers differently."""
    model = onnx.load(str(golden_onnx))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.05), weight.name))
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_bench_web_flags_a_browser_row_that_differs(browser_bench, golden_onnx, tmp_path):
    """The browser runs another model than native ONNX Runtime: its row is FAILED with its |d|
    above the bar, and its speed does not count; the native rows still pass."""
    tampered = _tampered(golden_onnx, tmp_path / "tampered.onnx")
    result = browser_bench(golden_onnx, runs=1, warmup=0, threads=(1,), browser_model=tampered)
    browser, ort, openvino = result.rows
    assert browser.runtime == "onnxruntime-web" and not browser.passed and not result.passed
    assert max(a.max_abs_outside for a in browser.accuracy) > tol.FP32_ATOL, browser.accuracy
    assert ort.reference and openvino.passed
    text = format_web_bench(result)
    assert "FAILED: its speed does not count" in text and f"the browser ran {tampered}" in text, text


@pytest.mark.slow
@pytest.mark.parametrize("case", ["model-fails-to-load", "ctrl-c"])
def test_bench_web_cleans_up(browser_bench, golden_onnx, monkeypatch, case):
    """A model the page cannot load is one typed error with the page's message; Ctrl-C once the
    browser runs is Ctrl-C. Either way the browser, the server and the folder are gone (the
    fixture checks)."""
    if case == "model-fails-to-load":
        monkeypatch.setattr(webbench, "MODEL_URL", "/missing.onnx")
        with pytest.raises(ArtifactError, match=r"loading the model: the model /missing.onnx could not be fetched: "
                                                r"HTTP 404 \(model-unreadable\)"):  # fmt: skip
            browser_bench(golden_onnx, runs=1, warmup=0)
    else:
        with pytest.raises(KeyboardInterrupt):
            browser_bench(golden_onnx, runs=1, warmup=0, interrupt_at="loading the model in a page")


def _listening_ports(pids: set[int]) -> set[int]:
    """The TCP ports on which any of ``pids`` listens (its sockets' inodes in /proc/net/tcp*)."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listening[f"socket:[{fields[9]}]"] = int(fields[1].rsplit(":", 1)[1], 16)
    ports = set()
    for pid in pids:
        with contextlib.suppress(OSError):  # gone
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    ports.add(listening.get(os.readlink(fd)))
    return ports - {None}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["as-run", "devtools-port-asked"])
def test_nothing_of_bench_web_listens_but_the_site_server(browser_bench, golden_onnx, monkeypatch, case):
    """Chromium is driven over a pipe: while the rows run, the only TCP port that this process,
    Playwright's driver, Chromium or its helpers listen on is the site server's. A DevTools port
    (``--remote-debugging-port``) would let any local user drive a browser running as us (read
    our files through file:// pages); asked for, the check finds it."""
    if case == "devtools-port-asked":
        monkeypatch.setattr(webbench, "CHROMIUM_ARGS", [*webbench.CHROMIUM_ARGS, "--remote-debugging-port=0"])
    site, seen = [], []
    # What this process's tree listens on already (other tests' servers, in a whole run) is not the bench's.
    before = _listening_ports(_descendants() | {os.getpid()})
    stages = {"serving at ": lambda m: site.append(int(m.split("/,")[0].rsplit(":", 1)[1])),
              "1 rounds": lambda m: seen.append(_listening_ports(_descendants() | {os.getpid()}) - before)}  # fmt: skip
    browser_bench(golden_onnx, runs=1, warmup=0, threads=(1,), at=stages)
    assert len(site) == 1 and len(seen) == 1, (site, seen)
    if case == "as-run":
        assert seen[0] == set(site), f"listening besides the site server's port {site}: {seen[0] - set(site)}"
    else:
        assert site[0] in seen[0] and seen[0] - set(site), seen


def test_bench_web_command_loads_no_torch(tmp_path):
    """``bench --web`` is the deployment side: the command imports no torch (exporter.bench,
    the export mode's, does), here up to its refusal of a file that is not an ONNX."""
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not an onnx")
    code = (
        "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); "
        "sys.argv = ['bgm-export', 'bench', '--web', sys.argv[1]]; from exporter.__main__ import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == "False", result.stderr


def _ours(folder: Path) -> list[str]:
    """The running processes whose environment names ``folder`` (every one a command started
    with TMPDIR there, in whatever session or process group it went on to)."""
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and str(folder).encode() in Path(f"/proc/{entry}/environ").read_bytes():
                found.append(Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
    return found


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    """A TMPDIR shallow enough for Chromium's socket (webbench.CHROMIUM_TMPDIR_MAX_CHARS), so that
    its files are made there, where the test looks; pytest's tmp_path is too deep."""
    folder = Path(tempfile.mkdtemp(prefix="bgmt-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _left_in(folder: Path) -> list[str]:
    # ONNX Runtime's session file (its telemetry's, written on a session's creation) is not ours to remove.
    return sorted(p.name for p in folder.iterdir() if p.name != ".ses")


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, code, stage",
    [(signal.SIGINT, 130, "rounds"), (signal.SIGTERM, 143, "rounds"), (signal.SIGINT, 130, "loading the model in")],
)
def test_a_signal_to_the_process_group_ends_bench_web_with_one_line(golden_onnx, short_tmp, signum, code, stage):
    """Ctrl-C at a terminal signals the whole process group: the command ends with its code and
    one ``error:`` line, and nothing after it (a driver killed with us failed the call in flight,
    "Target ... has been closed", or reported its pending calls when they were collected); no
    process of it is left, nor any file in its TMPDIR (Chromium killed with the group left its
    org.chromium.Chromium.* folder)."""
    _require(_browser_missing() or _ort_missing())
    command = [*CLI_COMMAND, "bench", "--web", str(golden_onnx), "--runs", str(webbench.MAX_WEB_RUNS), "--warmup", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "TMPDIR": str(short_tmp)})  # fmt: skip
    try:
        lines = []
        for line in process.stderr:  # progress lines until the stage
            lines.append(line)
            if stage in line:
                break
        os.killpg(process.pid, signum)
        _, rest = process.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == code, "".join(lines) + rest
    assert rest.count("error:") == 1 and rest.strip().startswith("error:"), rest
    assert "Traceback" not in rest and "Future exception" not in rest, rest
    assert not _ours(short_tmp), _ours(short_tmp)
    assert not _left_in(short_tmp), _left_in(short_tmp)


def _fake_chromium(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_a_signal_during_a_hung_browser_launch_ends_bench_web_at_once(golden_onnx, tmp_path, short_tmp):
    """A "Chromium" that never answers (a script sleeping): Ctrl-C to the group while bench
    --web waits for it ends the command with 130 within seconds (~0.5 s; Playwright's stop
    waited ~30 s for the launch it was in), the script and its sleep killed (Playwright starts
    the browser detached: the driver's end would not end it), nothing left in TMPDIR."""
    _require(_ort_missing())
    pytest.importorskip("playwright.sync_api")
    started = tmp_path / "started"
    hang = _fake_chromium(tmp_path / "hang.sh", f"echo $$ > {started}; exec sleep 1000")
    scratch = short_tmp
    command = [*CLI_COMMAND, "bench", "--web", str(golden_onnx), "--chromium", str(hang)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "TMPDIR": str(scratch)})  # fmt: skip
    try:
        for _ in range(600):  # the launch begins once the site is built (bounded: 60 s)
            if started.exists() and started.read_text().strip() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert process.poll() is None and started.exists(), process.stderr.read()
        os.killpg(process.pid, signal.SIGINT)
        _, rest = process.communicate(timeout=10)  # a bound on a hang, not a speed
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130 and rest.strip().splitlines()[-1].startswith("error: interrupted"), rest
    assert not Path(f"/proc/{started.read_text().strip()}").exists(), "the launched script is still running"
    assert not _ours(scratch) and not _left_in(scratch), (_ours(scratch), _left_in(scratch))


@pytest.mark.parametrize("case", ["exits", "not-executable"])
def test_a_chromium_that_does_not_start_is_one_error(golden_onnx, tmp_path, short_tmp, monkeypatch, case):
    """A browser that exits at once is an InputError with its exit code and last word, one that
    cannot be run an InputError saying why; nothing of it is left in the temporary folder."""
    _require(_ort_missing())
    pytest.importorskip("playwright.sync_api")
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    broken = _fake_chromium(tmp_path / "broken.sh", "echo 'cannot open display' >&2; exit 3")
    expected = r"did not start: it exited with code 3 \(cannot open display\)$"
    if case == "not-executable":
        broken.chmod(0o644)
        expected = r"did not start: Permission denied$"
    with pytest.raises(InputError, match=expected):
        bench_web(golden_onnx, runs=1, warmup=0, chromium=broken)
    assert not list(short_tmp.iterdir())
