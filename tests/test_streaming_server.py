"""A client that leaves a stream stops its source at once under every server.

hypercorn 0.18 declares ASGI spec_version 2.1, uvicorn 0.54 and granian 2.8 2.3: none raises from
`send()` when the client has gone (that came with 2.4), so the host's watcher, which reads
`http.disconnect` from `receive()` while the source is busy, is what notices.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from asgi_host.testing import SERVERS, free_port, server_command
from tests._server import run_server

pytestmark = pytest.mark.server


def read_events(sock: socket.socket, count: int, timeout_s: float = 10.0) -> bytes:
    """Read from the stream until `count` SSE events have arrived."""
    sock.settimeout(timeout_s)
    data = b""
    while data.count(b"\n\n") < count:  # one per event (the headers end with \r\n\r\n)
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


@pytest.mark.parametrize("server", SERVERS)
def test_a_client_that_leaves_stops_the_busy_source_at_once(server: str, tmp_path: Path) -> None:
    log = tmp_path / "stream.log"
    port = free_port()
    command = server_command(server, "tests.apps:stream_app", port)  # type: ignore[arg-type]
    with run_server(command, port, tmp_path, env={"ASGI_HOST_TEST_LOG": str(log)}) as served:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /tokens HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
            head = read_events(sock, 2)  # the second event: the source is now busy for 30 s
            left = time.time()
        assert b"200" in head.split(b"\r\n", 1)[0]
        assert b"text/event-stream" in head
        deadline = time.monotonic() + 10
        while "source ended" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.01)
        ended = float(log.read_text().split("source ended ")[1].split()[0])
        assert served.process.poll() is None  # the server goes on serving
    # Cancelled within a moment of the client leaving, not 30 s later when the source would yield.
    assert ended - left < 1.0, (server, ended - left)
