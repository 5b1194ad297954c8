"""Requests, responses and the error JSON: the small HTTP layer routes use."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from types import CoroutineType
from typing import Any, Protocol, TypeVar

import anyio
import msgspec

from ._deadlines import Suspended, deadline_after
from ._errors import ClientDisconnect, HTTPError
from ._types import Message, Receive, Scope, Send, State

T = TypeVar("T")

__all__ = [
    "Error",
    "ErrorDetail",
    "ErrorFormat",
    "Request",
    "Response",
    "error_response",
    "media_type",
    "settle_body",
]


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    """What went wrong. `type` names the status (`validation_error` for 422, ...); `path`, for a
    body that does not match the schema, is where (`$.inputs[0]`)."""

    status: int
    type: str
    message: str
    path: str | None = None


class Error(msgspec.Struct):
    """The host's error JSON, which every error status carries, whatever `Accept` asked for."""

    error: ErrorDetail


_json_encoder = msgspec.json.Encoder()


class Response:
    """A complete response: status, headers and a body sent in one message.

    `headers` are `(name, value)` string pairs; `content-length` is added.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes = b"",
        *,
        status: int = 200,
        media_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.status = status
        self.body = body
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        if media_type is not None:
            raw.append((b"content-type", media_type.encode("latin-1")))
        raw.append((b"content-length", str(len(body)).encode("latin-1")))
        self.headers = raw

    @classmethod
    def raw(cls, body: bytes, headers: Iterable[tuple[bytes, bytes]], *, status: int = 200) -> Response:
        """A response whose headers are already lower-cased bytes (built once, reused per request)."""
        response = cls.__new__(cls)
        response.status = status
        response.body = body
        response.headers = [*headers, (b"content-length", str(len(body)).encode("latin-1"))]
        return response

    @classmethod
    def json(cls, content: Any, *, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        """Encode `content` (anything msgspec encodes: dicts, lists, Structs) as JSON."""
        return cls(
            _json_encoder.encode(content), status=status, media_type="application/json", headers=headers
        )

    async def send(self, send: Send, *, head: bool = False, receive: Receive | None = None) -> None:
        """Send it (`receive` is for streams, which watch for the client leaving; unused here)."""
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if head else self.body})


class ErrorFormat(Protocol):
    """How a route answers an error: the host's error JSON (`error_response`, the default), KServe's
    `{"error": "..."}`, OpenAI's error object. A `Route` (or its endpoint, as `error_format`) carries
    one, and the host answers every error of that route with it: what the endpoint raised, an
    unhandled exception (500), and what the host refuses before the endpoint runs (503 while
    loading, 405, 408, 413). Keep the error's status and headers (`Retry-After`, `Allow`)."""

    def __call__(self, error: HTTPError, /) -> Response: ...


def error_response(error: HTTPError) -> Response:
    """The host's error JSON for `error`: `{"error": {"status", "type", "message"[, "path"]}}`."""
    detail = ErrorDetail(status=error.status, type=error.type, message=error.message, path=error.path)
    return Response(
        _json_encoder.encode(Error(error=detail)),
        status=error.status,
        media_type="application/json",
        headers=error.headers,
    )


def media_type(content_type: str | None, default: str = "application/json") -> str:
    """The media type of a `Content-Type` value, lower-cased, without parameters (`default` if absent)."""
    if not content_type:
        return default
    return content_type.partition(";")[0].strip().lower()


class Request:
    """An HTTP request as a route handler sees it.

    `state` is the lifespan state (what the host's resources yielded), the same
    whether or not the server supports lifespan state. `receive` stays
    available, so a handler can keep watching for `http.disconnect` after
    reading the body.
    """

    __slots__ = (
        "_body",
        "_ended",
        "_headers",
        "_raw",
        "_received",
        "body_timeout_s",
        "max_body_bytes",
        "receive",
        "scope",
        "state",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        state: State,
        *,
        max_body_bytes: int | None,
        body_timeout_s: float | None = None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self._headers: dict[str, str] | None = None
        self._raw: dict[bytes, bytes] | None = None
        self._body: bytes | None = None
        self._ended = False  # the last body message (or a disconnect) has been received
        self._received = 0  # body bytes received so far

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    @property
    def path(self) -> str:
        path: str = self.scope["path"]
        return path

    @property
    def headers(self) -> Mapping[str, str]:
        """Lower-cased header names; repeated headers are joined with ", "."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for raw_name, raw_value in self.scope.get("headers", ()):
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            self._headers = headers
        return self._headers

    def raw_header(self, name: bytes) -> bytes | None:
        """The value `headers` has for `name` (lower-case), as bytes; None when there is none.

        Servers send each name once and in lower case, and then the scope's list is read into a dict
        once, in C, with nothing decoded: with the five or more headers clients send, cheaper than
        building `headers` (with two, about the same).
        """
        raw = self._raw
        if raw is None:
            raw = self._raw = _by_name(self.scope.get("headers", ()))
            if raw is None:  # a repeated or upper-case name: as `headers` joins them
                raw = self._raw = {k.encode("latin-1"): v.encode("latin-1") for k, v in self.headers.items()}
        return raw.get(name)

    async def body(self) -> bytes:
        """Read the whole body, refusing (413) past `max_body_bytes` without buffering more.

        A declared `content-length` over the limit is refused before reading;
        otherwise chunks are counted as they arrive. Raises `ClientDisconnect`
        when the client goes away first.
        """
        if self._body is not None:
            return self._body
        limit = self.max_body_bytes
        declared = self.raw_header(b"content-length")
        length = _length(declared)
        if limit is not None and length is not None and length > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        timeout_s = self.body_timeout_s
        loop = asyncio._get_running_loop()  # C calls, where sniffio's look-up is not
        if timeout_s is None or timeout_s == math.inf:
            await self._read(chunks, limit)  # no timer: a timer costs 10-20 us a request
        elif loop is None or asyncio.current_task(loop) is None:  # trio (also as asyncio's guest)
            await self._read_eagerly_trio(chunks, limit, timeout_s, declared)
        else:
            # On asyncio, a body that has already arrived is read with no timer at all. A timer
            # costs as much as the rest of the host's work on a request, and most small bodies
            # arrive with the headers: the server's `receive()` returns without suspending. So
            # the first `receive()` is stepped once by hand, here; only if it suspends does the
            # rest run under a deadline (a timer shared by the waits of a tick: _deadlines.py),
            # which, as `asyncio.timeout` and unlike a cancel scope, does not mind scopes that
            # `receive()` may have opened in its first step.
            receiving, _ = self._first_step(chunks, limit)
            if not self._ended:
                wait = deadline_after(timeout_s)
                try:
                    if receiving is not None:
                        self._take(await receiving, chunks, limit)
                    await self._read(chunks, limit)
                except BaseException as exc:
                    if wait.done(exc):
                        raise self._too_slow(chunks, declared) from None
                    raise
                wait.done()
        self._body = b"".join(chunks)
        return self._body

    async def _read_eagerly_trio(
        self, chunks: list[bytes], limit: int | None, timeout_s: float, declared: bytes | None
    ) -> None:
        """On trio under hypercorn: a body that has already arrived is read with no cancel scope.

        hypercorn's `receive()` on trio is a memory channel's: with the message
        there, its first step takes it and yields only a cancel-shielded
        checkpoint (a reschedule that no cancellation interrupts) before
        returning it; without, it waits and opens no cancel scope of its own.
        So its first step is taken by hand: a checkpoint of that kind is passed
        up with no timer, anything else (a real wait) is awaited under the
        timeout, as is the rest of the body. Any other `receive()` (a
        middleware's, which may open a scope of its own before it suspends:
        a scope entered after that step would close before it, which trio
        refuses) is read under the timeout from the start.
        """
        receiving: Awaitable[Message] | None = None
        if _is_memory_channel_receive(self.receive):
            receiving, yielded = self._first_step(chunks, limit)
            if receiving is not None and getattr(yielded, "__name__", None) == "CancelShieldedCheckpoint":
                self._take(await receiving, chunks, limit)  # in hand: only a reschedule left
                receiving = None
            if self._ended:
                return
        with anyio.move_on_after(timeout_s) as scope:
            if receiving is not None:
                self._take(await receiving, chunks, limit)
            await self._read(chunks, limit)
        if scope.cancelled_caught:
            raise self._too_slow(chunks, declared)

    def _first_step(self, chunks: list[bytes], limit: int | None) -> tuple[Awaitable[Message] | None, Any]:
        """The first `receive()`, stepped once by hand: (None, None) when it returned without
        suspending (its message taken), else what is left to await and what its step yielded."""
        receiving = self.receive()
        # The type first: the ABC's check alone costs more than a request's other checks.
        if type(receiving) is not CoroutineType and not isinstance(receiving, Coroutine):
            return receiving, None
        try:
            yielded = receiving.send(None)
        except StopIteration as done:
            self._take(done.value, chunks, limit)
            return None, None
        return Suspended(receiving, yielded), yielded

    def _too_slow(self, chunks: list[bytes], declared: bytes | None) -> HTTPError:
        # A stalled client must not hold the request (and a slot of every limit) open.
        return HTTPError(
            408,
            f"the request body did not arrive within body_timeout_s={self.body_timeout_s} "
            f"({sum(map(len, chunks))} bytes received"
            + (f" of {declared.decode('latin-1')})" if declared is not None else ")"),
            headers=[("connection", "close")],
        )

    async def _read(self, chunks: list[bytes], limit: int | None) -> None:
        while not self._ended:
            self._take(await self.receive(), chunks, limit)

    def _take(self, message: Message, chunks: list[bytes], limit: int | None) -> None:
        """One received message: a body chunk kept, the end noted, a disconnect or excess raised."""
        kind = message.get("type")
        if kind != "http.request":
            if kind == "http.disconnect":
                self._ended = True
                raise ClientDisconnect("the client disconnected while sending the body")
            raise HTTPError(400, f"unexpected ASGI message {kind!r} while reading the body")
        chunk = message.get("body", b"")
        received = self._received = self._received + len(chunk)
        if not message.get("more_body", False):
            self._ended = True
        if limit is not None and received > limit:
            raise _too_large(limit)
        if chunk:
            chunks.append(chunk)

    async def unless_client_leaves(self, run: Callable[[], Awaitable[T]], why: str) -> T:
        """`run()`, cancelled if the client leaves first (`http.disconnect`; body messages meanwhile are
        dropped): then `ClientDisconnect(why)`. For work after the body was read (a queued pass)."""
        left = False
        failure: Exception | None = None
        result: Any = None

        async def watch() -> None:
            nonlocal left
            while (await self.receive()).get("type") != "http.disconnect":
                pass
            left = True
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                result = await run()
            except Exception as exc:  # raised below, outside the task group (which would wrap it)
                failure = exc
            tg.cancel_scope.cancel()
        if left:
            raise ClientDisconnect(why)
        if failure is not None:
            raise failure
        answer: T = result
        return answer

    def _declares_body(self) -> bool:
        declared = self.raw_header(b"content-length")
        if declared is not None:
            length = _length(declared)
            return length is None or length > 0
        return b"chunked" in (self.raw_header(b"transfer-encoding") or b"").lower()

    async def discard_body(self, max_bytes: int, timeout_s: float) -> bool:
        """Read and drop what is left of the body, at most `max_bytes` within `timeout_s`.

        For an error answered before the body was read: an HTTP/1.1 server can only reuse the
        connection once the request's body has been consumed. True when nothing is left (the
        connection can stay open); False when the rest is too big or too slow (answer with
        `Connection: close`).
        """
        if self._ended or self._body is not None or not self._declares_body():
            return True
        length = _length(self.raw_header(b"content-length"))
        if length is not None and length - self._received > max_bytes:
            return False
        dropped = 0
        with anyio.move_on_after(timeout_s):
            while dropped <= max_bytes:
                message = await self.receive()
                if message.get("type") != "http.request":
                    self._ended = True
                    return False
                dropped += len(message.get("body", b""))
                if not message.get("more_body", False):
                    self._ended = True
                    return dropped <= max_bytes
        return False


def _by_name(raw: Any) -> dict[bytes, bytes] | None:
    """A scope's headers by name when each comes once and in lower case (as servers send them);
    None otherwise (also for an iterable other than a list, which only `headers` reads)."""
    if type(raw) is not list:
        return None
    try:
        named = dict(raw)
    except TypeError:  # names that are not bytes (bytearray)
        return None
    names = b"".join(named)
    if len(named) != len(raw) or not (names.isascii() and names.islower()):
        return None
    return named


def _is_memory_channel_receive(receive: Receive) -> bool:
    """Whether `receive` is a trio memory channel's `receive` (hypercorn's on trio)."""
    channel = getattr(receive, "__self__", None)
    return channel is not None and type(channel).__name__ == "MemoryReceiveChannel"


# After an error answered before the body was read: how much of the rest is read and dropped.
DISCARD_BODY_BYTES = 64 * 1024
DISCARD_BODY_S = 1.0


class _Answer(Protocol):
    status: int
    headers: list[tuple[bytes, bytes]]


async def settle_body(response: _Answer, request: Request) -> None:
    """Before sending an error: let the server reuse the connection, or say it closes.

    An error may come before the body was read. An HTTP/1.1 server can reuse the connection only
    once the body is consumed, so up to `DISCARD_BODY_BYTES` of the rest are read and dropped;
    more, or slower, and the response says `Connection: close` (hypercorn dropped such connections
    silently, and the client's next request on them failed).
    """
    if (
        response.status >= 400
        and (b"connection", b"close") not in response.headers
        and not await request.discard_body(DISCARD_BODY_BYTES, DISCARD_BODY_S)
    ):
        response.headers.append((b"connection", b"close"))


def _length(declared: bytes | None) -> int | None:
    """A `content-length` value as a number, None when absent or not ASCII digits only (bytes'
    `isdigit()` takes ASCII digits only; str's would also take "²", which `int()` refuses)."""
    return int(declared) if declared is not None and declared.isdigit() else None


def _too_large(limit: int) -> HTTPError:
    return HTTPError(413, f"request body is larger than max_body_bytes={limit}")
