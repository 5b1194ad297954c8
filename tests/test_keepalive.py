"""Keep-alive after an early error, stalled bodies and hostile requests, against a real hypercorn
with raw sockets.

An error answered before the request body was read (404, 405, 413 by
Content-Length, 415) must leave the connection usable for the next request, or
close it cleanly with `Connection: close`: before, hypercorn dropped it silently
and the client's next request on it failed ("Server disconnected").
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_host.testing import free_port, server_command
from tests._server import run_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    tmp_path: Path = tmp_path_factory.mktemp("keepalive")
    with run_server(
        server_command("hypercorn", "examples.app:app", port),
        port,
        tmp_path,
        env={"IRIS_BODY_TIMEOUT_S": "1"},
    ):
        yield port


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from `sock` (Content-Length framed); leftover bytes stay in `buffer`."""
    deadline = time.monotonic() + 10
    while b"\r\n\r\n" not in buffer:
        assert time.monotonic() < deadline, "no response head"
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response; got {bytes(buffer)!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a body")
        rest += chunk
    buffer[:] = rest[length:]
    return status, headers, rest[:length]


def post(
    path: str,
    body: bytes,
    content_type: str = "application/json",
    length: int | None = None,
    headers: str = "",
) -> bytes:
    size = len(body) if length is None else length
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {size}\r\n"
        f"{headers}\r\n"
    ).encode() + body


GOOD = b'{"inputs":[[5.1,3.5,1.4,0.2]]}'


@pytest.mark.parametrize(
    ("first", "status"),
    [
        (post("/nowhere", GOOD), 404),
        (post("/", GOOD), 405),
        (post("/predict", GOOD, content_type="text/plain"), 415),
        (post("/predict", b'{"inputs": [[1, 2]]}'), 422),
    ],
)
def test_the_connection_serves_the_next_request_after_an_early_error(
    server: int, first: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        buffer = bytearray()
        head, _, body = first.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        time.sleep(0.3)  # the body is still on its way when the host can already answer
        sock.sendall(body)
        assert read_response(sock, buffer)[0] == status
        sock.sendall(post("/predict", GOOD))
        answer, _, body = read_response(sock, buffer)
        assert answer == 200, body
        assert b"setosa" in body


def test_a_body_too_big_to_discard_is_refused_with_connection_close(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(post("/predict", b"x" * 1000, length=50 * 1024 * 1024))  # declares 50 MiB
        status, headers, _ = read_response(sock, buffer)
        assert status == 413
        assert headers.get("connection") == "close"
        sock.settimeout(5)
        assert sock.recv(1) == b""  # closed cleanly after the answer, not left hanging


def test_a_stalled_body_is_408_and_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        buffer = bytearray()
        started = time.monotonic()
        sock.sendall(post("/predict", b'{"inp', length=100))  # 5 of 100 bytes, then nothing
        status, headers, body = read_response(sock, buffer)
        assert status == 408, body
        assert time.monotonic() - started < 5
        assert headers.get("connection") == "close"


def rows_tensor(rows: int) -> bytes:
    data = ",".join(["5.1,3.5,1.4,0.2"] * rows)
    return f'{{"name":"input","shape":[{rows},4],"datatype":"FP32","data":[{data}]}}'.encode()


HOSTILE_V2 = {
    # One output asked for 4,000 times over 1,024 rows: was a 262 MB answer from 125 KB.
    "repeated outputs": (
        b'{"inputs":['
        + rows_tensor(1024)
        + b'],"outputs":['
        + b",".join([b'{"name":"probabilities"}'] * 4000)
        + b"]}",
        "",
        "asked for twice",
    ),
    # 5,000 digits: past int()'s limit, was a 500.
    "a header length of 5,000 digits": (
        b'{"inputs":[' + rows_tensor(1) + b"]}",
        f"Inference-Header-Content-Length: {'1' * 5000}\r\n",
        "must be a byte count",
    ),
    # 10,000 deep: msgspec's RecursionError, was a 500.
    "data nested 10,000 deep": (
        b'{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":'
        + b"[" * 10_000
        + b"]" * 10_000
        + b"}]}",
        "",
        "nested too deeply",
    ),
    "parameters nested 10,000 deep": (
        b'{"inputs":[' + rows_tensor(1) + b'],"parameters":{"p":' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
        "",
        "nested too deeply",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE_V2))
def test_hostile_v2_requests_are_400_and_the_connection_serves_on(server: int, name: str) -> None:
    body, headers, message = HOSTILE_V2[name]
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(post("/v2/models/iris/infer", body, headers=headers))
        status, _, answer = read_response(sock, buffer)
        assert status == 400, answer[:200]
        assert message in answer.decode()
        assert len(answer) < 1024
        sock.sendall(post("/v2/models/iris/infer", b'{"inputs":[' + rows_tensor(2) + b"]}"))
        status, _, answer = read_response(sock, buffer)
        assert status == 200, answer
        assert answer.count(b"[") == 1 + 1 + 1  # outputs, shape, data: one output, 2 x 3 values
