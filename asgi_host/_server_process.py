"""Real servers in subprocesses, for tests and benchmarks: a free port of 127.0.0.1, a wait until the
server answers, and a stop by PID (never by name) that always happens.

::

    from asgi_host.testing import free_port, run_server, server_command

    port = free_port()
    with run_server(server_command("hypercorn", "examples.app:app", port), port=port) as server:
        httpx.get(server.url + "/readyz")
    print(server.exit_code, server.output())
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

__all__ = ["SERVERS", "ServerProcess", "free_port", "run_server", "server_command"]

SERVERS = ("hypercorn", "uvicorn", "granian")
Server = Literal["hypercorn", "uvicorn", "granian"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(server: Server, app: str, port: int, options: Sequence[str] = ()) -> list[str]:
    """The command that serves `app` (`module:attribute`) with `server` on 127.0.0.1:`port`."""
    python = [sys.executable, "-m", server]
    if server == "hypercorn":
        return [*python, app, "--bind", f"127.0.0.1:{port}", *options]
    if server == "uvicorn":
        return [*python, app, "--host", "127.0.0.1", "--port", str(port), *options]
    if server == "granian":
        return [*python, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), *options, app]
    raise ValueError(f"server is one of {', '.join(SERVERS)}, got {server!r}")


class ServerProcess:
    """A command (a server) running in a session of its own, its output in a log file.

    `stop()` sends a signal to the process and waits for it; a process that does not exit in
    time is killed with its whole session (workers a supervisor started included).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        port: int,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        if _listened_on(port):
            # The readiness check would be answered by whoever holds the port, and this server
            # would fail to bind: refuse now, not after a benchmark has measured the wrong server.
            raise OSError(errno.EADDRINUSE, f"127.0.0.1:{port} already has a listener")
        self.command = list(command)
        self.port = port
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix=f"server-{port}-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.exit_code: int | None = None
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, ready: Callable[[str], bool], timeout_s: float = 60.0) -> None:
        """Poll `ready(url)` (False, or an exception such as a refused connection, means not yet)
        until it is true.

        Raises `RuntimeError` with the output if the process exits first, `TimeoutError` after
        `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if ready(self.url):
                    return
            except Exception:  # refused, reset, an HTTP client's own error: not up yet
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the server did not answer within {timeout_s} s:\n{self.output()}")

    def wait(self, timeout_s: float) -> int:
        """Wait for a process that should exit by itself; kill it (and raise) after `timeout_s`."""
        try:
            self.exit_code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
            raise
        return self.exit_code

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Send `sig`, wait for the exit (killing the session after `timeout_s`), return the exit code.

        Whatever the server started and left behind goes too, by PID: its session, and every process
        that descended from it when the stop began (a worker that left the session included).
        """
        children = _descendants(self.process.pid)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._kill()
        self.exit_code = self.process.returncode
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        _end(children, grace_s=min(timeout_s, 10.0))
        return self.exit_code

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.exit_code = self.process.returncode


def _listened_on(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return False
        # A connect to a free port of the ephemeral range can, rarely, connect to itself (the
        # kernel picked that very port as its source): that is no listener.
        return bool(sock.getsockname() != sock.getpeername())


def _descendants(pid: int) -> list[int]:
    """The processes descended from `pid` now, from /proc (none where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # "pid (name) state ppid ...": the name may hold spaces and parentheses.
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _end(pids: list[int], grace_s: float) -> None:
    """SIGTERM each process still alive, then SIGKILL what is left after `grace_s`."""
    alive = [pid for pid in pids if _signal(pid, signal.SIGTERM)]
    deadline = time.monotonic() + grace_s
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _running(pid)]
    for pid in alive:
        _signal(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited process nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return _signal(pid, 0)


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def answers(path: str) -> Callable[[str], bool]:
    """A readiness check: an HTTP GET of `path` gets any answer at all."""

    def check(url: str) -> bool:
        host, _, port = url.removeprefix("http://").partition(":")
        with socket.create_connection((host, int(port)), timeout=1.0) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return sock.recv(12).startswith(b"HTTP/1.")

    return check


@contextmanager
def run_server(
    command: Sequence[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    ready: str | Callable[[str], bool] | None = "/",
    timeout_s: float = 60.0,
    log_path: Path | None = None,
) -> Iterator[ServerProcess]:
    """Start `command`, wait until it answers HTTP (`ready`: a path any answer of which will do, a
    check of the URL, or None not to wait), and stop it on the way out, whatever happened."""
    server = ServerProcess(command, port=port, env=env, cwd=cwd, log_path=log_path)
    try:
        if ready is not None:
            server.wait_ready(answers(ready) if isinstance(ready, str) else ready, timeout_s)
        yield server
    finally:
        server.stop()
