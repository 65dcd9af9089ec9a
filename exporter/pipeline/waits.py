"""How long the pipeline waits, and how a wait stays interruptible.

Every blocking wait of a run (a stream's open and reads, a pipe's reads and writes, the
writers' last frames after a stop) is bounded by a timeout here, and checks for a stop at
least every ``WAIT_TICK``: Ctrl-C and SIGTERM are raised in the main thread only, and a C
call blocked in OpenCV, FFmpeg or ``read(2)`` cannot be interrupted from Python. So the
blocking calls run on threads (or on non-blocking file descriptors) and the main thread
waits for them in short steps it can be interrupted between.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import stat
import termios
import threading
import time

__all__ = [
    "STOP_GRACE",
    "STREAM_OPEN_TIMEOUT",
    "STREAM_READ_TIMEOUT",
    "WAIT_TICK",
    "Stopped",
    "read_fd",
    "wait_until",
    "write_fd",
]

# fcntl's F_GETPIPE_SZ (Linux 2.6.35; Python names it from 3.10 on some builds only).
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# How often a waiting thread looks for a stop: a signal ends the run within a few ticks.
WAIT_TICK = 0.1
# A stream (RTSP, HTTP, TCP, UDP, ...) that has not opened and sent its first frame within
# this many seconds is an error; ``matte --open-timeout`` sets another. OpenCV's own default
# is 30 s (``cv2.CAP_PROP_OPEN_TIMEOUT_MSEC``), during which a Ctrl-C could not be handled;
# 10 s covers an RTSP camera's handshake and first key frame on a slow network.
STREAM_OPEN_TIMEOUT = 10.0
# A stream that sends no frame for this long has stalled (a camera's frame interval is at
# most a few hundred milliseconds; a key frame every few seconds on a slow link).
STREAM_READ_TIMEOUT = 10.0
# After a stop, how long the writers may take to write the frames already taken before they
# are abandoned (a reader of our output that stopped reading would otherwise hold us forever).
STOP_GRACE = 1.0


class Stopped(Exception):
    """A wait gave up because the run is stopping."""


def wait_until(done: threading.Event, timeout: float | None = None) -> bool:
    """Wait for ``done`` in ticks (a signal is raised between them); False after ``timeout``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not done.wait(WAIT_TICK):
        if deadline is not None and time.monotonic() >= deadline:
            return False
    return True


def _ready(fd: int, writing: bool, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise Stopped
        readable, writable, _ = select.select([] if writing else [fd], [fd] if writing else [], [], WAIT_TICK)
        if readable or writable:
            return


def read_fd(fd: int, length: int, stop: threading.Event) -> bytes:
    """Up to ``length`` bytes from ``fd`` (fewer at its end), giving up with ``Stopped`` once
    ``stop`` is set while nothing arrives."""
    chunks, got = [], 0
    while got < length:
        _ready(fd, False, stop)
        chunk = os.read(fd, length - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _room(fd: int) -> int:
    """Bytes a write to ``fd`` takes now without blocking: a pipe's free space (its size less
    what its reader has not read), or ``select.PIPE_BUF``, what a writable pipe or socket has
    at the least."""
    try:
        size = fcntl.fcntl(fd, F_GETPIPE_SZ)
        unread = array.array("i", [0])
        fcntl.ioctl(fd, termios.FIONREAD, unread)
    except OSError:  # not a pipe (a socket, a terminal)
        return select.PIPE_BUF
    return max(size - unread[0], select.PIPE_BUF)


def write_fd(fd: int, data: bytes | memoryview, stop: threading.Event) -> None:
    """All of ``data`` to ``fd``, giving up with ``Stopped`` once ``stop`` is set while the
    reader takes nothing. A regular file never holds a write back; elsewhere each write is of
    what the descriptor has room for once it selects as writable, so no write blocks and the
    descriptor (shared with whoever else writes to it, stderr in ``2>&1``) stays blocking.
    (``select.PIPE_BUF`` at a time cost a 1080p frame 1,500 rounds: 10 ms against 1.)"""
    view = memoryview(data).cast("B")
    if stat.S_ISREG(os.fstat(fd).st_mode):
        while view:
            view = view[os.write(fd, view) :]
        return
    while view:
        _ready(fd, True, stop)
        view = view[os.write(fd, view[: _room(fd)]) :]
