"""``bench --web``: frames per second of the browser module web/bgm.js (ONNX Runtime Web,
WebAssembly) in headless Chromium, beside native ONNX Runtime and OpenVINO FP32 (f32) on the
same ONNX, interleaved in one run, with each row's accuracy against native ONNX Runtime.

Every row times the same work: one frame of RGBA bytes in (as a canvas gives it), alpha and
foreground out. In the browser that is the module's ``m.run`` timed inside the page (its
RGBA -> BGR planes conversion included, the page's messages to Python not); natively it is
the same conversion (``to_model_input``) and the runner's call. A speed counts only with its
accuracy: every row's outputs on the first frame are judged by the FP32 bars against native
ONNX Runtime's with the most threads. Nothing about the numbers is asserted in tests.

The site is built into a temporary folder and served on loopback by ``web``'s server (its
cross-origin isolation is what lets WebAssembly run threads); Chromium gets one page per
thread count, since ONNX Runtime Web starts its WebAssembly once per page with the threads
asked first. Browser, server and folder are gone when this returns, fails or is interrupted.
Torch-free (the deployment side).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import logging
import os
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exporter import tolerances as tol
from exporter.data import synthetic_cases
from exporter.errors import ArtifactError, InputError, shown
from exporter.images import to_model_input
from exporter.pipeline.waits import WAIT_TICK
from exporter.resources import cpu_description
from exporter.runtime import Runner, load_runner
from exporter.table import format_table
from exporter.verify.compare import BARS, OutputComparison, compare_output

__all__ = [
    "CHROMIUM_ARGS",
    "DEFAULT_CHROMIUM",
    "WebBench",
    "WebBenchRow",
    "bench_web",
    "browser_missing",
    "compare_fp32",
    "verdict",
    "format_web_bench",
]

# Debian's Chromium; Playwright's own browser download is not used (nor available here).
DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
# What keeps a headless Chromium on loopback: no component updates, sync, safe-browsing
# lists or QUIC probes (Chromium's own traffic is not the page's, but must not leave either).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# The version `make setup` installs (constraints.txt), named in the message when it is missing.
PLAYWRIGHT_REQUIREMENT = "playwright==1.65.3"

# Distinct synthetic frames (the "bench" seeds), handed to every row in the same order.
FRAMES = 3
# The threads of the browser rows, and of native ONNX Runtime's; OpenVINO and the accuracy
# reference (native ONNX Runtime) run with the most of them.
THREADS = (1, 2)
# bench --web's defaults: rounds timed, and untimed frames a row runs first (ONNX Runtime
# Web's first frames take 2-3x a warm one).
WEB_RUNS, WEB_WARMUP = 20, 3
# The most of each a run takes: 10,000 rounds of the five rows are ~40 minutes at 192x320 on
# 2 cores (hours at 720p), far past where a median settles; more is a typo, not a benchmark.
MAX_WEB_RUNS, MAX_WEB_WARMUP = 10_000, 1_000
# Bounds on every wait, in seconds. Chromium starts in about a second; the model loads into
# ONNX Runtime Web in ~3 s at 192x320 and ~10 s at 720p on 2 cores; a 720p frame takes ~0.5 s.
LAUNCH_TIMEOUT_SECONDS = 60
PAGE_LOAD_TIMEOUT_SECONDS = 180
FRAME_TIMEOUT_SECONDS = 60
# A pause before each timed frame: the previous row's runtime may keep spinning its worker
# threads for a while after its answer (ONNX Runtime's pool does, native and WebAssembly
# alike), which on a 2-core machine would be charged to the next row.
SETTLE_SECONDS = 0.05
# The page the benchmark opens on the site's origin: empty, so that only the module runs in it.
BENCH_PAGE = "bench.html"
BENCH_PAGE_HTML = (
    '<!doctype html>\n<meta charset="utf-8">\n<link rel="icon" href="data:,">\n'  # no /favicon.ico request
    "<title>bgm-export bench --web</title>\n"
)
MODEL_URL = "/model.onnx"
# MattingError codes that say the model is at fault, not the browser or the runtime's files.
MODEL_CODES = frozenset({"model-unreadable", "not-bgm-artifact", "dynamic-model", "runtime", "bad-output"})

# In the page: the module loaded with the threads asked, the frames kept as ImageData, and
# the two calls Python makes (a timed frame; a frame's outputs as base64). Errors come back as
# {error, code} so that the page's own message reaches the user; every wait is bounded.
SETUP_JS = """async ({ model, threads, frames, loadMs, frameMs }) => {
  const bounded = (promise, what, ms) => Promise.race([promise, new Promise((_, reject) =>
    setTimeout(() => reject(new Error(`${what} took over ${ms / 1000} s`)), ms))]);
  const fromB64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  const toB64 = (array) => {
    const bytes = new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  };
  const answer = async (thunk) => {
    try {
      return await thunk();
    } catch (error) {
      return { error: `${error.message || error}`, code: error.code || error.name || "error" };
    }
  };
  window.bgmBench = { answer };
  return answer(async () => {
    const { createMatting } = await bounded(import("/bgm.js"), "loading bgm.js", loadMs);
    const m = await bounded(createMatting({ model, backend: "wasm", threads }), "loading the model", loadMs);
    const { width, height } = m.info;
    const image = (b64) => new ImageData(new Uint8ClampedArray(fromB64(b64).buffer), width, height);
    const images = frames.map(([src, bgr]) => [image(src), image(bgr)]);
    // The module's whole cost for one frame: its RGBA -> planes conversion, the model, its checks.
    window.bgmBench.step = async (i) => {
      const start = performance.now();
      await bounded(m.run(...images[i]), "a frame", frameMs);
      return { ms: performance.now() - start };
    };
    window.bgmBench.outputs = async (i) => {
      const { pha, fgr } = await bounded(m.run(...images[i]), "a frame", frameMs);
      return { pha: toB64(pha), fgr: toB64(fgr) };
    };
    return { info: { ...m.info, metadata: undefined }, isolated: self.crossOriginIsolated };
  });
}"""
STEP_JS = "(i) => bgmBench.answer(() => bgmBench.step(i))"
OUTPUTS_JS = "(i) => bgmBench.answer(() => bgmBench.outputs(i))"


def compare_fp32(name: str, reference: np.ndarray, actual: np.ndarray) -> OutputComparison:
    """``actual`` against ``reference`` (``(N, C, H, W)``) as ``verify`` judges an FP32 artifact."""
    return compare_output(name, reference, actual, BARS["FP32"])


def verdict(comparison: OutputComparison) -> str:
    """``PASSED | pha`` or ``FAILED | pha | <each bar missed, its value and bound>``."""
    if comparison.passed:
        return f"PASSED | {comparison.output}"
    missed = "; ".join(f"{c.name} {c.value:.3g} > {c.bound:g}" for c in comparison.checks if not c.passed)
    return f"FAILED | {comparison.output} | {missed}"


@dataclass
class WebBenchRow:
    """One runtime with one number of threads: its frame times and its accuracy."""

    label: str
    runtime: str  # "onnxruntime-web", "onnxruntime", "openvino"
    threads: int  # asked for
    threads_used: int  # what the runtime reports it started (natively: what was asked)
    times_ms: list[float] = field(default_factory=list)
    accuracy: list[OutputComparison] = field(default_factory=list)  # empty: the reference itself
    ratio: float = 0.0  # frames/s over the reference row's
    notes: list[str] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.times_ms, 90))

    @property
    def fps(self) -> float:
        return 1000 / self.median_ms

    @property
    def reference(self) -> bool:
        return not self.accuracy

    @property
    def passed(self) -> bool:
        """Its speed counts: accurate, and run with the threads asked."""
        return all(self.accuracy) and self.threads_used == self.threads


@dataclass
class WebBench:
    """One ``bench --web`` run."""

    model: str
    resolution: tuple[int, int]  # height, width
    model_bytes: int
    frames: int
    runs: int
    warmup: int
    rows: list[WebBenchRow]
    cpu: str
    versions: dict[str, str]  # runtime -> version, and Chromium's
    browser_model: str = ""  # the artifact the browser ran, where it is not ``model``

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def to_dict(self) -> dict:
        rows = [{**asdict(r), "median_ms": r.median_ms, "p90_ms": r.p90_ms, "fps": r.fps, "passed": r.passed}
                for r in self.rows]  # fmt: skip
        return {**asdict(self), "rows": rows, "passed": self.passed}


def browser_missing(chromium: Path = DEFAULT_CHROMIUM) -> str | None:
    """What the browser rows lack, saying what to install; None when they can run."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Playwright is not installed: pip install 'bgm-export[web]' (or {PLAYWRIGHT_REQUIREMENT})"
    if not Path(chromium).is_file():
        return f"no Chromium at {chromium}: apt-get install chromium, or give its path (--chromium PATH)"
    return None


def _rgba(image: np.ndarray) -> np.ndarray:
    return np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])


def _native_step(runner: Runner, src: np.ndarray, bgr: np.ndarray) -> dict[str, np.ndarray]:
    """What the module does for one frame, natively: RGBA -> BGR planes, then the model."""
    return runner.infer({"src": to_model_input(src[..., :3]), "bgr": to_model_input(bgr[..., :3])})


@contextlib.contextmanager
def _served(folder: Path) -> Iterator[str]:
    """``web --serve``'s server (its isolation headers, its bounds) on a free loopback port, in
    a thread; its URL. Stopped on the way out."""
    from exporter import web

    server = web._bind(0)
    server.RequestHandlerClass = functools.partial(web._SiteHandler, directory=str(folder.resolve()))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _DriverGone(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" for Playwright's calls, should its
    driver die under us (killed, or crashed): the calls it left pending report its death when
    they are collected, after our one ``error:`` line."""

    # What Playwright's transport raises when its driver's pipe closes (playwright/_impl/transport.py).
    GONE = "Connection closed while reading from the driver"

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return self.GONE not in record.getMessage() and self.GONE not in str(error or "")


_DRIVER_GONE = _DriverGone()


# Chromium's process singleton listens on a Unix socket in its TMPDIR, at
# "TMPDIR/org.chromium.Chromium.XXXXXX/SingletonSocket": 46 characters more, within the 107 of
# a socket's path (sun_path). A deeper TMPDIR makes Chromium abort ("Socket path too long").
CHROMIUM_TMPDIR_MAX_CHARS = 107 - 46
# How long killed processes may take to be gone: milliseconds, or ~1 s for an orphan that init
# reaps (Chromium's helpers, killed with their parent).
KILLED_GONE_SECONDS = 3


@contextlib.contextmanager
def _own_session(folder: Path, started: list) -> Iterator[None]:
    """Playwright's driver, while it is started here, in a session of its own with its TMPDIR in
    ``folder`` (and its process appended to ``started``): a terminal's Ctrl-C signals the whole
    foreground group, and a driver killed by it failed the call in flight ("Target ... has been
    closed", exit 2 instead of 130) or reported its pending calls after our one line. Outside the
    group only Python gets the signal, and the ``finally`` clauses close everything in order.
    (Playwright spawns it with ``asyncio.create_subprocess_exec`` and offers no option for this.)"""
    spawn = asyncio.create_subprocess_exec

    async def separate(*args: object, **kwargs: object) -> object:
        kwargs["env"] = {**(kwargs.get("env") or os.environ), "TMPDIR": str(folder)}
        process = await spawn(*args, **kwargs, start_new_session=True)
        started.append(process)
        return process

    asyncio.create_subprocess_exec = separate
    try:
        yield
    finally:
        asyncio.create_subprocess_exec = spawn


def _kill_started(drivers: list, folders: Sequence[Path]) -> None:
    """Every process whose TMPDIR is one of ``folders`` (Chromium and its helpers, which the
    driver starts detached in a group of their own), then Playwright's driver (its session's
    group, while it is not reaped), killed and gone. Only our own processes' environments can be
    read, and only what we started has these fresh folders as TMPDIR."""
    marks = [b"\0TMPDIR=" + str(folder).encode() + b"\0" for folder in folders]
    ours = {os.getpid(), *(process.pid for process in drivers)}
    killed = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):  # gone, or not ours
            if entry.isdigit() and int(entry) not in ours:
                environ = b"\0" + Path(f"/proc/{entry}/environ").read_bytes()
                if any(mark in environ for mark in marks):
                    os.kill(int(entry), signal.SIGKILL)
                    killed.append(int(entry))
    # The driver reaps what it started once it is killed; killed after the driver, it would be
    # an orphan, its /proc entry left until init reaps it (here, a second later).
    _gone(killed)
    killed = []
    for process in drivers:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
                killed.append(process.pid)
    _gone(killed)


def _gone(pids: list[int]) -> None:
    """Waits until none of ``pids`` is in /proc (a kill is delivered, and a process reaped, a
    moment later), for at most ``KILLED_GONE_SECONDS``."""
    deadline = time.monotonic() + KILLED_GONE_SECONDS
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(WAIT_TICK)


# What Playwright's launch error says of a browser that exited ("<process did exit: exitCode=3,
# ...>", after the "[pid=N][err] ..." lines it wrote) or could not be run ("spawn PATH EACCES").
_EXITED = re.compile(r"<process did exit: exitCode=(\d+)")
_SAID = re.compile(r"^\s*(?:- )?\[pid=\d+\]\[err\] (.*\S)", re.MULTILINE)
_SPAWN_FAILED = re.compile(r"Failed to launch: Error: spawn .* (E[A-Z]+)$", re.MULTILINE)


def _launch_failure(error: str) -> str:
    """Why Chromium did not start, in one line, from Playwright's launch error."""
    exited, spawn = _EXITED.search(error), _SPAWN_FAILED.search(error)
    if exited:
        said = _SAID.findall(error)
        return f"it exited with code {exited[1]}" + (f" ({shown(said[-1])})" if said else "")
    if spawn and isinstance(getattr(errno, spawn[1], None), int):
        return os.strerror(getattr(errno, spawn[1]))
    return error.splitlines()[0].removeprefix("BrowserType.launch: ")


@contextlib.contextmanager
def _chromium(chromium: Path, folder: Path) -> Iterator[object]:
    """Headless Chromium launched by Playwright, which drives it over a pipe: no DevTools port
    that another local user could connect to and drive a browser running as us. Its files (the
    driver's profile, Chromium's TMPDIR) are in ``folder``; Chromium's TMPDIR is in a folder of
    its own in /tmp where ``folder`` is too deep for its socket, removed here. On the way out,
    quietly (whatever failed or interrupted us may have broken either already): the browser
    closed, then the driver stopped. An interrupted launch cannot be closed: Playwright's stop
    then waited ~30 s for the launch to give up, so what we started is killed first."""
    from playwright.sync_api import Error, sync_playwright

    logging.getLogger("asyncio").addFilter(_DRIVER_GONE)  # stays: the futures are collected later
    driver_tmp, browser_tmp = folder / "driver", folder / "t"
    driver_tmp.mkdir(parents=True)
    if len(str(browser_tmp)) > CHROMIUM_TMPDIR_MAX_CHARS:
        browser_tmp = Path(tempfile.mkdtemp(prefix="bgm-chromium-", dir="/tmp"))
    drivers: list = []
    manager = browser = None
    try:
        browser_tmp.mkdir(exist_ok=True)
        with _own_session(driver_tmp, drivers):
            manager = sync_playwright().start()
        try:
            browser = manager.chromium.launch(
                executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True,
                env={**os.environ, "TMPDIR": str(browser_tmp)}, timeout=LAUNCH_TIMEOUT_SECONDS * 1000,
            )  # fmt: skip
        except Error as exc:
            raise InputError(f"Chromium at {chromium} did not start: {_launch_failure(str(exc))}") from None
        yield browser
    finally:
        if browser is not None:
            with contextlib.suppress(Exception):
                browser.close()
        else:
            _kill_started(drivers, (driver_tmp, browser_tmp))
        if manager is not None:
            with contextlib.suppress(Exception):
                manager.stop()
        _kill_started(drivers, (driver_tmp, browser_tmp))  # what a crashed driver may have left
        if browser_tmp.parent != folder:
            shutil.rmtree(browser_tmp, ignore_errors=True)


def _page_answer(answer: dict, what: str, model: Path) -> dict:
    """The page's answer, or its error as ours: the model's fault (ArtifactError) or the browser's."""
    if "error" not in answer:
        return answer
    message = f"in Chromium, {what}: {answer['error']} ({answer['code']})"
    raise (ArtifactError if answer["code"] in MODEL_CODES else InputError)(f"{model}: {message}")


class _BrowserRow:
    """One page running the module with one number of threads."""

    def __init__(self, browser: object, url: str, threads: int, frames: list[tuple[str, str]], model: Path) -> None:
        self.model = model
        self.page = browser.new_page()
        self.page.set_default_timeout(PAGE_LOAD_TIMEOUT_SECONDS * 1000)
        args = {"model": MODEL_URL, "threads": threads, "frames": frames,
                "loadMs": PAGE_LOAD_TIMEOUT_SECONDS * 1000, "frameMs": FRAME_TIMEOUT_SECONDS * 1000}  # fmt: skip
        answer = self._call(lambda: (self.page.goto(f"{url}/{BENCH_PAGE}"), self.page.evaluate(SETUP_JS, args))[1],
                            "loading the model")  # fmt: skip
        self.info, self.isolated = answer["info"], answer["isolated"]

    def _call(self, thunk: Callable[[], dict], what: str) -> dict:
        """A call into the page; Playwright's own errors (a crashed page, a closed browser) as ours."""
        from playwright.sync_api import Error

        try:
            answer = thunk()
        except Error as exc:
            raise InputError(f"{self.model}: in Chromium, {what}: {str(exc).splitlines()[0]}") from None
        return _page_answer(answer, what, self.model)

    def row(self, ort_web_version: str, threads: int) -> WebBenchRow:
        """This page's row, noting where ONNX Runtime Web started other threads than asked."""
        row = WebBenchRow(f"ONNX Runtime Web {ort_web_version}, WebAssembly, {_threads(threads)}",
                          "onnxruntime-web", threads, self.info["threads"])  # fmt: skip
        if row.threads_used != threads:
            isolation = "" if self.isolated else " (the page is not cross-origin isolated)"
            row.notes.append(f"asked {_threads(threads)}, ONNX Runtime Web started {row.threads_used}{isolation}")
        return row

    def step(self, index: int) -> float:
        return self._call(lambda: self.page.evaluate(STEP_JS, index), "a frame")["ms"]

    def outputs(self, index: int, height: int, width: int) -> dict[str, np.ndarray]:
        answer = self._call(lambda: self.page.evaluate(OUTPUTS_JS, index), "a frame")
        return {
            name: np.frombuffer(base64.b64decode(answer[name]), np.float32).reshape(1, channels, height, width)
            for name, channels in (("pha", 1), ("fgr", 3))
        }


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count != 1 else ''}"


def bench_web(
    onnx: Path,
    runs: int = WEB_RUNS,
    warmup: int = WEB_WARMUP,
    threads: Sequence[int] = THREADS,
    chromium: Path = DEFAULT_CHROMIUM,
    browser_model: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> WebBench:
    """Time the browser module on ``onnx`` (a fixed-size bgm-export ONNX) in headless Chromium
    with each of ``threads`` WebAssembly threads, native ONNX Runtime with each of ``threads``
    intra-op threads and OpenVINO FP32 (f32) with the most of them: ``warmup`` untimed frames
    a row, then ``runs`` rounds, each one frame on every row in turn. ``browser_model``: the
    artifact the browser runs instead of ``onnx`` (another arrangement of the same model),
    judged against native ONNX Runtime on ``onnx``."""
    from exporter.web import _browser_artifact, build_site, ort_web_dist

    say = on_progress or (lambda message: None)
    onnx = Path(onnx)
    browser_model = Path(browser_model) if browser_model is not None else onnx
    if not (1 <= runs <= MAX_WEB_RUNS and 0 <= warmup <= MAX_WEB_WARMUP):
        raise InputError(
            f"runs {shown(runs)} and warm-up {shown(warmup)}: give 1 to {MAX_WEB_RUNS:,} runs and 0 to "
            f"{MAX_WEB_WARMUP:,} warm-up frames"
        )
    threads = tuple(dict.fromkeys(threads))
    if not threads or not all(isinstance(t, int) and t >= 1 for t in threads):
        raise InputError(f"threads {threads}: give one or more whole numbers of at least 1")
    metadata, config = _browser_artifact(onnx)
    if browser_model != onnx:
        _, browser_config = _browser_artifact(browser_model)
        if (browser_config.height, browser_config.width) != (config.height, config.width):
            raise ArtifactError(
                f"{browser_model} is {browser_config.height}x{browser_config.width}; "
                f"{onnx} is {config.height}x{config.width}: the rows must run the same frames"
            )
    missing = browser_missing(chromium)
    if missing is not None:
        raise InputError(missing)
    _, ort_web_version = ort_web_dist()  # InputError: run `make setup`
    import onnxruntime
    import openvino

    most = max(threads)
    height, width = config.height, config.width
    cases = synthetic_cases(height, width, FRAMES, use="bench")
    frames = [(_rgba(c.src), _rgba(c.bgr)) for c in cases]
    encoded = [tuple(base64.b64encode(image.tobytes()).decode() for image in pair) for pair in frames]
    versions = {"onnxruntime-web": ort_web_version, "onnxruntime": onnxruntime.__version__,
                "openvino": openvino.__version__.split("-")[0]}  # fmt: skip

    rows: list[WebBenchRow] = []
    runners: list[object] = []  # each row's: a browser page, or a native runner
    try:
        with tempfile.TemporaryDirectory(prefix="bgm-webbench-") as scratch:
            say("building the site")
            site = build_site(browser_model, Path(scratch) / "site").folder
            (site / BENCH_PAGE).write_text(BENCH_PAGE_HTML)
            with _served(site) as url, _chromium(chromium, Path(scratch)) as browser:
                versions["chromium"] = browser.version
                say(f"serving at {url}/, Chromium {browser.version} started")
                for count in threads:
                    say(f"loading the model in a page with {_threads(count)}")
                    page = _BrowserRow(browser, url, count, encoded, browser_model)
                    rows.append(page.row(ort_web_version, count))
                    runners.append(page)
                say("loading native ONNX Runtime and OpenVINO")
                for runtime, count in [*(("onnxruntime", t) for t in threads), ("openvino", most)]:
                    runners.append(load_runner(onnx, runtime, inference_precision="f32", metadata=metadata,
                                               threads=count))  # fmt: skip
                    label = (f"ONNX Runtime {versions['onnxruntime']} native" if runtime == "onnxruntime"
                             else f"OpenVINO {versions['openvino']} FP32 (f32)")  # fmt: skip
                    rows.append(WebBenchRow(f"{label}, {_threads(count)}", runtime, count, count))
                reference = next(r for r in rows if r.runtime == "onnxruntime" and r.threads == most)
                _measure(rows, runners, reference, frames, warmup, runs, say)
    finally:
        for runner in runners:
            if isinstance(runner, Runner):
                runner.close()
    for row in rows:
        row.ratio = row.fps / reference.fps
    return WebBench(
        model=str(onnx),
        resolution=(height, width),
        model_bytes=browser_model.stat().st_size,
        frames=len(frames),
        runs=runs,
        warmup=warmup,
        rows=rows,
        cpu=cpu_description(),
        versions=versions,
        browser_model=str(browser_model) if browser_model != onnx else "",
    )


def _measure(
    rows: list[WebBenchRow],
    runners: list[object],
    reference: WebBenchRow,
    frames: list[tuple[np.ndarray, np.ndarray]],
    warmup: int,
    runs: int,
    say: Callable[[str], None],
) -> None:
    """Each row's accuracy on the first frame against ``reference``'s, then ``warmup`` and
    ``runs`` rounds of one frame on every row in turn, into the rows."""
    say("accuracy on the first frame, then warm-up")
    height, width = frames[0][0].shape[:2]
    outputs = [
        r.outputs(0, height, width) if isinstance(r, _BrowserRow) else _native_step(r, *frames[0]) for r in runners
    ]
    expected = outputs[rows.index(reference)]
    for row, output in zip(rows, outputs, strict=True):
        if row is not reference:
            row.accuracy = [compare_fp32(name, expected[name], output[name]) for name in ("pha", "fgr")]
    steps = [r.step if isinstance(r, _BrowserRow) else functools.partial(_timed_native, r, frames) for r in runners]
    for i in range(warmup):
        for step in steps:
            step(i % len(frames))
    say(f"{runs} rounds, one frame on each of the {len(rows)} rows in turn")
    for i in range(runs):
        for row, step in zip(rows, steps, strict=True):
            time.sleep(SETTLE_SECONDS)
            row.times_ms.append(step(i % len(frames)))


def _timed_native(runner: Runner, frames: list[tuple[np.ndarray, np.ndarray]], index: int) -> float:
    start = time.perf_counter()
    _native_step(runner, *frames[index])
    return (time.perf_counter() - start) * 1000


def format_web_bench(result: WebBench) -> str:
    height, width = result.resolution
    reference = next(r for r in result.rows if r.reference)
    lines = [
        f"{Path(result.model).name} at {height}x{width} ({result.model_bytes / 1e6:.1f} MB), {result.frames} frames; "
        f"{result.warmup} warm-up and {result.runs} timed frames a row, the rows interleaved frame by frame; "
        f"Chromium {result.versions.get('chromium', '?')} (headless)",
        f"CPU: {result.cpu}",
    ]
    if result.browser_model:
        lines.append(f"the browser ran {result.browser_model}")
    lines += [
        "",
        "One frame: RGBA bytes in, alpha and foreground out (the module's m.run, timed in the page; natively "
        "the same RGBA -> BGR planes conversion and the model). Accuracy: the first frame against "
        f"{reference.label}, FP32 bars (max |d| ≤ {tol.FP32_ATOL:g} outside ≤ {tol.FP32_PATCH_SHARE:.2%} of patches).",
    ]
    table = [("runtime", "median ms", "p90 ms", "frames/s", f"x ORT {reference.threads}T",
              "pha max |d|", "pha mean |d|", "fgr max |d|", "accuracy")]  # fmt: skip
    for r in result.rows:
        by = {a.output: a for a in r.accuracy}
        if r.reference:
            cells, judged = ("reference",) * 3, "reference"
        else:
            cells = (f"{by['pha'].max_abs:.1e}", f"{by['pha'].mean_abs:.1e}", f"{by['fgr'].max_abs:.1e}")
            judged = "PASSED" if all(r.accuracy) else "FAILED: its speed does not count"
        table.append((r.label, f"{r.median_ms:.1f}", f"{r.p90_ms:.1f}", f"{r.fps:.2f}", f"{r.ratio:.2f}", *cells,
                      judged))  # fmt: skip
    lines += format_table(table)
    for r in result.rows:
        lines += [f"  {r.label}: {note}" for note in r.notes]
        lines += [f"  {r.label}: {verdict(a)}" for a in r.accuracy if not a]
    return "\n".join(lines)
