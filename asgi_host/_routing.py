"""Exact-path routes and prefix mounts."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import NamedTuple

from ._errors import HTTPError
from ._http import Request, Response
from ._types import ASGIApp, Receive, Scope, Send

__all__ = ["Dispatch", "Endpoint", "Match", "Mount", "Route", "Router", "route_path"]

Endpoint = Callable[[Request], Awaitable[Response]]

UNMATCHED = "unmatched"


class Match(NamedTuple):
    """What a request's path and method resolve to: an endpoint, a mount, or an error.

    `label` names what matched, for metrics and logs: the route's path, the
    mount's prefix, or `unmatched`. `path` is the path the router looked up (one
    trailing slash removed when that names a route).
    """

    path: str
    label: str
    endpoint: Endpoint | None = None
    mount: Mount | None = None
    error: HTTPError | None = None  # 404 or 405 (with `Allow`)


# What serves a resolved request; metrics wrap it (see `Metrics.wrap`).
Dispatch = Callable[[Scope, Receive, Send, Match], Awaitable[None]]


class Route:
    """An exact path answered by `endpoint` for `methods` (HEAD comes with GET).

    `endpoint` is `async def endpoint(request: Request) -> Response`.
    """

    def __init__(self, path: str, endpoint: Endpoint, *, methods: Iterable[str] = ("GET",)) -> None:
        if not path.startswith("/"):
            raise ValueError(f"route path {path!r} must start with '/'")
        if not (
            inspect.iscoroutinefunction(endpoint)
            or inspect.iscoroutinefunction(type(endpoint).__call__)  # objects with an async __call__
        ):
            raise TypeError(f"endpoint for {path!r} must be an async function (async def endpoint(request))")
        self.path = path
        self.endpoint = endpoint
        self.methods = frozenset(m.upper() for m in methods)
        if not self.methods:
            raise ValueError(f"route {path!r} needs at least one method")

    def __repr__(self) -> str:
        return f"Route({self.path!r}, methods={sorted(self.methods)})"


class Mount:
    """A sub-app for every path under `prefix`, matched on a `/` boundary.

    `/api` matches `/api` and `/api/x`, never `/apix`. The sub-app's scope keeps
    the full `path` and `raw_path` and gets `root_path` extended by the prefix
    (the ASGI spec's rule, which Starlette sub-apps rely on). By default the
    sub-app receives no lifespan events; with `lifespan=True` the host runs
    the sub-app's lifespan as part of its own (after its resources, in mount
    order; stopped before them, in reverse): see docs/mounts.md.
    """

    def __init__(self, prefix: str, app: ASGIApp, *, lifespan: bool = False) -> None:
        prefix = prefix.rstrip("/")
        if not prefix.startswith("/"):
            raise ValueError(f"mount prefix {prefix!r} must start with '/' and not be the root")
        self.prefix = prefix
        self.app = app
        self.lifespan = lifespan

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
    """Looks a path up: exact routes first, then mounts, longest prefix first."""

    def __init__(self, routes: Sequence[Route | Mount] = ()) -> None:
        self.paths: dict[str, dict[str, Endpoint]] = {}
        self.mounts: list[Mount] = []
        for item in routes:
            self.add(item)

    def add(self, item: Route | Mount) -> None:
        if isinstance(item, Mount):
            if any(m.prefix == item.prefix for m in self.mounts):
                raise ValueError(f"two mounts at {item.prefix!r}")
            self.mounts.append(item)
            self.mounts.sort(key=lambda m: len(m.prefix), reverse=True)
            return
        table = self.paths.setdefault(item.path, {})
        taken = sorted(item.methods & table.keys())
        if taken:
            raise ValueError(f"two routes for {taken[0]} {item.path}")
        for method in item.methods:
            table[method] = item.endpoint

    def resolve(self, path: str, method: str) -> Match:
        """The one lookup per request: exact route, else mount, else 404; 405 for a wrong method."""
        table = self.paths.get(path)
        if table is None and len(path) > 1 and path.endswith("/") and path[:-1] in self.paths:
            # One trailing slash names the same route: Litestar, for one, hands a mounted app
            # `/predict/` for `/model/predict`.
            path = path[:-1]
            table = self.paths[path]
        if table is not None:
            endpoint = table.get(method) or (table.get("GET") if method == "HEAD" else None)
            if endpoint is not None:
                return Match(path, path, endpoint)
            allowed = self.allowed(table)
            error = HTTPError(
                405,
                f"method {method} is not allowed for {path!r}; allowed: {', '.join(allowed)}",
                headers=[("allow", ", ".join(allowed))],
            )
            return Match(path, path, error=error)
        mount = self.mount_for(path)
        if mount is not None:
            return Match(path, mount.prefix, mount=mount)
        return Match(path, UNMATCHED, error=HTTPError(404, f"no route for {path!r}"))

    def mount_for(self, path: str) -> Mount | None:
        for mount in self.mounts:
            if mount.matches(path):
                return mount
        return None

    @staticmethod
    def allowed(table: dict[str, Endpoint]) -> list[str]:
        methods = set(table)
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)
