"""Named, timed stages of a command, reported as they finish."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

__all__ = ["Stages"]


class Stages:
    """Records ``(name, seconds)`` of each stage; ``on_done`` hears about each as it ends."""

    def __init__(self, on_done: Callable[[str, float], None] | None = None) -> None:
        self.durations: dict[str, float] = {}
        self._on_done = on_done

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.durations[name] = self.durations.get(name, 0.0) + seconds
        if self._on_done is not None:
            self._on_done(name, seconds)
