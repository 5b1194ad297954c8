"""The host: one ASGI 3 callable that runs lifespan, routes and mounts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, Protocol

from ._access_log import access_logged
from ._admin import admin_route
from ._defaults import DEFAULTS
from ._errors import ClientDisconnect, HTTPError, ShutdownError, StartupError, SubAppLifespanError
from ._health import LivenessProbe, Readiness, ReadinessProbe, readiness, refusal
from ._http import Request, Response, error_response, settle_body
from ._inflight import InFlight
from ._lazy import LazyStart
from ._lifespan import LifespanPhase, LifespanTracker, run_lifespan
from ._logging import default_logging
from ._propagation import LifespanUnsupported, SubAppLifespan, drive_lifespan
from ._reload import Reloader, ReloadResult
from ._request_ids import begin_request_id, stamp_request_id, with_request_id
from ._resources import Progress, Resource, ResourceStack, as_resource
from ._routing import Adapter, Dispatch, Endpoint, Match, Mount, Route, Router, expand_routes, route_path
from ._streaming import start_stream
from ._types import ASGIApp, Receive, Scope, Send, State, send_message
from ._versions import begin_request, stamp_version
from ._view import HostView
from .openapi import openapi_routes

__all__ = ["Host"]

logger = logging.getLogger("asgi_host")

# Marks a lifespan scope that `Host.lifespan()` made, not a server.
_EMBEDDED = "asgi_host.embedded"

_NOT_STARTED = HTTPError(
    503,
    "the host has not started: nothing sent lifespan.startup, so its resources are not loaded. Serve it "
    "with a server that runs lifespan (hypercorn, uvicorn, granian), or, when it is mounted in another "
    "app, run `async with host.lifespan():` in that app's lifespan (see docs/embedding.md)",
)

ResourceLike = Resource | Callable[..., AbstractAsyncContextManager[Any]]


class RequestMetrics(Protocol):
    """What `Host(metrics=...)` takes; `asgi_host.metrics.Metrics` is one.

    It serves its own `path`, is attached to the host once, and wraps the
    host's dispatch so that it measures each routed request from outside.
    """

    path: str

    @property
    def endpoint(self) -> Endpoint: ...

    def attach(self, host: HostView) -> None: ...

    def wrap(self, dispatch: Dispatch) -> Dispatch: ...


class Host:
    """An ASGI 3 app that owns its resources' lifespan and serves routes and mounts.

    ::

        @asynccontextmanager
        async def model(host):
            net = await anyio.to_thread.run_sync(load_model)
            yield {"model": net}
            del net

        async def predict(request: Request) -> Response:
            net = request.state["model"]
            ...

        app = Host(resources=[model], routes=[Route("/predict", predict, methods=["POST"])])

    Resources are entered in order on `lifespan.startup` and released in
    reverse on `lifespan.shutdown`; what they yield is the state handlers see
    as `request.state`. Mounted sub-apps (`Mount`) get no lifespan events.

    Timeouts are the host's own (`None` for no limit); hypercorn has its own 60 s `startup_timeout`
    on top, see docs/lifespan.md. `drain_timeout_s` bounds the wait for requests in flight after
    `lifespan.shutdown`, `body_timeout_s` the time a request body may take to arrive (408 after).
    `/livez` and `/readyz` (paths settable, `None` to turn off) report liveness and readiness;
    `background_startup=True` answers startup at once and loads in the background (routes answer
    503 until ready); `metrics=Metrics()` serves `/metrics`, `access_log="json"` logs each request
    (every response carries `x-request-id`); `gc_freeze` leaves what startup made out of full
    garbage collections (gc.freeze(); False: not). See docs/production.md.
    `openapi_path` serves the OpenAPI document of the routes, `docs_path` Swagger UI for it (the
    `openapi` extra); `None` turns either off, and no document means no page either. See
    docs/protocols.md.

    Mounted in another app that sends no lifespan events, run it from that
    app's lifespan with `async with host.lifespan():`, or let the first
    request start it with `lazy_start="wait"` (see docs/embedding.md).
    """

    def __init__(
        self,
        *,
        resources: Iterable[ResourceLike] = (),
        routes: Sequence[Route | Mount | Adapter] = (),
        # Each setting's default is HostSettings' (_defaults.py), which HostConfig's fields are too.
        startup_timeout_s: float | None = DEFAULTS.startup_timeout_s,
        shutdown_timeout_s: float | None = DEFAULTS.shutdown_timeout_s,
        drain_timeout_s: float | None = DEFAULTS.drain_timeout_s,
        max_body_bytes: int | None = DEFAULTS.max_body_bytes,
        body_timeout_s: float | None = DEFAULTS.body_timeout_s,
        livez_path: str | None = DEFAULTS.livez_path,
        readyz_path: str | None = DEFAULTS.readyz_path,
        background_startup: bool = DEFAULTS.background_startup,
        on_background_failure: Callable[[StartupError], object] | None = None,
        metrics: RequestMetrics | None = None,
        lazy_start: Literal["wait", "unavailable"] | None = DEFAULTS.lazy_start,
        admin_token: str | None = DEFAULTS.admin_token,
        openapi_path: str | None = DEFAULTS.openapi_path,
        docs_path: str | None = DEFAULTS.docs_path,
        access_log: Literal["json", "off"] = DEFAULTS.access_log,
        gc_freeze: bool = DEFAULTS.gc_freeze,
    ) -> None:
        routes = expand_routes(routes)
        self.router = Router(routes)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.background_startup = background_startup
        self.on_background_failure = on_background_failure
        # Endpoints may carry resources (a batcher): they start after the
        # host's own, so after the model they use, and stop before it.
        # An endpoint routed at several paths (a v2 model's versioned paths) carries them once.
        carried = list(
            {id(r): r for item in routes if isinstance(item, Route) for r in item.resources}.values()
        )
        # Mounts whose lifespan runs with the host's: after everything else, in mount order.
        propagated = [SubAppLifespan(m.prefix, m.app) for m in routes if isinstance(m, Mount) and m.lifespan]
        self._stack = ResourceStack(
            [*(as_resource(r) for r in resources), *carried, *propagated],
            self,
            startup_timeout_s=startup_timeout_s,
            shutdown_timeout_s=shutdown_timeout_s,
            gc_freeze=gc_freeze,
        )
        names = [r.name for r in self._stack.resources]
        if len(set(names)) != len(names):
            raise ValueError(f"resource names must be unique, got {names}: give each a name=")
        self._lifespan = LifespanTracker()
        # True while the state handlers need is in every request scope because
        # the server copies the lifespan scope's `state` into it.
        self._server_copies_state = False
        self._in_flight = InFlight()
        self._probe_paths: set[str] = set()
        if livez_path is not None:
            self._add_probe(livez_path, LivenessProbe())
        if readyz_path is not None:
            self._add_probe(readyz_path, ReadinessProbe(self.readiness))
        if lazy_start not in (None, "wait", "unavailable"):
            raise ValueError(f"lazy_start is None, 'wait' or 'unavailable', got {lazy_start!r}")
        self.lazy_start = lazy_start
        self._lazy = (
            LazyStart(lazy_start, self.lifespan, self.readiness, startup_timeout_s) if lazy_start else None
        )
        self.metrics = metrics
        if metrics is not None:
            self._add_probe(metrics.path, metrics.endpoint)
            metrics.attach(self)
        # What serves a routed request: metrics, when on, measure it from outside.
        self._dispatch: Dispatch = self._serve if metrics is None else metrics.wrap(self._serve)
        self._on_http = access_logged(self._http, access_log)  # an HTTP request, probes included
        # `host.reload()`, and with an admin token its route (off without one): see _reload.py.
        self._reloader = Reloader(self)
        if admin_token is not None:
            self.router.add(admin_route(self._reloader, admin_token))
        # The OpenAPI document and Swagger UI: answered like the probes, while loading too.
        if openapi_path is not None:
            for path, endpoint in openapi_routes(self, openapi_path, docs_path):
                self._add_probe(path, endpoint)

    def _add_probe(self, path: str, endpoint: Endpoint) -> None:
        self.router.add(Route(path, endpoint))
        self._probe_paths.add(path)
        self._check_probe_paths()

    def _check_probe_paths(self) -> None:
        for path in self._probe_paths:
            mount = self.router.mount_for(path)
            if mount is not None:
                raise ValueError(
                    f"probe path {path!r} is under mount {mount.prefix!r}: pass another livez_path, "
                    "readyz_path or metrics path"
                )

    @property
    def progress(self) -> Progress:
        """Startup progress; resources may `report()` their stage and fraction to it."""
        return self._stack.progress

    @property
    def in_flight(self) -> int:
        """Requests being served by routes and mounts (health checks not counted)."""
        return self._in_flight.count

    def readiness(self) -> Readiness:
        """What `/readyz` reports: `ready`, or why not."""
        return readiness(self._lifespan, self._stack.progress, self._in_flight.count, self._stack.resources)

    async def _drain(self) -> None:
        """From lifespan.shutdown on: refuse new work, wait for the admitted (bounded)."""
        if self._in_flight.count:
            logger.info("draining %d requests in flight", self._in_flight.count)
            if not await self._in_flight.wait_idle(self.drain_timeout_s):
                logger.warning(
                    "%d requests still running after drain_timeout_s=%s; releasing resources anyway",
                    self._in_flight.count,
                    self.drain_timeout_s,
                )

    @property
    def phase(self) -> LifespanPhase:
        return self._lifespan.phase

    @property
    def state(self) -> State:
        """What the resources yielded; empty until startup completes."""
        return self._stack.state

    @property
    def resources(self) -> list[Resource]:
        return list(self._stack.resources)

    async def reload(self, name: str, **options: Any) -> ReloadResult:
        """Replace resource `name` while serving: `await host.reload("model", weights="v2.safetensors")`.

        The new version is built, loaded and warmed up while the current one serves; then the state
        is swapped in one step (new requests get the new version), and the old one finishes its
        passes in flight and is released. Raises `ReloadError` (the current version keeps serving)
        when the new one fails to load, `ReloadInProgress` while another reload of `name` runs.
        See docs/production.md ("Reloading a model").
        """
        return await self._reloader.reload(name, options)

    async def aclose(self) -> None:
        """Shut down resources that a lazy start brought up (no-op otherwise). Idempotent."""
        if self._lazy is not None:
            await self._lazy.aclose()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[dict[str, Any]]:
        """Run the host's startup and shutdown from an app that sends it no lifespan events.

        For a host mounted under Starlette or FastAPI (`app.mount("/model", host)`),
        which never pass lifespan events to mounts::

            @asynccontextmanager
            async def lifespan(app):
                async with host.lifespan() as state:
                    yield state          # optional: the parent's requests see it too

        It runs the very same protocol (resources, timeouts, drain, background
        startup). A failure raises `StartupError` / `ShutdownError` with the
        host's message, so the parent's own startup fails and its server exits;
        so does a host (a subclass, say) that raises before its first `receive()`.
        """
        state: dict[str, Any] = {}
        try:
            async with drive_lifespan(self, state, label="asgi_host.Host", scope_extra={_EMBEDDED: True}):
                yield state
        except LifespanUnsupported as exc:
            raise StartupError(f"{type(self).__name__} did not start: it {exc.reason}") from exc.error
        except SubAppLifespanError as exc:
            message = exc.app_message or str(exc)
            if exc.phase == "startup":
                raise StartupError(message) from None
            raise ShutdownError(message) from None

    def route(self, path: str, *, methods: Iterable[str] = ("GET",)) -> Callable[[Endpoint], Endpoint]:
        """Decorator form of `Route`: `@host.route("/ping")`."""

        def decorate(endpoint: Endpoint) -> Endpoint:
            route = Route(path, endpoint, methods=methods)
            carried = [as_resource(r) for r in route.resources]
            if carried and self.phase is not LifespanPhase.IDLE:
                raise RuntimeError(
                    f"the endpoint for {path!r} carries resources ({', '.join(r.name for r in carried)}): "
                    "add it before the host starts, so they start with it"
                )
            # Like `routes=`: after the host's own resources, before mounts whose lifespan it runs.
            resources = self._stack.resources
            carried = [r for r in carried if all(r is not other for other in resources)]
            at = next((i for i, r in enumerate(resources) if isinstance(r, SubAppLifespan)), len(resources))
            names = [r.name for r in [*resources, *carried]]
            if len(set(names)) != len(names):
                raise ValueError(f"resource names must be unique, got {names}")
            self.router.add(route)
            resources[at:at] = carried
            return endpoint

        return decorate

    def mount(self, prefix: str, app: ASGIApp, *, lifespan: bool = False) -> None:
        """Add a `Mount`; with `lifespan=True` its lifespan runs with the host's (add before startup)."""
        mount = Mount(prefix, app, lifespan=lifespan)
        self.router.add(mount)
        self._check_probe_paths()
        if lifespan:
            if self.phase is not LifespanPhase.IDLE:
                raise RuntimeError("mount with lifespan=True before the host starts, so it starts with it")
            self._stack.resources.append(SubAppLifespan(mount.prefix, app))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._on_http(scope, receive, send)
        elif kind == "lifespan":
            default_logging()
            state = scope.get("state")
            # Driven by `lifespan()` for a parent app: the parent's server will
            # not copy this state into our request scopes, so we add it ourselves.
            self._server_copies_state = isinstance(state, dict) and not scope.get(_EMBEDDED)
            # The dict servers copy into each request: a reload swaps its value there too.
            self._reloader.server_state = state if isinstance(state, dict) else None
            try:
                await run_lifespan(
                    self._stack,
                    self._lifespan,
                    scope,
                    receive,
                    send,
                    background=self.background_startup,
                    drain=self._drain,
                    on_background_failure=self.on_background_failure,
                )
            finally:
                self._server_copies_state = False
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            # The spec asks apps to raise on scope types they do not know.
            raise ValueError(f"asgi_host.Host cannot handle scope type {kind!r}")

    def _request_state(self, scope: Scope) -> State:
        given = scope.get("state")
        if isinstance(given, dict) and self._server_copies_state and self._stack.state.keys() <= given.keys():
            return given
        # No state from the server, or not ours (it lacks support, the host was
        # started some other way, or, as Ray Serve does, the request carries the
        # proxy's state and not the replica's): give handlers and sub-apps a
        # copy with ours in it, as servers do.
        state: State = dict(given) if isinstance(given, Mapping) else {}
        state.update(self._stack.state)
        scope["state"] = state
        return state

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        begin_request()  # x-model-version: the versions this request's passes ran on, and no other's
        begin_request_id(scope)
        match = self.router.resolve(route_path(scope), scope["method"])
        if match.label in self._probe_paths:  # probes answer in every phase, uncounted and unmeasured
            await self._respond(scope, receive, send, match)
            return
        with self._in_flight:
            await self._dispatch(scope, receive, send, match)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, match: Match) -> int | None:
        tracker = self._lifespan
        if tracker.phase is LifespanPhase.STARTED and not tracker.loading and tracker.load_error is None:
            refused = None  # the common case, decided without building a readiness report
        elif tracker.phase is LifespanPhase.IDLE and self._stack.resources:
            refused = await self._lazy.admit() if self._lazy is not None else _NOT_STARTED
        else:
            refused = refusal(self.readiness())
        if refused is None and match.mount is not None:
            self._request_state(scope)
            child = match.mount.child_scope(scope, match.path)
            status: list[int] = []
            try:
                await match.mount.app(child, receive, with_request_id(send, scope, status))
            except OSError:  # ASGI 2.4: send() may raise once the client has gone away
                if not status:
                    raise
            return status[0] if status else None
        return await self._respond(scope, receive, send, match, refused)

    async def _respond(
        self, scope: Scope, receive: Receive, send: Send, match: Match, refused: HTTPError | None = None
    ) -> int | None:
        """The one place a routed request is answered: the endpoint's response, or the route's error
        format for every error (the host's refusals, an `HTTPError`, an unhandled exception); the
        status answered (None: the client left first)."""
        method: str = scope["method"]
        request: Request | None = None
        error = refused or match.error
        answer_error = match.error_format or error_response
        try:
            if error is not None:
                raise error
            assert match.route is not None  # the router gives a route, a mount or an error
            request = Request(
                scope,
                receive,
                self._request_state(scope),
                max_body_bytes=self.max_body_bytes,
                body_timeout_s=self.body_timeout_s,
            )
            response = await match.route.endpoint(request)
            if not isinstance(response, Response):
                # A stream: its first item is taken here, so an error before the first byte is
                # answered like any other, with its status.
                response = await start_stream(response, request)
        except HTTPError as exc:
            response = answer_error(exc)
        except ClientDisconnect:
            return None  # nobody to answer
        except Exception:
            logger.exception("unhandled error in %s %s", method, match.path)
            response = answer_error(
                HTTPError(500, "internal server error; the traceback is in the server log")
            )
        stamp_version(response)
        stamp_request_id(response, scope)
        if response.status >= 400:  # an error before the body was read: read the rest, or close
            await settle_body(response, request or Request(scope, receive, {}, max_body_bytes=None))
        try:
            await response.send(send, head=method == "HEAD", receive=receive)
        except OSError:
            # ASGI 2.4: send() may raise once the client has gone away.
            logger.debug("client went away before the response to %s %s was sent", method, match.path)
        return response.status

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        mount = self.router.mount_for(path)
        if mount is not None:
            self._request_state(scope)
            await mount.app(mount.child_scope(scope, path), receive, send)
            return
        await refuse_websocket(receive, send)


async def refuse_websocket(receive: Receive, send: Send) -> None:
    """A plain HTTP app denies websockets: close before accept (the server answers 403)."""
    message = await receive()
    if message.get("type") == "websocket.connect":
        await send_message(
            send, {"type": "websocket.close", "code": 1008, "reason": "no websocket route here"}
        )
