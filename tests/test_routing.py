"""Routes, mounts, errors and websockets, with raw ASGI messages."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import anyio
import pytest

from asgi_host import Host, HTTPError, Mount, Request, Response, Route
from asgi_host._types import Message, Receive, Scope, Send
from asgi_host.testing import call, http_scope, request

pytestmark = pytest.mark.anyio


async def echo_scope(scope: Scope, receive: Receive, send: Send) -> None:
    """A raw sub-app that answers with the scope fields a mount changes."""
    body = Response.json(
        {"path": scope["path"], "root_path": scope["root_path"], "raw_path": scope["raw_path"].decode()}
    )
    await body.send(send)


async def hello(request: Request) -> Response:
    return Response.json({"hello": request.path})


async def create(request: Request) -> Response:
    return Response(await request.body(), status=201, media_type="application/octet-stream")


async def body_length(request: Request) -> Response:
    return Response.json({"length": len(await request.body())})


def length_host(**kwargs: Any) -> Host:
    """A host whose POST /n answers the length of the body it read."""
    return Host(routes=[Route("/n", body_length, methods=["POST"])], **kwargs)


def recording() -> tuple[list[Message], Send]:
    """A `send` that keeps every message, and the list it keeps them in."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    return sent, send


def make_host(**kwargs: Any) -> Host:
    return Host(
        routes=[
            Route("/hello", hello),
            Route("/items", create, methods=["POST", "PUT"]),
            Mount("/api", echo_scope),
            Mount("/api/v2", echo_scope),
        ],
        **kwargs,
    )


async def test_route_answers_json() -> None:
    result = await request(make_host(), "GET", "/hello")
    assert result.status == 200
    assert result.json() == {"hello": "/hello"}
    assert result.header("content-type") == "application/json"
    assert result.header("content-length") == str(len(result.body))


async def test_unknown_path_is_404_json() -> None:
    result = await request(make_host(), "GET", "/nope")
    assert result.status == 404
    assert result.json() == {"error": {"status": 404, "type": "not_found", "message": "no route for '/nope'"}}


async def test_wrong_method_is_405_with_allow() -> None:
    result = await request(make_host(), "DELETE", "/items")
    assert result.status == 405
    assert result.header("allow") == "POST, PUT"
    assert result.json()["error"]["type"] == "method_not_allowed"
    get_only = await request(make_host(), "POST", "/hello")
    assert get_only.header("allow") == "GET, HEAD"


async def test_head_where_get_exists_sends_headers_and_no_body() -> None:
    get = await request(make_host(), "GET", "/hello")
    head = await request(make_host(), "HEAD", "/hello")
    assert head.status == 200
    assert head.body == b""
    assert head.header("content-length") == get.header("content-length")


async def test_body_in_chunks_is_reassembled() -> None:
    result = await request(make_host(), "POST", "/items", chunks=[b"ab", b"", b"cd", b"e"])
    assert (result.status, result.body) == (201, b"abcde")


async def test_body_over_the_limit_is_413_while_reading() -> None:
    received: list[int] = []
    host = make_host(max_body_bytes=4)
    chunks = [b"ab", b"cd", b"ef", b"gh"]
    result = await request(host, "POST", "/items", chunks=chunks)
    assert result.status == 413
    assert result.json()["error"]["message"] == "request body is larger than max_body_bytes=4"
    # Stopped at the chunk that crossed the limit: the rest was never read.
    received = [
        len(m["body"]) for d, m in result.transcript if d == "receive" and m["type"] == "http.request"
    ]
    assert received == [2, 2, 2]


async def test_declared_content_length_over_the_limit_is_refused_before_reading() -> None:
    big = b"x" * (200 * 1024)  # more than the host discards to keep the connection
    result = await request(make_host(max_body_bytes=4), "POST", "/items", body=big)
    assert result.status == 413
    assert [m for d, m in result.transcript if d == "receive" and m["type"] == "http.request"] == []
    assert result.header("connection") == "close"
    # A small body is read and dropped after the refusal, so the connection can serve the next request.
    small = await request(make_host(max_body_bytes=4), "POST", "/items", body=b"0123456789")
    assert small.status == 413
    assert small.header("connection") is None


async def test_client_disconnect_mid_body_sends_nothing() -> None:
    result = await request(make_host(), "POST", "/items", chunks=[b"ab"], disconnect=True)
    assert result.status is None
    assert [d for d, _ in result.transcript if d == "send"] == []


async def test_handler_error_is_500_without_traceback_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("secret detail")

    host = Host(routes=[Route("/boom", boom)])
    with caplog.at_level(logging.ERROR, logger="asgi_host"):
        result = await request(host, "GET", "/boom")
    assert result.status == 500
    assert b"secret detail" not in result.body
    assert b"Traceback" not in result.body
    assert result.json()["error"]["type"] == "internal_error"
    assert "secret detail" in caplog.text
    # The host keeps serving.
    assert (await request(host, "GET", "/boom")).status == 500


async def test_http_error_from_a_handler_keeps_its_status_headers_and_path() -> None:
    async def busy(request: Request) -> Response:
        raise HTTPError(503, "loading", headers=[("retry-after", "2")], path="$.x")

    result = await request(Host(routes=[Route("/b", busy)]), "GET", "/b")
    assert result.status == 503
    assert result.header("retry-after") == "2"
    assert result.json() == {
        "error": {"status": 503, "type": "unavailable", "message": "loading", "path": "$.x"}
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api", {"path": "/api", "root_path": "/api", "raw_path": "/api"}),
        ("/api/x", {"path": "/api/x", "root_path": "/api", "raw_path": "/api/x"}),
        ("/api/v2/y", {"path": "/api/v2/y", "root_path": "/api/v2", "raw_path": "/api/v2/y"}),
        ("/api/v2x", {"path": "/api/v2x", "root_path": "/api", "raw_path": "/api/v2x"}),
    ],
)
async def test_mount_extends_root_path_and_keeps_path(path: str, expected: dict[str, str]) -> None:
    result = await request(make_host(), "GET", path)
    assert result.json() == expected


async def test_mount_matches_only_on_a_slash_boundary() -> None:
    result = await request(make_host(), "GET", "/apix")
    assert result.status == 404


async def test_mount_under_a_root_path_included_in_path() -> None:
    # Server puts root_path into path (uvicorn --root-path, Starlette mounts).
    result = await request(make_host(), "GET", "/api/x", root_path="/svc")
    assert result.json() == {"path": "/svc/api/x", "root_path": "/svc/api", "raw_path": "/svc/api/x"}


async def test_mount_under_a_root_path_left_out_of_path() -> None:
    # hypercorn --root-path behind a proxy that strips the prefix: path lacks root_path.
    scope = http_scope("GET", "/api/x", root_path="/svc")
    transcript = await call(make_host(), scope, [{"type": "http.request", "body": b""}])
    body = next(m["body"] for d, m in transcript if d == "send" and m["type"] == "http.response.body")
    assert b'"root_path":"/svc/api"' in body
    assert b'"path":"/svc/api/x"' in body


async def test_routes_match_relative_to_root_path() -> None:
    result = await request(make_host(), "GET", "/hello", root_path="/svc")
    assert result.json() == {"hello": "/svc/hello"}


async def test_websocket_is_denied_with_close_before_accept() -> None:
    scope = {**http_scope("GET", "/hello"), "type": "websocket", "scheme": "ws"}
    transcript = await call(make_host(), scope, [{"type": "websocket.connect"}])
    sent = [m for d, m in transcript if d == "send"]
    assert len(sent) == 1
    assert sent[0]["type"] == "websocket.close"


async def test_websocket_reaches_a_mount_that_takes_it() -> None:
    async def ws_app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    host = Host(routes=[Mount("/ws", ws_app)])
    scope = {**http_scope("GET", "/ws/chat"), "type": "websocket", "scheme": "ws"}
    transcript = await call(host, scope, [{"type": "websocket.connect"}])
    assert [m["type"] for d, m in transcript if d == "send"] == ["websocket.accept", "websocket.close"]


async def test_unknown_scope_type_raises() -> None:
    with pytest.raises(ValueError, match="cannot handle scope type 'webtransport'"):
        await make_host()({"type": "webtransport"}, _never, _discard)


async def test_decorator_route() -> None:
    host = Host()

    @host.route("/ping", methods=["GET"])
    async def ping(request: Request) -> Response:
        return Response(b"pong", media_type="text/plain")

    assert (await request(host, "GET", "/ping")).body == b"pong"


def test_building_mistakes_are_caught_early() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        Route("hello", hello)
    with pytest.raises(TypeError, match="must be an async function"):
        Route("/x", lambda request: None)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="two routes for GET /hello"):
        Host(routes=[Route("/hello", hello), Route("/hello", hello)])
    with pytest.raises(ValueError, match="mount prefix"):
        Mount("/", echo_scope)


async def _never() -> Message:
    raise AssertionError("not called")


async def _discard(message: Message) -> None:
    raise AssertionError("not called")


async def test_one_trailing_slash_names_the_same_route() -> None:
    host = Host()

    @host.route("/ping", methods=["GET"])
    async def ping(request: Request) -> Response:
        return Response(b"pong", media_type="text/plain")

    @host.route("/slash/", methods=["GET"])
    async def slash(request: Request) -> Response:
        return Response(b"slash", media_type="text/plain")

    assert (await request(host, "GET", "/ping/")).body == b"pong"  # as Litestar's mounts send it
    assert (await request(host, "GET", "/slash/")).body == b"slash"  # a route declared with one is exact
    assert (await request(host, "GET", "/ping//")).status == 404  # one slash, not any number
    assert (await request(host, "GET", "/ping/", root_path="/model")).body == b"pong"


@pytest.mark.server
def test_argument_checks_hold_under_python_dash_o() -> None:
    # Not asserts: `python -O` strips those, and the mistake would surface later, far from its cause.
    code = (
        "from asgi_host import HTTPError, Route\n"
        "from asgi_host.model import Classifier\n"
        "async def ok(request): ...\n"
        "for make, kind in ((lambda: Route('x', ok), ValueError),\n"
        "                   (lambda: Route('/x', lambda r: r), TypeError),\n"
        "                   (lambda: HTTPError(200, 'no'), ValueError),\n"
        "                   (lambda: Classifier(labels=[], n_features=4).endpoint, ValueError)):\n"
        "    try:\n"
        "        make()\n"
        "    except kind:\n"
        "        continue\n"
        "    raise SystemExit(f'no {kind.__name__}')\n"
    )
    result = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_router_resolves_a_request_once() -> None:
    from asgi_host._routing import Router

    sub = Host()
    router = Router([Route("/a", hello, methods=["GET", "POST"]), Route("/b", hello), Mount("/m", sub)])
    found = router.resolve("/a", "POST")
    assert (found.path, found.label, found.endpoint, found.mount, found.error) == (
        "/a",
        "/a",
        hello,
        None,
        None,
    )
    assert router.resolve("/b", "HEAD").endpoint is hello  # HEAD comes with GET
    assert router.resolve("/a/", "GET").path == "/a"  # one trailing slash names the route
    wrong = router.resolve("/b", "DELETE")
    assert wrong.error is not None
    assert wrong.error.status == 405
    assert ("allow", "GET, HEAD") in wrong.error.headers
    mounted = router.resolve("/m/x", "GET")
    assert (mounted.mount, mounted.label, mounted.error) == (router.mounts[0], "/m", None)
    missing = router.resolve("/mx", "GET")  # not under /m: a mount matches on a slash boundary
    assert (missing.label, missing.mount, missing.error and missing.error.status) == ("unmatched", None, 404)


def test_an_exact_routes_match_is_made_once_and_forgotten_when_routes_change() -> None:
    from asgi_host._routing import _KNOWN_MATCHES, Router

    async def other(request: Request) -> Response:
        return Response(b"other")

    router = Router([Route("/a", hello, methods=["GET"]), Route("/any", hello, methods=None)])
    first = router.resolve("/a", "GET")
    assert router.resolve("/a", "GET") is first  # kept: no Match built per request
    assert router.resolve("/a", "POST").error is not None  # a 405 is not kept in its place
    assert router.resolve("/a", "GET") is first
    router.add(Route("/a", other, methods=["POST"]))
    assert router.resolve("/a", "POST").endpoint is other  # a route added later is found
    assert router.resolve("/a", "GET") == first
    for i in range(2 * _KNOWN_MATCHES):  # a route for every method: clients choose the method
        assert router.resolve("/any", f"M{i}").endpoint is hello
    assert router.resolve("/any", "HEAD").endpoint is hello
    assert [key for key in router._matches if key[0] == "/any"] == [("/any", "HEAD")]  # none of theirs
    assert len(router._matches) <= _KNOWN_MATCHES


def test_prefix_routes_answer_their_path_and_everything_under_it_after_exact_routes() -> None:
    from asgi_host._routing import Router

    async def rest(request: Request) -> Response:
        return Response.json({})

    router = Router(
        [
            Route("/api", rest, methods=None, prefix=True),
            Route("/api/exact", hello),
            Route("/api/v2/", rest, methods=["POST"], prefix=True),  # the trailing slash is dropped
        ]
    )
    assert router.resolve("/api/exact", "GET").endpoint is hello  # exact routes first
    assert router.resolve("/api/exact", "DELETE").error is not None  # ... with their methods
    for path, method in [("/api", "PATCH"), ("/api/x/y", "GET"), ("/api/exact/more", "PUT")]:
        found = router.resolve(path, method)
        assert (found.endpoint, found.label, found.error) == (rest, "/api", None), path
    assert router.resolve("/apix", "GET").label == "unmatched"  # on a slash boundary only
    nested = router.resolve("/api/v2/models", "POST")
    assert (nested.endpoint, nested.label) == (rest, "/api/v2")  # the longest prefix wins
    refused = router.resolve("/api/v2/models", "GET")
    assert refused.error is not None
    assert (refused.error.status, refused.error.headers) == (405, (("allow", "POST"),))
    with pytest.raises(ValueError, match="two mounts or prefix routes at '/api'"):
        router.add(Mount("/api", Host()))
    with pytest.raises(ValueError, match="two routes for GET /api/exact"):
        router.add(Route("/api/exact", rest, methods=None))


async def test_the_host_takes_adapters_beside_routes() -> None:
    class Greeter:
        def routes(self) -> list[Route | Mount]:
            return [Route("/hi", hello), Route("/hi/there", hello)]

    host = Host(routes=[Greeter(), Route("/items", create, methods=["POST"])])
    assert (await request(host, "GET", "/hi/there")).json() == {"hello": "/hi/there"}
    assert (await request(host, "POST", "/items", body=b"x")).status == 201
    with pytest.raises(TypeError, match="routes take Route, Mount or an adapter"):
        Host(routes=[hello])  # type: ignore[list-item]


async def test_in_flight_counts_and_waits_for_idle() -> None:
    import anyio

    from asgi_host._inflight import InFlight

    in_flight = InFlight()
    assert await in_flight.wait_idle(0)  # nothing running: idle at once
    release = anyio.Event()

    async def work() -> None:
        with in_flight:
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(work)
        tg.start_soon(work)
        await anyio.wait_all_tasks_blocked()
        assert in_flight.count == 2
        assert not await in_flight.wait_idle(0.01)  # bounded: gives up while work runs
        release.set()
        assert await in_flight.wait_idle(5)
    assert in_flight.count == 0


async def test_a_body_that_arrives_at_once_after_a_wait_or_never() -> None:
    """Read at once, after a wait within body_timeout_s, or never (408 when the time is up)."""

    host = length_host(body_timeout_s=2)  # waits of 0.05 s keep well within it, on a loaded machine too
    scope = http_scope("POST", "/n", headers=[("content-length", "5")])
    chunks: list[Message] = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cde"},
    ]
    arrived = iter(chunks)

    async def at_once() -> Message:
        return next(arrived)

    assert (await request(host, "POST", "/n", body=b"abcde")).json() == {"length": 5}
    sent, send = recording()

    await host(scope, at_once, send)  # both chunks there: never suspends
    assert b'{"length":5}' in sent[-1]["body"]
    later = iter(chunks)

    async def after_a_wait() -> Message:
        await anyio.sleep(0.05)  # suspends at the first step; the timer covers the rest
        return next(later)

    sent.clear()
    await host(scope, after_a_wait, send)
    assert b'{"length":5}' in sent[-1]["body"]

    scoped = iter(chunks)

    async def in_a_scope_of_its_own() -> Message:
        # A receive that opens a cancel scope before it suspends (a middleware's timeout, say):
        # the host's timer must not upset it.
        with anyio.move_on_after(30):
            await anyio.sleep(0.05)
        return next(scoped)

    sent.clear()
    await host(scope, in_a_scope_of_its_own, send)
    assert b'{"length":5}' in sent[-1]["body"]

    async def never() -> Message:
        await anyio.sleep(60)
        raise AssertionError("the timeout should have ended the wait")

    async def never_in_a_scope() -> Message:
        with anyio.move_on_after(60):
            await anyio.sleep(60)
        raise AssertionError("the timeout should have ended the wait")

    impatient = length_host(body_timeout_s=0.3)
    for stalled in (never, never_in_a_scope):
        sent.clear()
        started = anyio.current_time()
        await impatient(scope, stalled, send)
        assert anyio.current_time() - started < 5
        assert sent[0]["status"] == 408, stalled


async def test_a_body_that_waits_under_an_endless_body_timeout() -> None:
    """body_timeout_s=inf (the config takes it) means no deadline, not an error."""

    host = length_host(body_timeout_s=float("inf"))
    sent, send = recording()

    async def after_a_wait() -> Message:
        await anyio.sleep(0.01)
        return {"type": "http.request", "body": b"abc"}

    await host(http_scope("POST", "/n", headers=[("content-length", "3")]), after_a_wait, send)
    assert sent[0]["status"] == 200
    assert sent[-1]["body"] == b'{"length":3}'


async def test_a_content_length_of_other_digits_is_not_a_500() -> None:
    host = length_host()
    answer = await request(host, "POST", "/n", body=b"abc", headers=[("content-length", "\u00b2")])
    assert answer.status == 200
    assert answer.json() == {"length": 3}


async def test_request_headers_by_lower_case_name_with_repeats_joined() -> None:
    """A server's lower-case names, each once; an upper-case one; a repeated one; none at all.
    `raw_header` (read first, as the host reads a body's length) answers what `headers` has."""
    seen: list[dict[str, str]] = []
    looked_up: list[dict[str, bytes | None]] = []

    async def headers(request: Request) -> Response:
        names = ("accept", "x-a", "x-b", "x-\xe0")
        looked_up.append({name: request.raw_header(name.encode("latin-1")) for name in names})
        seen.append(dict(request.headers))
        return Response()

    host = Host(routes=[Route("/h", headers)])
    scope = http_scope("GET", "/h")
    for raw in (
        [(b"accept", b"*/*"), (b"x-a", b"1")],
        [(b"Accept", b"*/*"), (b"x-a", b"1")],
        [(b"x-a", b"1"), (b"accept", b"*/*"), (b"X-A", b"2")],
        (header for header in [(b"x-a", b"1"), (b"x-a", b"2")]),  # any iterable, as ASGI allows
        [(b"x-\xc0", b"1")],  # upper case beyond ASCII (latin-1 "À"): lower-cased as `headers` does
        [],
    ):
        await call(host, {**scope, "headers": raw}, [{"type": "http.request", "body": b""}])
    assert seen == [
        {"accept": "*/*", "x-a": "1"},
        {"accept": "*/*", "x-a": "1"},
        {"x-a": "1, 2", "accept": "*/*"},
        {"x-a": "1, 2"},
        {"x-\xe0": "1"},
        {},
    ]
    for by_name, joined in zip(looked_up, seen, strict=True):
        assert by_name == {
            name: joined[name].encode("latin-1") if name in joined else None for name in by_name
        }


def test_on_trio_a_body_in_hypercorns_channel_is_read_with_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """hypercorn's receive() on trio is a memory channel's: a body already there is read with no
    cancel scope (a timer costs ~14 us); one that has to be waited for, or never comes, is timed."""
    trio = pytest.importorskip("trio")

    host = length_host(body_timeout_s=2)  # a wait of 0.05 s keeps well within it, on a loaded machine too
    impatient = length_host(body_timeout_s=0.3)  # for the body that never comes
    scope = http_scope("POST", "/n", headers=[("content-length", "5")])
    body: Message = {"type": "http.request", "body": b"abcde", "more_body": False}
    timers: list[float] = []
    move_on_after = anyio.move_on_after

    def timer(delay: float, shield: bool = False) -> anyio.CancelScope:
        timers.append(delay)
        return move_on_after(delay, shield=shield)

    monkeypatch.setattr(anyio, "move_on_after", timer)

    async def answer(case: str) -> tuple[int, bytes, int]:
        sent, send = recording()

        to_app, receive_channel = trio.open_memory_channel[Message](4)
        timers.clear()
        async with trio.open_nursery() as nursery:
            if case == "arrived":
                await to_app.send(body)
            elif case == "later":

                async def later() -> None:
                    await trio.sleep(0.05)
                    await to_app.send(body)

                nursery.start_soon(later)
            await (impatient if case == "never" else host)(scope, receive_channel.receive, send)
        return sent[0]["status"], sent[-1].get("body", b""), len(timers)

    async def main() -> dict[str, tuple[int, bytes, int]]:
        return {case: await answer(case) for case in ("arrived", "later", "never")}

    results = trio.run(main)
    assert results["arrived"] == (200, b'{"length":5}', 0)  # no timer at all
    assert results["later"] == (200, b'{"length":5}', 1)
    assert results["never"][0] == 408
    assert results["never"][2] == 1


async def test_trio_as_asyncios_guest_reads_a_body_that_waits() -> None:
    """Trio run as a guest of a running asyncio loop (trio.lowlevel.start_guest_run): an asyncio
    loop runs in the thread, but no asyncio task does, so the body is read the trio way."""
    trio = pytest.importorskip("trio")

    host = length_host(body_timeout_s=5)
    sent, send = recording()

    async def after_a_wait() -> Message:
        await trio.sleep(0.01)
        return {"type": "http.request", "body": b"abcd"}

    async def in_trio() -> None:
        await host(http_scope("POST", "/n", headers=[("content-length", "4")]), after_a_wait, send)

    def run_as_guest() -> None:
        import asyncio

        async def main() -> None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[Any] = loop.create_future()
            trio.lowlevel.start_guest_run(
                in_trio,
                run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                done_callback=done.set_result,
                run_sync_soon_not_threadsafe=loop.call_soon,
            )
            (await done).unwrap()

        asyncio.run(main())

    await anyio.to_thread.run_sync(run_as_guest)
    assert sent[0]["status"] == 200, sent
    assert sent[-1]["body"] == b'{"length":4}'
