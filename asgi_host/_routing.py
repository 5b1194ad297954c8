"""Routes (an exact path, or every path under a prefix) and mounts (a sub-app under a prefix)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ._errors import HTTPError
from ._http import ErrorFormat, Request, Response
from ._resources import Resource
from ._streaming import EventStream
from ._types import ASGIApp, Receive, Scope, Send

__all__ = [
    "Adapter",
    "Dispatch",
    "Endpoint",
    "Match",
    "Mount",
    "Route",
    "Router",
    "expand_routes",
    "route_path",
]

Endpoint = Callable[[Request], Awaitable[Response | EventStream | AsyncIterator[Any]]]
"""`async def endpoint(request) -> Response` (or an `EventStream`, or an async iterator the host
streams: `Route` checks only that it is async)."""

UNMATCHED = "unmatched"


class Route:
    """A path answered by `endpoint` for `methods` (HEAD comes with GET; None: every method).

    `endpoint` is `async def endpoint(request: Request) -> Response` (or an `EventStream`, or an
    async iterator: the host streams it as Server-Sent Events). With `prefix=True`
    the route answers its path and every path under it (on a `/` boundary), after the
    exact routes: a protocol's own 404 under its prefix, say. `error_format` is how the
    host answers this route's errors, the ones it raises before the endpoint runs included
    (default: the endpoint's `error_format` attribute, else the host's error JSON).
    `resources` (a batcher, a startup check) start with the host after its own resources,
    so after the model they use, and stop before it (default: the endpoint's `resources`
    attribute, as a `StructEndpoint` has).
    """

    def __init__(
        self,
        path: str,
        endpoint: Endpoint,
        *,
        methods: Iterable[str] | None = ("GET",),
        prefix: bool = False,
        error_format: ErrorFormat | None = None,
        resources: Sequence[Resource] | None = None,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"route path {path!r} must start with '/'")
        if not (
            inspect.iscoroutinefunction(endpoint)
            or inspect.iscoroutinefunction(type(endpoint).__call__)  # objects with an async __call__
        ):
            raise TypeError(f"endpoint for {path!r} must be an async function (async def endpoint(request))")
        self.path = (path.rstrip("/") or "/") if prefix else path
        self.endpoint = endpoint
        self.prefix = prefix
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)
        if self.methods is not None and not self.methods:
            raise ValueError(f"route {path!r} needs at least one method (or methods=None for all)")
        self.error_format: ErrorFormat | None = error_format or getattr(endpoint, "error_format", None)
        self.resources: tuple[Resource, ...] = tuple(
            getattr(endpoint, "resources", ()) if resources is None else resources
        )

    def allows(self, method: str) -> bool:
        methods = self.methods
        return methods is None or method in methods or (method == "HEAD" and "GET" in methods)

    def matches(self, path: str) -> bool:
        """For a prefix route: `path` is its path or under it."""
        return path == self.path or path.startswith(self.path.rstrip("/") + "/")

    def __repr__(self) -> str:
        methods = "all" if self.methods is None else sorted(self.methods)
        return f"Route({self.path!r}, methods={methods}{', prefix=True' if self.prefix else ''})"


class Mount:
    """A sub-app for every path under `prefix`, matched on a `/` boundary.

    `/api` matches `/api` and `/api/x`, never `/apix`. The sub-app's scope keeps
    the full `path` and `raw_path` and gets `root_path` extended by the prefix
    (the ASGI spec's rule, which Starlette sub-apps rely on). By default the
    sub-app receives no lifespan events; with `lifespan=True` the host runs
    the sub-app's lifespan as part of its own (after its resources, in mount
    order; stopped before them, in reverse): see docs/mounts.md. `error_format`
    is how the host answers for the mount when it refuses a request itself (503
    while loading).
    """

    def __init__(
        self, prefix: str, app: ASGIApp, *, lifespan: bool = False, error_format: ErrorFormat | None = None
    ) -> None:
        prefix = prefix.rstrip("/")
        if not prefix.startswith("/"):
            raise ValueError(f"mount prefix {prefix!r} must start with '/' and not be the root")
        self.prefix = prefix
        self.app = app
        self.lifespan = lifespan
        self.error_format = error_format

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def child_scope(self, scope: Scope, path: str) -> Scope:
        root_path: str = scope.get("root_path", "")
        child = dict(scope)
        # `path` here is relative to the parent's root_path; give the child the
        # full path so `path` always starts with its `root_path`, whichever way
        # the server filled them in.
        child["path"] = root_path + path
        child["root_path"] = root_path + self.prefix
        return child

    def __repr__(self) -> str:
        return f"Mount({self.prefix!r}, {self.app!r})"


@runtime_checkable
class Adapter(Protocol):
    """A protocol over a model (the classifier's /predict, KServe v2, OpenAI's routes): its routes.

    The routes' endpoints carry the resources they need (a startup check, a batcher) and
    the protocol's error format. `Host(routes=[...])` takes an adapter as it takes a route.
    """

    def routes(self) -> list[Route | Mount]: ...


def expand_routes(items: Iterable[Route | Mount | Adapter]) -> list[Route | Mount]:
    """Routes and mounts as given, an adapter's routes in its place."""
    expanded: list[Route | Mount] = []
    for item in items:
        if isinstance(item, Route | Mount):
            expanded.append(item)
        elif isinstance(item, Adapter):
            expanded.extend(item.routes())
        else:
            raise TypeError(f"routes take Route, Mount or an adapter with routes(), got {item!r}")
    return expanded


class Match(NamedTuple):
    """What a request's path and method resolve to: a route, a mount, or an error.

    `label` names what matched, for metrics and logs: the route's path, the mount's
    prefix, or `unmatched`. `path` is the path the router looked up (one trailing
    slash removed when that names a route). `error_format` is how errors of this
    request are answered (None: the host's error JSON).
    """

    path: str
    label: str
    route: Route | None = None
    mount: Mount | None = None
    error: HTTPError | None = None  # 404 or 405 (with `Allow`)
    error_format: ErrorFormat | None = None

    @property
    def endpoint(self) -> Endpoint | None:
        return None if self.route is None else self.route.endpoint


# What serves a resolved request; metrics wrap it (see `Metrics.wrap`).
Dispatch = Callable[[Scope, Receive, Send, Match], Awaitable[int | None]]
"""Answers a matched request; returns the status it answered with (None: nothing was answered)."""


def route_path(scope: Scope) -> str:
    """The path relative to `root_path`, tolerating servers that leave `root_path` out of `path`."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest.startswith("/"):
            return rest or "/"
    return path


class Router:
    """Looks a path up: exact routes first, then prefix routes and mounts, longest prefix first."""

    def __init__(self, routes: Sequence[Route | Mount] = ()) -> None:
        # Exact routes: path -> method -> route ("*": a route for every method). One dict
        # lookup each per request.
        self.paths: dict[str, dict[str, Route]] = {}
        # What an exact route's path and method resolve to, made once: (path, method) -> Match.
        self._matches: dict[tuple[str, str], Match] = {}
        self.prefixed: list[Route | Mount] = []  # longest prefix first
        for item in routes:
            self.add(item)

    @property
    def mounts(self) -> list[Mount]:
        return [item for item in self.prefixed if isinstance(item, Mount)]

    @property
    def routes(self) -> list[Route]:
        """Every route once: exact ones by path, then prefix routes."""
        seen: dict[int, Route] = {}
        for path in sorted(self.paths):
            for route in self.paths[path].values():
                seen.setdefault(id(route), route)
        exact = list(seen.values())
        return exact + [item for item in self.prefixed if isinstance(item, Route)]

    def add(self, item: Route | Mount) -> None:
        if isinstance(item, Mount) or item.prefix:
            key = _prefix(item)
            if any(_prefix(other) == key and _overlap(item, other) for other in self.prefixed):
                raise ValueError(f"two mounts or prefix routes at {key!r}")
            self.prefixed.append(item)
            self.prefixed.sort(key=lambda other: len(_prefix(other)), reverse=True)
            return
        table = self.paths.setdefault(item.path, {})
        methods = sorted(item.methods) if item.methods is not None else ["*"]
        # A route for every method ("*") clashes with any other route of the path.
        taken = sorted(table) if "*" in methods or "*" in table else [m for m in methods if m in table]
        if taken:
            clash = next((m for m in taken if m != "*"), methods[0])
            raise ValueError(f"two routes for {clash} {item.path}")
        for method in methods:
            table[method] = item
        self._matches.clear()

    def resolve(self, path: str, method: str) -> Match:
        """The one lookup per request: exact route, else prefix route or mount, else 404; 405 for a
        method the path does not take."""
        known = self._matches.get((path, method))
        if known is not None:
            return known
        table = self.paths.get(path)
        if table is None and len(path) > 1 and path.endswith("/") and path[:-1] in self.paths:
            # One trailing slash names the same route: Litestar, for one, hands a mounted app
            # `/predict/` for `/model/predict`.
            path = path[:-1]
            table = self.paths[path]
        if table is not None:
            route = table.get(method) or table.get("*") or (table.get("GET") if method == "HEAD" else None)
            if route is not None:
                match = Match(path, path, route, error_format=route.error_format)
                # Kept for the methods routes declare (HEAD with GET), not every method a route
                # for all takes: clients choose the method.
                if (method in table or method == "HEAD") and len(self._matches) < _KNOWN_MATCHES:
                    self._matches[path, method] = match
                return match
            routes = list(table.values())
            error = _not_allowed(path, method, routes)
            return Match(path, path, error=error, error_format=routes[0].error_format)
        for item in self.prefixed:
            if not item.matches(path):
                continue
            if isinstance(item, Mount):
                return Match(path, item.prefix, mount=item, error_format=item.error_format)
            if item.allows(method):
                return Match(path, item.path, item, error_format=item.error_format)
            error = _not_allowed(path, method, [item])
            return Match(path, item.path, error=error, error_format=item.error_format)
        return Match(path, UNMATCHED, error=HTTPError(404, f"no route for {path!r}"))

    def mount_for(self, path: str) -> Mount | None:
        for item in self.prefixed:
            if isinstance(item, Mount) and item.matches(path):
                return item
        return None

    @staticmethod
    def allowed(routes: Iterable[Route]) -> list[str]:
        methods: set[str] = set()
        for route in routes:
            methods |= route.methods or set()
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)


# How many (path, method) pairs of exact routes keep their Match.
_KNOWN_MATCHES = 1024


def _prefix(item: Route | Mount) -> str:
    return item.prefix if isinstance(item, Mount) else item.path


def _overlap(item: Route | Mount, other: Route | Mount) -> bool:
    if isinstance(item, Mount) or isinstance(other, Mount) or item.methods is None or other.methods is None:
        return True
    return bool(item.methods & other.methods)


def _not_allowed(path: str, method: str, routes: list[Route]) -> HTTPError:
    allowed = Router.allowed(routes)
    return HTTPError(
        405,
        f"method {method} is not allowed for {path!r}; allowed: {', '.join(allowed)}",
        headers=[("allow", ", ".join(allowed))],
    )
