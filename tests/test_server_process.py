"""The test kit's real-server launcher: a free port, the wait until it answers, the stop by PID."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from asgi_host.testing import SERVERS, ServerProcess, free_port, run_server, server_command
from tests._server import ROOT

pytestmark = pytest.mark.server

# A server that starts a child in a session of its own (as LitServe's workers leave the process
# group), writes that child's PID, and answers HTTP.
DETACHING_SERVER = """
import http.server, subprocess, sys
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
open(sys.argv[2], "w").write(str(child.pid))
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
"""


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def test_a_server_is_waited_for_answers_and_stops_cleanly() -> None:
    port = free_port()
    command = server_command("hypercorn", "tests.apps:ok_app", port)
    with run_server(command, port=port, cwd=ROOT) as server:
        assert httpx.get(server.url + "/state", timeout=5).json() == {"db": "connected"}
        pid = server.pid
    assert server.exit_code == 0, server.output()
    assert not running(pid)
    assert "Running on http://127.0.0.1" in server.output()


def test_stop_ends_what_the_server_started_even_outside_its_session(tmp_path: Path) -> None:
    port, pid_file = free_port(), tmp_path / "child.pid"
    command = [sys.executable, "-c", DETACHING_SERVER, str(port), str(pid_file)]
    with run_server(command, port=port) as server:
        child = int(pid_file.read_text())
        assert running(child)
        assert os.getsid(child) != os.getsid(server.pid)  # it left the server's session
    assert not running(server.pid)
    deadline = time.monotonic() + 5
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(child)


def test_a_server_that_exits_before_answering_says_why() -> None:
    port = free_port()
    command = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]
    with (
        pytest.raises(RuntimeError, match=r"(?s)exited with 3.*no model here"),
        run_server(command, port=port),
    ):
        pass


def test_a_port_someone_listens_on_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # Otherwise the readiness check is answered by the other listener, and this server, failing
    # to bind, goes unnoticed until the other one leaves.
    marker = tmp_path / "started"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError, match=rf"127\.0\.0\.1:{port} already has a listener") as refused:
            ServerProcess([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], port=port)
    assert refused.value.errno == errno.EADDRINUSE
    time.sleep(0.3)
    assert not marker.exists()


def test_a_server_that_never_answers_times_out_and_is_stopped() -> None:
    port = free_port()
    server = ServerProcess([sys.executable, "-c", "import time; time.sleep(60)"], port=port)
    with pytest.raises(TimeoutError, match=r"did not answer within 0\.3 s"):
        server.wait_ready(lambda url: False, timeout_s=0.3)
    assert server.stop(signal.SIGTERM) == -signal.SIGTERM
    assert not running(server.pid)


def test_server_commands() -> None:
    assert SERVERS == ("hypercorn", "uvicorn", "granian")
    assert server_command("uvicorn", "m:app", 9, ["--lifespan", "on"])[-5:] == [
        "127.0.0.1",
        "--port",
        "9",
        "--lifespan",
        "on",
    ]
    assert server_command("granian", "m:app", 9)[-1] == "m:app"
    with pytest.raises(ValueError, match="server is one of hypercorn, uvicorn, granian"):
        server_command("daphne", "m:app", 9)  # type: ignore[arg-type]
