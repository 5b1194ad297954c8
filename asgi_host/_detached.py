"""A task that outlives the request that started it (for lazy start).

anyio has no detached tasks (every task belongs to a task group), so this is
the one place the package speaks to the event loop directly: an asyncio task,
or a trio system task. Both are cancelled when their event loop shuts down.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["spawn_detached"]


def spawn_detached(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Start `fn` in a task that outlives the current request.

    anyio has no detached tasks (every task belongs to a task group), and a
    lazy start must outlive the request that triggered it, so this is the one
    place that speaks to the event loop directly. The task ends at `aclose()`,
    or is cancelled when the event loop shuts down, which releases the resources.
    """
    if _in_trio():
        import trio

        trio.lowlevel.spawn_system_task(fn)
        return
    task = asyncio.get_running_loop().create_task(fn())
    _DETACHED.add(task)  # asyncio keeps only weak references to tasks
    task.add_done_callback(_DETACHED.discard)


def _in_trio() -> bool:
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


_DETACHED: set[asyncio.Task[None]] = set()
