"""What the server holds at once, and how long it waits: every bound and timeout of ``serve``
in one place, and the one object (``Load``) that keeps them for REST and gRPC alike.

Past a bound the answer is 503 / ``RESOURCE_EXHAUSTED`` (a client retries, or a load balancer
sends it elsewhere), never a queue that grows with the clients: 1,000 concurrent 5.6 MB
requests once took the process from 316 MB to 4 GB, and kept 3 GB. The one wait is a REST
request's for room for its body, bounded (``ADMISSION_WAIT_SECONDS``) and with the body left
unread meanwhile. A body that arrives too slowly is a 408, and SIGTERM cuts off the bodies
still arriving (503) instead of waiting for them. After a burst the freed memory is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = [
    "ADMISSION_WAIT_SECONDS",
    "BODIES_PER_REQUEST_LIMIT",
    "CODEC_THREADS",
    "COUNT_DIGITS",
    "COMPUTE_NICENESS",
    "DEFAULT_BODY_TIMEOUT_SECONDS",
    "HEADER_TIMEOUT_SECONDS",
    "IDLE_TRIM_SECONDS",
    "MAX_CONNECTIONS",
    "MAX_GRPC_CALLS",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "QUEUED_PER_SLOT",
    "REFUSED_LINGER_SECONDS",
    "STOP_SEND_SECONDS",
    "BodyTimeout",
    "Load",
    "RequestTooLarge",
    "ServerBusy",
    "Stopping",
    "count",
    "lower_this_thread",
    "return_freed_memory",
]

log = logging.getLogger("bgm-export.serve")

T = TypeVar("T")

# A request's headers are a few hundred bytes: a client that has not sent them within this
# long is holding a connection, not sending a request (Apache's mod_reqtimeout default is
# 20 s for the headers; nginx's client_header_timeout 60 s). Answered 408 and closed.
HEADER_TIMEOUT_SECONDS = 20.0
# A request's headers, all of them: past either bound, 431 and the connection closed (uvicorn
# has no bound: four connections streaming one endless header value took 600 MB). nginx reads
# a request line and headers into large_client_header_buffers, 4 x 8 KiB by default; Apache
# takes 100 fields (LimitRequestFields) of up to 8190 bytes each (LimitRequestFieldSize), so
# 64 KiB and 100 keep every client those two take, and tritonclient sends a handful of bytes.
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
# After such a 431 the connection is half-closed and what the client still sends is read and
# dropped this long before it is closed: closed at once with unread bytes, the kernel resets
# it, and the client lost the 431 (nginx's lingering close, lingering_timeout 5 s; one second
# is ample on the networks a refused header comes over).
REFUSED_LINGER_SECONDS = 1.0
# A count read from a client (a byte count, a model version): at most this many ASCII digits,
# checked before ``int()``, which refuses more than 4300 (and took a 5000-digit header to a
# 500 with a traceback). 18 digits hold every int64 count below 10**18, far past 2047 MiB.
COUNT_DIGITS = 18
# A whole body: 128 MB (the default --max-request-mb) at 2 MB/s, and a 720p binary request
# (22 MB) at 400 KB/s; a slower client is answered 408 (--body-timeout for others).
DEFAULT_BODY_TIMEOUT_SECONDS = 60.0
# Open HTTP connections (uvicorn's limit_concurrency): past it a request is answered 503, but
# for the health probes (``/v2/health/live``, ``/v2/health/ready``), which are answered at
# once whatever is open: 256 idle connections made every probe a 503 for 20 s, and a
# probe failing because of the load is the orchestrator restarting a healthy server.
MAX_CONNECTIONS = 256
# gRPC calls at once (grpc.aio's maximum_concurrent_rpcs): past it RESOURCE_EXHAUSTED. gRPC
# reads a whole message before our code sees it, so this bounds its bodies too.
MAX_GRPC_CALLS = 32
# REST bodies held at once (being read, queued or computed), as a multiple of the request
# limit: 512 MB with the default 128 MB, some 23 720p binary requests. A request past it waits
# (its body unread, in the kernel's socket buffers) up to ADMISSION_WAIT_SECONDS, then 503.
BODIES_PER_REQUEST_LIMIT = 4
# Within tritonclient's default 60 s network timeout, with room for the computing and the
# answer. Answered at once with 503 instead, a burst's bodies were read only to be dropped:
# 64 concurrent 720p requests made the event loop drain 1 GB of refused bodies.
ADMISSION_WAIT_SECONDS = 20.0
# Requests waiting for a model beyond those it computes (its ``parallel`` slots), past which
# 503: eight per slot (32 with 4 slots) takes what the REST body bound admits of 720p requests
# (23) or gRPC's MAX_GRPC_CALLS, so that a body read is seldom a body refused.
QUEUED_PER_SLOT = 8
# Threads that decode requests and encode answers (JSON numbers, gRPC messages) off the
# event loop. Two: each holds the GIL in turns of a chunk, and more would only queue there.
CODEC_THREADS = 2
# After this long with nothing in flight (no request, and no connection closing), the memory a
# burst freed is returned to the system.
IDLE_TRIM_SECONDS = 1.0
# Once stopping, an answer whose client has read none of it for this long is cut off (the
# connection closed): clients that never read their answers held a stop for its whole grace
# period (25 s). Two seconds is a hundred times a loopback round trip and still leaves the
# stop well within the 5 s it promises for every other wait.
STOP_SEND_SECONDS = 2.0
# The niceness of the runtime's threads (OpenVINO's, which never hold the GIL): the event
# loop, at the process's own, then gets a core when it has work, and the health probe its
# answer, while inference keeps every core busy (at equal priority, 64 concurrent 720p
# requests kept /v2/health/live waiting up to 0.6 s on 2 cores). Python threads keep the
# process's: one holding the GIL at a lower priority would keep the loop waiting for it.
# Raising a thread's niceness needs no privilege; the compute takes every cycle left.
COMPUTE_NICENESS = 10


class RequestTooLarge(Exception):
    """A body over --max-request-mb: HTTP 413; over gRPC, the channel's own limit answers
    RESOURCE_EXHAUSTED."""


class ServerBusy(Exception):
    """A bound reached: HTTP 503, gRPC RESOURCE_EXHAUSTED."""


class BodyTimeout(Exception):
    """A body slower than ``--body-timeout``: HTTP 408."""


class Stopping(Exception):
    """The server is stopping: HTTP 503, gRPC UNAVAILABLE."""


def count(text: str) -> int | None:
    """``text`` as a whole number of at most ``COUNT_DIGITS`` ASCII digits (surrounding
    whitespace allowed), else None: the one parser of every count a client sends."""
    text = text.strip()
    if not (0 < len(text) <= COUNT_DIGITS and text.isascii() and text.isdigit()):  # "²".isdigit() is True
        return None
    return int(text)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator decides
        return None


def return_freed_memory() -> bool:
    """Give the memory freed in every glibc arena back to the system: glibc keeps freed
    arenas (and ``hold_freed_memory`` asks it to, for speed during a burst), so without this
    a burst's peak stayed the process's size. True where it applied."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def lower_this_thread() -> None:
    """This thread at ``COMPUTE_NICENESS`` (threads it starts inherit it): for a compute
    thread's executor initializer."""
    with contextlib.suppress(OSError, AttributeError):  # not where threads have a niceness of their own
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), COMPUTE_NICENESS)


class Load:
    """What the server holds at once: REST body bytes (``admit``, ``reserve``), requests in flight
    (``active``, idle trimming after the last), bodies being read (``reading``: timed, and cut
    off by ``stop``), and the codec threads (``off_loop``)."""

    def __init__(self, body_budget: int, body_timeout: float) -> None:
        self.body_budget, self.body_timeout = body_budget, body_timeout
        self.held = self.in_flight = 0
        self.cut_off = self.busy = self.timed_out = 0
        self.stopping = False
        self.on_idle: list[Callable[[], None]] = []  # run on the loop before the trim
        self._readers: set[asyncio.Timeout] = set()
        self._waiting: list[tuple[int, asyncio.Future]] = []  # (size, admitted), first come first served
        self._idle: asyncio.TimerHandle | None = None
        self._codec = ThreadPoolExecutor(CODEC_THREADS, thread_name_prefix="bgm-codec")

    async def off_loop(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` on a codec thread: encoding, decoding and copying large tensors."""
        return await asyncio.get_running_loop().run_in_executor(self._codec, work, *args)

    def refuse_if_stopping(self) -> None:
        if self.stopping:
            raise Stopping("the server is stopping; send the request to another replica")

    def reserve(self, size: int) -> None:
        """Hold ``size`` more body bytes, or ``ServerBusy``."""
        if self.held + size > self.body_budget:
            self.busy += 1
            raise ServerBusy(
                f"the server holds {self.held} bytes of requests, and this one's {size} more would pass its bound of "
                f"{self.body_budget} ({BODIES_PER_REQUEST_LIMIT} x --max-request-mb); retry shortly"
            )
        self.held += size

    async def admit(self, size: int) -> None:
        """Hold ``size`` body bytes, waiting (first come, first served) up to
        ``ADMISSION_WAIT_SECONDS`` for room; ``ServerBusy`` past it, ``Stopping`` if the server
        stops meanwhile."""
        self.refuse_if_stopping()
        if not self._waiting and self.held + size <= self.body_budget:
            self.held += size
            return
        admitted = asyncio.get_running_loop().create_future()
        entry = (size, admitted)
        self._waiting.append(entry)
        try:
            async with asyncio.timeout(ADMISSION_WAIT_SECONDS):
                await asyncio.shield(admitted)
        except TimeoutError:
            if not admitted.done():
                self._waiting.remove(entry)
                self.busy += 1
                raise ServerBusy(
                    f"the server held {self.held} bytes of requests for {ADMISSION_WAIT_SECONDS:g} s, its bound "
                    f"({BODIES_PER_REQUEST_LIMIT} x --max-request-mb), and this one's {size} would pass it; retry"
                ) from None
        except BaseException:  # cancelled: give back what may have been granted meanwhile
            if entry in self._waiting:
                self._waiting.remove(entry)
            elif admitted.done() and admitted.exception() is None:
                self.release(size)
            raise
        admitted.result()  # Stopping, when ``stop`` refused the waiters

    def release(self, size: int) -> None:
        self.held -= size
        while self._waiting and self.held + self._waiting[0][0] <= self.body_budget:
            size, admitted = self._waiting.pop(0)
            self.held += size
            admitted.set_result(None)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """One request in flight; after the last, and ``IDLE_TRIM_SECONDS`` of nothing, the
        freed memory goes back."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.settle()

    def settle(self) -> None:
        """Something ended (a request, a connection): with nothing left in flight, the trim
        after ``IDLE_TRIM_SECONDS`` more of it. A connection's end counts: headers that were
        refused, or idle connections closed, free memory no request will ever trim after."""
        if self.in_flight or self.stopping:
            return
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_TRIM_SECONDS, self._trim)

    def _trim(self) -> None:
        self._idle = None
        for callback in self.on_idle:
            callback()
        self._codec.submit(return_freed_memory)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        """A body being read: ``BodyTimeout`` past ``body_timeout``, ``Stopping`` once
        ``stop`` is called (the request is cut off, not waited for)."""
        self.refuse_if_stopping()
        try:
            async with asyncio.timeout(self.body_timeout) as timeout:
                self._readers.add(timeout)
                try:
                    yield
                finally:
                    self._readers.discard(timeout)
        except TimeoutError:
            if self.stopping:
                self.cut_off += 1
                raise Stopping("the server stopped while this request's body was arriving") from None
            self.timed_out += 1
            raise BodyTimeout(
                f"the request body did not arrive within {self.body_timeout:g} s (the server's --body-timeout)"
            ) from None

    def stop(self) -> None:
        """Stop taking requests, and cut off the bodies still arriving."""
        self.stopping = True
        if self._idle is not None:
            self._idle.cancel()
        now = asyncio.get_running_loop().time()
        for timeout in list(self._readers):
            timeout.reschedule(now)
        for _, admitted in self._waiting:
            self.cut_off += 1
            admitted.set_exception(Stopping("the server stopped while this request waited for room"))
        self._waiting.clear()

    def close(self) -> None:
        self._codec.shutdown(wait=True)
