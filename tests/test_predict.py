"""POST /predict and typed endpoints, at the protocol level."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
import msgspec
import pytest
import torch
from torch import nn

from asgi_host import Batching, Host, HTTPError, Request, Route, StructEndpoint
from asgi_host.model import Classifier, TorchModel
from asgi_host.testing import HTTPResult, LifespanDriver, call, http_scope
from examples.app import IrisConfig, make_app
from examples.iris import LABELS, WEIGHTS, IrisMLP, load_dataset

pytestmark = pytest.mark.anyio

SETOSA = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(params=["thread", "inline"])
async def iris(request: pytest.FixtureRequest) -> AsyncIterator[LifespanDriver]:
    """The default app, with forward passes in a thread and inline on the loop: same answers."""
    async with LifespanDriver(make_app(IrisConfig(max_rows=200, execution=request.param))) as lifespan:
        assert lifespan.state["model"].inline is (request.param == "inline")
        yield lifespan


async def post(
    lifespan: LifespanDriver, body: bytes, content_type: str = "application/json", **kwargs: Any
) -> HTTPResult:
    headers = [("content-type", content_type), *kwargs.pop("headers", [])]
    return await lifespan.request("POST", "/predict", body=body, headers=headers, **kwargs)


async def test_json_round_trip(iris: LifespanDriver) -> None:
    result = await iris.request("POST", "/predict", json={"inputs": [SETOSA, [6.7, 3.0, 5.2, 2.3]]})
    assert result.status == 200
    assert result.header("content-type") == "application/json"
    body = result.json()
    assert body["labels"] == ["setosa", "virginica"]
    assert len(body["outputs"]) == 2
    for row in body["outputs"]:
        assert len(row) == 3
        assert sum(row) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("msgpack_type", ["application/msgpack", "application/x-msgpack"])
async def test_msgpack_round_trip(iris: LifespanDriver, msgpack_type: str) -> None:
    body = msgspec.msgpack.encode({"inputs": [SETOSA]})
    result = await post(iris, body, msgpack_type, headers=[("accept", msgpack_type)])
    assert result.status == 200
    assert result.header("content-type") == msgpack_type
    assert result.header("vary") == "accept"
    assert msgspec.msgpack.decode(result.body)["labels"] == ["setosa"]


async def test_json_in_msgpack_out_and_back(iris: LifespanDriver) -> None:
    as_msgpack = await post(
        iris, msgspec.json.encode({"inputs": [SETOSA]}), headers=[("accept", "application/msgpack")]
    )
    as_json = await post(iris, msgspec.msgpack.encode({"inputs": [SETOSA]}), "application/msgpack")
    assert msgspec.msgpack.decode(as_msgpack.body) == as_json.json()


async def test_accuracy_over_the_whole_data_set(iris: LifespanDriver) -> None:
    inputs, species = load_dataset()
    result = await iris.request("POST", "/predict", json={"inputs": inputs})
    predicted = result.json()["labels"]
    accuracy = sum(p == s for p, s in zip(predicted, species, strict=True)) / len(species)
    assert accuracy >= 0.95


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message", "path"),
    [
        (b'{"inputs": [[1, 2', "application/json", 400, "malformed request body", None),
        (b"\xc1", "application/msgpack", 400, "malformed request body", None),
        (b"", "application/json", 400, "malformed request body", None),
        (
            b'{"inputs": [["a", 1, 2, 3]]}',
            "application/json",
            422,
            "Expected `float`, got `str`",
            "$.inputs[0][0]",
        ),
        (
            b'{"inputs": [[1, 2, 3]]}',
            "application/json",
            422,
            "Expected `array` of length >= 4",
            "$.inputs[0]",
        ),
        (b'{"inputs": [SETOSA, [1, 2, 3, 4, 5]]}', "application/json", 400, "malformed", None),
        (
            b'{"inputs": [[1, 2, 3, 4], [1, 2, 3, 4, 5]]}',
            "application/json",
            422,
            "length <= 4",
            "$.inputs[1]",
        ),
        (b'{"inputs": []}', "application/json", 422, "Expected `array` of length >= 1", "$.inputs"),
        (
            b'{"inputs": [[1, 2, 3, true]]}',
            "application/json",
            422,
            "Expected `float`, got `bool`",
            "$.inputs[0][3]",
        ),
        (b"{}", "application/json", 422, "Object missing required field `inputs`", "$"),
        (
            b'{"inputs": [[1,2,3,4]], "x": 1}',
            "application/json",
            422,
            "Object contains unknown field `x`",
            "$",
        ),
        (b"[1, 2]", "application/json", 422, "Expected `object`, got `array`", "$"),
        (
            b'{"inputs": [[1, 2, 3, 1e999]]}',
            "application/json",
            422,
            "Number out of range",
            "$.inputs[0][3]",
        ),
        (b"inputs=1", "application/x-www-form-urlencoded", 415, "is not supported", None),
        (
            b'{"inputs": [[1, 2, 3, 4]]}',
            "text/plain",
            415,
            "content type 'text/plain' is not supported",
            None,
        ),
    ],
)
async def test_bad_input_gets_the_right_status_and_error_json(
    iris: LifespanDriver, body: bytes, content_type: str, status: int, message: str, path: str | None
) -> None:
    result = await post(iris, body, content_type)
    assert result.status == status, result.body
    error = result.json()["error"]
    assert error["status"] == status
    assert message in error["message"]
    assert error.get("path") == path
    assert set(error) <= {"status", "type", "message", "path"}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
async def test_non_finite_numbers_over_msgpack_are_422(iris: LifespanDriver, bad: float) -> None:
    result = await post(
        iris, msgspec.msgpack.encode({"inputs": [SETOSA, [1.0, bad, 1.0, 1.0]]}), "application/msgpack"
    )
    assert result.status == 422
    assert result.json()["error"]["path"] == "$.inputs[1][1]"


async def test_missing_content_type_is_read_as_json(iris: LifespanDriver) -> None:
    result = await iris.request("POST", "/predict", body=msgspec.json.encode({"inputs": [SETOSA]}))
    assert result.status == 200


async def test_too_many_rows_is_413(iris: LifespanDriver) -> None:
    result = await iris.request("POST", "/predict", json={"inputs": [SETOSA] * 201})
    assert result.status == 413
    assert result.json()["error"]["message"] == "201 rows is more than max_rows=200; split the batch"


async def test_body_over_the_limit_is_413() -> None:
    app = make_app(IrisConfig(max_body_bytes=64))
    async with LifespanDriver(app) as lifespan:
        result = await lifespan.request("POST", "/predict", json={"inputs": [SETOSA] * 10})
    assert result.status == 413
    assert result.json()["error"]["type"] == "payload_too_large"


async def test_wrong_method_and_unknown_route(iris: LifespanDriver) -> None:
    get = await iris.request("GET", "/predict")
    assert get.status == 405
    assert get.header("allow") == "POST"
    assert (await iris.request("POST", "/predictx", json={})).status == 404


class Flaky(nn.Module):
    """Raises on a negative first feature, like a model hitting a bad kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x[:, 0] < 0).any():
            raise RuntimeError("CUDA error: device-side assert triggered (secret internals)")
        return torch.zeros(x.shape[0], len(LABELS))


async def test_forward_pass_that_raises_is_500_and_the_next_request_works() -> None:
    endpoint = Classifier(labels=LABELS, n_features=4).endpoint
    host = Host(resources=[TorchModel(Flaky, None)], routes=[Route("/predict", endpoint, methods=["POST"])])
    async with LifespanDriver(host) as lifespan:
        at_start = lifespan.state["model"].forward_passes  # the endpoint's output check ran one
        failed = await lifespan.request("POST", "/predict", json={"inputs": [[-1, 0, 0, 0]]})
        assert failed.status == 500
        assert failed.json()["error"] == {
            "status": 500,
            "type": "internal_error",
            "message": "internal server error; the traceback is in the server log",
        }
        assert b"secret" not in failed.body
        ok = await lifespan.request("POST", "/predict", json={"inputs": [[1, 0, 0, 0]]})
        assert ok.status == 200
        assert lifespan.state["model"].forward_passes - at_start == 2


class Words(msgspec.Struct, forbid_unknown_fields=True):
    words: Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(max_length=3)]


class Counted(msgspec.Struct):
    count: int
    longest: str


async def count_words(body: Words, request: Request) -> Counted:
    return Counted(count=len(body.words), longest=max(body.words, key=len, default=""))


async def test_custom_schema_reuses_negotiation_and_errors() -> None:
    host = Host(
        routes=[Route("/count", StructEndpoint(count_words, Words, max_body_bytes=100), methods=["POST"])]
    )
    async with LifespanDriver(host) as lifespan:
        ok = await lifespan.request(
            "POST",
            "/count",
            body=msgspec.msgpack.encode({"words": ["a", "abc"]}),
            headers=[("content-type", "application/msgpack"), ("accept", "application/msgpack")],
        )
        assert msgspec.msgpack.decode(ok.body) == {"count": 2, "longest": "abc"}
        bad = await lifespan.request("POST", "/count", json={"words": ["a", ""]})
        assert (bad.status, bad.json()["error"]["path"]) == (422, "$.words[1]")
        big = await lifespan.request("POST", "/count", json={"words": ["x" * 200]})
        assert big.status == 413


async def test_inputs_the_model_cannot_compute_are_422_never_nan(iris: LifespanDriver) -> None:
    # 1e38 is a finite float, but the MLP's output for it is NaN: it must not be answered as data.
    result = await iris.request("POST", "/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2], [1e38, 1, 1, 1]]})
    assert result.status == 422
    error = result.json()["error"]
    assert error["path"] == "$.inputs[1]"
    assert "not finite" in error["message"]
    msgpack = await iris.request(
        "POST",
        "/predict",
        body=msgspec.msgpack.encode({"inputs": [[1e38, 1, 1, 1]]}),
        headers=[("content-type", "application/msgpack")],
    )
    assert msgpack.status == 422


async def test_with_batching_only_the_request_with_the_bad_row_is_refused() -> None:
    app = make_app(IrisConfig(metrics=False, batching=Batching(max_wait_s=0.05)))
    async with LifespanDriver(app) as lifespan:
        results: dict[str, HTTPResult] = {}

        async def send(key: str, rows: list[list[float]]) -> None:
            results[key] = await lifespan.request("POST", "/predict", json={"inputs": rows})

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, "bad", [[1e38, 1, 1, 1]])
            for i in range(4):
                tg.start_soon(send, f"good{i}", [[5.1, 3.5, 1.4, 0.2]])
        assert results.pop("bad").status == 422
        assert {r.status for r in results.values()} == {200}
        assert lifespan.state["model"].forward_passes < 6  # they did share passes


async def test_a_body_that_stalls_is_408_and_frees_the_request() -> None:
    endpoint = Classifier(labels=LABELS, n_features=4).endpoint
    host = Host(
        resources=[TorchModel(IrisMLP, WEIGHTS)], routes=[Route("/predict", endpoint, methods=["POST"])]
    )
    host.body_timeout_s = 0.2
    async with LifespanDriver(host) as lifespan:
        scope = http_scope(
            "POST",
            "/predict",
            headers=[("content-type", "application/json"), ("content-length", "100")],
            state=lifespan.state,
        )
        started = anyio.current_time()
        # 5 bytes of a declared 100, then nothing: the client stalls.
        transcript = await call(host, scope, [{"type": "http.request", "body": b'{"inp', "more_body": True}])
        assert anyio.current_time() - started < 3
    sent = [message for _, message in transcript]
    start = next(m for m in sent if m.get("type") == "http.response.start")
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    body = b"".join(m.get("body", b"") for m in sent if m.get("type") == "http.response.body")
    error = msgspec.json.decode(body)["error"]
    assert error["type"] == "request_timeout"
    assert "within body_timeout_s=0.2 (5 bytes received of 100)" in error["message"]


def test_finite_checks_tell_an_overflowing_sum_from_a_non_finite_value() -> None:
    from asgi_host._classifier import _all_finite, _refuse_non_finite

    overflowing = [[1e308, 1e308, 0.0, 0.0]]
    assert not _all_finite(overflowing)  # the fast sum overflows, so each value is checked
    _refuse_non_finite(overflowing)  # every value is finite: no refusal
    with pytest.raises(HTTPError) as refused:
        _refuse_non_finite([[1e308, 1e308, 0.0, 0.0], [1.0, float("inf"), 0.0, 0.0]])
    assert refused.value.path == "$.inputs[1][1]"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("application/msgpack", "application/msgpack"),
        ("application/json, application/msgpack", "application/json"),  # equal q: the first listed
        ("application/json;q=0.5, application/x-msgpack", "application/x-msgpack"),  # higher q wins
        ("*/*, application/msgpack", "application/msgpack"),  # equal q: specific beats a wildcard
        ("application/msgpack;q=0, */*", "application/json"),  # q=0: not acceptable
        ("text/html", "application/json"),  # nothing acceptable: JSON still, no 406
    ],
)
def test_the_answers_media_type_follows_accept_and_is_remembered(accept: str | None, expected: str) -> None:
    from asgi_host import _structured

    _structured._ACCEPTED.clear()
    assert _structured.response_media_type(accept) == expected
    assert _structured.response_media_type(accept) == expected  # the kept answer is the same
    assert len(_structured._ACCEPTED) == (1 if accept else 0)


def test_remembered_accept_values_are_bounded() -> None:
    from asgi_host import _structured

    for i in range(1000):  # clients choose the header: what is kept must not grow with them
        assert _structured.response_media_type(f"application/msgpack;q=0.{i % 10}, x/{i}") in (
            "application/json",
            "application/msgpack",
        )
    assert len(_structured._ACCEPTED) <= 256
