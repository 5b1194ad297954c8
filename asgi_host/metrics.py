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
- `asgi_host_cuda_memory_bytes{kind}`: allocated and reserved CUDA memory, when CUDA is in use;
- `asgi_host_model_version_info{model,version}`: 1 for the version each model serves;
  `asgi_host_model_reloads_total{model,outcome}`: reloads, `ok` or `failed`;
- for each `ModelPool` (the series it describes itself, `metric_families()`):
  `asgi_host_pool_budget_bytes{pool}`, `asgi_host_pool_used_bytes{pool}`, and per model
  `asgi_host_pool_model_state{pool,model,state}` (1 for its state), `..._bytes`, `..._in_flight`,
  `..._load_seconds`, `..._loads_total`, `..._evictions_total`, `..._unloads_total`,
  `..._load_failures_total`;
- for each `Generator` (asgi_host.generation), with vLLM's names, which dashboards expect
  (`model_name` is the generator's name): `vllm:time_to_first_token_seconds`,
  `vllm:inter_token_latency_seconds`, `vllm:e2e_request_latency_seconds`,
  `vllm:request_queue_time_seconds` (histograms), `vllm:prompt_tokens_total`,
  `vllm:generation_tokens_total`, `vllm:request_success_total{finished_reason}`,
  `vllm:num_requests_running`, `vllm:num_requests_waiting`, and
  `asgi_host_generations_cancelled_total` (clients that left before the end).

Each `Metrics` has its own registry, so several hosts (or tests) never clash.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

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
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import Collector
    from prometheus_client.utils import floatToGoString
except ImportError as error:
    raise_missing_extra(
        error, "prometheus_client", package="prometheus-client", extra="metrics", needed_by=__name__
    )

from ._batching import Batcher
from ._describe import SchemaOf, probe_operation
from ._device import cuda_memory
from ._http import Request, Response
from ._routing import Dispatch, Match
from ._types import Receive, Scope, Send
from ._view import HostView

__all__ = ["Metrics"]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def _cuda_bytes(key: str) -> float:
    return float((cuda_memory() or {}).get(key, 0))


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
        latency_buckets_s = sorted({float(bound) for bound in latency_buckets_s})  # +Inf once, last
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = _RequestSeries(latency_buckets_s)  # recorded without a lock, read at each scrape
        r.register(self.requests)
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
        self.model_versions = _ModelVersions()  # version info and reload counts, read at each scrape
        r.register(self.model_versions)
        self._generation: _GenerationMetrics | None = None  # made for the first Generator

    def attach(self, host: HostView) -> None:
        """Wire the gauges to `host` and its resources (the host calls this)."""
        self.in_flight.set_function(lambda: host.in_flight)
        self.ready.set_function(lambda: 1.0 if host.readiness().status == "ready" else 0.0)
        for resource in host.resources:
            if isinstance(resource, Batcher):
                self._watch_batcher(resource)
            if hasattr(resource, "last_load_s"):
                self._watch_load(resource)
            if hasattr(resource, "generated_tokens") and hasattr(resource, "observers"):
                self._watch_generator(resource)
            if callable(getattr(resource, "metric_families", None)):
                self.registry.register(_Described(resource))
        if cuda_memory() is not None:  # torch imported (never just for metrics) and CUDA there
            for kind in ("allocated", "reserved"):
                self.cuda_memory.labels(kind).set_function(partial(_cuda_bytes, f"{kind}_bytes"))

    def _watch_load(self, model: Any) -> None:
        def last_load_s() -> float:
            seconds: float | None = model.last_load_s
            return seconds or 0.0

        self.load_seconds.labels(model.name).set_function(last_load_s)
        if hasattr(model, "out_of_memory"):
            self.out_of_memory.labels(model.name).set_function(lambda: model.out_of_memory)
        if hasattr(model, "reload_failures"):
            self.model_versions.models.append(model)

    def _watch_batcher(self, batcher: Batcher[Any, Any]) -> None:
        rows = self.batch_rows.labels(batcher.name)
        seconds = self.batch_seconds.labels(batcher.name)

        def observe(batch_rows: int, batch_seconds: float) -> None:
            rows.observe(batch_rows)
            seconds.observe(batch_seconds)

        batcher.observers.append(observe)
        self.queue_rows.labels(batcher.name).set_function(lambda: batcher.queued_rows)
        self.oom_splits.labels(batcher.name).set_function(lambda: batcher.oom_splits)

    def _watch_generator(self, generator: Any) -> None:
        """vLLM's metrics for a `Generator` (duck-typed: this module never imports torch)."""
        if self._generation is None:
            self._generation = _GenerationMetrics(self.registry)
        self._generation.watch(generator)

    def wrap(self, dispatch: Dispatch) -> Dispatch:
        """`dispatch`, measured: count each request by route, method and status, and time it.

        The host calls this once; requests to the probes and to `/metrics` are not measured.
        """

        async def measured(scope: Scope, receive: Receive, send: Send, match: Match) -> int | None:
            status: int | None = None  # the dispatch returns the status it answered (None: nothing)
            started = time.perf_counter()
            try:
                status = await dispatch(scope, receive, send, match)
            finally:
                self.observe(match.label, scope["method"], status, time.perf_counter() - started)
            return status

        return measured

    def observe(self, route: str, method: str, status: int | None, seconds: float) -> None:
        # The client chooses the method: invented ones share one label, so series stay bounded.
        self.requests.observe(route, method if method in STANDARD_METHODS else "other", status, seconds)

    @property
    def endpoint(self) -> _MetricsEndpoint:
        """`GET path`: the metrics in the Prometheus text format."""
        return _MetricsEndpoint(self.registry)


class _MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi_operation(self, method: str, schema: SchemaOf) -> dict[str, Any]:
        return probe_operation(
            "Prometheus metrics (text exposition format).",
            {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )


class _RequestSeries(Collector):
    """`asgi_host_requests_total{route,method,status}` and `asgi_host_request_duration_seconds{route}`,
    kept in plain lists and read at each scrape: recording a request takes no lock and looks up no
    label (prometheus-client's `inc()` and `observe()` take a lock each, 1.1 us together). Every
    request is recorded on the event loop's thread; a scrape from another thread may see a request in
    some of the numbers and not yet in the others (each number is whole)."""

    def __init__(self, buckets_s: Sequence[float]) -> None:
        self.bounds = [*sorted({float(b) for b in buckets_s} - {float("inf")}), float("inf")]
        self.counts: dict[tuple[str, str, int | None], list[Any]] = {}  # key -> [count, its route's]
        self.latency: dict[str, list[Any]] = {}  # route -> [count per bucket (not cumulative), sum]

    def observe(self, route: str, method: str, status: int | None, seconds: float) -> None:
        cell = self.counts.get((route, method, status))
        if cell is None:
            histogram = self.latency.setdefault(route, [[0] * len(self.bounds), 0.0])
            cell = self.counts[route, method, status] = [0, histogram]
        cell[0] += 1
        histogram = cell[1]
        histogram[0][bisect_left(self.bounds, seconds)] += 1
        histogram[1] += seconds

    def describe(self) -> list[Metric]:
        return []  # unchecked against other collectors' names, as a custom collector may be

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "asgi_host_requests", "HTTP requests answered.", labels=["route", "method", "status"]
        )
        for (route, method, status), (count, _) in list(self.counts.items()):
            requests.add_metric([route, method, "disconnected" if status is None else str(status)], count)
        yield requests
        about = "Time from request to the end of the response."
        latency = HistogramMetricFamily("asgi_host_request_duration_seconds", about, labels=["route"])
        for route, (counts, total) in list(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(self.bounds, list(counts), strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            latency.add_metric([route], buckets, total)
        yield latency


class _ModelVersions(Collector):
    """`asgi_host_model_version_info{model,version}` (1 for the version serving) and
    `asgi_host_model_reloads_total{model,outcome}` (`ok`, `failed`), read from the models at each
    scrape, so a reload's new version replaces the old series instead of adding one."""

    def __init__(self) -> None:
        self.models: list[Any] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "asgi_host_model_version_info",
            "The version each model serves (value 1).",
            labels=["model", "version"],
        )
        reloads = CounterMetricFamily(
            "asgi_host_model_reloads", "Model reloads, by outcome.", labels=["model", "outcome"]
        )
        for model in self.models:
            if model.version is not None:
                info.add_metric([model.name, model.version], 1.0)
            reloads.add_metric([model.name, "ok"], model.reloads)
            reloads.add_metric([model.name, "failed"], model.reload_failures)
        yield info
        yield reloads


class _Described(Collector):
    """The series a resource describes itself (a `ModelPool`), read at each scrape: its
    `metric_families()` gives (name, "gauge" or "counter", help, label names, [(values, value)])."""

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for name, kind, documentation, labels, samples in self.resource.metric_families():
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                name, documentation, labels=list(labels)
            )
            for values, value in samples:
                family.add_metric(list(values), value)
            yield family


# vLLM's buckets, so that its dashboards read these histograms as they read vLLM's.
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)


class _GeneratorCounters(Collector):
    """Counters a `Generator` keeps itself, read at each scrape: the generations cancelled because
    their client left, and vLLM's prefix-cache counters (prompt tokens looked up, and found)."""

    COUNTERS = (
        (
            "asgi_host_generations_cancelled",
            "Generations whose client left before the end (stopped then).",
            "cancelled",
        ),
        (
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            "prefix_queried_tokens",
        ),
        (
            "vllm:prefix_cache_hits",
            "Prompt tokens found in the prefix cache (not prefilled again).",
            "prefix_hit_tokens",
        ),
    )

    def __init__(self) -> None:
        self.generators: list[Any] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for name, documentation, attribute in self.COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=["model_name"])
            for generator in self.generators:
                family.add_metric([generator.name], getattr(generator, attribute))
            yield family


class _GenerationMetrics:
    """The generation metrics of every `Generator` of a host, by `model_name`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r, label = registry, ["model_name"]
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            label,
            buckets=TTFT_BUCKETS_S,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between tokens.",
            label,
            buckets=ITL_BUCKETS_S,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Time from request to its last token.",
            label,
            buckets=E2E_BUCKETS_S,
            registry=r,
        )
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Time waiting for a sequence slot.",
            label,
            buckets=TTFT_BUCKETS_S,
            registry=r,
        )
        self.cancel = Histogram(
            "asgi_host_generation_cancel_seconds",
            "From the host seeing the client leave to the generation's cache slot being free.",
            label,
            buckets=ITL_BUCKETS_S,
            registry=r,
        )
        self.prompt = Counter("vllm:prompt_tokens", "Prompt tokens prefilled.", label, registry=r)
        self.generated = Counter("vllm:generation_tokens", "Tokens generated.", label, registry=r)
        self.success = Counter(
            "vllm:request_success", "Generations finished.", [*label, "finished_reason"], registry=r
        )
        self.running = Gauge("vllm:num_requests_running", "Sequences holding a slot.", label, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for a slot.", label, registry=r)
        self.counters = _GeneratorCounters()
        r.register(self.counters)

    def watch(self, generator: Any) -> None:
        name = generator.name
        ttft, itl, e2e, queue, cancel = (
            m.labels(name) for m in (self.ttft, self.itl, self.e2e, self.queue, self.cancel)
        )
        prompt, generated = self.prompt.labels(name), self.generated.labels(name)
        self.running.labels(name).set_function(lambda: generator.active)
        self.waiting.labels(name).set_function(lambda: generator.waiting)
        self.counters.generators.append(generator)

        def observe(event: Any) -> None:
            kind = event.kind
            if kind == "token":
                itl.observe(event.seconds)
                generated.inc()
            elif kind == "first_token":
                ttft.observe(event.seconds)
                generated.inc()
            elif kind == "queued":
                queue.observe(event.seconds)
            elif kind == "cancelled":
                cancel.observe(event.seconds)
            elif kind == "finished":
                e2e.observe(event.seconds)
                prompt.inc(event.prompt_tokens)
                self.success.labels(name, event.reason).inc()

        generator.observers.append(observe)
