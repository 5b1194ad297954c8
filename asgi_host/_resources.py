"""Resources: the async context managers a host enters at startup.

Each resource is held open by a task of its own. Startup and shutdown deadlines
then only ever wrap *waits* in the lifespan task, never the resource's own
code, so a resource may open task groups or cancel scopes inside itself (the
batcher of a model server does) without anyio complaining that cancel scopes
were exited out of order. The holder task also lets cleanup run as a normal
exit (`__aexit__(None, None, None)`) even when the lifespan task is cancelled:
FastAPI-style lifespans put their cleanup after `yield` without `finally`, and
an exception thrown in at the `yield` would skip it.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn

import anyio
from anyio.abc import TaskGroup

from ._clock import deadline, wait_until
from ._errors import ShutdownError, StartupError
from ._gc import freeze_startup, thaw
from ._types import State

__all__ = ["Progress", "Resource", "ResourceStack"]

# How long to wait for a resource task to finish after cancelling it. A task
# stuck in a thread cannot be interrupted; after this the host reports it and
# moves on instead of hanging the server.
_CANCEL_GRACE_S = 1.0

Hook = Callable[[], Any]


class Resource:
    """A named factory of async context managers whose entered value becomes state.

    The factory is called at every startup. It may take no argument, or one (the
    host), which is the shape of a FastAPI/Starlette lifespan::

        @asynccontextmanager
        async def model(host):
            net = await load()
            yield {"model": net}   # merged into the lifespan state
            net.close()

        Host(resources=[Resource(model)])   # or just resources=[model]

    What the context manager yields becomes state: a mapping is merged in (a
    key set by two resources is a startup error), `None` adds nothing, and any
    other value is stored under the resource's name.

    A resource that can be replaced while the host serves also has an async
    `reload(host, **options)` method returning a `Replacement` (the
    `Reloadable` protocol, asgi_host/_reload.py); `host.reload(name)` calls it.
    `TorchModel` has one.
    """

    def __init__(
        self, factory: Callable[..., AbstractAsyncContextManager[Any]], *, name: str | None = None
    ) -> None:
        if not callable(factory):
            raise TypeError(
                f"a resource is a callable returning an async context manager, got {type(factory).__name__}"
            )
        self.factory = factory
        self.name = name or getattr(factory, "__name__", None) or type(factory).__name__
        self._takes_host = _positional_arity(factory) >= 1

    def open(self, host: object) -> AbstractAsyncContextManager[Any]:
        cm = self.factory(host) if self._takes_host else self.factory()
        if not (hasattr(cm, "__aenter__") and hasattr(cm, "__aexit__")):
            raise TypeError(
                f"resource {self.name!r} returned {type(cm).__name__}, not an async context manager;"
                " decorate it with @contextlib.asynccontextmanager"
            )
        return cm

    @classmethod
    def from_hooks(
        cls,
        on_startup: Hook | None = None,
        on_shutdown: Hook | None = None,
        *,
        name: str | None = None,
    ) -> Resource:
        """Adapt the deprecated two-function style (`on_event("startup")`) to a resource.

        Either hook may be sync or async; sync hooks run in a worker thread so a
        slow model load never blocks the event loop. A mapping returned by
        `on_startup` becomes state. `on_shutdown` runs only if `on_startup` succeeded.
        """
        hook_name = name or getattr(on_startup or on_shutdown, "__name__", "hooks")

        @asynccontextmanager
        async def hooks() -> AsyncIterator[Any]:
            value = await _call_hook(on_startup) if on_startup is not None else None
            yield value
            if on_shutdown is not None:
                await _call_hook(on_shutdown)

        return cls(hooks, name=hook_name)

    def detail(self) -> Mapping[str, Any] | None:
        """What `/readyz` shows of this resource once the host is ready (None: nothing)."""
        return None

    def __repr__(self) -> str:
        return f"Resource({self.name!r})"


def as_resource(obj: Resource | Callable[..., AbstractAsyncContextManager[Any]]) -> Resource:
    return obj if isinstance(obj, Resource) else Resource(obj)


def _positional_arity(func: Callable[..., object]) -> int:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return 0
    return sum(
        1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )


async def _call_hook(hook: Hook) -> Any:
    if inspect.iscoroutinefunction(hook):
        return await hook()
    result = await anyio.to_thread.run_sync(hook)
    if inspect.isawaitable(result):
        return await result
    return result


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Holder:
    """Holds one resource open in its own task until told to release it."""

    def __init__(
        self, resource: Resource, cm: AbstractAsyncContextManager[Any], exit_timeout_s: float | None
    ) -> None:
        self.resource = resource
        self._exit_timeout_s = exit_timeout_s
        self._cm = cm
        self._scope = anyio.CancelScope()
        self._release = anyio.Event()
        self.settled = anyio.Event()  # entering finished, with a value or an error
        self.entered = False
        self.done = anyio.Event()
        self.value: Any = None
        self.enter_error: BaseException | None = None
        self.exit_error: BaseException | None = None
        self.exit_timed_out = False
        self.exit_deadline = math.inf

    async def run(self) -> None:
        # Enter and exit run under the same cancel scope, `self._scope`, with
        # nothing else opened around either: a resource that opens a task
        # group in `__aenter__` closes it in `__aexit__` under the same scope.
        try:
            with self._scope:
                try:
                    self.value = await self._cm.__aenter__()
                except BaseException as exc:
                    self.enter_error = exc
                    raise
                finally:
                    self.settled.set()
                self.entered = True
                try:
                    # Shielded: only `release()` ends the wait, so that even a
                    # cancelled lifespan releases resources one by one in reverse.
                    with anyio.CancelScope(shield=True):
                        await self._release.wait()
                finally:
                    await self._exit()
        except Exception:
            pass  # recorded above; the lifespan task reports it
        finally:
            self.done.set()

    async def _exit(self) -> None:
        # Cleanup runs to completion or to the shutdown deadline, shielded
        # from whoever cancels the lifespan task. Not released by `stop()`
        # (the lifespan task was cancelled): the shutdown timeout still applies.
        until = self.exit_deadline if self._release.is_set() else deadline(self._exit_timeout_s)
        self._scope.shield = True
        self._scope.deadline = min(self._scope.deadline, until)
        try:
            await self._cm.__aexit__(None, None, None)
        except BaseException as exc:
            if not self._scope.cancel_called:
                self.exit_error = exc
        if self._scope.cancel_called:
            self.exit_timed_out = True

    def release(self, at: float) -> None:
        self.exit_deadline = at
        self._release.set()

    def cancel(self) -> None:
        self._scope.cancel()


class Progress:
    """How far startup has got: which resource, its own stage and fraction, and the time taken.

    The host fills in the resource; a resource may add detail from any thread
    with `report()` (`TorchModel` reports "reading weights", "warmup", ...).
    `/readyz` shows it while loading.
    """

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.resource: str | None = None
        self.stage: str | None = None
        self.fraction: float | None = None
        self._index = 0
        self._count = 0

    def begin(self, count: int) -> None:
        self.started_at, self.finished_at = time.monotonic(), None
        self._count, self._index = count, 0
        self.resource = self.stage = None
        self.fraction = 0.0 if count else 1.0

    def enter(self, resource: str, index: int) -> None:
        self.resource, self.stage, self._index = resource, None, index
        self.fraction = index / self._count

    def report(self, stage: str | None = None, fraction: float | None = None) -> None:
        """Called by a resource while it starts: its stage, and how much of *its own* work is done (0-1)."""
        self.stage = stage
        if fraction is not None and self._count:
            self.fraction = (self._index + min(max(fraction, 0.0), 1.0)) / self._count

    def finish(self) -> None:
        self.finished_at = time.monotonic()
        self.resource = self.stage = None
        self.fraction = 1.0

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at


class ResourceStack:
    """Enters resources in order and releases them in reverse, within deadlines.

    Used by the lifespan protocol, and by anything else that needs to run the
    same startup and shutdown (an embedding parent's lifespan, lazy start).
    """

    def __init__(
        self,
        resources: Sequence[Resource],
        owner: object,
        *,
        startup_timeout_s: float | None,
        shutdown_timeout_s: float | None,
        gc_freeze: bool = False,
    ) -> None:
        self.resources = list(resources)
        self.gc_freeze = gc_freeze
        self._froze = False  # this stack froze the heap (_gc.py) and has not stopped since
        self._owner = owner
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._held: list[_Holder] = []
        self.state: State = {}
        self.progress = Progress()

    @property
    def running(self) -> bool:
        return bool(self._held)

    async def start(self, task_group: TaskGroup) -> State:
        """Enter every resource; on any failure release those entered and raise StartupError."""
        assert not self._held, "resources are already started"
        self.state = {}
        self.progress.begin(len(self.resources))
        until = deadline(self.startup_timeout_s)
        for index, resource in enumerate(self.resources):
            self.progress.enter(resource.name, index)
            try:
                holder = _Holder(resource, resource.open(self._owner), self.shutdown_timeout_s)
            except Exception as exc:
                await self._fail_startup(f"resource {resource.name!r} failed to start: {_describe(exc)}", exc)
            task_group.start_soon(holder.run, name=f"asgi_host resource {resource.name}")
            self._held.append(holder)
            if not await wait_until(holder.settled, until):
                holder.cancel()
                await wait_until(holder.done, anyio.current_time() + _CANCEL_GRACE_S)
                await self._fail_startup(
                    f"resource {resource.name!r} did not start within startup_timeout_s="
                    f"{self.startup_timeout_s}: raise startup_timeout_s (None means no limit)"
                    " or make the resource start faster",
                    None,
                )
            if holder.enter_error is not None:
                error = holder.enter_error
                await self._fail_startup(
                    f"resource {resource.name!r} failed to start: {_describe(error)}", error
                )
            try:
                self._merge(resource, holder.value)
            except StartupError as exc:
                await self._fail_startup(str(exc), None)
        self.progress.finish()
        if self.gc_freeze and self.resources:  # start() runs only on a stopped stack
            self._froze = True  # first: stop() thaws whatever happens after this line
            freeze_startup()  # full collections leave out what startup made (_gc.py)
        return self.state

    def _merge(self, resource: Resource, value: Any) -> None:
        if value is None:
            return
        items = value.items() if isinstance(value, Mapping) else [(resource.name, value)]
        for key, item in items:
            if key in self.state:
                raise StartupError(
                    f"resource {resource.name!r} sets state key {key!r}, which an earlier resource"
                    " already set: give one of them another key"
                )
            self.state[key] = item

    async def _fail_startup(self, message: str, cause: BaseException | None) -> NoReturn:
        try:
            await self.stop()
        except ShutdownError as rollback:
            message = f"{message}; rolling back also failed: {rollback}"
        raise StartupError(message) from cause

    async def stop(self) -> None:
        """Release entered resources in reverse order; try every one, then report all failures."""
        until = deadline(self.shutdown_timeout_s)
        failures: list[str] = []
        try:
            await self._release_all(until, failures)
        finally:
            if self._froze:
                self._froze = False
                thaw()
        self.state = {}
        if failures:
            raise ShutdownError("; ".join(failures))

    async def _release_all(self, until: float, failures: list[str]) -> None:
        # Shielded: the release must happen even if whoever awaits us is cancelled.
        with anyio.CancelScope(shield=True):
            while self._held:
                holder = self._held.pop()
                name = holder.resource.name
                if not holder.entered:
                    # Still entering (a background load cut short by shutdown): stop it.
                    holder.cancel()
                    if not await wait_until(holder.done, anyio.current_time() + _CANCEL_GRACE_S):
                        failures.append(f"resource {name!r} is still starting (stuck in a thread?)")
                    continue
                holder.release(until)
                if not await wait_until(holder.done, until + _CANCEL_GRACE_S):
                    holder.cancel()
                    failures.append(f"resource {name!r} is still shutting down (stuck in a thread?)")
                elif holder.exit_timed_out:
                    failures.append(
                        f"resource {name!r} did not shut down within shutdown_timeout_s="
                        f"{self.shutdown_timeout_s}: raise shutdown_timeout_s (None means no limit)"
                    )
                elif holder.exit_error is not None:
                    failures.append(f"resource {name!r} failed to shut down: {_describe(holder.exit_error)}")
