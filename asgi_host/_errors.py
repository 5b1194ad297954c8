"""One root exception, and one subclass per thing a user has to act on.

Every exception the package defines derives from `AsgiHostError`, and every public one is
exported from `asgi_host` (the test kit's, which describe what a driven app did wrong, are
defined beside the driver in `_driver.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AsgiHostError",
    "ClientDisconnect",
    "ConfigError",
    "HTTPError",
    "LifespanError",
    "LifespanProtocolError",
    "ModelLoadError",
    "ModelTooLarge",
    "OpenAIError",
    "OutOfMemory",
    "PoolFull",
    "ReloadError",
    "ReloadInProgress",
    "ReplicaUnhealthy",
    "ShutdownError",
    "StartupError",
    "SubAppLifespanError",
]

# The `type` field of the error JSON for each status the host produces itself.
ERROR_TYPES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    409: "conflict",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class AsgiHostError(Exception):
    """Root of every error asgi_host raises."""


class LifespanError(AsgiHostError):
    """Something went wrong running the lifespan protocol."""


class StartupError(LifespanError):
    """Startup failed; the message says which resource and why.

    The host sends `lifespan.startup.failed` with this message before raising it,
    so every server refuses to serve (an exception alone reads as "lifespan
    unsupported" to most servers, which then serve without the model).
    """


class ShutdownError(LifespanError):
    """One or more resources failed to shut down; every failure is in the message."""


class LifespanProtocolError(LifespanError):
    """The server sent a lifespan message the current state does not allow."""

    def __init__(self, state: str, message_type: object) -> None:
        self.state = state
        self.message_type = message_type
        super().__init__(
            f"unexpected lifespan message {message_type!r} in state {state!r}: the server"
            " must send 'lifespan.startup' once, then 'lifespan.shutdown' once"
        )


class ClientDisconnect(AsgiHostError):
    """The client went away before the request body was read in full."""


class HTTPError(AsgiHostError):
    """An error answered with the host's error JSON.

    `{"error": {"status": 422, "type": "validation_error", "message": "...", "path": "$.inputs"}}`

    Raise it from an endpoint to answer with that status; `type` defaults to a
    name for the status, `path` is set for validation errors, and `headers` are
    added to the response (for example `Allow` on a 405 or `Retry-After` on a 503).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        path: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HTTPError is for 4xx and 5xx statuses, got {status}")
        self.status = status
        self.type = type or ERROR_TYPES.get(status, "error")
        self.message = message
        self.path = path
        self.headers = tuple(headers)
        super().__init__(message)


class OutOfMemory(HTTPError):
    """A forward pass ran out of device memory: 503 with `Retry-After`, type `out_of_memory`.

    `ModelHandle.run` raises it for `torch.cuda.OutOfMemoryError` after releasing
    the memory the pass held; a `Batcher` that gets it retries its batch in
    halves, down to single requests, and only a request that does not fit
    alone is answered with it. `rows`, when known, is the size of that request.
    """

    def __init__(self, detail: str, *, rows: int | None = None) -> None:
        self.detail = detail
        self.rows = rows
        what = f"a forward pass of {rows} row(s)" if rows is not None else "the forward pass"
        super().__init__(
            503,
            f"out of memory: {what} did not fit on the device ({detail}); retry later, or send fewer rows",
            type="out_of_memory",
            headers=[("retry-after", "1")],
        )

    def for_rows(self, rows: int) -> OutOfMemory:
        """The same error, naming the size of the request that did not fit."""
        return OutOfMemory(self.detail, rows=rows)


class ModelLoadError(AsgiHostError):
    """The model could not be built, loaded or placed; the message says what to change."""


class PoolFull(HTTPError):
    """A `ModelPool` found no room for a model: every resident model had a pass in flight for the
    pool's whole wait. 503 with `Retry-After`, type `pool_full`; `model`, `needed_bytes`,
    `budget_bytes` and `in_use_bytes` say how far it was."""

    def __init__(
        self, model: str, needed_bytes: int, budget_bytes: int, in_use_bytes: int, *, retry_after_s: int = 1
    ) -> None:
        self.model = model
        self.needed_bytes = needed_bytes
        self.budget_bytes = budget_bytes
        self.in_use_bytes = in_use_bytes
        super().__init__(
            503,
            f"no room for model {model!r} ({mib(needed_bytes)}): {mib(in_use_bytes)} of the pool's "
            f"{mib(budget_bytes)} are held by models with passes in flight; retry later",
            type="pool_full",
            headers=[("retry-after", str(retry_after_s))],
        )


class ModelTooLarge(HTTPError, ModelLoadError):
    """A model needs more than a `ModelPool`'s whole budget: its load fails naming both sizes
    (`needed_bytes`, `budget_bytes`). Answered 507 (insufficient storage), type `model_too_large`:
    retrying cannot help until the budget grows."""

    def __init__(self, model: str, needed_bytes: int, budget_bytes: int, *, measured: bool = True) -> None:
        self.model = model
        self.needed_bytes = needed_bytes
        self.budget_bytes = budget_bytes
        what = "measured at its load" if measured else "its weights file"
        super().__init__(
            507,
            f"model {model!r} needs {mib(needed_bytes)} ({needed_bytes} bytes, {what}), more than the "
            f"pool's whole budget of {mib(budget_bytes)} ({budget_bytes} bytes): raise the budget, or "
            "serve it from a pool of its own",
            type="model_too_large",
        )


def mib(size: int) -> str:
    """`size` bytes in MiB, as the pool's messages write it."""
    return f"{size / 2**20:.1f} MiB"


class ConfigError(AsgiHostError):
    """A setting is unknown, of the wrong type, or out of range; the message names it."""


class SubAppLifespanError(LifespanError):
    """A mounted sub-app (`Mount(..., lifespan=True)`) answered `.failed`, or raised once it had begun
    its lifespan. `phase` is `startup` or `shutdown`; `app_message` the app's own `.failed` message."""

    def __init__(self, phase: str, message: str, app_message: str | None = None) -> None:
        self.phase = phase
        self.app_message = app_message
        super().__init__(message)


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


class ReplicaUnhealthy(AsgiHostError):
    """Raised from a Ray Serve replica's `check_health`: Ray marks the replica unhealthy and replaces it."""


class OpenAIError(HTTPError):
    """An error answered in OpenAI's shape by the OpenAI-compatible routes.

    `{"error": {"message": ..., "type": "invalid_request_error", "param": "input", "code": null}}`.
    `param` names the request field at fault, `code` a machine-readable reason
    (`model_not_found`, ...). Raised elsewhere it is an `HTTPError` like any other.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(status, message, type=type or openai_type(status), headers=headers)
        self.param = param
        self.code = code


def openai_type(status: int) -> str:
    """OpenAI's error `type` for a status: `invalid_request_error` below 500, else `server_error`."""
    return "invalid_request_error" if status < 500 else "server_error"
