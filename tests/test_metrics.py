"""GET /metrics: what a Prometheus scrape sees after real traffic."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asgi_host import Batching, Host, Mount, Request, Response, Route
from asgi_host.metrics import Metrics
from asgi_host.model import Classifier, TorchModel
from asgi_host.testing import LifespanDriver, http_scope
from asgi_host.types import Message, Receive, Scope, Send
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP

pytestmark = pytest.mark.anyio

ROW = [5.1, 3.5, 1.4, 0.2]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_after_traffic() -> None:
    endpoint = Classifier(labels=LABELS, n_features=len(FEATURES), batching=Batching()).endpoint
    host = Host(
        resources=[TorchModel(IrisMLP, WEIGHTS)],
        routes=[Route("/predict", endpoint, methods=["POST"]), Mount("/sub", Host())],
        metrics=Metrics(),
    )
    async with LifespanDriver(host) as lifespan:
        for rows in (1, 2, 3):
            assert (await lifespan.request("POST", "/predict", json={"inputs": [ROW] * rows})).status == 200
        assert (await lifespan.request("POST", "/predict", json={"inputs": [[1]]})).status == 422
        assert (await lifespan.request("GET", "/nowhere")).status == 404
        assert (await lifespan.request("GET", "/sub/x")).status == 404
        await lifespan.request("GET", "/readyz")
        scrape = await lifespan.request("GET", "/metrics")
    assert scrape.status == 200
    assert (scrape.header("content-type") or "").startswith("text/plain; version=")
    values = samples(scrape.body.decode())
    predict_ok = ("asgi_host_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "200")))
    assert values[predict_ok] == 3
    assert (
        values["asgi_host_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "422"))]
        == 1
    )
    assert (
        values["asgi_host_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404"))]
        == 1
    )
    assert values["asgi_host_requests_total", (("method", "GET"), ("route", "/sub"), ("status", "404"))] == 1
    assert values["asgi_host_request_duration_seconds_count", (("route", "/predict"),)] == 4
    # Probes and scrapes are not counted as traffic.
    assert not [key for key in values if dict(key[1]).get("route") in ("/readyz", "/metrics")]
    batcher = (("batcher", "model batcher"),)
    assert values["asgi_host_batch_rows_count", batcher] == 3
    assert values["asgi_host_batch_rows_sum", batcher] == 6
    assert values["asgi_host_batch_duration_seconds_count", batcher] == 3
    assert values["asgi_host_queue_rows", batcher] == 0
    assert values["asgi_host_model_load_seconds", (("model", "model"),)] > 0
    assert values["asgi_host_ready", ()] == 1
    assert values["asgi_host_requests_in_flight", ()] == 0  # the scrape itself is not counted


def test_metrics_path_must_not_collide() -> None:
    with pytest.raises(ValueError, match="probe path '/metrics' is under mount '/metrics'"):
        Host(routes=[Mount("/metrics", Host())], metrics=Metrics())

    async def stats(request: Request) -> Response:
        return Response.json({})

    with pytest.raises(ValueError, match="two routes for GET /stats"):
        Host(routes=[Route("/stats", stats)], metrics=Metrics(path="/stats"))


async def test_two_hosts_keep_separate_registries() -> None:
    first, second = Host(metrics=Metrics()), Host(metrics=Metrics())
    async with LifespanDriver(first) as lifespan:
        await lifespan.request("GET", "/x")
    async with LifespanDriver(second) as lifespan:
        scrape = await lifespan.request("GET", "/metrics")
    assert "asgi_host_requests_total{" not in scrape.body.decode()


async def test_invented_methods_share_one_label() -> None:
    async def hello(request: Request) -> Response:
        return Response.json({"hello": "world"})

    host = Host(routes=[Route("/", hello)], metrics=Metrics())
    async with LifespanDriver(host) as lifespan:
        for i in range(50):
            assert (await lifespan.request(f"BREW{i}", "/")).status == 405
        await lifespan.request("PATCH", "/")
        scraped = samples((await lifespan.request("GET", "/metrics")).body.decode())
    methods = {dict(labels).get("method") for (name, labels) in scraped if name == "asgi_host_requests_total"}
    assert methods == {"other", "PATCH"}
    assert (
        scraped[("asgi_host_requests_total", (("method", "other"), ("route", "/"), ("status", "405")))] == 50
    )


async def test_metrics_wrap_the_dispatch_and_change_no_answer() -> None:
    """On or off, every answer is the same; on, the wrapper sees each routed request once."""

    async def hello(request: Request) -> Response:
        return Response.json({"hello": "world"})

    seen: list[tuple[str, int | None]] = []

    class Recording(Metrics):
        def observe(self, route: str, method: str, status: int | None, seconds: float) -> None:
            seen.append((route, status))
            super().observe(route, method, status, seconds)

    answers: dict[bool, list[tuple[int | None, bytes]]] = {}
    for on in (False, True):
        host = Host(routes=[Route("/", hello), Mount("/sub", Host())], metrics=Recording() if on else None)
        assert (host._dispatch == host._serve) is not on  # off: nothing between the host and the route
        async with LifespanDriver(host) as lifespan:
            results = [
                await lifespan.request(method, path)
                for method, path in (("GET", "/"), ("POST", "/"), ("GET", "/nowhere"), ("GET", "/sub/x"))
            ]
            await lifespan.request("GET", "/livez")
        answers[on] = [(r.status, r.body) for r in results]
    assert answers[True] == answers[False]
    assert seen == [("/", 200), ("/", 405), ("unmatched", 404), ("/sub", 404)]


async def test_latency_buckets_that_end_in_inf_expose_one_inf_bucket() -> None:
    metrics = Metrics(latency_buckets_s=(0.01, 0.1, float("inf"), 0.1))

    async def hello(request: Request) -> Response:
        return Response.json({"hello": "world"})

    async with LifespanDriver(Host(routes=[Route("/", hello)], metrics=metrics)) as lifespan:
        await lifespan.request("GET", "/")
        scrape = await lifespan.request("GET", "/metrics")
    buckets = [
        dict(sample.labels)["le"]
        for family in text_string_to_metric_families(scrape.body.decode())
        for sample in family.samples
        if sample.name == "asgi_host_request_duration_seconds_bucket"
    ]
    assert buckets == ["0.01", "0.1", "+Inf"]


async def test_a_mount_whose_client_left_after_its_start_is_counted_with_the_status_it_sent() -> None:
    """ASGI 2.4: send() raises OSError once the client has gone; the status already sent counts."""

    async def sub_app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})

    seen: list[int | None] = []

    class Recording(Metrics):
        def observe(self, route: str, method: str, status: int | None, seconds: float) -> None:
            seen.append(status)

    host = Host(routes=[Mount("/sub", sub_app)], metrics=Recording())
    sent: list[Message] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("the client has gone")
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    await host(http_scope("GET", "/sub/x"), receive, send)
    assert sent[0]["status"] == 200
    assert seen == [200]
