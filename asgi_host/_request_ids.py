"""Request ids and W3C trace context: `x-request-id` on every response and every log line of a request.

Every HTTP request gets an id: the client's `x-request-id` when it is sane (1 to 128 characters,
each visible ASCII, `!` to `~`: no space, no control character), else one made here (16 random hex
digits per process, a dash, then a counter in hex: unique within the process, not guessable across
processes, no system call per request). The host answers it in `x-request-id` on every response:
routes, probes, errors, streams and mounts. A W3C `traceparent` header, parsed strictly (version
`00`, lowercase hex, trace and parent ids not all zeros; anything else is ignored), gives the
request's trace id.

Both live in a context variable of the request's task, which the tasks it starts and its passes on
the model's thread inherit: `RequestContextFilter` puts them on every log record (`request_id`,
`trace_id`), the access log reads them. A host mounted in another host keeps the outer host's id.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Protocol

from ._types import Message, Scope, Send

__all__ = [
    "REQUEST_ID_HEADER",
    "RequestContextFilter",
    "begin_request_id",
    "current_context",
    "current_request_id",
    "current_trace_id",
    "parse_traceparent",
    "request_ids",
    "stamp_request_id",
    "with_request_id",
]

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
_sane = re.compile(rb"[!-~]{1,%d}" % MAX_REQUEST_ID).fullmatch
_traceparent = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}").fullmatch
_ZERO_TRACE, _ZERO_PARENT = b"0" * 32, b"0" * 16

# In the scope (so a mounted host finds its parent's) and in the context: (request id, trace id).
SCOPE_KEY = "asgi_host.request_id"
RequestContext = tuple[bytes, str | None]
_current: ContextVar[RequestContext | None] = ContextVar("asgi_host_request", default=None)

_prefix = b""
_blocks = itertools.count(0)  # ids are made a block at a time: the block's number
_ids: Iterator[bytes] = iter(())
_BLOCK = 1024


def _new_process() -> None:
    """A fresh prefix and counter: at import, and in a child after `fork` (workers)."""
    global _prefix, _blocks, _ids
    _prefix = secrets.token_hex(8).encode() + b"-"
    _blocks = itertools.count(0)
    _ids = iter(())


def _new_id() -> bytes:
    """The next id of this process: its prefix and the counter in hex (1, 2, ...).

    Formatted a block of 1,024 at a time: formatting one per request cost more, between a
    request's model passes, than the rest of its id and trace context together.
    """
    global _ids
    made = next(_ids, None)
    if made is None:
        # Each block has its own number, so threads that refill at once never make the same ids.
        start = next(_blocks) * _BLOCK + 1
        _ids = iter([b"%s%x" % (_prefix, n) for n in range(start, start + _BLOCK)])
        made = next(_ids)
    return made


_new_process()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process)


def parse_traceparent(value: bytes) -> str | None:
    """The trace id of a W3C `traceparent` value, or None if it is not a valid version-00 one."""
    match = _traceparent(value)
    if match is None or match[1] == _ZERO_TRACE or match[2] == _ZERO_PARENT:
        return None
    return match[1].decode()


def begin_request_id(scope: Scope) -> None:
    """Give the request its id (and trace id), in the scope and in the task's context."""
    context: RequestContext | None = scope.get(SCOPE_KEY)
    if context is None:
        headers = scope.get("headers", ())
        if type(headers) is not list:  # any iterable, as ASGI allows: kept, for the handler to read
            headers = scope["headers"] = list(headers)
        given = parent = None
        for name, value in headers:
            if name == b"x-request-id":
                given = value
            elif name == b"traceparent":
                parent = value
        context = (
            bytes(given) if given is not None and _sane(given) else _new_id(),
            None if parent is None else parse_traceparent(parent),
        )
        scope[SCOPE_KEY] = context
    _current.set(context)


class _Answer(Protocol):
    headers: list[tuple[bytes, bytes]]


def stamp_request_id(response: _Answer, scope: Scope) -> None:
    """Add `x-request-id` to a response the host sends."""
    response.headers.append((REQUEST_ID_HEADER, scope[SCOPE_KEY][0]))


def with_request_id(send: Send, scope: Scope, statuses: list[int] | None = None) -> Send:
    """`send` for a mount: its response gets `x-request-id` unless it has one (a mounted host's);
    the status it answers with is appended to `statuses`."""
    header = (REQUEST_ID_HEADER, scope[SCOPE_KEY][0])

    async def stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            if statuses is not None:
                statuses.append(message["status"])
            headers = list(message.get("headers", ()))
            if all(bytes(name).lower() != REQUEST_ID_HEADER for name, _ in headers):
                message = {**message, "headers": [*headers, header]}
        await send(message)

    return stamped


def current_context() -> RequestContext | None:
    """The current request's (id, trace id), as kept: for a batch loop's log lines (`request_ids`)."""
    return _current.get()


def request_ids(contexts: Iterable[RequestContext | None]) -> str:
    """`request_id=a, b, c`: the ids of the requests a line of the batch loop is about."""
    return "request_id=" + ", ".join(c[0].decode("ascii") if c is not None else "-" for c in contexts)


def current_request_id() -> str | None:
    """The id of the request being served (in its task, the tasks it started and its passes), or None."""
    context = _current.get()
    return None if context is None else context[0].decode("ascii")


def current_trace_id() -> str | None:
    """The current request's trace id: from its `traceparent`, else from the OpenTelemetry span that
    is current (when opentelemetry is in use), else None."""
    context = _current.get()
    if context is not None and context[1] is not None:
        return context[1]
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


class RequestContextFilter(logging.Filter):
    """Adds `request_id` and `trace_id` to every record it sees ("-" outside a request, or without
    a trace), for a format such as `"%(levelname)s %(name)s [%(request_id)s] %(message)s"`.

    The host's own stderr handler has one. With logging configured yourself, add it to your
    handlers (`handler.addFilter(RequestContextFilter())`): a handler's filters see the records of
    every logger, where a logger's own filters would not see its children's.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
        record.trace_id = current_trace_id() or "-"
        return True
