"""Swapping a resource's value while the host serves: `host.reload(name)` and its admin route.

A resource that can be replaced in place (a `TorchModel` with new weights) has a `reload` method
(the `Reloadable` protocol). It builds, loads and warms the new version while the old one keeps
serving, and hands back a `Replacement`. The host then swaps the state in one step, with no await
in between, so every request admitted after that point sees the new value, and finally lets the
resource retire the old one (its passes in flight finish on it, then it is released).

How the swap reaches requests. Endpoints look their model up per request (`request.state["model"]`),
and a request's state is a shallow copy made when it begins: by the server (hypercorn, uvicorn and
the test kit copy the lifespan scope's `state` dict into each request scope) or by the host itself
(`Host._request_state` merges `host.state` when the server copies nothing, or copies a state that is
not the host's, as Ray Serve does). Both dicts are updated in place here: the lifespan scope's dict
the server copies from, and `host.state` (which batchers and mounts with a lifespan also read). A
request that copied its state just before the swap still holds the old handle; the old handle
forwards passes asked for after it was retired to its successor, so such a request is answered by
the new version instead of a 503.

Every response of an endpoint that ran a model pass carries `x-model-version`: the handle records
its version in a context variable of the request's task when it runs a pass (a batcher copies the
versions of each batch's pass into the tasks of the requests it served), and the host adds the
header when it sends the response.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import anyio
import msgspec

from ._errors import AsgiHostError, ClientDisconnect, HTTPError
from ._http import Request, Response, error_response, settle_body
from ._lifespan import LifespanPhase
from ._resources import Resource
from ._routing import route_path
from ._types import Receive, Scope, Send


class _Readiness(Protocol):
    @property
    def status(self) -> str: ...


class HostView(Protocol):
    """What the reloads read of the host (an `asgi_host.Host`), without importing it."""

    @property
    def resources(self) -> list[Resource]: ...

    @property
    def phase(self) -> LifespanPhase: ...

    @property
    def state(self) -> Mapping[str, Any]: ...

    def readiness(self) -> _Readiness: ...


__all__ = [
    "ADMIN_PREFIX",
    "MIN_TOKEN_LENGTH",
    "VERSION_HEADER",
    "ReloadError",
    "ReloadInProgress",
    "ReloadResult",
    "Reloadable",
    "Replacement",
]

logger = logging.getLogger("asgi_host.reload")

VERSION_HEADER = "x-model-version"
ADMIN_PREFIX = "/admin/models"
MIN_TOKEN_LENGTH = 16
MAX_ADMIN_BODY_BYTES = 64 * 1024


class ReloadError(AsgiHostError):
    """A reload was refused or failed; what serves is unchanged. `status` is the admin route's answer.

    404: no resource of that name supports reloading; 409: the host is not ready, or a reload of
    that resource is already running; 422: the new version failed to load or warm up.
    """

    def __init__(self, message: str, *, status: int = 422) -> None:
        self.status = status
        super().__init__(message)


class ReloadInProgress(ReloadError):
    """Another reload of the same resource is running (one at a time per resource)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)


@dataclass(frozen=True)
class Replacement:
    """What a resource's `reload` hands the host: the new state value, and how to retire the old.

    `retire` is awaited after the host has swapped `value` into the state; it waits for the old
    value's work in flight and releases it. `version`/`previous` name the new and old versions.
    """

    value: Any
    retire: Callable[[], Awaitable[None]]
    version: str | None = None
    previous: str | None = None


@runtime_checkable
class Reloadable(Protocol):
    """A resource that can be replaced while the host serves (`TorchModel` is one).

    `reload(host, **options)` builds the new value while the current one serves and returns a
    `Replacement`; it raises (anything) when the new value cannot be built, leaving the current one
    serving. The host calls it at most once at a time per resource, only while it is ready.
    """

    name: str

    async def reload(self, host: Any, **options: Any) -> Replacement: ...


class ReloadResult(msgspec.Struct):
    """The answer of a reload: the resource, its new version and the one it replaced.

    `swap_s`: from the call to the swap (the new version built, loaded and warmed up); `seconds`:
    to the end (the old version drained and released too).
    """

    model: str
    version: str | None
    previous: str | None
    seconds: float
    swap_s: float


# ---- x-model-version ----------------------------------------------------------------------------

# The versions of the models whose passes ran for the current request (in its task's context).
_used_versions: ContextVar[list[str] | None] = ContextVar("asgi_host_model_versions", default=None)


def record_version(version: str | None) -> None:
    """Note that a pass of the model at `version` ran for the current task's request."""
    if version is None:
        return
    used = _used_versions.get()
    if used is None:
        _used_versions.set([version])
    elif version not in used:
        used.append(version)


def record_versions(versions: list[str]) -> None:
    for version in versions:
        record_version(version)


@contextmanager
def collecting_versions() -> Iterator[list[str]]:
    """The versions recorded inside the block (for a batcher: those of one batch's pass)."""
    collected: list[str] = []
    token = _used_versions.set(collected)
    try:
        yield collected
    finally:
        _used_versions.reset(token)


def begin_request() -> None:
    """A fresh list for this request: an earlier request served by the same task (the test kit,
    a mount's response the host never stamps) leaves nothing behind, and tasks the handler starts
    append to this one list instead of setting their own."""
    _used_versions.set([])


def stamp_version(response: Response) -> None:
    """Add `x-model-version` to `response` when a model pass ran for this request."""
    used = _used_versions.get()
    if used:
        response.headers.append((VERSION_HEADER.encode(), ", ".join(used).encode("latin-1")))
    _used_versions.set(None)


# ---- the swap -----------------------------------------------------------------------------------


class Reloader:
    """The host's reloads: one at a time per resource, swapped into every state dict requests copy."""

    def __init__(self, host: HostView) -> None:
        self._host = host
        self._running: set[str] = set()
        # The lifespan scope's `state` dict, the one servers copy into each request (None: none).
        self.server_state: MutableMapping[str, Any] | None = None

    def reloadable(self) -> list[Resource]:
        return [r for r in self._host.resources if callable(getattr(r, "reload", None))]

    def find(self, name: str) -> Reloadable:
        for resource in self._host.resources:
            if resource.name == name:
                if not isinstance(resource, Reloadable):
                    raise ReloadError(
                        f"resource {name!r} cannot be reloaded (it has no reload method)", status=404
                    )
                return resource
        names = ", ".join(repr(r.name) for r in self.reloadable()) or "none"
        raise ReloadError(f"no resource named {name!r} to reload; reloadable: {names}", status=404)

    async def reload(self, name: str, options: Mapping[str, Any]) -> ReloadResult:
        resource = self.find(name)
        host = self._host
        ready = host.phase is LifespanPhase.STARTED and host.readiness().status == "ready"
        if not ready:
            raise ReloadError(
                f"cannot reload {name!r}: the host is not ready ({host.readiness().status})", status=409
            )
        if name in self._running:
            raise ReloadInProgress(f"a reload of {name!r} is already running; wait for it to finish")
        self._running.add(name)
        started = time.perf_counter()
        try:
            # Shielded: once begun, a reload runs to its end (the swap and the old version's
            # release), even when the client that asked for it goes away.
            with anyio.CancelScope(shield=True):
                try:
                    replacement = await resource.reload(host, **options)
                except Exception as exc:
                    error = exc if isinstance(exc, ReloadError) else None
                    text = str(exc).strip() or type(exc).__name__
                    if error is None or error.status == 422:
                        logger.error("reloading %r failed; the current version keeps serving: %s", name, text)
                    if error is not None:
                        raise
                    raise ReloadError(
                        f"reloading {name!r} failed; the current version keeps serving: {text}"
                    ) from exc
                self._swap(name, replacement.value)
                swapped = time.perf_counter()
                logger.info(
                    "%r swapped: version %s -> %s; draining the old version",
                    name,
                    replacement.previous,
                    replacement.version,
                )
                await replacement.retire()
        finally:
            self._running.discard(name)
        seconds = time.perf_counter() - started
        logger.info("%r reloaded to version %s in %.3f s", name, replacement.version, seconds)
        swap_s = round(swapped - started, 6)
        return ReloadResult(name, replacement.version, replacement.previous, round(seconds, 6), swap_s)

    def _swap(self, name: str, value: Any) -> None:
        """Put `value` where the old value was, in every dict requests copy their state from.

        No await here: no request can see one dict swapped and the other not.
        """
        items = value.items() if isinstance(value, Mapping) else [(name, value)]
        state = cast(MutableMapping[str, Any], self._host.state)  # the host's own dict
        for key, new in items:
            old = state.get(key)
            state[key] = new
            server = self.server_state
            if server is not None and server is not state and server.get(key) is old:
                server[key] = new


# ---- the admin route ----------------------------------------------------------------------------


class _ReloadBody(msgspec.Struct, forbid_unknown_fields=True):
    weights: str | None = None


_body_decoder = msgspec.json.Decoder(_ReloadBody)


class AdminApp:
    """`POST /admin/models/{name}/reload`, mounted by the host when it has an admin token.

    A mounted app, not exact routes: every path under the prefix is authenticated first, so a
    client without the token learns nothing, not even which models exist (401/403 before 404).
    """

    def __init__(self, reloader: Reloader, token: str, *, body_timeout_s: float | None = 10.0) -> None:
        self._reloader = reloader
        self._token = token.encode()
        self._body_timeout_s = body_timeout_s

    def __repr__(self) -> str:
        return "AdminApp(token=<hidden>)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(
            scope,
            receive,
            scope.get("state", {}),
            max_body_bytes=MAX_ADMIN_BODY_BYTES,
            body_timeout_s=self._body_timeout_s,
        )
        try:
            response = await self._handle(request, route_path(scope))
        except HTTPError as exc:
            response = error_response(exc)
        except ClientDisconnect:
            return  # nobody to answer
        await settle_body(response, request)  # a refusal before the body was read keeps the connection
        await response.send(send, head=scope["method"] == "HEAD")

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise HTTPError(
                401,
                "the admin routes need 'Authorization: Bearer <admin token>'",
                type="unauthorized",
                headers=[("www-authenticate", 'Bearer realm="asgi_host admin"')],
            )
        scheme, _, given = header.partition(" ")
        # Constant time: the comparison takes as long whichever byte differs.
        # The header arrived as latin-1 text: compare its bytes with the token's UTF-8 bytes.
        given_bytes = given.strip().encode("latin-1")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, self._token):
            raise HTTPError(403, "the admin token is wrong", type="forbidden")

    async def _handle(self, request: Request, path: str) -> Response:
        self._authenticate(request)
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[1] != "reload" or not parts[0]:
            raise HTTPError(404, f"no admin route {path!r}; POST {ADMIN_PREFIX}/<model>/reload")
        name = parts[0]
        try:
            resource = self._reloader.find(name)
        except ReloadError as exc:
            raise HTTPError(404, str(exc)) from None
        if request.method != "POST":
            raise HTTPError(405, f"{path!r} takes POST", headers=[("allow", "POST")])
        body = await request.body()
        try:
            options = _body_decoder.decode(body) if body.strip() else _ReloadBody()
        except msgspec.ValidationError as exc:
            raise HTTPError(422, f'the body is {{"weights": "<path>"}} or empty: {exc}') from None
        except msgspec.DecodeError as exc:
            raise HTTPError(400, f"malformed JSON body: {exc}") from None
        kwargs: dict[str, Any] = {}
        if options.weights is not None:
            kwargs["weights"] = confine(options.weights, resource)
        try:
            result = await self._reloader.reload(name, kwargs)
        except ReloadError as exc:
            raise HTTPError(exc.status, str(exc), type="conflict" if exc.status == 409 else None) from None
        return Response.json(result)


def confine(weights: str, resource: Reloadable) -> Path:
    """`weights` resolved (`..` and symlinks), refused with 403 unless under the resource's weights dir."""
    root_of = getattr(resource, "reload_root", None)
    root: Path | None = root_of() if callable(root_of) else None
    if root is None:
        raise HTTPError(403, f"{resource.name!r} has no weights directory: a weights path cannot be given")
    if "\x00" in weights:
        raise HTTPError(403, "the weights path is outside the model's weights directory")
    candidate = Path(weights)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = Path(os.path.realpath(candidate))
    if not resolved.is_relative_to(root):
        raise HTTPError(
            403, f"the weights path is outside the model's weights directory ({root}); put the file there"
        )
    return resolved
