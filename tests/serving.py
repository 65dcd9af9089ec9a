"""Starting ``bgm-export serve`` for a test: in a process of its own (KServe's and
tritonclient's gRPC modules cannot share one process), on free loopback ports, and stopping
it with SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import CLI_COMMAND as COMMAND

STARTUP_SECONDS = 180


@dataclass
class Served:
    process: subprocess.Popen
    rest: str  # host:port
    grpc: str
    log: Path
    output: list[str]  # its standard output's lines so far

    def http(self):  # noqa: ANN201 - tritonclient.http.InferenceServerClient
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(self.rest)

    def grpc_client(self):  # noqa: ANN201 - tritonclient.grpc.InferenceServerClient
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.grpc)


def start_server(target: Path, log: Path, *options: object) -> Served:
    """``bgm-export serve TARGET`` on free loopback ports, once it says where it listens."""
    argv = [*COMMAND, "serve", str(target), "--http-port", "0", "--grpc-port", "0", *map(str, options)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        text = "".join(lines)
        rest, grpc = re.search(r"REST  http://(\S+)", text), re.search(r"gRPC  (\S+)", text)
        if rest and grpc:
            return Served(process, rest[1], grpc[1], log, lines)
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"the server did not start: {''.join(lines)}\n{log.read_text()}")


def stop_server(served: Served) -> int:
    """SIGTERM, and the exit code."""
    served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        served.process.kill()
        raise
