"""The lifespan protocol, message by message, on asyncio and trio."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from asgi_host import (
    AppTimeout,
    Host,
    LifespanError,
    LifespanFailed,
    LifespanPhase,
    LifespanProtocolError,
    Request,
    Resource,
    Response,
    Route,
    StartupError,
)
from asgi_host._lifespan import _MOVES, LifespanTracker
from asgi_host._types import Message
from asgi_host.testing import LifespanDriver, Transcript, call, lifespan_scope

pytestmark = pytest.mark.anyio

STARTUP: Message = {"type": "lifespan.startup"}
SHUTDOWN: Message = {"type": "lifespan.shutdown"}


def tracked(
    name: str,
    events: list[str],
    *,
    value: Any = None,
    fail_enter: Exception | None = None,
    fail_exit: Exception | None = None,
    hang_enter: bool = False,
    hang_exit: bool = False,
) -> Resource:
    """A FastAPI-style resource: cleanup after `yield`, no `finally`."""

    @asynccontextmanager
    async def resource() -> AsyncIterator[Any]:
        events.append(f"{name} enter")
        if hang_enter:
            await anyio.sleep_forever()
        if fail_enter is not None:
            raise fail_enter
        yield value
        events.append(f"{name} exit")
        if hang_exit:
            await anyio.sleep_forever()
        if fail_exit is not None:
            raise fail_exit

    return Resource(resource, name=name)


def sent(transcript: Transcript) -> list[Message]:
    return [message for direction, message in transcript if direction == "send"]


async def test_startup_and_shutdown_exact_sequence() -> None:
    events: list[str] = []
    host = Host(resources=[tracked("a", events, value={"a": 1}), tracked("b", events, value="B")])
    transcript = await call(host, lifespan_scope(), [STARTUP, SHUTDOWN])
    assert transcript == [
        ("receive", STARTUP),
        ("send", {"type": "lifespan.startup.complete"}),
        ("receive", SHUTDOWN),
        ("send", {"type": "lifespan.shutdown.complete"}),
    ]
    assert events == ["a enter", "b enter", "b exit", "a exit"]
    assert host.phase is LifespanPhase.STOPPED


async def test_state_is_merged_into_the_lifespan_scope_and_seen_by_handlers() -> None:
    events: list[str] = []

    async def show(request: Request) -> Response:
        return Response.json(sorted(request.state))

    host = Host(
        resources=[tracked("a", events, value={"a": 1}), tracked("b", events, value="B")],
        routes=[Route("/state", show)],
    )
    async with LifespanDriver(host) as lifespan:
        # A mapping is merged; any other value is stored under the resource's name.
        assert lifespan.state == {"a": 1, "b": "B"}
        result = await lifespan.request("GET", "/state")
        assert result.json() == ["a", "b"]
    assert host.state == {}


@pytest.mark.parametrize("failing", [0, 1, 2])
async def test_resource_k_of_n_fails_rolls_back_in_reverse(failing: int) -> None:
    events: list[str] = []
    resources = [
        tracked(name, events, fail_enter=RuntimeError("weights missing") if i == failing else None)
        for i, name in enumerate(["a", "b", "c"])
    ]
    host = Host(resources=resources)
    transcript: Transcript = []
    with pytest.raises(StartupError) as raised:
        await call(host, lifespan_scope(), [STARTUP, SHUTDOWN], transcript=transcript)
    name = "abc"[failing]
    message = f"resource {name!r} failed to start: RuntimeError: weights missing"
    assert str(raised.value) == message
    assert transcript == [
        ("receive", STARTUP),
        ("send", {"type": "lifespan.startup.failed", "message": message}),
    ]
    started = list("abc"[:failing])
    assert events == [f"{n} enter" for n in [*started, name]] + [f"{n} exit" for n in reversed(started)]
    assert host.phase is LifespanPhase.FAILED


async def test_shutdown_failures_are_collected_and_every_resource_released() -> None:
    events: list[str] = []
    host = Host(
        resources=[
            tracked("a", events, fail_exit=OSError("disk gone")),
            tracked("b", events),
            tracked("c", events, fail_exit=ValueError("bad")),
        ]
    )
    transcript = await call(host, lifespan_scope(), [STARTUP, SHUTDOWN])
    assert sent(transcript) == [
        {"type": "lifespan.startup.complete"},
        {
            "type": "lifespan.shutdown.failed",
            "message": "resource 'c' failed to shut down: ValueError: bad; "
            "resource 'a' failed to shut down: OSError: disk gone",
        },
    ]
    assert events[3:] == ["c exit", "b exit", "a exit"]
    assert host.phase is LifespanPhase.FAILED


async def test_startup_timeout_names_the_setting_and_rolls_back() -> None:
    events: list[str] = []
    host = Host(
        resources=[tracked("a", events), tracked("slow", events, hang_enter=True)],
        startup_timeout_s=0.2,
    )
    transcript: Transcript = []
    with pytest.raises(StartupError, match=r"'slow' did not start within startup_timeout_s=0.2: raise"):
        await call(host, lifespan_scope(), [STARTUP], transcript=transcript)
    assert sent(transcript)[0]["type"] == "lifespan.startup.failed"
    assert events == ["a enter", "slow enter", "a exit"]


async def test_shutdown_timeout_is_reported_and_the_rest_still_released() -> None:
    events: list[str] = []
    host = Host(
        resources=[tracked("a", events), tracked("stuck", events, hang_exit=True)], shutdown_timeout_s=0.2
    )
    transcript = await call(host, lifespan_scope(), [STARTUP, SHUTDOWN])
    failed = sent(transcript)[-1]
    assert failed["type"] == "lifespan.shutdown.failed"
    assert "'stuck' did not shut down within shutdown_timeout_s=0.2" in failed["message"]
    assert events[-2:] == ["stuck exit", "a exit"]


@pytest.mark.parametrize(
    "first", [{"type": "lifespan.shutdown"}, {"type": "lifespan.bogus"}, {"type": "http.request"}]
)
async def test_out_of_order_first_message_fails_startup(first: Message) -> None:
    events: list[str] = []
    host = Host(resources=[tracked("a", events)])
    transcript: Transcript = []
    with pytest.raises(LifespanProtocolError) as raised:
        await call(host, lifespan_scope(), [first], transcript=transcript)
    assert raised.value.message_type == first["type"]
    assert f"unexpected lifespan message {first['type']!r} in state 'waiting for lifespan.startup'" in str(
        raised.value
    )
    assert sent(transcript) == [{"type": "lifespan.startup.failed", "message": str(raised.value)}]
    assert events == []


async def test_second_startup_is_a_protocol_error_and_releases_resources() -> None:
    events: list[str] = []
    host = Host(resources=[tracked("a", events)])
    transcript: Transcript = []
    with pytest.raises(LifespanProtocolError, match=r"'lifespan\.startup' in state 'started'"):
        await call(host, lifespan_scope(), [STARTUP, STARTUP], transcript=transcript)
    # Nothing is sent twice: startup was answered, shutdown never asked for.
    assert sent(transcript) == [{"type": "lifespan.startup.complete"}]
    assert events == ["a enter", "a exit"]


async def test_a_second_concurrent_lifespan_is_refused() -> None:
    events: list[str] = []
    host = Host(resources=[tracked("a", events)])
    async with LifespanDriver(host):
        with pytest.raises(LifespanFailed, match="in state 'started'"):
            async with LifespanDriver(host):
                pass
    assert events == ["a enter", "a exit"]


async def test_restart_after_a_full_shutdown() -> None:
    events: list[str] = []
    host = Host(resources=[tracked("a", events)])
    for _ in range(2):
        async with LifespanDriver(host):
            assert host.phase is LifespanPhase.STARTED
    assert events == ["a enter", "a exit", "a enter", "a exit"]


async def test_without_server_state_handlers_get_the_hosts_state() -> None:
    events: list[str] = []

    async def show(request: Request) -> Response:
        return Response.json(request.state)

    host = Host(resources=[tracked("a", events, value={"model": "iris"})], routes=[Route("/s", show)])
    async with LifespanDriver(host, with_state=False) as lifespan:
        assert "state" not in lifespan.scope
        result = await lifespan.request("GET", "/s")
    assert result.json() == {"model": "iris"}


async def test_a_foreign_state_in_requests_still_gets_the_hosts_state() -> None:
    # Ray Serve runs the lifespan with uvicorn's LifespanOn (a state dict of its
    # own) but forwards requests with the proxy's state, which is empty.
    events: list[str] = []

    async def show(request: Request) -> Response:
        return Response.json(request.state)

    host = Host(resources=[tracked("a", events, value={"model": "iris"})], routes=[Route("/s", show)])
    async with LifespanDriver(host) as lifespan:
        assert lifespan.state == {"model": "iris"}
        result = await lifespan.request("GET", "/s", state={"proxy": 1})
    assert result.json() == {"proxy": 1, "model": "iris"}


async def test_state_key_collision_fails_startup() -> None:
    events: list[str] = []
    host = Host(resources=[tracked("a", events, value={"k": 1}), tracked("b", events, value={"k": 2})])
    with pytest.raises(LifespanFailed, match="resource 'b' sets state key 'k', which an earlier resource"):
        async with LifespanDriver(host):
            pass
    assert events == ["a enter", "b enter", "b exit", "a exit"]


async def test_send_errors_are_not_swallowed_and_resources_are_released_first() -> None:
    # hypercorn's send() raises LifespanFailureError on `.failed`: it must reach the server.
    events: list[str] = []
    host = Host(resources=[tracked("a", events), tracked("b", events, fail_enter=RuntimeError("x"))])

    class ServerError(Exception):
        pass

    async def receive() -> Message:
        return STARTUP

    async def send(message: Message) -> None:
        assert events == ["a enter", "b enter", "a exit"], "resources must be released before .failed"
        raise ServerError(message["type"])

    with pytest.raises(ServerError, match=r"lifespan\.startup\.failed"):
        await host(lifespan_scope(), receive, send)


async def test_a_resource_that_is_not_a_context_manager_fails_startup_clearly() -> None:
    def not_a_cm() -> int:
        return 3

    host = Host(resources=[Resource(not_a_cm)])  # type: ignore[arg-type]
    with pytest.raises(LifespanFailed, match="returned int, not an async context manager"):
        async with LifespanDriver(host):
            pass


async def test_factory_may_take_the_host_like_a_fastapi_lifespan() -> None:
    seen: list[object] = []

    @asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[dict[str, int]]:
        seen.append(app)
        yield {"x": 1}

    host = Host(resources=[lifespan])
    async with LifespanDriver(host) as driver:
        assert driver.state == {"x": 1}
    assert seen == [host]
    assert host.resources[0].name == "lifespan"


async def test_hooks_adapter_runs_sync_startup_in_a_thread() -> None:
    calls: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    def on_startup() -> dict[str, str]:
        calls.append(("startup", threading.get_ident() != loop_thread))
        return {"model": "loaded"}

    async def on_shutdown() -> None:
        calls.append(("shutdown", threading.get_ident() != loop_thread))

    host = Host(resources=[Resource.from_hooks(on_startup, on_shutdown)])
    async with LifespanDriver(host) as lifespan:
        assert lifespan.state == {"model": "loaded"}
    assert calls == [("startup", True), ("shutdown", False)]
    assert host.resources[0].name == "on_startup"


async def test_cancelled_lifespan_still_runs_cleanup() -> None:
    # A server that gives up (force exit) cancels the lifespan task: cleanup
    # after `yield` must still run, as a normal exit.
    events: list[str] = []
    host = Host(resources=[tracked("a", events), tracked("b", events)])
    started = anyio.Event()

    async def receive() -> Message:
        if not started.is_set():
            return STARTUP
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(host, lifespan_scope(), receive, send)
        await started.wait()
        tg.cancel_scope.cancel()
    assert events == ["a enter", "b enter", "b exit", "a exit"]


async def test_driver_reports_a_hang_with_a_timeout() -> None:
    async def hangs(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await anyio.sleep_forever()

    with pytest.raises(AppTimeout, match=r"did not answer lifespan.startup within 0.1 s"):
        async with LifespanDriver(hangs, startup_timeout_s=0.1):
            pass


@pytest.mark.parametrize("hang_on_exit", [False, True])
async def test_a_resource_may_hold_a_task_group_open_across_its_yield(hang_on_exit: bool) -> None:
    # A batcher does this: its loop runs in a task group opened in __aenter__.
    events: list[str] = []

    @asynccontextmanager
    async def background() -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep_forever)
            events.append("running")
            yield
            if hang_on_exit:
                await anyio.sleep_forever()
            tg.cancel_scope.cancel()
        events.append("stopped")

    host = Host(resources=[Resource(background, name="bg")], shutdown_timeout_s=0.2)
    transcript = await call(host, lifespan_scope(), [STARTUP, SHUTDOWN])
    if hang_on_exit:
        assert sent(transcript)[-1]["type"] == "lifespan.shutdown.failed"
        assert "'bg' did not shut down within shutdown_timeout_s=0.2" in sent(transcript)[-1]["message"]
        assert events == ["running"]
    else:
        assert sent(transcript)[-1] == {"type": "lifespan.shutdown.complete"}
        assert events == ["running", "stopped"]


IMPOSSIBLE = [(old, new) for old in LifespanPhase for new in LifespanPhase if new not in _MOVES[old]]


@pytest.mark.parametrize(("old", "new"), IMPOSSIBLE, ids=[f"{o.value}-{n.value}" for o, n in IMPOSSIBLE])
def test_an_impossible_transition_names_both_phases_and_changes_nothing(
    old: LifespanPhase, new: LifespanPhase
) -> None:
    tracker = LifespanTracker()
    tracker.phase = old
    with pytest.raises(
        LifespanError, match=f"^impossible lifespan transition from '{old.value}' to '{new.value}'$"
    ):
        tracker.move(new)
    assert tracker.phase is old


def test_a_move_the_server_asked_for_is_its_protocol_error() -> None:
    tracker = LifespanTracker()
    for phase in (LifespanPhase.STARTING, LifespanPhase.STARTED):
        tracker.move(phase)
    with pytest.raises(LifespanProtocolError, match=r"'lifespan\.startup' in state 'started'"):
        tracker.move(LifespanPhase.STARTING, message_type="lifespan.startup")
    assert tracker.phase is LifespanPhase.STARTED


async def test_a_full_lifespan_goes_through_checked_moves_only(monkeypatch: pytest.MonkeyPatch) -> None:
    moves: list[tuple[str, str]] = []
    real_move = LifespanTracker.move

    def move(self: LifespanTracker, new: LifespanPhase, *, message_type: str | None = None) -> None:
        moves.append((self.phase.value, new.value))
        real_move(self, new, message_type=message_type)

    monkeypatch.setattr(LifespanTracker, "move", move)
    host = Host(resources=[tracked("a", [])])
    await call(host, lifespan_scope(), [STARTUP, SHUTDOWN])
    with pytest.raises(LifespanFailed):
        async with LifespanDriver(Host(resources=[tracked("b", [], fail_enter=RuntimeError("x"))])):
            pass
    assert moves == [
        ("idle", "starting"),
        ("starting", "started"),
        ("started", "stopping"),
        ("stopping", "stopped"),
        ("idle", "starting"),
        ("starting", "failed"),
    ]
    assert host.phase is LifespanPhase.STOPPED
