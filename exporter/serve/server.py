"""The server's life: ports bound first (a port in use is named before minutes of compiling),
models compiled, REST (uvicorn) and gRPC started on one event loop, then SIGTERM or Ctrl-C:
both stop taking requests, the requests in flight finish, the runners are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterator

import uvicorn

from exporter import __version__
from exporter.errors import ServerError
from exporter.remote import hold_freed_memory
from exporter.serve import Listening, ServedModel, ServeSummary

__all__ = ["GRACE_SECONDS", "Server", "is_loopback"]

log = logging.getLogger("bgm-export.serve")

# How long requests in flight get to finish after SIGTERM (Kubernetes waits 30 s by default
# before it kills the pod).
GRACE_SECONDS = 25


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


def _event_loop() -> Callable:
    """``asyncio.run`` on uvloop where it is installed (with uvicorn's standard extras, as
    KServe installs it): a 720p request's 22 MB arrive in 256 KB reads, each an event-loop
    turn, and uvloop's turns cost the server 1-4 ms of CPU a request less than asyncio's."""
    try:
        import uvloop
    except ImportError:  # not on Windows, for one
        return asyncio.run
    return getattr(uvloop, "run", asyncio.run)  # uvloop.run: 0.18 and later


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
    ) -> None:
        self.served, self.host, self.http_port, self.grpc_port = models, host, http_port, grpc_port
        self.device, self.inference_precision, self.limit = device, inference_precision, max_request_bytes

    def run(self, on_ready: Callable[[Listening], None] | None) -> ServeSummary:
        _kserve()
        hold_freed_memory()  # requests of tens of megabytes, allocated and freed one by one
        http_socket = _bind(self.host, self.http_port)
        try:
            if self.grpc_port:  # named here, before gRPC's own report of a failed bind
                _bind(self.host, self.grpc_port, "gRPC", "--grpc-port").close()
            return _event_loop()(self._serve(http_socket, on_ready))
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
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda s=sig: (stopped_by.append(signal.Signals(s).name), stop.set()))
        models: list[MattingModel] = []
        try:
            registry = ModelRepository()
            dataplane = DataPlane(model_registry=registry)
            by_name = {}
            metadata = {"name": "bgm-export", "version": __version__, "extensions": ["binary_tensor_data"]}
            address = _authority(self.host, self.grpc_port)
            grpc_server, grpc_port = build_grpc_server(dataplane, by_name, metadata, address, self.limit)
            for served in self.served:  # compiling takes seconds per model
                model = MattingModel(served, self.device, self.inference_precision)
                models.append(model)
                model.load()
                registry.update(model)
                by_name[model.name] = model
            app = build_app(dataplane, by_name, metadata, self.limit)
            config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=GRACE_SECONDS)  # fmt: skip
            rest = _uvicorn_server(config)
            if stop.is_set():  # stopped while compiling
                return self._summary(stopped_by, models)
            await grpc_server.start()
            rest_task = asyncio.create_task(rest.serve(sockets=[http_socket]))
            while not rest.started and not rest_task.done():
                await asyncio.sleep(0.02)
            if rest_task.done():
                await rest_task
                raise ServerError("the REST server stopped while starting")
            if on_ready is not None:
                http_port = http_socket.getsockname()[1]
                on_ready(Listening(f"http://{_authority(self.host, http_port)}", _authority(self.host, grpc_port),
                                   self.served, models[0].runner.inference_precision))  # fmt: skip
            await asyncio.wait([asyncio.create_task(stop.wait()), rest_task], return_when=asyncio.FIRST_COMPLETED)
            # Both stop taking requests; those in flight finish (up to GRACE_SECONDS).
            rest.should_exit = True
            await asyncio.gather(grpc_server.stop(GRACE_SECONDS), rest_task)
            return self._summary(stopped_by or ["the REST server's end"], models)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for model in models:
                model.stop()

    @staticmethod
    def _summary(stopped_by: list[str], models: list) -> ServeSummary:
        return ServeSummary(
            stopped_by=stopped_by[0] if stopped_by else "",
            answered={m.name: m.answered for m in models},
            refused={m.name: m.refused for m in models},
        )
