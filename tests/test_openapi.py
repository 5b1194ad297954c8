"""GET /openapi.json and GET /docs: the document is valid OpenAPI 3.1, describes what the host really
answers (checked by hand here and by schemathesis against a live server), and Swagger UI renders it in
a real browser."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest
from openapi_spec_validator import validate

import asgi_host.openapi._document as openapi_module
import asgi_host.openapi._swagger as swagger_module
from asgi_host import (
    Batching,
    Host,
    HTTPError,
    Mount,
    Request,
    Response,
    Route,
    StructEndpoint,
    error_response,
)
from asgi_host.config import HostConfig, load_config
from asgi_host.openapi import Error, ErrorDetail, openapi_document
from asgi_host.testing import LifespanDriver, ServerProcess, free_port, request, server_command
from examples.app import IrisConfig, make_app
from tests._browser import chromium_path, dom_of
from tests._server import ROOT, run_server

IN_CI = bool(os.environ.get("CI"))


def checker(document: dict[str, Any], name: str) -> jsonschema.protocols.Validator:
    """A validator for the document's component `name` (its `$ref`s resolve inside the document)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def body_schema(operation: dict[str, Any], status: str, media_type: str = "application/json") -> Any:
    return operation["responses"][status]["content"][media_type]["schema"]


# --- the document ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batching", [None, Batching()], ids=["plain", "batching"])
def test_the_iris_app_document_is_valid_openapi_3_1(batching: Batching | None) -> None:
    document = openapi_document(make_app(IrisConfig(batching=batching)))
    validate(document)  # raises with the offending part
    assert document["openapi"] == "3.1.0"
    assert {"/predict", "/livez", "/readyz", "/metrics", "/openapi.json", "/docs"} <= set(document["paths"])
    # Swagger UI's own files are served, not described.
    assert not any(path.startswith("/docs/") for path in document["paths"])
    statuses = set(document["paths"]["/predict"]["post"]["responses"])
    assert ("504" in statuses) == (batching is not None)  # a batcher's timeout_s


def test_predict_is_fully_described() -> None:
    document = openapi_document(make_app(IrisConfig(max_rows=200)))
    operation = document["paths"]["/predict"]["post"]
    schemas = document["components"]["schemas"]
    assert operation["summary"].startswith("Classify rows of features")
    request_body = operation["requestBody"]
    assert request_body["required"] is True
    assert set(request_body["content"]) == {
        "application/json",
        "application/msgpack",
        "application/x-msgpack",
    }
    assert request_body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }
    inputs = schemas["PredictRequest"]["properties"]["inputs"]
    assert (inputs["minItems"], inputs["maxItems"]) == (1, 200)
    assert (inputs["items"]["minItems"], inputs["items"]["maxItems"]) == (4, 4)
    assert inputs["items"]["items"] == {"type": "number"}
    assert schemas["PredictRequest"]["additionalProperties"] is False
    assert schemas["PredictRequest"]["required"] == ["inputs"]
    for media_type in ("application/json", "application/msgpack", "application/x-msgpack"):
        assert body_schema(operation, "200", media_type) == {"$ref": "#/components/schemas/ClassifierOutput"}
    assert set(schemas["ClassifierOutput"]["properties"]) == {"outputs", "labels"}
    assert set(operation["responses"]) == {"200", "400", "408", "413", "415", "422", "500", "503"}
    for status in ("400", "408", "413", "415", "422", "500", "503"):
        assert body_schema(operation, status) == {"$ref": "#/components/schemas/Error"}
    assert "max_rows=200" in operation["responses"]["413"]["description"]
    assert "not finite" in operation["responses"]["422"]["description"]
    assert "Retry-After" in operation["responses"]["503"]["headers"]


def test_the_error_struct_is_the_one_the_host_sends() -> None:
    answered = error_response(HTTPError(422, "bad row", path="$.inputs[0]"))
    decoded = msgspec.json.decode(answered.body, type=Error, strict=True)
    assert decoded == Error(
        ErrorDetail(status=422, type="validation_error", message="bad row", path="$.inputs[0]")
    )


@pytest.mark.anyio
async def test_what_predict_answers_matches_its_document() -> None:
    app = make_app(IrisConfig(max_rows=3))
    document = openapi_document(app)
    operation = document["paths"]["/predict"]["post"]
    answers = checker(document, "ClassifierOutput")
    errors = checker(document, "Error")
    asks: list[tuple[dict[str, Any], int]] = [
        ({"body": b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'}, 200),
        ({"body": b'{"inputs": [[5.1, 3.5'}, 400),
        ({"body": b"{}", "headers": [("content-type", "text/csv")]}, 415),
        ({"json": {"inputs": [[1.0, 2.0]]}}, 422),
        ({"json": {"inputs": [[1.0, 2.0, 3.0, 4.0]] * 4}}, 413),
        ({"body": b'{"inputs": [[1e38, 1e38, 1e38, 1e38]]}'}, 422),
        (
            {
                "body": msgspec.msgpack.encode({"inputs": [[float("nan"), 1.0, 2.0, 3.0]]}),
                "headers": [("content-type", "application/msgpack")],
            },
            422,
        ),
    ]
    async with LifespanDriver(app) as lifespan:
        for kwargs, status in asks:
            result = await lifespan.request("POST", "/predict", **kwargs)
            assert result.status == status, result.body
            assert str(status) in operation["responses"]
            (answers if status == 200 else errors).validate(result.json())
        packed = await lifespan.request(
            "POST",
            "/predict",
            json={"inputs": [[5.1, 3.5, 1.4, 0.2]]},
            headers=[("accept", "application/msgpack")],
        )
        assert packed.header("content-type") == "application/msgpack"
        answers.validate(msgspec.msgpack.decode(packed.body))


@pytest.mark.anyio
async def test_probe_answers_match_their_document() -> None:
    app = Host(resources=[a_resource()])
    document = openapi_document(app)
    readiness = checker(document, "Readiness")
    not_started = await request(app, "GET", "/readyz")
    assert not_started.status == 503
    readiness.validate(not_started.json())
    async with LifespanDriver(app) as lifespan:
        ready = await lifespan.request("GET", "/readyz")
        assert ready.status == 200
        readiness.validate(ready.json())
        alive = await lifespan.request("GET", "/livez")
        checker(document, "Liveness").validate(alive.json())
    assert set(document["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}


def a_resource() -> Any:
    @asynccontextmanager
    async def resource(host: Host) -> AsyncIterator[dict[str, Any]]:
        yield {"thing": 1}

    return resource


async def ping(request: Request) -> Response:
    """Answer pong."""
    return Response.json({"pong": True})


async def sub_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never called")


def test_plain_routes_show_their_methods_and_mounts_are_not_described() -> None:
    app = Host(routes=[Route("/ping", ping, methods=["GET", "POST"]), Mount("/sub", sub_app)])
    document = openapi_document(app)
    validate(document)
    item = document["paths"]["/ping"]
    assert set(item) == {"get", "post"}
    assert item["get"]["summary"] == "Answer pong."
    assert set(item["post"]["responses"]) == {"default"}
    assert item["post"]["operationId"] == "post_ping"
    assert not any(path.startswith("/sub") for path in document["paths"])
    assert "Mounted sub-apps are not described" in document["info"]["description"]


def test_app_types_named_like_the_host_schemas_and_odd_paths() -> None:
    class Error(msgspec.Struct):  # the name of the host's error schema
        code: int

    async def fails(body: Error, request: Request) -> Error:
        return body

    app = Host(
        routes=[
            Route("/fails", StructEndpoint(fails, Error, response_type=Error), methods=["POST"]),
            Route("/also", StructEndpoint(fails, Error, response_type=Error), methods=["POST"]),
            Route("/odd{path}", ping),
        ]
    )
    document = openapi_document(app)
    validate(document)
    assert "/odd{path}" not in document["paths"]  # it would read as a template
    operation = document["paths"]["/fails"]["post"]
    mine, hosts = body_schema(operation, "200")["$ref"], body_schema(operation, "422")["$ref"]
    assert mine != hosts
    schemas = document["components"]["schemas"]
    assert set(schemas[mine.rsplit("/", 1)[1]]["properties"]) == {"code"}
    assert set(schemas[hosts.rsplit("/", 1)[1]]["properties"]) == {"error"}


class Tensor(msgspec.Struct):
    name: str
    data: list[float]


class OwnWireFormat:
    """An endpoint of a protocol layer that writes its own operation."""

    async def __call__(self, request: Request) -> Response:
        return Response.json({"name": "x", "data": [1.0]})

    def openapi_operation(self, method: str, schema: Any) -> dict[str, Any]:
        tensor = schema(Tensor)
        return {
            "summary": f"{method} a tensor",
            "requestBody": {"content": {"application/json": {"schema": tensor}}},
            "responses": {
                "200": {"description": "The tensor.", "content": {"application/json": {"schema": tensor}}},
                "400": {"description": "Its own error shape.", "content": {"text/plain": {"schema": {}}}},
            },
        }


class CannotDescribe(OwnWireFormat):
    def openapi_operation(self, method: str, schema: Any) -> dict[str, Any]:
        raise RuntimeError("no")


def test_an_endpoint_may_describe_itself(caplog: pytest.LogCaptureFixture) -> None:
    app = Host(
        routes=[
            Route("/tensor", OwnWireFormat(), methods=["POST"]),
            Route("/broken", CannotDescribe(), methods=["POST"]),
        ]
    )
    document = openapi_document(app)
    validate(document)
    operation = document["paths"]["/tensor"]["post"]
    assert operation["summary"] == "POST a tensor"
    assert body_schema(operation, "200") == {"$ref": "#/components/schemas/Tensor"}
    assert set(document["components"]["schemas"]["Tensor"]["properties"]) == {"name", "data"}
    assert set(operation["responses"]) == {"200", "400", "500", "503"}  # the host's own added
    assert body_schema(operation, "503") == {"$ref": "#/components/schemas/Error"}
    assert operation["operationId"] == "post_tensor"
    assert set(document["paths"]["/broken"]["post"]["responses"]) == {"default"}
    assert "could not describe itself" in caplog.text


class Words(msgspec.Struct, forbid_unknown_fields=True):
    text: str


class Count(msgspec.Struct):
    words: int


async def count_words(body: Words, request: Request) -> Count:
    return Count(len(body.text.split()))


async def untyped(body: Words, request: Request):  # type: ignore[no-untyped-def]
    return {"n": 1}


def test_the_response_type_comes_from_the_annotation_or_the_argument() -> None:
    assert StructEndpoint(count_words, Words).response_type is Count
    assert StructEndpoint(untyped, Words).response_type is None
    assert StructEndpoint(untyped, Words, response_type=Count).response_type is Count
    with pytest.raises(TypeError, match=r"response_type=.*msgspec can describe"):
        StructEndpoint(count_words, Words, response_type=Request)
    with pytest.raises(ValueError, match="4xx and 5xx"):
        StructEndpoint(count_words, Words, errors={302: "moved"})
    app = Host(
        routes=[
            Route(
                "/count", StructEndpoint(count_words, Words, errors={409: "A conflict."}), methods=["POST"]
            ),
            Route("/any", StructEndpoint(untyped, Words), methods=["POST"]),
        ]
    )
    document = openapi_document(app)
    validate(document)
    count = document["paths"]["/count"]["post"]
    assert body_schema(count, "200") == {"$ref": "#/components/schemas/Count"}
    assert count["responses"]["409"]["description"] == "A conflict."
    assert body_schema(document["paths"]["/any"]["post"], "200") == {}  # any value


@pytest.mark.anyio
async def test_the_document_is_built_once_and_rebuilt_for_a_route_added_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds: list[int] = []
    real = openapi_module.openapi_document

    def counting(host: Host, **kwargs: Any) -> dict[str, Any]:
        builds.append(1)
        return real(host, **kwargs)

    monkeypatch.setattr(openapi_module, "openapi_document", counting)
    app = Host(routes=[Route("/ping", ping)])

    @app.route("/before-the-first-request")
    async def early(request: Request) -> Response:
        return Response.json({})

    first = await request(app, "GET", "/openapi.json")
    again = await request(app, "GET", "/openapi.json")
    assert first.status == 200
    assert first.header("content-type") == "application/json"
    assert first.body == again.body
    assert "/before-the-first-request" in first.json()["paths"]
    assert len(builds) == 1

    @app.route("/later", methods=["POST"])
    async def later(request: Request) -> Response:
        return Response.json({})

    after = (await request(app, "GET", "/openapi.json")).json()
    assert "/later" in after["paths"]
    assert len(builds) == 2


@pytest.mark.anyio
async def test_answered_before_startup_like_the_probes() -> None:
    app = Host(resources=[a_resource()], routes=[Route("/ping", ping)])
    assert (await request(app, "GET", "/ping")).status == 503  # not started
    document = await request(app, "GET", "/openapi.json")
    assert document.status == 200
    assert "/ping" in document.json()["paths"]
    assert (await request(app, "GET", "/docs")).status == 200


@pytest.mark.anyio
async def test_both_can_be_switched_off() -> None:
    no_docs = Host(docs_path=None)
    assert (await request(no_docs, "GET", "/docs")).status == 404
    assert "/docs" not in (await request(no_docs, "GET", "/openapi.json")).json()["paths"]
    nothing = Host(openapi_path=None)  # no document, so no page to show it
    for path in ("/openapi.json", "/docs", "/docs/swagger-ui-bundle.js"):
        assert (await request(nothing, "GET", path)).status == 404
    moved = Host(openapi_path="/api/schema.json", docs_path="/api/ui")
    assert (await request(moved, "GET", "/api/schema.json")).status == 200
    page = await request(moved, "GET", "/api/ui")
    assert '"/api/schema.json"' in page.body.decode()
    assert (await request(moved, "GET", "/api/ui/swagger-ui.css")).status == 200


def test_host_config_switches_them_too() -> None:
    assert HostConfig().host_kwargs()["openapi_path"] == "/openapi.json"
    assert HostConfig().host_kwargs()["docs_path"] == "/docs"
    config = load_config(
        HostConfig, env_prefix="T_", environ={"T_OPENAPI_PATH": "/spec.json", "T_DOCS_PATH": "none"}
    )
    kwargs = config.host_kwargs()
    assert (kwargs["openapi_path"], kwargs["docs_path"]) == ("/spec.json", None)
    paths = openapi_document(Host(**kwargs))["paths"]
    assert "/spec.json" in paths
    assert "/docs" not in paths


@pytest.mark.anyio
async def test_under_a_root_path_the_urls_carry_it() -> None:
    app = Host(routes=[Route("/ping", ping)])
    document = (await request(app, "GET", "/openapi.json", root_path="/model")).json()
    assert document["servers"] == [{"url": "/model"}]
    assert "servers" not in (await request(app, "GET", "/openapi.json")).json()
    page = (await request(app, "GET", "/docs", root_path="/model")).body.decode()
    assert 'src="/model/docs/swagger-ui-bundle.js"' in page
    assert 'url: "/model/openapi.json"' in page


@pytest.mark.anyio
async def test_swagger_ui_files_are_served_by_the_host() -> None:
    app = Host()
    page = await request(app, "GET", "/docs")
    assert page.status == 200
    assert page.header("content-type") == "text/html; charset=utf-8"
    text = page.body.decode()
    assert "validatorUrl: null" in text  # Swagger UI would otherwise call its online validator
    assert not re.search(r"(src|href)=\"https?:", text)  # nothing from a CDN
    script = await request(app, "GET", "/docs/swagger-ui-bundle.js")
    assert script.status == 200
    assert script.header("content-type") == "text/javascript; charset=utf-8"
    assert b"SwaggerUIBundle" in script.body
    css = await request(app, "GET", "/docs/swagger-ui.css")
    assert css.header("content-type") == "text/css; charset=utf-8"
    assert len(css.body) > 10_000
    icon = await request(app, "GET", "/docs/favicon-32x32.png")
    assert icon.body.startswith(b"\x89PNG")
    head = await request(app, "HEAD", "/docs/swagger-ui-bundle.js")
    assert head.status == 200
    assert head.body == b""


@pytest.mark.anyio
async def test_without_swagger_ui_the_page_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(swagger_module, "_swagger_ui_folder", lambda: None)
    app = Host()
    page = await request(app, "GET", "/docs")
    assert page.status == 404
    message = page.json()["error"]["message"]
    assert "pip install 'asgi_host[openapi]'" in message
    assert "/openapi.json" in message
    assert (await request(app, "GET", "/docs/swagger-ui-bundle.js")).status == 404
    assert (await request(app, "GET", "/openapi.json")).status == 200

    old = tmp_path / "swagger-ui-4.15.5"
    old.mkdir()
    monkeypatch.setattr(swagger_module, "_swagger_ui_folder", lambda: old)
    page = await request(Host(), "GET", "/docs")
    assert page.status == 404
    assert "older than 5 and cannot show OpenAPI 3.1" in page.json()["error"]["message"]


# --- docs/protocols.md ----------------------------------------------------------------------------


def test_the_protocols_page_openapi_snippet_runs() -> None:
    text = (ROOT / "docs" / "protocols.md").read_text()
    section = text[text.index("## OpenAPI") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    module = types.ModuleType("openapi_snippet")
    exec(compile(match.group(1), "docs/protocols.md", "exec"), module.__dict__)
    validate(module.document)


# --- a live server: a real browser, and schemathesis -----------------------------------------------


@pytest.fixture(scope="module")
def iris_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    tmp_path = tmp_path_factory.mktemp("openapi")
    command = server_command("hypercorn", "examples.app:app", port, ["-w", "0"])
    with run_server(command, port, tmp_path, ready_path="/livez") as server:
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        yield server


def require_chromium() -> None:
    if chromium_path() is None:
        if IN_CI:
            pytest.fail("CI must run the browser check: .ci/run installs chromium (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")


@pytest.mark.server
def test_swagger_ui_renders_the_document_in_chromium(iris_server: ServerProcess) -> None:
    require_chromium()
    dom = dom_of(iris_server.url + "/docs")
    listed = re.findall(r'data-path="([^"]+)"', dom)
    assert "/predict" in listed, dom[-3000:]
    assert {"/livez", "/readyz", "/openapi.json"} <= set(listed)
    assert "Failed to load API definition" not in dom


# Every check schemathesis has (`[checks] enabled = true`, as `--checks all`, which would override
# the per-operation settings below), with two settings for what a document cannot say:
# - POST /predict: JSON Schema says "a number", not "a number this model computes a finite output
#   for". Valid rows such as [1e308, ...] overflow the float32 model and are answered 422 naming the
#   row (documented on the operation; test_predict covers it), so schema-valid data must get 2xx or
#   exactly that 422. Invalid data must be refused with the statuses the host uses for it, 413
#   included: more than max_rows rows (the schema's maxItems) is 413, as documented.
# - POST /v2/models/iris/infer (and its versions/1 twin): the document gives the model's input name,
#   datatype and shape, but JSON Schema cannot say "data holds as many values as the shape's
#   product", nor which bytes make a binary body: schema-valid requests may get the documented 400
#   naming what does not fit (and 422 for values out of FP32's range, as /predict).
# - Routes the document leaves undescribed (plain `Route`s: only a `default` response) have no
#   "valid data" to accept, so positive_data_acceptance does not apply to them; every other check does.
SCHEMATHESIS_CONFIG = """
[checks]
enabled = true

[[operations]]
include-operation-id = "post_predict"
checks.positive_data_acceptance.expected-statuses = ["2XX", 422]
checks.negative_data_rejection.expected-statuses = [400, 413, 415, 422]

[[operations]]
include-path-regex = "/infer$"
checks.positive_data_acceptance.expected-statuses = ["2XX", 400, 422]
checks.negative_data_rejection.expected-statuses = [400, 413, 415, 422]
"""


@pytest.mark.server
def test_schemathesis_finds_nothing(iris_server: ServerProcess, tmp_path: Path) -> None:
    document = httpx.get(iris_server.url + "/openapi.json", timeout=10).json()
    undescribed = [
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if set(operation["responses"]) == {"default"}
    ]
    config = SCHEMATHESIS_CONFIG
    if undescribed:
        config += (
            f"\n[[operations]]\ninclude-operation-id = {json.dumps(undescribed)}\n"
            "checks.positive_data_acceptance.enabled = false\n"
        )
    (tmp_path / "schemathesis.toml").write_text(config)
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "--no-color",
        "run",
        iris_server.url + "/openapi.json",
        "--max-examples",
        "50",
        "--seed",
        "20261201",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--output-truncate",
        "true",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests._schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    # Run in tmp_path: schemathesis leaves a .schemathesis/ folder where it runs.
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-12000:]
    assert re.search(r"\d+ generated, \d+ passed", report), report[-3000:]
    assert "missing deserializers" not in report  # MessagePack answers are checked too
