"""The admin route: `POST /admin/models/{name}/reload`, behind a bearer token.

The host adds it only when it has an admin token (`HostConfig.admin_token`). It is a prefix route,
not exact routes: every path under the prefix is authenticated first, so a client without the token
learns nothing, not even which models exist (401/403 before 404).
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Any

import msgspec

from ._errors import HTTPError, ReloadError
from ._http import Request, Response
from ._reload import Reloadable, Reloader
from ._routing import Route, route_path

__all__ = ["ADMIN_PREFIX", "MIN_TOKEN_LENGTH", "AdminEndpoint", "admin_route", "authenticate", "confine"]

ADMIN_PREFIX = "/admin/models"
MIN_TOKEN_LENGTH = 16
MAX_ADMIN_BODY_BYTES = 64 * 1024


class _ReloadBody(msgspec.Struct, forbid_unknown_fields=True):
    weights: str | None = None


_body_decoder = msgspec.json.Decoder(_ReloadBody)


def admin_route(reloader: Reloader, token: str) -> Route:
    """The prefix route the host adds for `token` (checked: a string of `MIN_TOKEN_LENGTH` or more)."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"admin_token must be a string of at least {MIN_TOKEN_LENGTH} characters")
    return Route(ADMIN_PREFIX, AdminEndpoint(reloader, token), methods=None, prefix=True)


class AdminEndpoint:
    """Every request under `ADMIN_PREFIX`: authenticated, then `POST <prefix>/<model>/reload`."""

    def __init__(self, reloader: Reloader, token: str) -> None:
        self._reloader = reloader
        self._token = token.encode()

    def __repr__(self) -> str:
        return "AdminEndpoint(token=<hidden>)"

    async def __call__(self, request: Request) -> Response:
        request.max_body_bytes = MAX_ADMIN_BODY_BYTES
        raw_path = request.scope.get("raw_path")
        if raw_path is not None and b"%" in raw_path:
            # Routing matches the decoded path: `/%61dmin/...` would reach here past a proxy that
            # blocks `/admin` by the raw path. The admin routes answer an unencoded path only.
            raise HTTPError(404, f"no route for {request.path!r}; the admin routes take an unencoded path")
        self._authenticate(request)
        path = route_path(request.scope)
        parts = path.removeprefix(ADMIN_PREFIX).strip("/").split("/")
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
        except RecursionError:
            raise HTTPError(400, "malformed JSON body: nested too deeply") from None
        kwargs = {} if options.weights is None else confine(options.weights, resource)
        try:
            result = await self._reloader.reload(name, kwargs)
        except ReloadError as exc:
            raise HTTPError(exc.status, str(exc), type="conflict" if exc.status == 409 else None) from None
        return Response.json(result)

    def _authenticate(self, request: Request) -> None:
        authenticate(request, self._token)


def authenticate(request: Request, token: bytes) -> None:
    """401 without `Authorization: Bearer <token>`, 403 with another token: the admin routes' check,
    and the model repository's (`asgi_host.kserve.ModelRepository`)."""
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
    if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, token):
        raise HTTPError(403, "the admin token is wrong", type="forbidden")


def confine(weights: str, resource: Reloadable) -> dict[str, Any]:
    """The reload's options for `weights`: the path (relative ones under the resource's weights
    directory) and `within`, that directory, which the file *opened* must be in.

    The path string is only checked as text (`..` folded): the load opens the file once and checks
    the real path of what it opened (`WeightsFile`), so a symlink or a rename swapped in meanwhile
    cannot point the load elsewhere. Outside, either way, is 403.
    """
    root_of = getattr(resource, "reload_root", None)
    root: Path | None = root_of() if callable(root_of) else None
    if root is None:
        raise HTTPError(403, f"{resource.name!r} has no weights directory: a weights path cannot be given")
    path = Path(os.path.normpath(root / weights))  # `..` folded, nothing read from the disk
    if "\x00" in weights or not path.is_relative_to(root):
        raise HTTPError(
            403, f"the weights path is outside the model's weights directory ({root}); put the file there"
        )
    return {"weights": path, "within": root}
