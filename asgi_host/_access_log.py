"""The access log: one JSON line per HTTP request, `Host(access_log="json")` (`IRIS_ACCESS_LOG=json`).

Like the metrics, it measures the host from outside: `access_logged` wraps the host's handling of
an HTTP request (probes included), reads the status and the body's bytes from what is sent, and
logs one record on the `asgi_host.access` logger at INFO when the request ends, answered or not:

    {"time": 1764672000.123456, "method": "POST", "path": "/predict", "status": 200,
     "duration_s": 0.000412, "bytes": 85, "request_id": "9f2c...-1a", "trace_id": null}

`time` is when the request began (seconds since the epoch); `path` is the decoded path without
the query string (which may carry secrets); `status` is null when nothing was answered (the client
left first); `bytes` counts the response body sent; `trace_id` is the `traceparent`'s (or the
OpenTelemetry span's), else null. With no logging configured the host prints these lines to stderr
as they are, one JSON object each; otherwise they go to your handlers like any record. Off (the
default), nothing of this runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import msgspec

from ._logging import ACCESS_LOGGER, default_logging
from ._request_ids import SCOPE_KEY, current_trace_id
from ._types import Message, Receive, Scope, Send

__all__ = ["AccessRecord", "access_logged"]

logger = logging.getLogger(ACCESS_LOGGER)

HTTPHandler = Callable[[Scope, Receive, Send], Awaitable[None]]


class AccessRecord(msgspec.Struct):
    """One line of the access log."""

    time: float
    method: str
    path: str
    status: int | None
    duration_s: float
    bytes: int
    request_id: str | None
    trace_id: str | None


_encode = msgspec.json.Encoder().encode


def access_logged(handle: HTTPHandler, access_log: str) -> HTTPHandler:
    """`handle` as it is when `access_log` is "off"; with "json", logging a line for each request."""
    if access_log == "off":
        return handle
    if access_log != "json":
        raise ValueError(f"access_log is 'json' or 'off', got {access_log!r}")
    default_logging()  # lines are printed even where no lifespan event comes to set it up

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        status: int | None = None
        sent = 0

        async def recording_send(message: Message) -> None:
            nonlocal status, sent
            kind = message["type"]
            if kind == "http.response.body":
                sent += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = message["status"]
            await send(message)

        began = time.time()
        started = time.perf_counter()
        try:
            await handle(scope, receive, recording_send)
        finally:
            if logger.isEnabledFor(logging.INFO):
                context = scope.get(SCOPE_KEY)
                record = AccessRecord(
                    time=round(began, 6),
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_s=round(time.perf_counter() - started, 6),
                    bytes=sent,
                    request_id=None if context is None else context[0].decode("ascii"),
                    trace_id=current_trace_id(),
                )
                logger.info(_encode(record).decode())

    return logged
