"""`ModelRepository`: Triton's model repository extension over a `ModelPool`, behind the admin token.

`POST /v2/repository/index` lists the pool's models with their state, `POST
/v2/repository/models/{name}/load` makes one resident (evicting idle models for room), `POST
/v2/repository/models/{name}/unload` releases one once its passes in flight end. As Triton's
clients (`tritonclient.http`'s `get_model_repository_index`, `load_model`, `unload_model`) expect,
errors are the protocol's `{"error": "..."}`. The routes exist only with an admin token and, as the
reload route, every path under the prefix is authenticated first: 401 without the token, 403 with
another, before even a 404 names a model.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._admin import MIN_TOKEN_LENGTH, authenticate
from .._errors import HTTPError
from .._http import Request, Response
from .._pool import ModelPool
from .._routing import Mount, Route, route_path
from ._routes import v2_error_response

__all__ = ["REPOSITORY_PREFIX", "TRITON_STATES", "ModelRepository"]

REPOSITORY_PREFIX = "/v2/repository"
MAX_BODY_BYTES = 64 * 1024
# The pool's states as Triton names them (`UNAVAILABLE`: not loaded, with the reason when it failed).
TRITON_STATES = {
    "unloaded": "UNAVAILABLE",
    "loading": "LOADING",
    "ready": "READY",
    "unloading": "UNLOADING",
    "failed": "UNAVAILABLE",
}


class _IndexBody(msgspec.Struct):
    ready: bool = False  # only the models that are ready


class _LoadBody(msgspec.Struct):
    parameters: dict[str, Any] | None = None


_index_decoder = msgspec.json.Decoder(_IndexBody)
_load_decoder = msgspec.json.Decoder(_LoadBody)


class ModelRepository:
    """Triton's model repository extension for `pool` (an adapter: `Host(routes=[..., repository])`).

    ::

        app = Host(resources=[pool], routes=[KServe(*models), ModelRepository(pool, admin_token=token)])

    With `admin_token=None` it has no routes (`/v2/repository/...` is the protocol's 404). A load
    answers once the model is resident (503 `PoolFull` when every resident model is busy, 507
    `ModelTooLarge`, 503 with the reason when the load fails); an unload once it is released. A
    load's `config` and `file:` parameters (Triton's overrides) are refused with 400; `unload`'s
    `unload_dependents` has nothing to act on (no ensembles) and is accepted.
    """

    error_format = staticmethod(v2_error_response)

    def __init__(self, pool: ModelPool, *, admin_token: str | None) -> None:
        if admin_token is not None and len(str(admin_token)) < MIN_TOKEN_LENGTH:
            raise ValueError(f"admin_token must be a string of at least {MIN_TOKEN_LENGTH} characters")
        self.pool = pool
        self._token = None if admin_token is None else admin_token.encode()

    def __repr__(self) -> str:
        return f"ModelRepository({self.pool.name!r}, admin_token={'<hidden>' if self._token else None})"

    def routes(self) -> list[Route | Mount]:
        if self._token is None:
            return []
        return [Route(REPOSITORY_PREFIX, self, methods=None, prefix=True, error_format=v2_error_response)]

    async def __call__(self, request: Request) -> Response:
        request.max_body_bytes = MAX_BODY_BYTES
        assert self._token is not None
        authenticate(request, self._token)
        path = route_path(request.scope)
        parts = path.removeprefix(REPOSITORY_PREFIX).strip("/").split("/")
        if parts == ["index"]:
            action = "index"
        elif len(parts) == 3 and parts[0] == "models" and parts[2] in ("load", "unload") and parts[1]:
            action = parts[2]
            if parts[1] not in self.pool.entries:
                raise HTTPError(404, f"Request for unknown model: '{parts[1]}' is not found")
        else:
            raise HTTPError(
                404,
                f"no route for {path!r} in the model repository extension; POST "
                f"{REPOSITORY_PREFIX}/index or {REPOSITORY_PREFIX}/models/<model>/load|unload",
            )
        if request.method != "POST":
            raise HTTPError(405, f"{path!r} takes POST", headers=[("allow", "POST")])
        if self.pool.closing:
            raise HTTPError(503, "the model pool is not serving (starting or shutting down)")
        body = await request.body()
        if action == "index":
            return self._index(_decode(_index_decoder, body, _IndexBody()))
        name = parts[1]
        if action == "load":
            parameters = _decode(_load_decoder, body, _LoadBody()).parameters or {}
            overrides = sorted(key for key in parameters if key == "config" or key.startswith("file:"))
            if overrides:
                raise HTTPError(
                    400,
                    f"model {name!r}: loading with {overrides} is not supported; the pool loads each "
                    "model as it was configured",
                )
            await self.pool.load(name)
        else:
            _decode(_load_decoder, body, _LoadBody())
            await self.pool.unload(name)
        return Response(b"", media_type="application/json")

    def _index(self, body: _IndexBody) -> Response:
        entries: list[dict[str, Any]] = []
        for name, detail in self.pool.models().items():
            state = detail["state"]
            if body.ready and state != "ready":
                continue
            entry: dict[str, Any] = {"name": name}
            if detail["loads"] or state != "unloaded":  # Triton lists a model never loaded by name only
                entry["state"] = TRITON_STATES[state]
                reason = detail["reason"] or ("unloaded" if state == "unloaded" else "")
                entry["reason"] = reason
            entries.append(entry)
        return Response.json(entries)


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes, empty: Any) -> Any:
    if not body.strip():
        return empty
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise HTTPError(400, f"invalid request body: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise HTTPError(400, f"malformed JSON body: {exc}") from None
