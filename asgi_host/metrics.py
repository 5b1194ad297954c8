"""Prometheus metrics at `GET /metrics` (needs the `metrics` extra: prometheus-client).

::

    app = Host(resources=[model], routes=[...], metrics=Metrics())

Exposes, in the Prometheus text format written by prometheus-client:

- `asgi_host_requests_total{route,method,status}`: answered requests; `route` is the
  route's path, the mount's prefix, or `unmatched`, and `method` one of the nine standard
  methods or `other` (so a client cannot create series);
- `asgi_host_request_duration_seconds{route}`: latency histogram;
- `asgi_host_requests_in_flight`, `asgi_host_ready` (1 when /readyz answers 200);
- `asgi_host_batch_rows{batcher}`, `asgi_host_batch_duration_seconds{batcher}`:
  rows and time per forward pass of each micro-batcher;
- `asgi_host_queue_rows{batcher}`: rows waiting;
- `asgi_host_model_load_seconds{model}`: the last load of each `TorchModel`;
- `asgi_host_out_of_memory_passes{model}`: forward passes that ran out of device memory;
  `asgi_host_batch_oom_splits{batcher}`: batches retried in halves because of it;
- `asgi_host_cuda_memory_bytes{kind}`: allocated and reserved CUDA memory, when CUDA is in use.

Each `Metrics` has its own registry, so several hosts (or tests) never clash.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._extras import raise_missing_extra

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        generate_latest,
    )
except ImportError as error:
    raise_missing_extra(
        error, "prometheus_client", package="prometheus-client", extra="metrics", needed_by=__name__
    )

from ._batching import Batcher
from ._http import Request, Response

if TYPE_CHECKING:
    from ._host import Host

__all__ = ["Metrics"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """Collects the host's metrics and serves them at `path`."""

    def __init__(
        self,
        *,
        path: str = "/metrics",
        registry: CollectorRegistry | None = None,
        latency_buckets_s: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"the metrics path must start with '/', got {path!r}")
        self.path = path
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "asgi_host_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "asgi_host_request_duration_seconds",
            "Time from request to the end of the response.",
            ["route"],
            buckets=latency_buckets_s,
            registry=r,
        )
        self.in_flight = Gauge("asgi_host_requests_in_flight", "Requests being served.", registry=r)
        self.ready = Gauge("asgi_host_ready", "1 when /readyz answers 200, else 0.", registry=r)
        self.batch_rows = Histogram(
            "asgi_host_batch_rows", "Rows per forward pass.", ["batcher"], buckets=ROW_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "asgi_host_batch_duration_seconds",
            "Time per batched forward pass.",
            ["batcher"],
            buckets=latency_buckets_s,
            registry=r,
        )
        self.queue_rows = Gauge(
            "asgi_host_queue_rows", "Rows waiting to be batched.", ["batcher"], registry=r
        )
        self.load_seconds = Gauge(
            "asgi_host_model_load_seconds", "Seconds the last model load took.", ["model"], registry=r
        )
        self.out_of_memory = Gauge(
            "asgi_host_out_of_memory_passes",
            "Forward passes that ran out of device memory (answered by splitting or 503).",
            ["model"],
            registry=r,
        )
        self.oom_splits = Gauge(
            "asgi_host_batch_oom_splits",
            "Batches retried in halves after out of memory.",
            ["batcher"],
            registry=r,
        )
        self.cuda_memory = Gauge(
            "asgi_host_cuda_memory_bytes", "CUDA memory of this process.", ["kind"], registry=r
        )

    def attach(self, host: Host) -> None:
        """Wire the gauges to `host` and its resources (the host calls this)."""
        self.in_flight.set_function(lambda: host.in_flight)
        self.ready.set_function(lambda: 1.0 if host.readiness().status == "ready" else 0.0)
        for resource in host.resources:
            if isinstance(resource, Batcher):
                self._watch_batcher(resource)
            if hasattr(resource, "last_load_s"):
                self._watch_load(resource)
        torch: Any = sys.modules.get("torch")  # never import torch just for metrics
        if torch is not None and torch.cuda.is_available():
            self.cuda_memory.labels("allocated").set_function(torch.cuda.memory_allocated)
            self.cuda_memory.labels("reserved").set_function(torch.cuda.memory_reserved)

    def _watch_load(self, model: Any) -> None:
        def last_load_s() -> float:
            seconds: float | None = model.last_load_s
            return seconds or 0.0

        self.load_seconds.labels(model.name).set_function(last_load_s)
        if hasattr(model, "out_of_memory"):
            self.out_of_memory.labels(model.name).set_function(lambda: model.out_of_memory)

    def _watch_batcher(self, batcher: Batcher[Any, Any]) -> None:
        rows = self.batch_rows.labels(batcher.name)
        seconds = self.batch_seconds.labels(batcher.name)

        def observe(batch_rows: int, batch_seconds: float) -> None:
            rows.observe(batch_rows)
            seconds.observe(batch_seconds)

        batcher.observers.append(observe)
        self.queue_rows.labels(batcher.name).set_function(lambda: batcher.queued_rows)
        self.oom_splits.labels(batcher.name).set_function(lambda: batcher.oom_splits)

    def observe(self, route: str, method: str, status: int | None, seconds: float) -> None:
        # The client chooses the method: invented ones share one label, so series stay bounded.
        method = method if method in STANDARD_METHODS else "other"
        self.requests.labels(route, method, "disconnected" if status is None else str(status)).inc()
        self.latency.labels(route).observe(seconds)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
