"""`gc_freeze`: what startup made is left out of later full collections while the host runs, only
after a startup that succeeded, and no longer once it stopped; a released model is still collected
(tests/test_model.py, the cyclic module)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest

from asgi_host import Host, LifespanFailed, _gc
from asgi_host.testing import LifespanDriver

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def unfrozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    gc.unfreeze()
    monkeypatch.setattr("asgi_host._gc._holders", 0)
    yield
    gc.unfreeze()


class Cycle:
    """Garbage only a collection frees."""

    def __init__(self) -> None:
        self.me = self


def walked_by_collections(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects())


@pytest.mark.parametrize("gc_freeze", [True, False])
async def test_startup_freezes_what_was_made_before_it_ended(gc_freeze: bool) -> None:
    made_at_startup: list[object] = []

    @asynccontextmanager
    async def resource(host: object) -> AsyncIterator[dict[str, object]]:
        made_at_startup.append([object()])
        yield {}

    before = [object()]
    async with LifespanDriver(Host(resources=[resource], gc_freeze=gc_freeze)):
        after = [object()]
        assert (gc.get_freeze_count() > 0) is gc_freeze
        assert walked_by_collections(before) is not gc_freeze
        assert walked_by_collections(made_at_startup[0]) is not gc_freeze
        assert walked_by_collections(after)
    # Stopped: the process's collector is as it was.
    assert gc.get_freeze_count() == 0
    assert walked_by_collections(before)


async def test_the_last_host_to_stop_unfreezes() -> None:
    @asynccontextmanager
    async def resource(host: object) -> AsyncIterator[dict[str, object]]:
        yield {}

    async with LifespanDriver(Host(resources=[resource])):
        async with LifespanDriver(Host(resources=[resource])):
            pass
        assert gc.get_freeze_count() > 0  # the outer host still runs
    assert gc.get_freeze_count() == 0


async def test_a_host_with_nothing_to_load_freezes_nothing() -> None:
    async with LifespanDriver(Host()):
        assert gc.get_freeze_count() == 0


async def test_garbage_that_startup_left_is_collected_not_frozen() -> None:
    left: list[weakref.ref[Cycle]] = []

    @asynccontextmanager
    async def loader(host: object) -> AsyncIterator[dict[str, object]]:
        left.append(weakref.ref(Cycle()))  # garbage at once, but only a collection frees it
        yield {}

    gc.disable()  # no automatic collection may free it first
    try:
        async with LifespanDriver(Host(resources=[loader])):
            assert left[0]() is None
    finally:
        gc.enable()


async def test_a_failed_startup_freezes_nothing() -> None:
    @asynccontextmanager
    async def broken(host: object) -> AsyncIterator[dict[str, object]]:
        raise RuntimeError("no weights")
        yield {}

    with pytest.raises(LifespanFailed, match="no weights"):
        async with LifespanDriver(Host(resources=[broken])):
            pass
    assert gc.get_freeze_count() == 0


def test_collect_includes_what_was_frozen_and_freezes_again(monkeypatch: pytest.MonkeyPatch) -> None:
    cycle = Cycle()
    ref = weakref.ref(cycle)
    gc.freeze()  # as a host that froze does, without its collection first
    monkeypatch.setattr("asgi_host._gc._holders", 1)
    del cycle
    gc.collect()
    assert ref() is not None  # frozen: a plain collection leaves it
    survivor = [object()]
    _gc.collect()
    assert ref() is None
    assert gc.get_freeze_count() > 0
    assert not walked_by_collections(survivor)
