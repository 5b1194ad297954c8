"""`x-request-id` on every response and in every log line of the request; W3C `traceparent`; the
JSON access log."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
import torch

from asgi_host import Batching, Host, HTTPError, Mount, Request, RequestContextFilter, Response, Route
from asgi_host._request_ids import parse_traceparent
from asgi_host.config import load_config
from asgi_host.model import Classifier, TorchModel
from asgi_host.testing import LifespanDriver, free_port, request, server_command
from asgi_host.types import Receive, Scope, Send
from examples.app import IrisConfig, make_app
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP
from tests._server import ROOT, run_server

pytestmark = pytest.mark.anyio

MADE = re.compile(r"[0-9a-f]{16}-[0-9a-f]+")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
ROW = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}

logger = logging.getLogger("tests.request_ids")


async def hello(request: Request) -> Response:
    logger.info("hello from the endpoint")
    return Response.json({"hello": "world"})


async def fails(request: Request) -> Response:
    raise RuntimeError("boom")


async def refuses(request: Request) -> Response:
    raise HTTPError(418, "no coffee here")


async def numbers(request: Request) -> AsyncIterator[dict[str, int]]:
    async def items() -> AsyncIterator[dict[str, int]]:
        for i in range(3):
            yield {"i": i}

    return items()


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"raw"})


def app() -> Host:
    inner = Host(routes=[Route("/hello", hello)])
    return Host(
        routes=[
            Route("/hello", hello),
            Route("/fails", fails),
            Route("/refuses", refuses),
            Route("/numbers", numbers),
            Mount("/raw", raw_app),
            Mount("/inner", inner),
        ]
    )


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What the host and the tests log, through a handler with the request filter."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep()
    handler.addFilter(RequestContextFilter())
    loggers = [logging.getLogger(name) for name in ("asgi_host", "tests.request_ids")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.removeHandler(handler)
            log.setLevel(level)


async def test_every_response_carries_a_request_id() -> None:
    host = app()
    async with LifespanDriver(host) as lifespan:
        answers = {
            "route": await lifespan.request("GET", "/hello"),
            "probe": await lifespan.request("GET", "/livez"),
            "readiness": await lifespan.request("GET", "/readyz"),
            "404": await lifespan.request("GET", "/nowhere"),
            "405": await lifespan.request("POST", "/hello"),
            "418": await lifespan.request("GET", "/refuses"),
            "500": await lifespan.request("GET", "/fails"),
            "stream": await lifespan.request("GET", "/numbers"),
            "HEAD": await lifespan.request("HEAD", "/hello"),
            "mount": await lifespan.request("GET", "/raw/x"),
            "mounted host": await lifespan.request("GET", "/inner/hello"),
            "openapi": await lifespan.request("GET", "/openapi.json"),
        }
    for name, answer in answers.items():
        ids = [value for key, value in answer.headers if key == "x-request-id"]
        assert len(ids) == 1, (name, answer.headers)
        assert MADE.fullmatch(ids[0]), (name, ids)
    assert len({answer.header("x-request-id") for answer in answers.values()}) == len(answers)
    assert [event.json() for event in answers["stream"].events()] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_made_ids_count_on_across_blocks_and_threads_and_start_afresh_in_a_forked_worker() -> None:
    import threading

    from asgi_host import _request_ids

    _request_ids._new_process()
    prefix = _request_ids._prefix
    first = [_request_ids._new_id() for _ in range(3 * _request_ids._BLOCK)]
    assert first[:3] == [prefix + b"1", prefix + b"2", prefix + b"3"]
    assert [int(made.removeprefix(prefix), 16) for made in first] == list(
        range(1, 3 * _request_ids._BLOCK + 1)
    )
    made: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: made.extend(_request_ids._new_id() for _ in range(5000)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made + first)) == len(made) + len(first) == 23072  # never the same id twice
    _request_ids._new_process()  # what a forked worker runs first (os.register_at_fork)
    assert _request_ids._prefix != prefix
    assert _request_ids._new_id() == _request_ids._prefix + b"1"


async def test_a_sane_request_id_is_echoed_and_any_other_replaced() -> None:
    host = app()
    sane = ["abc", "0" * 128, "req-1:2/3+4=5_~!", "f47ac10b-58cc-4372-a567-0e02b2c3d479"]
    insane = ["", "0" * 129, "two words", "tab\there", "bell\x07", "caf\xe9", "del\x7f"]
    async with LifespanDriver(host) as lifespan:
        for given in sane:
            answer = await lifespan.request("GET", "/hello", headers=[("x-request-id", given)])
            assert answer.header("x-request-id") == given
        for given in insane:
            answer = await lifespan.request("GET", "/hello", headers=[("x-request-id", given)])
            assert MADE.fullmatch(answer.header("x-request-id") or ""), given
        # A mount gets the host's, and a mounted host keeps it.
        for path in ("/raw/x", "/inner/hello", "/nowhere"):
            answer = await lifespan.request("GET", path, headers=[("x-request-id", "outer-1")])
            assert [v for k, v in answer.headers if k == "x-request-id"] == ["outer-1"], path


@pytest.mark.parametrize(
    ("value", "trace_id"),
    [
        (TRACEPARENT, TRACE_ID),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),  # zero trace id
        (f"00-{TRACE_ID}-" + "0" * 16 + "-01", None),  # zero parent id
        (TRACEPARENT.upper().replace("0X", "0x"), None),  # upper-case hex
        ("01" + TRACEPARENT[2:], None),  # another version: not parsed
        ("ff" + TRACEPARENT[2:], None),
        (TRACEPARENT + "-extra", None),
        (TRACEPARENT[:-1], None),
        (" " + TRACEPARENT, None),
        (f"00-{TRACE_ID[:-1]}g-00f067aa0ba902b7-01", None),
        ("", None),
    ],
)
def test_traceparent_is_parsed_strictly(value: str, trace_id: str | None) -> None:
    assert parse_traceparent(value.encode("latin-1")) == trace_id


async def test_every_log_line_of_a_request_has_its_id(records: list[logging.LogRecord]) -> None:
    class LoggingIris(IrisMLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logger.info("in the forward pass, on the model's thread")
            result: torch.Tensor = super().forward(x)
            return result

    threaded = Host(
        resources=[TorchModel(LoggingIris, WEIGHTS, execution="thread")],
        routes=[Classifier(labels=LABELS, n_features=len(FEATURES)), Route("/hello", hello)],
    )
    threaded.route("/fails")(fails)
    async with LifespanDriver(threaded) as lifespan:
        records.clear()  # startup's lines are no request's
        headers = [("x-request-id", "req-42"), ("traceparent", TRACEPARENT)]
        predicted = await lifespan.request("POST", "/predict", json=ROW, headers=headers)
        hello_answer = await lifespan.request("GET", "/hello")
        failed = await lifespan.request("GET", "/fails", headers=[("x-request-id", "req-43")])
    assert predicted.status == 200
    by_message = {record.getMessage().partition("\n")[0]: record for record in records}
    forward = by_message["in the forward pass, on the model's thread"]
    assert (forward.request_id, forward.trace_id) == ("req-42", TRACE_ID)  # type: ignore[attr-defined]
    endpoint = by_message["hello from the endpoint"]
    assert endpoint.request_id == hello_answer.header("x-request-id")  # type: ignore[attr-defined]
    assert endpoint.trace_id == "-"  # type: ignore[attr-defined]
    error = next(r for r in records if r.getMessage().startswith("unhandled error in GET /fails"))
    assert (failed.status, error.request_id) == (500, "req-43")  # type: ignore[attr-defined]


async def test_a_batch_pass_logs_the_request_ids_it_served(records: list[logging.LogRecord]) -> None:
    class Broken(IrisMLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] == 3:
                raise RuntimeError("kernel exploded")
            result: torch.Tensor = super().forward(x)
            return result

    host = Host(
        resources=[TorchModel(Broken, WEIGHTS)],
        routes=[Classifier(labels=LABELS, n_features=len(FEATURES), batching=Batching())],
    )
    async with LifespanDriver(host) as lifespan:
        failed = await lifespan.request(
            "POST", "/predict", json={"inputs": ROW["inputs"] * 3}, headers=[("x-request-id", "req-7")]
        )
    assert failed.status == 500
    line = next(r for r in records if "failed" in r.getMessage())
    assert "req-7" in line.getMessage()


# -- the access log -----------------------------------------------------------------------------


async def test_the_access_log_has_one_json_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asgi_host.access")
    config = load_config(
        IrisConfig, env_prefix="IRIS_", environ={"IRIS_ACCESS_LOG": "json", "IRIS_DEVICE": "cpu"}
    )
    assert config.access_log == "json"
    iris = make_app(config)
    async with LifespanDriver(iris) as lifespan:
        caplog.clear()
        headers = [("x-request-id", "req-1"), ("traceparent", TRACEPARENT)]
        ok = await lifespan.request("POST", "/predict", json=ROW, headers=headers)
        bad = await lifespan.request("POST", "/predict", json={"inputs": [[1.0]]})
        probe = await lifespan.request("GET", "/livez", query_string=b"verbose=1")
        head = await lifespan.request("HEAD", "/livez")
        gone = await lifespan.request("POST", "/predict", body=b'{"inputs"', disconnect=True)
    lines = [msgspec.json.decode(r.getMessage()) for r in caplog.records if r.name == "asgi_host.access"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/predict", 200),
        ("POST", "/predict", 422),
        ("GET", "/livez", 200),
        ("HEAD", "/livez", 200),
        ("POST", "/predict", None),  # the client left: nothing was answered
    ]
    assert gone.status is None
    first = lines[0]
    assert list(first) == [
        "time",
        "method",
        "path",
        "status",
        "duration_s",
        "bytes",
        "request_id",
        "trace_id",
    ]
    assert (first["request_id"], first["trace_id"], first["bytes"]) == ("req-1", TRACE_ID, len(ok.body))
    assert isinstance(first["duration_s"], float)
    assert 0 < first["duration_s"] < 5
    assert (lines[1]["bytes"], lines[1]["trace_id"]) == (len(bad.body), None)
    assert lines[1]["request_id"] == bad.header("x-request-id")
    assert lines[2]["bytes"] == len(probe.body)
    assert (lines[3]["bytes"], head.body) == (0, b"")


async def test_no_access_log_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asgi_host.access")
    host = app()
    async with LifespanDriver(host) as lifespan:
        await lifespan.request("GET", "/hello")
    assert [r for r in caplog.records if r.name == "asgi_host.access"] == []
    with pytest.raises(ValueError, match="access_log is 'json' or 'off'"):
        Host(access_log="yes")  # type: ignore[arg-type]


async def test_a_host_without_lifespan_logs_its_requests_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="asgi_host.access")
    answer = await request(Host(routes=[Route("/hello", hello)], access_log="json"), "GET", "/hello")
    assert answer.status == 200
    (line,) = [msgspec.json.decode(r.getMessage()) for r in caplog.records if r.name == "asgi_host.access"]
    assert line["request_id"] == answer.header("x-request-id")


SCRIPT = """
import logging
import anyio
from asgi_host import Host, Request, Response, Route
from asgi_host.testing import LifespanDriver

async def hello(request: Request) -> Response:
    logging.getLogger("asgi_host.example").info("hello from the endpoint")
    return Response.json({"hello": "world"})

async def main() -> None:
    async with LifespanDriver(Host(routes=[Route("/hello", hello)], access_log="json")) as lifespan:
        await lifespan.request("GET", "/hello", headers=[("x-request-id", "req-9"), ("traceparent", %r)])

anyio.run(main)
"""


@pytest.mark.server
def test_with_no_logging_set_up_lines_end_with_the_request_and_access_lines_are_json() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT % TRACEPARENT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    (hello_line,) = [line for line in lines if "hello from the endpoint" in line]
    assert hello_line.endswith(
        f"asgi_host.example: hello from the endpoint [request_id=req-9 trace_id={TRACE_ID}]"
    )
    (access_line,) = [line for line in lines if line.startswith("{")]
    assert msgspec.json.decode(access_line)["request_id"] == "req-9"


# -- docs/production.md's snippets, as written --------------------------------------------------

SECTION = "## Request ids, the access log and tracing"


def markdown_block(language: str, index: int = 0) -> str:
    """The `index`-th ```language block of docs/production.md's section on request ids."""
    text = (ROOT / "docs" / "production.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text[text.index(SECTION) :], re.DOTALL)
    return str(blocks[index])


async def test_the_logging_snippet_puts_the_ids_on_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers = []  # as in a process where nothing configured logging yet (pytest has)
    try:
        exec(compile(markdown_block("python", 0), "docs/production.md", "exec", dont_inherit=True), {})
        headers = [("x-request-id", "order-1234"), ("traceparent", TRACEPARENT)]
        async with LifespanDriver(app()) as lifespan:
            await lifespan.request("GET", "/hello", headers=headers)
    finally:
        root.handlers = handlers
        root.setLevel(level)
    lines = capsys.readouterr().err.splitlines()
    assert f"INFO tests.request_ids [order-1234 {TRACE_ID}] hello from the endpoint" in lines


@pytest.mark.server
def test_the_access_log_snippet_under_hypercorn(tmp_path: Path) -> None:
    serve, curl = markdown_block("sh", 0).strip(), markdown_block("sh", 1)
    environment, _, command = serve.partition(" hypercorn ")
    name, _, value = environment.partition("=")
    port, env = free_port(), {name: value, "IRIS_DEVICE": "cpu"}
    with run_server(server_command("hypercorn", command.strip(), port), port, tmp_path, env=env) as server:
        answer = subprocess.run(
            ["sh", "-c", curl.replace("localhost:8000", f"127.0.0.1:{port}")],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
    assert msgspec.json.decode(answer)["labels"] == ["setosa"]
    lines = [msgspec.json.decode(line) for line in server.output().splitlines() if line.startswith("{")]
    ours = [line for line in lines if line["request_id"] == "order-1234"]
    assert len(ours) == 1, lines
    shown = msgspec.json.decode(markdown_block("json", 0))
    assert list(ours[0]) == list(shown)
    assert {k: ours[0][k] for k in ("method", "path", "status", "trace_id")} == {
        k: shown[k] for k in ("method", "path", "status", "trace_id")
    }
    assert ours[0]["bytes"] == len(answer) == shown["bytes"]


@pytest.mark.server
def test_the_tracing_snippet_under_hypercorn(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.instrumentation.asgi")
    (tmp_path / "traced_app.py").write_text(markdown_block("python", 1))
    port = free_port()
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "IRIS_DEVICE": "cpu", "IRIS_METRICS": "false"}
    with run_server(server_command("hypercorn", "traced_app:app", port), port, tmp_path, env=env) as server:
        answer = subprocess.run(
            [
                "curl", "-s", f"{server.url}/predict", "-H", "content-type: application/json",
                "-H", f"traceparent: {TRACEPARENT}", "-d", msgspec.json.encode(ROW).decode(),
            ],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout  # fmt: skip
        deadline = time.monotonic() + 20  # the batch processor exports every 5 s
        while "asgi_host.forward_pass" not in server.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        output = server.output()
    assert msgspec.json.decode(answer)["labels"] == ["setosa"]
    for name in ("asgi_host.queue_wait", "asgi_host.forward_pass"):
        assert f'"name": "{name}"' in output, output[-3000:]
    assert f'"trace_id": "0x{TRACE_ID}"' in output
