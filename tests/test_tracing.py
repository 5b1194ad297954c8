"""Under OpenTelemetry's ASGI middleware: the host's spans for a request's model work (queue wait,
batch pass, forward pass) are children of the request's span, in its trace."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Literal

import pytest
import torch

pytest.importorskip("opentelemetry.instrumentation.asgi")

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asgi_host import Batching, Host
from asgi_host.model import Classifier, TorchModel
from asgi_host.testing import LifespanDriver
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP
from tests._server import ROOT

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
ROW = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
OURS = ("asgi_host.queue_wait", "asgi_host.batch_pass", "asgi_host.forward_pass")


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the process's tracer provider (set once per process, as OpenTelemetry
    allows; another test module may have set one already)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()


def iris(*, execution: str = "auto", batching: Batching | None = None) -> Host:
    model = TorchModel(IrisMLP, WEIGHTS, device="cpu", warmup=torch.zeros(1, 4), execution=execution)  # type: ignore[arg-type]
    return Host(
        resources=[model], routes=[Classifier(labels=LABELS, n_features=len(FEATURES), batching=batching)]
    )


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def request_span(spans: tuple[ReadableSpan, ...]) -> ReadableSpan:
    (server,) = [span for span in spans if span.kind == trace.SpanKind.SERVER]
    return server


@pytest.mark.parametrize("execution", ["thread", "inline"])
async def test_an_unbatched_request_has_its_queue_wait_and_forward_pass(
    exporter: InMemorySpanExporter, execution: Literal["thread", "inline"]
) -> None:
    app = OpenTelemetryMiddleware(iris(execution=execution))
    async with LifespanDriver(app) as lifespan:
        exporter.clear()
        answer = await lifespan.request("POST", "/predict", json=ROW, headers=[("traceparent", TRACEPARENT)])
    assert answer.status == 200
    spans = exporter.get_finished_spans()
    server = request_span(spans)
    assert format(server.context.trace_id, "032x") == TRACE_ID
    ours = by_name(spans)
    assert "asgi_host.batch_pass" not in ours
    wait, forward = ours["asgi_host.queue_wait"], ours["asgi_host.forward_pass"]
    for span in (wait, forward):
        assert span.parent is not None
        assert span.parent.span_id == server.context.span_id
        assert span.context.trace_id == server.context.trace_id
        assert span.attributes == {"asgi_host.request.rows": 1}
    assert server.start_time <= wait.start_time <= wait.end_time <= forward.start_time  # type: ignore[operator]
    assert forward.start_time <= forward.end_time <= server.end_time  # type: ignore[operator]


async def test_a_batched_request_has_its_wait_its_batch_pass_and_the_forward_pass_in_it(
    exporter: InMemorySpanExporter,
) -> None:
    app = OpenTelemetryMiddleware(iris(batching=Batching()))
    async with LifespanDriver(app) as lifespan:
        exporter.clear()
        answer = await lifespan.request("POST", "/predict", json={"inputs": ROW["inputs"] * 3})
    assert answer.status == 200
    spans = exporter.get_finished_spans()
    server = request_span(spans)
    ours = by_name(spans)
    wait, batch, forward = (ours[name] for name in OURS)
    assert wait.parent is not None
    assert batch.parent is not None
    assert forward.parent is not None
    assert wait.parent.span_id == batch.parent.span_id == server.context.span_id
    assert forward.parent.span_id == batch.context.span_id
    assert batch.attributes == {
        "asgi_host.request.rows": 3,
        "asgi_host.batch.rows": 3,
        "asgi_host.batch.requests": 1,
    }
    assert wait.end_time == batch.start_time
    assert batch.start_time <= forward.start_time <= forward.end_time <= batch.end_time  # type: ignore[operator]


async def test_no_span_without_the_middleware(exporter: InMemorySpanExporter) -> None:
    async with LifespanDriver(iris(execution="thread")) as lifespan:
        exporter.clear()
        answer = await lifespan.request("POST", "/predict", json=ROW, headers=[("traceparent", TRACEPARENT)])
    assert answer.status == 200
    assert exporter.get_finished_spans() == ()


async def test_the_middleware_sees_the_host_answer_with_its_request_id(
    exporter: InMemorySpanExporter,
) -> None:
    app = OpenTelemetryMiddleware(iris())
    async with LifespanDriver(app) as lifespan:
        answer = await lifespan.request("POST", "/predict", json=ROW, headers=[("x-request-id", "req-1")])
        probe = await lifespan.request("GET", "/readyz")
    assert (answer.status, answer.header("x-request-id")) == (200, "req-1")
    assert probe.status == 200


NO_OPENTELEMETRY = """
import sys
import anyio
from asgi_host.testing import LifespanDriver
from examples.app import app

async def main() -> None:
    async with LifespanDriver(app) as lifespan:
        row, headers = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}, [("traceparent", "TRACEPARENT")]
        answer = await lifespan.request("POST", "/predict", json=row, headers=headers)
        assert answer.status == 200

anyio.run(main)
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""


@pytest.mark.server
def test_the_host_never_imports_opentelemetry() -> None:
    script = NO_OPENTELEMETRY.replace("TRACEPARENT", TRACEPARENT)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
