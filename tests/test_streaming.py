"""Streaming responses: Server-Sent Events and NDJSON, disconnects, slow readers, errors."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

from asgi_host import Event, EventStream, Host, HTTPError, Request, Response, Route, StructEndpoint
from asgi_host.testing import HTTPResult, call, http_scope, request
from asgi_host.types import Message

pytestmark = pytest.mark.anyio

EMPTY_BODY: Message = {"type": "http.request", "body": b"", "more_body": False}


class Source:
    """An async generator of numbered items that records how far it got and how it ended."""

    def __init__(
        self, items: int | None = None, *, pause_s: float = 0.0, busy_s: float | None = None
    ) -> None:
        self.items = items
        self.pause_s = pause_s
        self.busy_s = busy_s  # after the first item, a long wait: a model busy between tokens
        self.produced = 0
        self.ended: str | None = None
        self.ended_at: float | None = None

    async def __call__(self) -> AsyncIterator[dict[str, int]]:
        try:
            while self.items is None or self.produced < self.items:
                yield {"n": self.produced}
                self.produced += 1
                await anyio.sleep(
                    self.busy_s if self.busy_s is not None and self.produced == 1 else self.pause_s
                )
            self.ended = "finished"
        except BaseException as exc:
            self.ended = type(exc).__name__
            raise
        finally:
            self.ended_at = anyio.current_time()
            if self.ended is None:
                self.ended = "closed"


def host_for(source: Source, **stream: Any) -> Host:
    async def endpoint(request: Request) -> EventStream:
        return EventStream(source(), **stream)

    return Host(routes=[Route("/stream", endpoint)])


async def test_sse_frames_and_headers() -> None:
    async def endpoint(request: Request) -> EventStream:
        async def events() -> AsyncIterator[Any]:
            yield "plain text"
            yield "two\nlines\r\nand\rthree"
            yield Event({"token": "x"}, event="delta", id="7", retry=1500)
            yield {"done": True}

        return EventStream(events())

    result = await request(Host(routes=[Route("/s", endpoint)]), "GET", "/s")
    assert result.status == 200
    assert result.header("content-type") == "text/event-stream; charset=utf-8"
    assert result.header("cache-control") == "no-cache"
    assert result.header("x-accel-buffering") == "no"
    assert result.header("content-length") is None
    assert result.body == (
        b"data: plain text\n\n"
        b"data: two\ndata: lines\ndata: and\ndata: three\n\n"
        b'event: delta\nid: 7\nretry: 1500\ndata: {"token":"x"}\n\n'
        b'data: {"done":true}\n\n'
    )
    events = result.events()
    assert [e.data for e in events][:2] == ["plain text", "two\nlines\nand\nthree"]
    assert (events[2].event, events[2].id, events[2].json()) == ("delta", "7", {"token": "x"})
    assert result.complete


async def test_an_event_name_or_id_is_one_line() -> None:
    async def endpoint(request: Request) -> EventStream:
        async def events() -> AsyncIterator[Event]:
            yield Event("x", event="a\nb")

        return EventStream(events())

    result = await request(Host(routes=[Route("/s", endpoint)]), "GET", "/s")
    assert result.status == 500  # the first item: answered as an error, nothing half-sent


async def test_an_async_iterator_is_streamed_as_sse_or_ndjson_by_accept() -> None:
    source = Source(3)

    async def endpoint(request: Request) -> AsyncIterator[dict[str, int]]:
        return source()

    host = Host(routes=[Route("/s", endpoint)])
    sse = await request(host, "GET", "/s")
    assert [event.json() for event in sse.events()] == [{"n": 0}, {"n": 1}, {"n": 2}]
    source.produced = 0
    ndjson = await request(host, "GET", "/s", headers=[("accept", "application/x-ndjson")])
    assert ndjson.header("content-type") == "application/x-ndjson; charset=utf-8"
    assert ndjson.lines() == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_chunks_arrive_as_they_are_made() -> None:
    result = await request(host_for(Source(4, pause_s=0.1)), "GET", "/stream")
    times = [at for at, body in result.chunks if body]
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Each item sent when made, not all at the end (0.1 s apart; a send late by up to 50 ms passes).
    assert all(gap >= 0.05 for gap in gaps), gaps


async def test_heartbeats_keep_a_silent_stream_open() -> None:
    result = await request(host_for(Source(2, pause_s=0.25), heartbeat_s=0.05), "GET", "/stream")
    assert b": keep-alive\n\n" in result.body
    assert [event.json() for event in result.events()] == [{"n": 0}, {"n": 1}]  # comments are not events


@pytest.mark.parametrize("chunks", [0, 1, 2, 5])
async def test_a_client_that_leaves_at_any_chunk_cancels_the_source(chunks: int) -> None:
    source = Source(pause_s=0.01)  # endless
    result = await request(host_for(source), "GET", "/stream", disconnect_after=chunks, timeout_s=5)
    assert source.ended in ("CancelledError", "Cancelled", "GeneratorExit", "closed"), source.ended
    assert source.produced <= chunks + 2  # stopped right away, not run on
    assert not result.complete


async def test_the_disconnect_is_seen_while_the_source_is_busy() -> None:
    source = Source(busy_s=30.0)  # after its first item the "model" works for 30 s
    started = anyio.current_time()
    await request(host_for(source), "GET", "/stream", disconnect_after=1, timeout_s=5)
    assert source.ended_at is not None
    assert source.ended_at - started < 1.0  # cancelled in its wait, not after it
    assert source.produced == 1


async def test_a_client_that_leaves_before_the_first_item_gets_nothing() -> None:
    source = Source(busy_s=None, pause_s=0.0)

    async def slow_first() -> AsyncIterator[int]:
        source.ended = None
        try:
            await anyio.sleep(30)
            yield 1
        finally:
            source.ended = "closed"

    async def endpoint(request: Request) -> EventStream:
        return EventStream(slow_first())

    result = await request(Host(routes=[Route("/s", endpoint)]), "GET", "/s", disconnect_after=0, timeout_s=5)
    assert result.status is None  # nobody to answer
    assert source.ended == "closed"


async def test_an_error_before_the_first_byte_is_an_ordinary_error() -> None:
    async def endpoint(request: Request) -> EventStream:
        async def events() -> AsyncIterator[int]:
            raise HTTPError(503, "no free sequence slot", headers=[("retry-after", "2")])
            yield 0

        return EventStream(events())

    result = await request(Host(routes=[Route("/s", endpoint)]), "GET", "/s")
    assert (result.status, result.header("retry-after")) == (503, "2")
    assert result.json()["error"]["message"] == "no free sequence slot"


@pytest.mark.parametrize("format", ["sse", "ndjson"])
async def test_an_error_after_the_first_byte_is_an_error_event_and_a_clean_end(format: str) -> None:
    async def endpoint(request: Request) -> EventStream:
        async def events() -> AsyncIterator[dict[str, int]]:
            yield {"n": 0}
            yield {"n": 1}
            raise HTTPError(504, "the generation timed out")

        return EventStream(events(), format="sse" if format == "sse" else "ndjson")

    result = await request(Host(routes=[Route("/s", endpoint)]), "GET", "/s")
    assert result.status == 200
    assert result.complete  # ended cleanly, with a last empty body message
    if format == "sse":
        events = result.events()
        assert [e.json() for e in events[:2]] == [{"n": 0}, {"n": 1}]
        assert events[2].event == "error"
        assert events[2].json()["error"] == {
            "status": 504,
            "type": "timeout",
            "message": "the generation timed out",
        }
        assert result.body.endswith(b"\n\n")  # every frame whole
    else:
        assert result.lines()[2]["error"]["status"] == 504


async def test_a_bug_after_the_first_byte_is_logged_and_the_stream_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def endpoint(request: Request) -> EventStream:
        async def events() -> AsyncIterator[str]:
            yield "a"
            raise ZeroDivisionError("in the middle")

        return EventStream(events())

    result = await request(Host(routes=[Route("/s", endpoint)]), "GET", "/s")
    assert result.events()[-1].json()["error"]["status"] == 500
    assert "in the middle" not in result.body.decode()
    assert "ZeroDivisionError: in the middle" in caplog.text


async def slow_reader(app: Any, path: str, *, delay_s: float, reads: int) -> tuple[list[bytes], int]:
    """A client whose every read takes `delay_s` (the server's `send` waits that long for room);
    it reads `reads` body chunks, then leaves. The chunks it got, and the most bytes it got at once."""
    got: list[bytes] = []
    gone = anyio.Event()
    body = [EMPTY_BODY]

    async def receive() -> Message:
        if body:
            return body.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            await anyio.sleep(delay_s)
            got.append(message["body"])
            if len(got) >= reads:
                gone.set()

    with anyio.fail_after(10):
        await app(http_scope("GET", path), receive, send)
    return got, max(map(len, got))


async def test_a_slow_reader_gets_what_it_missed_coalesced_and_never_blocks_the_source() -> None:
    made: list[float] = []

    async def tokens() -> AsyncIterator[str]:
        for i in range(200):
            made.append(anyio.current_time())
            yield f"t{i} "
            await anyio.sleep(0.002)

    async def endpoint(request: Request) -> EventStream:
        return EventStream(tokens(), coalesce=lambda pending, new: pending + new)

    host = Host(routes=[Route("/s", endpoint)])
    started = anyio.current_time()
    got, _ = await slow_reader(host, "/s", delay_s=0.1, reads=20)
    # The source ran at its own pace (200 tokens in ~0.5 s) while the reader took 0.1 s a read: it
    # was done before the reader's 20 reads were.
    assert len(made) == 200
    assert made[-1] - started < 20 * 0.1
    text = "".join(chunk.decode() for chunk in got)
    assert len(got) < 20  # fewer reads than tokens: what waited was merged into one frame each time
    assert "".join(f"t{i} " for i in range(200)) == text.replace("data: ", "").replace("\n", "")


async def test_without_coalescing_the_pending_bytes_stay_bounded() -> None:
    source = Source()  # endless, as fast as it is read

    async def endpoint(request: Request) -> EventStream:
        return EventStream(source(), max_pending_bytes=1024)

    _, biggest = await slow_reader(Host(routes=[Route("/s", endpoint)]), "/s", delay_s=0.05, reads=5)
    frame = len(b'data: {"n":100}\n\n')
    assert biggest <= 1024 + frame  # what waited for the reader never passed the bound (plus one frame)
    # The source paused instead of running ahead: what 5 reads took, plus one buffer pending (an
    # endless source the reader did not hold back would have made thousands meanwhile).
    assert source.produced < (5 + 2) * (1024 // frame + 2)
    assert source.ended is not None


async def test_head_sends_the_headers_and_closes_the_source() -> None:
    source = Source(3)
    result = await request(host_for(source), "HEAD", "/stream")
    assert (result.status, result.body) == (200, b"")
    assert source.ended is not None


async def test_a_wrong_answer_type_is_a_500() -> None:
    async def endpoint(request: Request) -> Any:
        return {"not": "a response"}

    result = await request(Host(routes=[Route("/s", endpoint)]), "GET", "/s")
    assert result.status == 500


async def test_the_test_kit_parses_what_a_plain_response_sends_too() -> None:
    async def endpoint(request: Request) -> Response:
        return Response(b"data: 1\n\ndata: 2\n\n", media_type="text/event-stream")

    result = await request(Host(routes=[Route("/s", endpoint)]), "GET", "/s")
    assert [e.data for e in result.events()] == ["1", "2"]
    assert len(result.chunks) == 1
    assert HTTPResult.of(result.transcript).body == result.body


def test_stream_settings_are_checked() -> None:
    async def nothing() -> AsyncIterator[int]:
        return
        yield 0

    with pytest.raises(ValueError, match="format is 'sse' or 'ndjson'"):
        EventStream(nothing(), format="xml")  # type: ignore[arg-type]
    assert msgspec.json.decode(b"{}") == {}


async def test_a_stream_through_call_sees_the_disconnect_as_a_real_server_would() -> None:
    source = Source(pause_s=0.01)
    transcript = await call(host_for(source), http_scope("GET", "/stream"), [EMPTY_BODY], disconnect_after=3)
    bodies = [m for d, m in transcript if d == "send" and m["type"] == "http.response.body"]
    assert len(bodies) >= 3
    assert ("receive", {"type": "http.disconnect"}) in transcript


async def test_a_struct_endpoint_streams_what_its_handler_yields() -> None:
    class Count(msgspec.Struct):
        up_to: int

    class Step(msgspec.Struct):
        n: int

    async def count(body: Count, request: Request) -> AsyncIterator[Step]:
        async def steps() -> AsyncIterator[Step]:
            for n in range(body.up_to):
                yield Step(n)

        return steps()

    host = Host(routes=[Route("/count", StructEndpoint(count, Count), methods=["POST"])])
    sse = await request(host, "POST", "/count", json={"up_to": 3})
    assert [e.json() for e in sse.events()] == [{"n": 0}, {"n": 1}, {"n": 2}]
    ndjson = await request(
        host, "POST", "/count", json={"up_to": 2}, headers=[("accept", "application/x-ndjson")]
    )
    assert ndjson.lines() == [{"n": 0}, {"n": 1}]
    invalid = await request(host, "POST", "/count", json={"up_to": "x"})
    assert invalid.status == 422  # the body is checked before anything streams


async def test_the_watcher_never_cancels_the_receive_that_reads_the_body() -> None:
    """A server (granian 2.8) whose receive(), once a receive() reading the body was cancelled,
    answers http.disconnect at once: the host reads the body before watching, so the stream runs."""
    source = Source(3, pause_s=0.01)
    gone = anyio.Event()
    state = {"body read": False, "broken": False}
    sent: list[Message] = []

    async def receive() -> Message:
        if state["broken"]:
            return {"type": "http.disconnect"}
        if not state["body read"]:
            try:
                await anyio.sleep(0.05)  # the body takes a moment; the first item does not
            except BaseException:
                state["broken"] = True
                raise
            state["body read"] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await host_for(source)(http_scope("GET", "/stream"), receive, send)
    body = b"".join(message.get("body", b"") for message in sent)
    assert body.count(b"data: ") == 3, body
    assert source.ended == "finished"
    assert not state["broken"]


async def test_a_stream_whose_request_body_is_refused_closes_its_source() -> None:
    closed: list[bool] = []

    class Tokens:
        """A source already at work when the endpoint returns it (not a generator yet to start)."""

        def __aiter__(self) -> Tokens:
            return self

        async def __anext__(self) -> dict[str, int]:
            return {"n": 1}

        async def aclose(self) -> None:
            closed.append(True)

    async def endpoint(request: Request) -> Tokens:
        return Tokens()

    host = Host(routes=[Route("/s", endpoint, methods=["POST"])], max_body_bytes=4)
    result = await request(host, "POST", "/s", body=b"more than four bytes")
    assert result.status == 413
    assert closed == [True]
