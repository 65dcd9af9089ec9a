"""The server's life: ports bound first (a port in use is named before minutes of compiling),
models compiled, REST (uvicorn) and gRPC started on one event loop, then SIGTERM, SIGHUP or
Ctrl-C: both stop taking requests, the bodies still arriving are cut off (503), the requests
being computed finish, the answers nobody reads are cut off, the runners are freed. A second
signal ends the process at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from exporter import __version__
from exporter.errors import ServerError
from exporter.redact import printable
from exporter.remote import hold_freed_memory
from exporter.serve import Listening, ServedModel, ServeSummary
from exporter.serve.limits import (
    BODIES_PER_REQUEST_LIMIT,
    HEADER_TIMEOUT_SECONDS,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    REFUSED_LINGER_SECONDS,
    STOP_SEND_SECONDS,
    Load,
)

__all__ = ["GRACE_SECONDS", "Server", "is_loopback"]

log = logging.getLogger("bgm-export.serve")

# How long requests in flight get to finish after SIGTERM (Kubernetes waits 30 s by default
# before it kills the pod).
GRACE_SECONDS = 25
# Answered whatever the connection bound: what orchestrators probe (Kubernetes' liveness and
# readiness, KServe's own paths for them).
HEALTH_PATHS = frozenset({b"/v2/health/live", b"/v2/health/ready"})
# The signals that stop the server: SIGHUP too, a terminal closing (it exited 129 with no summary).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _kserve() -> None:
    """Import KServe with an empty command line: ``kserve.model_server`` parses ``sys.argv``
    with its own options when imported."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve  # noqa: F401
    finally:
        sys.argv = argv


def _uvicorn_server(config: uvicorn.Config) -> uvicorn.Server:
    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # The serving loop's handlers stop REST and gRPC together (``Server.run``).
            yield

    return Server(config)


class TimedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for a request's headers, from the
    connection's first moment and from each request's first byte (uvicorn has none: a client
    sending one byte a second held its connection, and its place, for ever), and bounds on
    their bytes and count (431). Bound to a server's ``Load`` (``bound_to``), it also keeps
    ``MAX_CONNECTIONS`` (503, counted) but for the health probes, and tells the load when a
    connection ends (the idle trim)."""

    load: Load | None = None
    _header_timer: asyncio.TimerHandle | None = None
    _in_head = True  # between requests, or in one's request line and headers
    _head_bytes = _header_count = _fields_bytes = 0
    _message_ended = _refused = False

    @classmethod
    def bound_to(cls, load: Load) -> type[TimedHttp]:
        return type("ServedHttp", (cls,), {"load": load})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        in_head, self._message_ended = self._in_head, False
        super().data_received(data)
        # The parser keeps a header's bytes until the header ends: counted here as they come.
        # A chunk in which a request ended is not counted (its bytes are partly that request's),
        # so what is held stays under the bound plus one read (256 KiB).
        if in_head and self._in_head and not self._message_ended:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADER_BYTES:
                self._refuse_head(f"sent more than {MAX_HEADER_BYTES} bytes of request headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._header_count, self._fields_bytes = True, 0, 0, 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._header_count += 1
        self._fields_bytes += len(name) + len(value)
        if self._header_count > MAX_HEADERS:
            self._refuse_head(f"sent more than {MAX_HEADERS} request headers")
        elif self._fields_bytes > MAX_HEADER_BYTES:
            self._refuse_head(f"sent more than {MAX_HEADER_BYTES} bytes of request headers")
        else:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._disarm()
        if self.load is None or len(self.connections) <= MAX_CONNECTIONS or self._is_health():
            super().on_headers_complete()
            return
        self.load.busy += 1
        log.warning("%s: %d connections open, over the bound of %d; answered 503", self._client(),
                    len(self.connections), MAX_CONNECTIONS)  # fmt: skip
        app, self.app = self.app, service_unavailable
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_head = self._message_ended = True
        self._head_bytes = self._header_count = self._fields_bytes = 0
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        if self.load is not None:
            self.load.settle()

    def _start_asgi_task(self, cycle: object, app: object) -> None:
        self._answering = cycle  # uvicorn's ``cycle`` is the newest request, queued behind it if pipelined
        super()._start_asgi_task(cycle, app)

    def unanswered(self) -> bool:
        """An answer being sent, or to be sent, on this connection."""
        cycle = getattr(self, "_answering", None)
        return (cycle is not None and not cycle.response_complete) or bool(self.pipeline)

    def cut_off(self) -> None:
        """The connection closed with its answers undelivered; every request of it ends quietly
        (uvicorn marks only the newest as disconnected: the one being answered went on writing
        to the closed connection)."""
        for cycle in [getattr(self, "_answering", None), self.cycle, *(cycle for cycle, _ in self.pipeline)]:
            if cycle is not None:
                cycle.disconnected = True
        self.transport.abort()

    def _is_health(self) -> bool:
        try:
            return httptools.parse_url(self.url).path in HEALTH_PATHS
        except httptools.HttpParserError:
            return False

    def _client(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

    def _refuse_head(self, what: str) -> None:
        """431 and the connection closed: nothing more of it is parsed, and what still
        arrives for ``REFUSED_LINGER_SECONDS`` is dropped (so that the 431 reaches the client)."""
        self._refused = True
        self._disarm()
        if self.load is not None:
            self.load.busy += 1
        log.warning("%s %s; answered 431 and closed", self._client(), what)
        body = f"the request's headers are over this server's bounds: it {what}".encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n"
                             b"content-type: text/plain; charset=utf-8\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(REFUSED_LINGER_SECONDS, self.transport.close)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # a request is being answered: its own time limits apply
        log.info("%s sent no complete request headers within %g s; connection closed", self._client(),
                 HEADER_TIMEOUT_SECONDS)  # fmt: skip
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
        self.transport.close()


class PrintableFormatter(logging.Formatter):
    """Every line of the log as ``printable`` makes it: a client's text (a path, a tensor's
    name, a model name over gRPC) with its CR, LF, NUL or bidirectional overrides escaped, so
    that it can neither forge a log line nor reorder one on a terminal, and bounded. A
    traceback (an error of ours) keeps its lines, each escaped and indented: no line of it
    can pass for a line of the log."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:  # noqa: N802
        return self._indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return self._indented(super().formatStack(stack_info))

    @staticmethod
    def _indented(text: str) -> str:
        return "\n".join(f"  {printable(line)}" for line in text.split("\n"))


def _log_to_stderr() -> None:
    """The server's log on stderr, one line an event: warnings (a bad request, a bound
    reached) and information (a client gone, a slow client closed). One handler on the root
    logger, so that uvicorn's, KServe's and gRPC's lines (warnings and errors) pass through
    the same formatter as ours."""
    root = logging.getLogger()
    if not any(isinstance(handler.formatter, PrintableFormatter) for handler in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    log.setLevel(logging.INFO)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0]).is_loopback
    except (OSError, ValueError):
        return False


def _bind(host: str, port: int, what: str = "HTTP", option: str = "--http-port") -> socket.socket:
    """``port`` on ``host``, bound and listening; ``ServerError`` naming it if in use."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]  # fmt: skip
    except OSError as exc:
        raise ServerError(f"--host {host} is not an address here: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not in use: only TIME_WAIT left
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ServerError(f"{what} port {port} on {host} is in use; choose another {option}") from None
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server:
    def __init__(
        self,
        models: list[ServedModel],
        host: str,
        http_port: int,
        grpc_port: int,
        device: str,
        inference_precision: str,
        max_request_bytes: int,
        body_timeout: float,
    ) -> None:
        self.served, self.host, self.http_port, self.grpc_port = models, host, http_port, grpc_port
        self.device, self.inference_precision, self.limit = device, inference_precision, max_request_bytes
        self.body_timeout = body_timeout

    def run(self, on_ready: Callable[[Listening], None] | None) -> ServeSummary:
        _kserve()
        _log_to_stderr()
        # Requests of tens of megabytes, allocated and freed one by one: kept during a burst,
        # returned once idle (``Load``).
        hold_freed_memory()
        http_socket = _bind(self.host, self.http_port)
        try:
            if self.grpc_port:  # named here, before gRPC's own report of a failed bind
                _bind(self.host, self.grpc_port, "gRPC", "--grpc-port").close()
            # asyncio's own loop, not uvloop: under uvloop, accepting a connection (a health
            # probe's) waited 2-4.7 s while 64 720p bodies streamed in; under asyncio, 0.4 s at
            # most on 2 busy cores. uvloop saved 1-4 ms of CPU on a 720p request of 350 ms.
            return asyncio.run(self._serve(http_socket, on_ready))
        finally:
            http_socket.close()

    async def _serve(self, http_socket: socket.socket, on_ready: Callable[[Listening], None] | None) -> ServeSummary:
        from kserve.model_repository import ModelRepository
        from kserve.protocol.dataplane import DataPlane

        from exporter.serve.grpc_api import build_grpc_server
        from exporter.serve.model import MattingModel
        from exporter.serve.rest import build_app

        loop = asyncio.get_running_loop()
        stop, stopped_by = asyncio.Event(), []
        models: list[MattingModel] = []
        load = Load(BODIES_PER_REQUEST_LIMIT * self.limit, self.body_timeout)

        def stop_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                _stop_now(sig, load)
            stopped_by.append(sig.name)
            stop.set()

        handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop_signal, sig)
        try:
            registry = ModelRepository()
            dataplane = DataPlane(model_registry=registry)
            by_name = {}
            metadata = {"name": "bgm-export", "version": __version__, "extensions": ["binary_tensor_data"]}
            address = _authority(self.host, self.grpc_port)
            grpc_server, grpc_port = build_grpc_server(dataplane, by_name, metadata, address, self.limit, load)
            for served in self.served:  # compiling takes seconds per model
                model = MattingModel(served, self.device, self.inference_precision)
                models.append(model)
                model.load()
                registry.update(model)
                by_name[model.name] = model
            app = build_app(dataplane, by_name, metadata, self.limit, load)
            # The connection bound is ``TimedHttp``'s (health probes pass it), not uvicorn's.
            config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                    http=TimedHttp.bound_to(load), timeout_graceful_shutdown=GRACE_SECONDS)  # fmt: skip
            rest = _uvicorn_server(config)
            if stop.is_set():  # stopped while compiling
                return self._summary(stopped_by, models, load)
            await grpc_server.start()
            rest_task = asyncio.create_task(rest.serve(sockets=[http_socket]))
            while not rest.started and not rest_task.done():
                await asyncio.sleep(0.02)
            if rest_task.done():
                await rest_task
                raise ServerError("the REST server stopped while starting")
            # What start-up made lives as long as the server: out of the collector's way. A full
            # collection walked its 130,000 objects in 0.16 s, stalling the event loop (and the
            # health probe) as often as a burst's garbage set one off.
            gc.collect()
            gc.freeze()
            if on_ready is not None:
                http_port = http_socket.getsockname()[1]
                on_ready(Listening(f"http://{_authority(self.host, http_port)}", _authority(self.host, grpc_port),
                                   self.served, models[0].runner.inference_precision))  # fmt: skip
            await asyncio.wait([asyncio.create_task(stop.wait()), rest_task], return_when=asyncio.FIRST_COMPLETED)
            # Both stop taking requests, the bodies still arriving are cut off, and the requests
            # being computed finish (up to GRACE_SECONDS).
            load.stop()
            rest.should_exit = True
            undelivered = asyncio.create_task(_cut_off_undelivered(rest.server_state.connections, load))
            try:
                await asyncio.gather(_stop_grpc(grpc_server, load), rest_task)
            finally:
                undelivered.cancel()
            return self._summary(stopped_by or ["the REST server's end"], models, load)
        finally:
            for sig, handler in handlers.items():  # asyncio would leave the default's, which exits without a line
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)
            for model in models:
                model.stop()
            load.close()

    @staticmethod
    def _summary(stopped_by: list[str], models: list, load: Load) -> ServeSummary:
        return ServeSummary(
            stopped_by=stopped_by[0] if stopped_by else "",
            answered={m.name: m.answered for m in models},
            refused={m.name: m.refused for m in models},
            cut_off=load.cut_off,
            busy=load.busy + sum(m.busy for m in models),
            timed_out=load.timed_out,
        )


def _stop_now(sig: signal.Signals, load: Load) -> None:
    """A second signal during a stop: the one who sent it will not wait for the grace period.
    One line and the signal's exit code, at once: an orderly exit would wait for the runtime's
    threads and gRPC's, which is the wait just refused. Nothing of the server's is half
    written (it writes no files)."""
    what = "interrupted" if sig == signal.SIGINT else "terminated"
    sys.stdout.flush()
    sys.stderr.write(
        f"error: {what} again ({sig.name}) while stopping; the requests still in flight are not answered\n"
    )
    sys.stderr.flush()
    os._exit(128 + sig)


async def _cut_off_undelivered(connections: set, load: Load) -> None:
    """Once stopping: an answer whose client has read none of it for ``STOP_SEND_SECONDS``
    is cut off (its connection aborted, which ends its sending quietly) and counted, instead of
    holding the stop for its grace period and ending in a cancelled task's traceback."""
    loop = asyncio.get_running_loop()
    stalled: dict[object, tuple[int, float]] = {}  # connection -> (bytes waiting to be sent, since)
    while True:
        now = loop.time()
        for connection in list(connections):
            transport = connection.transport
            waiting = transport.get_write_buffer_size() if not transport.is_closing() else 0
            if not (waiting and connection.unanswered()):
                stalled.pop(connection, None)
                continue
            before, since = stalled.get(connection, (-1, now))
            if waiting != before:  # something was read (or more written): its time starts again
                stalled[connection] = (waiting, now)
            elif now - since >= STOP_SEND_SECONDS:
                stalled.pop(connection)
                load.cut_off += 1
                log.info("%s read none of its answer for %g s of the stop; connection closed", connection._client(),
                         STOP_SEND_SECONDS)  # fmt: skip
                connection.cut_off()
        await asyncio.sleep(0.1)


async def _stop_grpc(grpc_server: object, load: Load) -> None:
    """gRPC's calls being computed finish; then the rest (a message still arriving, which
    gRPC would otherwise wait the whole grace period for) are cancelled."""
    deadline = asyncio.get_running_loop().time() + GRACE_SECONDS
    while load.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    await grpc_server.stop(0)
