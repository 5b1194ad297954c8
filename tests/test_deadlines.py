"""Body-read deadlines that share one timer per tick (asgi_host._deadlines)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from typing import Any

import pytest

from asgi_host._deadlines import TICK_S, _local, _Registry, deadline_after

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_wait_past_its_deadline_times_out_within_a_tick_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with deadline_after(0.2):
            await asyncio.sleep(30)
    waited = loop.time() - started
    assert 0.2 <= waited < 0.2 + TICK_S + 0.5  # a tick late at most (and some scheduling)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # its cancel taken back


async def test_waits_that_end_in_time_leave_nothing_behind_and_share_a_timer() -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting(when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(args[0], "__name__", None) == "fire":  # a tick's timer, not the sleeps'
            armed.append(when)
        return call_at(when, *args, **kwargs)

    loop.call_at = counting  # type: ignore[assignment]
    try:

        async def quick() -> int:
            async with deadline_after(5):
                await asyncio.sleep(0.001)
            return 1

        assert sum(await asyncio.gather(*(quick() for _ in range(50)))) == 50
    finally:
        del loop.call_at
    assert 1 <= len(armed) <= 2  # 50 waits, one timer per tick their deadlines fall in
    assert all(not waiting for waiting in _local.registry.ticks.values())
    await asyncio.sleep(0)  # no stray cancel reaches the task afterwards
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_someone_elses_cancel_is_not_a_timeout() -> None:
    async def waits() -> None:
        async with deadline_after(0.1):
            await asyncio.sleep(30)

    task = asyncio.ensure_future(waits())
    await asyncio.sleep(0.01)
    task.cancel()  # the server's, say, before the deadline
    with pytest.raises(asyncio.CancelledError):
        await task
    expired = asyncio.ensure_future(waits())
    await asyncio.sleep(0.1 + 2 * TICK_S)  # past the deadline: the tick has cancelled it
    assert expired.done()
    with pytest.raises(TimeoutError):
        await expired


async def test_a_cancel_that_lands_with_the_deadline_stays_a_cancel() -> None:
    """The tick and, before the task runs again, the server both cancel it: a cancel, not a timeout."""
    loop = asyncio.get_running_loop()
    ticks: list[int] = []

    async def waits() -> None:
        async with deadline_after(0.05) as wait:
            ticks.append(wait._tick)
            await asyncio.sleep(30)

    task = asyncio.ensure_future(waits())
    await asyncio.sleep(0)  # it waits now
    # At the wait's own tick (computing it again here could land a tick later, where the timeout
    # has already been answered).
    loop.call_at(ticks[0] * TICK_S, task.cancel)  # the same time as the tick's timer: the same pass
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_registry_per_event_loop() -> None:
    """A thread may run one loop after another (a test suite does): a registry left by a loop
    that has gone is replaced, never used with this loop's timers."""
    gone = asyncio.new_event_loop()
    gone.close()
    _local.registry = _Registry(gone)
    async with deadline_after(1):
        pass
    assert _local.registry.loop is asyncio.get_running_loop()


async def test_a_ticks_timer_keeps_nothing_of_the_request_that_armed_it_alive() -> None:
    class Value:
        pass

    variable: contextvars.ContextVar[Value] = contextvars.ContextVar("variable")

    async def request() -> weakref.ref[Value]:
        value = Value()
        variable.set(value)
        wait = deadline_after(30)  # its tick's timer stays armed for 30 s
        wait.done()
        return weakref.ref(value)

    held = await asyncio.get_running_loop().create_task(request())
    for _ in range(3):  # the task's own callbacks, which hold its context, run
        await asyncio.sleep(0)
    gc.collect()
    assert held() is None
