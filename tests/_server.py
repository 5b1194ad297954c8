"""Run a real server in a subprocess on 127.0.0.1 and a free port, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    exit_code: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Send `sig`, wait for exit (killing after `timeout_s`), return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.exit_code = self.process.returncode
        return self.exit_code


def hypercorn_command(app: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}", *extra]


@contextmanager
def run_server(
    command: Sequence[str],
    port: int,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    ready_path: str = "/__ready_probe__",
    wait_ready: bool = True,
    timeout_s: float = 60.0,
) -> Iterator[Server]:
    """Start `command`; when `wait_ready`, poll until it answers HTTP (any status).

    The process is always stopped on exit (SIGTERM, then SIGKILL).
    """
    log_path = tmp_path / f"server-{port}.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=full_env
        )
    server = Server(process, port, log_path, env=full_env)
    try:
        if wait_ready:
            wait_until_serving(server, ready_path, timeout_s)
        yield server
    finally:
        server.stop()


def wait_until_serving(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.output()}")
        try:
            httpx.get(server.url + path, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise TimeoutError(f"server did not answer within {timeout_s} s:\n{server.output()}")


def wait_for_exit(server: Server, timeout_s: float) -> int:
    """Wait for a server that should exit by itself; kill it after `timeout_s`."""
    try:
        return server.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)
        raise
