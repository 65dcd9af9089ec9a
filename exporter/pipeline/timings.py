"""Where a pipeline's time goes, added to from several threads at once."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import numpy as np

__all__ = ["Timings", "timed"]


class Timings:
    """Seconds per stage (``add``, ``measure``) and end-to-end latencies per frame.

    The stages overlap, so their seconds add up to more than the wall time."""

    def __init__(self, *stages: str) -> None:
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(stages, 0.0)
        self._latencies: list[float] = []

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def latency(self, seconds: float) -> None:
        """One frame's time from capture to written."""
        with self._lock:
            self._latencies.append(seconds)

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)

    def latency_percentiles(self, *percentiles: float) -> dict[float, float]:
        """Latency percentiles in seconds ({} before any frame was written)."""
        with self._lock:
            latencies = list(self._latencies)
        if not latencies:
            return {}
        return {p: float(np.percentile(latencies, p)) for p in percentiles}


def timed(items: Iterator, timings: Timings, stage: str) -> Iterator:
    """``items``, with the time spent producing each added to ``stage``."""
    while True:
        start = time.perf_counter()
        item = next(items, _END)
        timings.add(stage, time.perf_counter() - start)
        if item is _END:
            return
        yield item


_END = object()
