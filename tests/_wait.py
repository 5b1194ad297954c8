"""Waiting for host-internal state that has no event of its own, always bounded."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def until(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Poll `condition` every 5 ms until it is true; fail after `timeout_s`."""
    with anyio.fail_after(timeout_s):
        while not condition():  # noqa: ASYNC110 - the state has no event to wait on
            await anyio.sleep(0.005)
