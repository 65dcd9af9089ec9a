"""`bench --web` (exporter/webbench.py): the browser module in headless Chromium beside native
ONNX Runtime and OpenVINO, each row's accuracy judged in the same run. Timings are measured,
never asserted. Without Chromium or Playwright the browser tests skip, except in CI's own run
(test_web.py's `_require`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import types
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
    "case", ["not-ours", "dynamic", "runs", "threads", "no-playwright", "no-chromium", "no-ort-web", "other-size"]
)
def test_bench_web_refuses_bad_input(case, tmp_path, golden_onnx, monkeypatch):
    """Each a typed error naming the problem (or what to install), before a browser starts."""
    from exporter import web

    kwargs: dict = {"chromium": CHROMIUM}
    model = golden_onnx
    if case == "not-ours":
        model, error, expected = _plain_onnx(tmp_path / "plain.onnx"), ArtifactError, "carries no bgm-export metadata"
    elif case == "dynamic":
        model, error, expected = _dynamic_copy(golden_onnx, tmp_path / "d.onnx"), ArtifactError, "--dynamic export"
    elif case == "runs":
        kwargs["runs"], error, expected = 0, InputError, "give at least 1 run"
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
    ``tmp_path / "tmp"`` and the server's URL recorded; afterwards, nothing of it is left: no
    folder, no server, no process."""
    _require(_browser_missing())
    _require(_ort_missing())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(webbench, "SETTLE_SECONDS", 0.0)  # timings are not asserted
    before = _descendants()
    urls: list[str] = []

    def run(onnx_path: Path, interrupt_at: str | None = None, **kwargs: object) -> webbench.WebBench:
        def progress(message: str) -> None:
            if "serving at " in message:
                urls.append(message.split("serving at ")[1].split("/,")[0])
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


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_process_group_ends_bench_web_with_one_line(golden_onnx, signum, code):
    """Ctrl-C at a terminal signals the whole process group, Playwright's driver included:
    the command ends with its code and one ``error:`` line, and nothing after it (Playwright's
    pending calls reported "Future exception was never retrieved" when collected)."""
    _require(_browser_missing() or _ort_missing())
    command = [*CLI_COMMAND, "bench", "--web", str(golden_onnx), "--runs", "100000", "--warmup", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    try:
        lines = []
        for line in process.stderr:  # progress lines until the timed rounds begin
            lines.append(line)
            if "rounds" in line:
                break
        os.killpg(process.pid, signum)
        _, rest = process.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == code, "".join(lines) + rest
    assert rest.count("error:") == 1 and rest.strip().startswith("error:"), rest
    assert "Traceback" not in rest and "Future exception" not in rest, rest
