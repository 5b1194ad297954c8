"""Drive any ASGI 3 app with raw lifespan and HTTP messages, on asyncio or trio.

No server, no HTTP client: the app gets the exact messages a server would send,
and you get back the exact messages it sent::

    from asgi_host.testing import LifespanDriver

    async def test_predict():
        async with LifespanDriver(app) as lifespan:          # startup, or raise
            result = await lifespan.request("POST", "/predict", json={"inputs": [[1, 2, 3, 4]]})
            assert result.status == 200
        assert lifespan.transcript[-1] == ("send", {"type": "lifespan.shutdown.complete"})

Works with apps nobody here wrote (FastAPI, Starlette, ...): see docs/testing.md. For a real
server instead, `run_server(server_command("hypercorn", "module:app", port), port=port)` runs it
in a subprocess on 127.0.0.1 and stops it by PID. What the
driver finds wrong with an app is raised as one of `asgi_host`'s errors: `LifespanFailed`,
`LifespanUnsupported`, `AppTimeout`, `ProtocolViolation` (all `DriverError`s).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import anyio
import msgspec

from ._driver import AppTimeout, LifespanSession, ProtocolViolation, Transcript, lifespan_scope
from ._errors import AsgiHostError
from ._server_process import SERVERS, ServerProcess, free_port, run_server, server_command
from ._types import ASGIApp, Message, Scope, State

__all__ = [
    "SERVERS",
    "HTTPResult",
    "LifespanDriver",
    "ServerProcess",
    "ServerSentEvent",
    "Transcript",
    "call",
    "free_port",
    "http_scope",
    "lifespan_scope",
    "request",
    "run_server",
    "server_command",
]


@dataclass(frozen=True)
class ServerSentEvent:
    """One event of a `text/event-stream` body, as a client parses it."""

    data: str
    event: str | None = None
    id: str | None = None

    def json(self) -> Any:
        return msgspec.json.decode(self.data)


@dataclass
class HTTPResult:
    """What an app answered to one HTTP request.

    `chunks` are the body's pieces as the app sent them, each with its arrival time in seconds
    since the request began: a stream's pace (`request()` fills them in).
    """

    status: int | None
    headers: list[tuple[str, str]]
    body: bytes
    transcript: Transcript = field(repr=False)
    chunks: list[tuple[float, bytes]] = field(default_factory=list, repr=False)

    @property
    def complete(self) -> bool:
        """The app ended its response (a last body message without `more_body`)."""
        sent = [m for d, m in self.transcript if d == "send" and m.get("type") == "http.response.body"]
        return bool(sent) and not sent[-1].get("more_body", False)

    def events(self) -> list[ServerSentEvent]:
        """The body as Server-Sent Events (comments, such as heartbeats, left out)."""
        events: list[ServerSentEvent] = []
        fields: dict[str, list[str]] = {}
        text = self.body.decode().replace("\r\n", "\n").replace("\r", "\n")
        for line in text.split("\n"):
            if not line:
                if "data" in fields:
                    event, id_ = fields.get("event", [None])[-1], fields.get("id", [None])[-1]
                    events.append(ServerSentEvent("\n".join(fields["data"]), event, id_))
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))
        return events

    def lines(self) -> list[Any]:
        """An NDJSON body, one decoded value per line."""
        return [msgspec.json.decode(line) for line in self.body.splitlines() if line.strip()]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    @classmethod
    def of(cls, transcript: Transcript, sent_at: Sequence[float] = ()) -> HTTPResult:
        """The response an HTTP transcript holds (from `call`, say); `sent_at`: when each message the
        app sent arrived (`call(sent_at=...)`), for the chunks' times."""
        status: int | None = None
        headers: list[tuple[str, str]] = []
        body: list[bytes] = []
        chunks: list[tuple[float, bytes]] = []
        times = iter(sent_at)
        for direction, message in transcript:
            if direction != "send":
                continue
            at = next(times, float("nan"))
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in message.get("headers", [])
                ]
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                chunks.append((at, message.get("body", b"")))
        return cls(status, headers, b"".join(body), transcript, chunks)


def http_scope(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Iterable[tuple[str, str]] = (),
    query_string: bytes = b"",
    root_path: str = "",
    state: State | None = None,
) -> Scope:
    """An HTTP scope as a server builds it from the request target `path` (which includes
    `root_path`): `raw_path` as sent, `path` percent-decoded."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode(),
        "query_string": query_string,
        "root_path": root_path,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    if state is not None:
        scope["state"] = dict(state)  # servers hand each request a shallow copy
    return scope


async def call(
    app: ASGIApp,
    scope: Scope,
    incoming: Sequence[Message],
    *,
    timeout_s: float = 5.0,
    transcript: Transcript | None = None,
    disconnect_after: int | None = None,
    sent_at: list[float] | None = None,
) -> Transcript:
    """Run `app` on `scope`, feeding `incoming` messages; return the whole transcript.

    Once `incoming` is used up, `receive()` waits until the app has finished its
    response and then reports the client gone (`http.disconnect` or
    `websocket.disconnect`), as a server does; in a lifespan scope it waits
    until the timeout. With `disconnect_after=n` the client leaves as soon as the
    app has sent `n` body chunks of a response it has not finished (0: before the
    first), as a client that stops reading a stream; what the app sends after that
    is kept in the transcript, as a server would drop it. HTTP response messages
    are checked against the spec; a violation raises `ProtocolViolation`. An
    exception from the app propagates; pass your own `transcript` list to inspect
    the messages afterwards, and `sent_at` to get the time (seconds since the call
    began) of each message the app sent.
    """
    transcript = [] if transcript is None else transcript
    pending = list(incoming)
    finished = anyio.Event()
    leaves = anyio.Event()  # finished, or the client left mid-response
    checker = _ResponseChecker(scope["type"])
    body_chunks = 0
    began = anyio.current_time()
    if disconnect_after == 0:
        leaves.set()

    async def receive() -> Message:
        if pending:
            message = pending.pop(0)
        else:
            await leaves.wait()
            message = (
                {"type": "websocket.disconnect", "code": 1000}
                if scope["type"] == "websocket"
                else {"type": "http.disconnect"}
            )
        transcript.append(("receive", message))
        return message

    async def send(message: Message) -> None:
        nonlocal body_chunks
        transcript.append(("send", dict(message)))
        if sent_at is not None:
            sent_at.append(anyio.current_time() - began)
        if leaves.is_set() and not finished.is_set():
            return  # the client is gone: a server drops what is sent
        if checker.feed(message):
            finished.set()
            leaves.set()
        elif message.get("type") == "http.response.body":
            body_chunks += 1
            if disconnect_after is not None and body_chunks >= disconnect_after:
                leaves.set()

    with anyio.move_on_after(timeout_s) as scope_timer:
        await app(scope, receive, send)
    if scope_timer.cancelled_caught:
        raise AppTimeout(
            f"the app did not finish {scope['type']} {scope.get('path', '')!r}", timeout_s, transcript
        )
    return transcript


async def request(
    app: ASGIApp,
    method: str = "GET",
    path: str = "/",
    *,
    body: bytes = b"",
    json: Any = None,
    chunks: Sequence[bytes] | None = None,
    headers: Iterable[tuple[str, str]] = (),
    query_string: bytes = b"",
    root_path: str = "",
    disconnect: bool = False,
    then_disconnect: bool = False,
    disconnect_after: int | None = None,
    state: State | None = None,
    timeout_s: float = 5.0,
) -> HTTPResult:
    """Send one HTTP request to `app` with raw messages and collect the answer.

    The body goes as one `http.request` message, or as `chunks` (one message
    each). `json=` encodes a body and sets `content-type`. `disconnect=True`
    sends `http.disconnect` instead of finishing the body; `then_disconnect=True`
    finishes the body and then disconnects at once (a client that gives up
    while its request is queued); `disconnect_after=n` lets the client leave after `n` chunks of
    a streamed answer (see `call`). `state` is copied into the scope as servers do with lifespan
    state. The result's `chunks` say when each piece of the body arrived.
    """
    header_list = list(headers)
    if json is not None:
        body = msgspec.json.encode(json)
        header_list.append(("content-type", "application/json"))
    parts = list(chunks) if chunks is not None else [body]
    names = {k.lower() for k, _ in header_list}
    if chunks is None and not disconnect and "content-length" not in names:
        header_list.append(("content-length", str(len(body))))
    messages: list[Message] = [
        {"type": "http.request", "body": part, "more_body": disconnect or i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]
    if disconnect or then_disconnect:
        messages.append({"type": "http.disconnect"})
    scope = http_scope(
        method,
        root_path + path,
        headers=header_list,
        query_string=query_string,
        root_path=root_path,
        state=state,
    )
    sent_at: list[float] = []
    transcript = await call(
        app, scope, messages, timeout_s=timeout_s, disconnect_after=disconnect_after, sent_at=sent_at
    )
    return HTTPResult.of(transcript, sent_at)


class _ResponseChecker:
    """Checks the order of response messages; `feed` says when the response is complete."""

    def __init__(self, scope_type: str) -> None:
        self.scope_type = scope_type
        self.started = False
        self.done = False

    def feed(self, message: Message) -> bool:
        kind = message.get("type")
        if self.done:
            raise ProtocolViolation(f"the app sent {kind!r} after its response was complete")
        if self.scope_type == "websocket":
            self.done = kind == "websocket.close"
            return self.done
        if self.scope_type == "lifespan":
            if not str(kind).startswith("lifespan."):
                raise ProtocolViolation(f"unexpected message {kind!r} in a lifespan scope")
            return False
        if kind == "http.response.start":
            if self.started:
                raise ProtocolViolation("the app sent 'http.response.start' twice")
            self.started = True
        elif kind == "http.response.body":
            if not self.started:
                raise ProtocolViolation("the app sent 'http.response.body' before 'http.response.start'")
            self.done = not message.get("more_body", False)
        else:
            raise ProtocolViolation(f"unexpected message {kind!r} in an http scope")
        return self.done


class LifespanDriver(LifespanSession):
    """Run an app's lifespan with raw messages: `async with LifespanDriver(app) as lifespan:`.

    Entering sends `lifespan.startup` and returns once the app answers
    `startup.complete`; `startup.failed`, or an exception after the app
    received `lifespan.startup`, raises `LifespanFailed`; an app that raises
    before its first `receive()` raises `LifespanUnsupported`; no answer
    within `startup_timeout_s` raises `AppTimeout`. Leaving sends
    `lifespan.shutdown` and checks the answer the same way, then that the app
    returns promptly. `state` is the lifespan state the app filled in
    (`with_state=False` leaves it out of the scope, as older servers do).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        startup_timeout_s: float = 5.0,
        shutdown_timeout_s: float = 5.0,
        with_state: bool = True,
    ) -> None:
        super().__init__(
            app,
            lifespan_scope(with_state=with_state),
            startup_timeout_s=startup_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
            label="LifespanDriver",
        )

    @property
    def state(self) -> State:
        state: State = self.scope.get("state", {})
        return state

    async def request(self, method: str = "GET", path: str = "/", **kwargs: Any) -> HTTPResult:
        """`request()` against the app, with a copy of the lifespan state in the scope."""
        kwargs.setdefault("state", self.scope.get("state"))
        return await request(self.app, method, path, **kwargs)

    async def __aenter__(self) -> LifespanDriver:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        error: BaseException | None = None  # an explicit shutdown() already raised its own
        if not self.shutdown_sent and not self.app_returned:
            # Shielded: shutdown is sent even if the test body was cancelled.
            with anyio.CancelScope(shield=True):
                try:
                    await self.shutdown()
                except AsgiHostError as failure:
                    error = failure
        timeout = await self.close(error)
        error = error or timeout
        if error is not None and exc is None:
            raise error
