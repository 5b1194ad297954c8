"""Deadlines on anyio's clock: the one helper every timeout in the package is written with."""

from __future__ import annotations

import math

import anyio

__all__ = ["deadline", "wait_until"]


def deadline(timeout_s: float | None) -> float:
    """The anyio time `timeout_s` from now; infinity for None (no limit)."""
    return math.inf if timeout_s is None else anyio.current_time() + timeout_s


async def wait_until(event: anyio.Event, at: float) -> bool:
    """Wait for `event` until the anyio time `at`; True if it was set."""
    with anyio.CancelScope(deadline=at):
        await event.wait()
    return event.is_set()
