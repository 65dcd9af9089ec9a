"""The infer stage: requests kept in flight over a runner, results handed on in order.

Used by ``matte`` (files, pipes, live sources), by ``bench --matte`` for the model alone,
and by serving. ``depth`` is how many requests are in flight: the runner's ``parallel`` for
throughput, two for live video, where a deeper queue only adds latency.

The caller's thread takes items and submits them; a collector thread waits for the oldest
request and hands its outputs on, so a result never waits for the next frame to arrive (a
pipe or a camera sends frames at its own pace). No runtime callback is used: a Python
callback would stall OpenVINO's threads on the GIL while this process decodes and encodes.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import numpy as np

from exporter.pipeline.timings import Timings
from exporter.pipeline.waits import STOP_GRACE, wait_until
from exporter.runtime import Feeds, Runner

__all__ = ["LATENCY_DEPTH", "InferStage", "nonfinite"]

T = TypeVar("T")

# Live video: one request computing while the next frame's is queued behind it.
LATENCY_DEPTH = 2

_DONE = object()


def nonfinite(arrays: Mapping[str, np.ndarray], names: Iterable[str] | None = None) -> str | None:
    """The first of ``names`` (default: all) among ``arrays`` that holds NaN or an infinity,
    or None. A broken artifact (a NaN weight) answers NaN everywhere, which an 8-bit cast
    writes as black without a word: every answer is checked before it is used.

    Each array's sum of squares, OpenCV's ``norm`` (accumulated in float64, on the calling
    thread): a NaN or an infinity anywhere makes it non-finite, in one pass at memory speed
    (0.8 ms for a 720p alpha and foreground on a busy 2-core machine; numpy's ``sum`` or
    ``min``/``max`` 1.2 to 1.5 ms),
    with no array of flags the size of the frame. Not numpy's ``dot``, as fast: OpenBLAS
    spreads it over threads that then spin on the cores the model and the server need."""
    import cv2

    for name in arrays if names is None else names:
        array = arrays.get(name)
        if array is None or not array.size or not np.issubdtype(array.dtype, np.floating):
            continue
        flat = array.reshape(-1)  # a view when contiguous, as runtimes' outputs are
        if not math.isfinite(cv2.norm(flat, cv2.NORM_L2SQR)):
            return name
    return None


class InferStage:
    """``run(items, on_result)`` submits ``(tag, feeds)`` pairs, at most ``depth`` in flight,
    and calls ``on_result(tag, outputs)`` in submission order. An item is taken from
    ``items`` only when a request is free, so a live source is asked for its newest frame as
    late as possible."""

    def __init__(
        self,
        runner: Runner,
        depth: int | None = None,
        timings: Timings | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """``stop``: set when an interrupt's wait for the results in flight outlasts
        ``STOP_GRACE`` (their consumer is blocked: a reader that does not read), so that the
        consumer gives up."""
        self.runner = runner
        self.stop = stop
        self.depth = max(1, depth or runner.parallel)
        self.timings = timings or Timings()
        self.completed = 0
        self._model_seconds = 0.0

    def run(self, items: Iterable[tuple[T, Feeds]], on_result: Callable[[T, dict[str, np.ndarray]], None]) -> None:
        """Until ``items`` ends; an error of ``on_result`` (or of a request) is raised here, and
        an error here (or an interrupt) still waits for the requests in flight."""
        free = threading.Semaphore(self.depth)
        in_flight: queue.SimpleQueue = queue.SimpleQueue()
        failures: list[BaseException] = []

        collected = threading.Event()

        def collect() -> None:
            try:
                while (entry := in_flight.get()) is not _DONE:
                    tag, pending = entry
                    try:
                        outputs = pending.result()
                        if not failures:
                            self._model_seconds += pending.seconds
                            self.completed += 1
                            on_result(tag, outputs)
                    except BaseException as exc:  # raised in the caller's thread
                        failures.append(exc)
                    finally:
                        free.release()
            finally:
                collected.set()

        collector = threading.Thread(target=collect, name="bgm-collector", daemon=True)
        collector.start()
        interrupted = False
        try:
            iterator = iter(items)
            while True:
                free.acquire()
                if failures:
                    raise failures[0]
                item = next(iterator, _DONE)
                if item is _DONE:
                    break
                tag, feeds = item
                in_flight.put((tag, self.runner.submit(feeds)))
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            in_flight.put(_DONE)
            _wait_for(collected, self.stop, interrupted, self.runner.cancel)
        if failures:
            raise failures[0]

    @property
    def model_seconds(self) -> float:
        """The model's working time: the requests' summed time over the number that ran side
        by side (equal to the wall time when every request was always busy)."""
        return self._model_seconds / max(1, min(self.depth, self.completed))


def _wait_for(
    collected: threading.Event,
    stop: threading.Event | None,
    interrupted: bool = False,
    cancel: Callable[[], None] | None = None,
) -> None:
    """Wait until the collector is done even when Ctrl-C or SIGTERM lands in the wait (they
    are raised in this thread), then raise the interrupt: the requests in flight are waited
    for and their results handed on, as when the interrupt lands anywhere else in ``run``.
    Left running, the collector waited on OpenVINO requests while the process exited, and
    OpenVINO aborted the exit ("terminate called without an active exception", 134 instead
    of 143). Not ``Thread.join``: interrupted, Python 3.11's marks the thread as ended while
    it still runs, and every later join returns at once. Once interrupted, a collector still
    busy after ``STOP_GRACE`` is told to ``stop`` (its results are dropped, its requests still
    waited for, or given up where the runner can: ``cancel``, a remote server's, whose requests
    would otherwise hold the run for their whole timeout); ``interrupted``: the interrupt
    landed before this wait."""
    interrupt = None
    while True:
        try:
            if (interrupt is None and not interrupted) or stop is None:
                collected.wait()
            elif not wait_until(collected, STOP_GRACE):
                stop.set()
                if cancel is not None:
                    cancel()
                continue
            break
        except BaseException as exc:
            interrupt = interrupt or exc
    if interrupt is not None:
        raise interrupt
