"""Write-behind: the threads that composite, encode and write frames while the model runs.

One rule each, in one place: ordered work (compositing, a video's or a pipe's next frame)
runs on one thread so frames stay in order; the files that work returns (PNGs) are encoded
on a small pool; at most ``depth`` frames wait, so memory stays flat however long the video;
a frame's slot is freed exactly once, when its last file is written or its work fails; the
first failure is raised in the caller's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from exporter.pipeline.waits import WAIT_TICK, Stopped

__all__ = ["WriteBehind"]

Job = Callable[[], None]


class _Slot:
    """One frame's place in the window, released when its ``pending`` jobs are done."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release
        self._lock = threading.Lock()
        self._pending = 1  # the ordered work itself

    def add(self, jobs: int) -> None:
        with self._lock:
            self._pending += jobs

    def done(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self._release()


class WriteBehind:
    """``put(work)``: ``work`` runs on the ordered thread and returns jobs for the pool."""

    def __init__(self, depth: int, workers: int, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()  # set: a blocked writer gives up, and so does ``put``
        self._slots = threading.BoundedSemaphore(depth)
        self._depth = depth
        self._ordered = ThreadPoolExecutor(1, "bgm-writer")
        self._pool = ThreadPoolExecutor(workers, "bgm-encoder")
        self._failures: list[BaseException] = []
        self._lock = threading.Lock()

    def put(self, work: Callable[[], Sequence[Job]]) -> None:
        """Hand a frame's work to the writers; waits while ``depth`` frames are waiting."""
        self.check()
        while not self._slots.acquire(timeout=WAIT_TICK):  # called from other threads too: no signal lands here
            if self.stop.is_set():
                raise Stopped
        slot = _Slot(self._slots.release)
        self._ordered.submit(self._run_ordered, work, slot)

    def check(self) -> None:
        """Raise the first failure of a writer thread, here."""
        with self._lock:
            if self._failures:
                raise self._failures[0]

    def drain(self, timeout: float | None) -> bool:
        """Wait until every frame handed over is written (or a writer failed); False when
        ``timeout`` seconds were not enough. Interruptible."""
        taken = 0
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while taken < self._depth:
                if self._failures:
                    return True
                if self._slots.acquire(timeout=WAIT_TICK):
                    taken += 1
                elif deadline is not None and time.monotonic() >= deadline:
                    return False
            return True
        finally:
            for _ in range(taken):
                self._slots.release()

    def close(self, finished: bool = True) -> None:
        """Wait for the writers; ``finished`` False (an error, an interrupt) drops the work
        not yet started. Raises the first failure when finished."""
        self._ordered.shutdown(wait=True, cancel_futures=not finished)
        self._pool.shutdown(wait=True, cancel_futures=not finished)
        if finished:
            self.check()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self._failures.append(exc)

    def _run_ordered(self, work: Callable[[], Sequence[Job]], slot: _Slot) -> None:
        try:
            if self._failures:  # a frame after a failure is not worth writing
                return
            jobs = list(work())
            slot.add(len(jobs))
            for job in jobs:
                self._pool.submit(self._run_job, job, slot)
        except BaseException as exc:  # handed to the caller's thread
            self._fail(exc)
        finally:
            slot.done()

    def _run_job(self, job: Job, slot: _Slot) -> None:
        try:
            job()
        except BaseException as exc:
            self._fail(exc)
        finally:
            slot.done()
