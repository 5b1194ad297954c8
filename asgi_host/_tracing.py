"""OpenTelemetry spans for a request's model work: its queue wait, its batch's pass, the forward pass.

The host never imports opentelemetry. It traces a request only when the application did (under
`opentelemetry.instrumentation.asgi.OpenTelemetryMiddleware`, with a tracer provider set) and
the request runs inside a span that records: otherwise the check is a dictionary look-up, and,
when opentelemetry is imported (FastAPI imports it), a read of its context, which is empty when
no span is current. The spans are made after the fact, in the request's own task, from times
measured where the work ran (the batch loop, the model's thread), so they are children of the
request's span whichever task or thread did the work:

- `asgi_host.queue_wait`: from the request handing its rows over to its pass starting (waiting
  for the model's thread, or in the batcher's queue);
- `asgi_host.batch_pass` (batched requests): the pass the request's rows shared, with its rows and
  requests as attributes;
- `asgi_host.forward_pass`: the forward function on the model's thread (in a batch, a child of
  the batch's pass).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from ._version import __version__

__all__ = ["PassTimes", "record_pass", "timed_forward", "timing_pass", "traced"]

T = TypeVar("T")


def traced() -> bool:
    """Whether the current request's model work is traced: opentelemetry imported, a span recording."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    # An empty context holds no span: one look-up instead of the span's (FastAPI imports
    # opentelemetry, so an app beside it would pay for the span's on every request).
    context = sys.modules.get("opentelemetry.context")
    if context is not None and not context.get_current():
        return False
    return bool(trace.get_current_span().is_recording())


class PassTimes:
    """When a pass began and ended and when its forward function ran, in ns since the epoch (as
    OpenTelemetry takes them); with its size in rows and requests."""

    __slots__ = ("began", "ended", "forward_began", "forward_ended", "requests", "rows")

    def __init__(self, rows: int = 0, requests: int = 1) -> None:
        self.began = self.ended = time.time_ns()
        self.forward_began: int | None = None
        self.forward_ended: int | None = None
        self.rows = rows
        self.requests = requests

    def timed(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn`, noting when it starts and ends (where it runs: on the model's thread)."""

        def timed(*args: Any) -> T:
            self.forward_began = time.time_ns()
            try:
                return fn(*args)
            finally:
                self.forward_ended = time.time_ns()

        return timed


# The batch pass being run by the batch loop, when one of its requests is traced.
_batch_pass: ContextVar[PassTimes | None] = ContextVar("asgi_host_batch_pass", default=None)


@contextmanager
def timing_pass(times: PassTimes | None) -> Iterator[None]:
    """Around a batch function: a forward function it runs through `timed_forward` is timed."""
    token = _batch_pass.set(times)
    try:
        yield
    finally:
        _batch_pass.reset(token)


def timed_forward(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` timed for the batch pass the batch loop is running, when it is traced; else `fn`."""
    times = _batch_pass.get()
    return fn if times is None else times.timed(fn)


_tracers: list[Any] = []


def record_pass(queued: int, times: PassTimes, rows: int, *, batched: bool) -> None:
    """The spans of one request's pass, as children of the current span (the request's)."""
    from opentelemetry import trace

    if not _tracers:
        _tracers.append(trace.get_tracer("asgi_host", __version__))
    tracer = _tracers[0]
    attributes = {"asgi_host.request.rows": rows}
    began = times.began if batched else times.forward_began or times.began
    tracer.start_span("asgi_host.queue_wait", start_time=queued, attributes=attributes).end(end_time=began)
    parent = None
    if batched:
        batch_attributes = {"asgi_host.batch.rows": times.rows, "asgi_host.batch.requests": times.requests}
        batch = tracer.start_span(
            "asgi_host.batch_pass", start_time=times.began, attributes={**attributes, **batch_attributes}
        )
        parent = trace.set_span_in_context(batch)
    if times.forward_began is not None and times.forward_ended is not None:
        forward = tracer.start_span(
            "asgi_host.forward_pass", context=parent, start_time=times.forward_began, attributes=attributes
        )
        forward.end(end_time=times.forward_ended)
    if batched:
        batch.end(end_time=times.ended)
