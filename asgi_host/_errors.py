"""One root exception, and one subclass per thing a user has to act on."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AsgiHostError",
    "ClientDisconnect",
    "HTTPError",
    "LifespanError",
    "LifespanProtocolError",
    "ModelLoadError",
    "OutOfMemory",
    "ShutdownError",
    "StartupError",
]

# The `type` field of the error JSON for each status the host produces itself.
ERROR_TYPES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
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
