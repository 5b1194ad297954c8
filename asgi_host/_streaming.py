"""Responses sent piece by piece: Server-Sent Events or NDJSON from an async iterator.

An endpoint answers with `EventStream(source)` (or just returns an async iterator: the host
wraps it, SSE unless `Accept` asks for NDJSON). What the host does with it:

- **Before the first byte** it takes the source's first item (watching for the client leaving
  meanwhile). An error there is answered as any error is, with its status, in the route's error
  format: a stream that cannot start never answers `200` with an empty body.
- **Then** three tasks: the *pump* takes items from the source as fast as it yields them into a
  pending buffer; the *writer* sends what is pending as whole frames (`http.response.body` with
  `more_body`), and an SSE comment (`: keep-alive`) after `heartbeat_s` of silence; the *watcher*
  reads `receive()` and, on `http.disconnect`, cancels the other two, so the source (a model's
  generation) is cancelled at once, while it is busy, whatever ASGI version the server declares
  (a `send()` that raises ends the stream the same way).
- **A slow reader** never blocks the source while items can be merged: with `coalesce(a, b)`
  (two token deltas into one, say) what the client has not read yet is merged, as vLLM's
  per-request collector does; without one, the pump stops taking items once `max_pending_bytes`
  wait, so a lazy source simply pauses. Either way what is held for one client is bounded.
- **An error after the first byte** ends the stream cleanly: what was pending, then an error
  event (SSE `event: error`, or an NDJSON line `{"error": ...}`), then the end. A frame is
  encoded whole before it is sent, so a client never sees half of one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import msgspec

from ._errors import ClientDisconnect, HTTPError
from ._http import Error, ErrorDetail, Request
from ._types import Message, Receive, Send, send_message

__all__ = [
    "HEARTBEAT_S",
    "Event",
    "EventStream",
    "StreamFormat",
    "as_stream",
    "encode_sse",
    "start_stream",
    "stream_format",
]

logger = logging.getLogger("asgi_host")

StreamFormat = Literal["sse", "ndjson"]
MEDIA_TYPES: dict[StreamFormat, str] = {"sse": "text/event-stream", "ndjson": "application/x-ndjson"}
HEARTBEAT_S = 15.0
MAX_PENDING_BYTES = 64 * 1024

_json = msgspec.json.Encoder()
_END = object()


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: `data` (a `str` as it is, anything else as JSON), and optionally its
    `event` name, `id` and `retry` (milliseconds). In NDJSON only `data` is sent."""

    data: Any
    event: str | None = None
    id: str | None = None
    retry: int | None = None


def encode_sse(item: Any) -> bytes:
    """One SSE frame for `item` (an `Event`, or data): multi-line data as one `data:` line each."""
    event = item if isinstance(item, Event) else Event(item)
    text = event.data if isinstance(event.data, str) else _json.encode(event.data).decode()
    lines = [f"event: {_one_line(event.event)}"] if event.event is not None else []
    if event.id is not None:
        lines.append(f"id: {_one_line(event.id)}")
    if event.retry is not None:
        lines.append(f"retry: {int(event.retry)}")
    # "\r\n", "\r" and "\n" all end a line in SSE: each line of the data is a field of its own.
    lines += [f"data: {line}" for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


def _one_line(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an SSE event name or id is one line, got {value!r}")
    return value


def encode_ndjson(item: Any) -> bytes:
    data = item.data if isinstance(item, Event) else item
    return _json.encode(data) + b"\n"


async def start_stream(result: Any, request: Request) -> EventStream:
    """An endpoint's stream, its first item taken. The request's body is read first: a stream's
    watcher then never cancels a receive() reading it (granian 2.8 answers the receive() after that
    with a false http.disconnect). Whatever fails before the first item closes the source."""
    stream = as_stream(result, request.headers.get("accept"))
    try:
        await request.body()
    except BaseException:
        await stream.aclose()
        raise
    await stream.prime(request.receive)
    return stream


def as_stream(result: Any, accept: str | None) -> EventStream:
    """An endpoint's async iterator as a stream (SSE, or NDJSON when `Accept` asks for it)."""
    if isinstance(result, EventStream):
        return result
    if not hasattr(result, "__aiter__"):
        raise TypeError(
            f"an endpoint returns a Response, an EventStream or an async iterator, got {result!r}"
        )
    return EventStream(result, format=stream_format(accept))


def stream_format(accept: str | None) -> StreamFormat:
    """NDJSON when `Accept` names it (`application/x-ndjson`, `application/jsonl`), else SSE."""
    if accept and ("ndjson" in accept or "jsonl" in accept) and "text/event-stream" not in accept:
        return "ndjson"
    return "sse"


def host_error_event(error: HTTPError) -> Any:
    """The host's error JSON as an event's data."""
    return Event(Error(ErrorDetail(error.status, error.type, error.message, error.path)), event="error")


class EventStream:
    """A streaming response from `source`, an async iterable of items (`Event`s or plain data).

    `format`: `"sse"` (`text/event-stream`) or `"ndjson"` (`application/x-ndjson`).
    `coalesce(pending, new)` merges an item into one the client has not read yet (None: they do
    not merge). `error_event(error)` is what an error after the first byte is sent as (default:
    an SSE `error` event with the host's error JSON; the error's status cannot be sent any more).
    """

    def __init__(
        self,
        source: AsyncIterable[Any],
        *,
        format: StreamFormat = "sse",
        status: int = 200,
        headers: Iterable[tuple[str, str]] = (),
        heartbeat_s: float | None = HEARTBEAT_S,
        coalesce: Callable[[Any, Any], Any | None] | None = None,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        error_event: Callable[[HTTPError], Any] = host_error_event,
    ) -> None:
        if format not in MEDIA_TYPES:
            raise ValueError(f"format is 'sse' or 'ndjson', got {format!r}")
        self.source = source
        self.format: StreamFormat = format
        self.status = status
        self.heartbeat_s = heartbeat_s
        self.coalesce = coalesce
        self.max_pending_bytes = max_pending_bytes
        self.error_event = error_event
        self._encode = encode_sse if format == "sse" else encode_ndjson
        self.headers: list[tuple[bytes, bytes]] = [
            (b"content-type", f"{MEDIA_TYPES[format]}; charset=utf-8".encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # nginx: pass each frame on at once
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers),
        ]
        self._iterator: AsyncIterator[Any] | None = None
        self._pending: list[tuple[Any, bytes]] = []
        self._pending_bytes = 0
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._ended = False
        self._error: HTTPError | None = None
        self.disconnected = False  # the client left before the end
        self.sent_bytes = 0

    async def prime(self, receive: Receive) -> None:
        """Take the first item before anything is sent; its errors propagate (the host answers them
        with their status). Raises `ClientDisconnect` when the client leaves meanwhile."""
        self._iterator = aiter(self.source)
        first: Any = _END
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, receive, tg.cancel_scope)
            try:
                first = await anext(self._iterator)
            except StopAsyncIteration:
                pass
            except Exception as exc:  # raised after the watcher is gone, outside the task group
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            await self._close_source()
            raise failure
        if self.disconnected:
            await self._close_source()
            raise ClientDisconnect("the client left before the stream's first item")
        if first is _END:
            self._ended = True
        else:
            self._add(first)

    async def send(self, send: Send, *, head: bool = False, receive: Receive | None = None) -> None:
        """Stream to the client until the source ends, fails, or the client leaves."""
        if self._iterator is None:
            self._iterator = aiter(self.source)
        try:
            await send_message(
                send, {"type": "http.response.start", "status": self.status, "headers": self.headers}
            )
            if head:
                await send_message(send, {"type": "http.response.body", "body": b""})
                return
            async with anyio.create_task_group() as tg:
                if not self._ended:
                    tg.start_soon(self._pump)
                if receive is not None:
                    tg.start_soon(self._watch, receive, tg.cancel_scope)
                await self._write(send)
                tg.cancel_scope.cancel()
        except OSError:  # ASGI 2.4: send() may raise once the client has gone away
            self.disconnected = True
        finally:
            await self._close_source()
        if self.disconnected:
            logger.debug("the client left a stream after %d bytes; its source was cancelled", self.sent_bytes)

    async def _watch(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message: Message = await receive()
            if message.get("type") == "http.disconnect":
                self.disconnected = True
                scope.cancel()
                return

    async def _pump(self) -> None:
        assert self._iterator is not None
        try:
            async for item in self._iterator:
                self._add(item)
                while self._pending_bytes > self.max_pending_bytes:
                    self._room = anyio.Event()
                    await self._room.wait()  # the writer sends what is pending, then sets it
        except HTTPError as exc:
            self._error = exc
        except Exception:
            logger.exception("a stream's source failed after its first item")
            self._error = HTTPError(500, "internal server error; the traceback is in the server log")
        finally:
            self._ended = True
            self._wake.set()

    def _add(self, item: Any) -> None:
        if self.coalesce is not None and self._pending:
            merged = self.coalesce(self._pending[-1][0], item)
            if merged is not None:
                _, frame = self._pending.pop()
                self._pending_bytes -= len(frame)
                item = merged
        frame = self._encode(item)
        self._pending.append((item, frame))
        self._pending_bytes += len(frame)
        self._wake.set()

    async def _write(self, send: Send) -> None:
        while True:
            if not self._pending and not self._ended:
                self._wake = anyio.Event()
                with anyio.move_on_after(self.heartbeat_s or float("inf")) as silence:
                    await self._wake.wait()
                if silence.cancelled_caught and self.format == "sse":
                    await self._body(send, b": keep-alive\n\n")
                continue
            frames = b"".join(frame for _, frame in self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._room.set()
            if frames:
                await self._body(send, frames)
            if self._ended and not self._pending:
                if self._error is not None:
                    await self._body(send, self._encode(self.error_event(self._error)))
                await send_message(send, {"type": "http.response.body", "body": b"", "more_body": False})
                return

    async def _body(self, send: Send, data: bytes) -> None:
        await send_message(send, {"type": "http.response.body", "body": data, "more_body": True})
        self.sent_bytes += len(data)

    async def aclose(self) -> None:
        """Close the source without streaming it (the request failed before the stream began)."""
        await self._close_source()

    async def _close_source(self) -> None:
        """Close the source (an async generator's `finally` runs), whatever state it is in."""
        close = getattr(self._iterator if self._iterator is not None else self.source, "aclose", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await close()
                except Exception:
                    logger.exception("closing a stream's source failed")
