"""asgi_host.openai_embeddings: OpenAI's embeddings API, in process and with the official client."""

from __future__ import annotations

import array
import base64
import logging
import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from asgi_host import Batching, ClientDisconnect, Host, HTTPError, OpenAIError, OutOfMemory, Request, Route
from asgi_host.openai_embeddings import OpenAIEmbeddings
from asgi_host.testing import LifespanDriver, ServerProcess, free_port, server_command
from tests._server import run_server

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FOOD = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]


# ---- the protocol layer over a stand-in embedding function (no model) ----------------------------


def fake_vector(text: str) -> list[float]:
    raw = [float(len(text)), float(text.count(" ")) + 0.5, 1.0, -2.0]
    norm = math.sqrt(sum(x * x for x in raw))
    return [x / norm for x in raw]


class FakeEmbedder:
    """Four floats per text; a text's token count is its words plus two; `fail` makes it raise."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: BaseException | None = None
        self.output: list[list[float]] | None = None

    async def __call__(self, texts: list[str], request: Request) -> tuple[list[list[float]], list[int]]:
        self.calls.append(texts)
        if self.fail is not None:
            raise self.fail
        vectors = self.output or [fake_vector(t) for t in texts]
        return vectors, [len(t.split()) + 2 for t in texts]


@pytest.fixture
def fake() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
async def host(fake: FakeEmbedder) -> AsyncIterator[LifespanDriver]:
    api = OpenAIEmbeddings(
        fake, model="tiny", dimensions=4, max_inputs=3, max_chars=20, created=1700000000, owned_by="me"
    )
    async with LifespanDriver(Host(routes=api.routes(), max_body_bytes=2000)) as lifespan:
        yield lifespan


pytestmark = pytest.mark.anyio


def decode_base64(data: str) -> list[float]:
    return array.array("f", base64.b64decode(data)).tolist()


async def test_floats_base64_and_usage(host: LifespanDriver, fake: FakeEmbedder) -> None:
    texts = ["one two", "three"]
    result = await host.request("POST", "/v1/embeddings", json={"input": texts, "model": "tiny"})
    assert result.status == 200, result.body
    answer = result.json()
    assert answer == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": fake_vector("one two")},
            {"object": "embedding", "index": 1, "embedding": fake_vector("three")},
        ],
        "model": "tiny",
        "usage": {"prompt_tokens": 4 + 3, "total_tokens": 7},
    }
    packed = await host.request(
        "POST", "/v1/embeddings", json={"input": texts, "model": "tiny", "encoding_format": "base64"}
    )
    data = packed.json()["data"]
    assert [len(base64.b64decode(d["embedding"])) for d in data] == [16, 16]  # 4 float32 each
    for item, text in zip(data, texts, strict=True):
        expected = array.array("f", fake_vector(text)).tolist()  # float32, as sent
        assert decode_base64(item["embedding"]) == expected
    assert fake.calls == [texts, texts]


async def test_a_single_string_the_user_field_and_matching_dimensions(
    host: LifespanDriver, fake: FakeEmbedder
) -> None:
    body = {"input": "just one", "model": "tiny", "user": "someone", "dimensions": 4}
    result = await host.request("POST", "/v1/embeddings", json=body)
    assert result.status == 200, result.body
    assert [d["index"] for d in result.json()["data"]] == [0]
    assert result.json()["usage"]["prompt_tokens"] == 4
    assert fake.calls == [["just one"]]


async def test_models_list_and_retrieve(host: LifespanDriver) -> None:
    card = {"id": "tiny", "object": "model", "created": 1700000000, "owned_by": "me"}
    listed = await host.request("GET", "/v1/models")
    assert listed.json() == {"object": "list", "data": [card]}
    assert (await host.request("GET", "/v1/models/tiny")).json() == card
    assert (await host.request("GET", "/v1/models/other")).status == 404


@pytest.mark.parametrize(
    ("body", "status", "param", "code", "message"),
    [
        ({"input": [], "model": "tiny"}, 400, "input", None, "input is an empty list"),
        ({"input": "", "model": "tiny"}, 400, "input", None, r"input\[0\] is an empty string"),
        ({"input": ["ok", ""], "model": "tiny"}, 400, "input", None, r"input\[1\] is an empty string"),
        ({"input": [1, 2, 3], "model": "tiny"}, 400, "input", None, r"input\[0\] is a token id"),
        ({"input": [[1, 2], [3]], "model": "tiny"}, 400, "input", None, "takes text only"),
        ({"input": ["ok", [3]], "model": "tiny"}, 400, "input", None, r"input\[1\] is a token id"),
        ({"input": ["a"] * 4, "model": "tiny"}, 400, "input", None, "4 inputs is more than max_inputs=3"),
        ({"input": ["x" * 21], "model": "tiny"}, 400, "input", None, "21 characters, more than max_chars=20"),
        (
            {"input": 3, "model": "tiny"},
            400,
            "input",
            None,
            r"Expected `str \| array`, got `int` \(at \$.input\)",
        ),
        ({"input": ["a", 1.5], "model": "tiny"}, 400, "input", None, r"\(at \$.input\[1\]\)"),
        ({"input": "a"}, 400, "model", None, "missing required field `model`"),
        ({"input": "a", "model": "tiny", "temperature": 1}, 400, "temperature", None, "unknown field"),
        ({"input": "a", "model": "tiny", "encoding_format": "int8"}, 400, "encoding_format", None, "float"),
        ({"input": "a", "model": "tiny", "dimensions": 2}, 400, "dimensions", None, "dimensions=2 is not"),
        ({"input": "a", "model": "big"}, 404, "model", "model_not_found", "The model `big` does not exist"),
    ],
)
async def test_invalid_requests_get_openais_error_object(
    host: LifespanDriver,
    fake: FakeEmbedder,
    body: Any,
    status: int,
    param: str | None,
    code: str | None,
    message: str,
) -> None:
    result = await host.request("POST", "/v1/embeddings", json=body)
    assert result.status == status, result.body
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert re.search(message, error["message"]), error["message"]
    assert fake.calls == []  # nothing reached the model


async def test_malformed_json_wrong_content_type_and_a_body_too_large(host: LifespanDriver) -> None:
    json_type = [("content-type", "application/json")]
    malformed = await host.request("POST", "/v1/embeddings", body=b'{"input": [', headers=json_type)
    assert malformed.status == 400
    assert malformed.json()["error"]["message"].startswith("malformed JSON body")
    msgpack = await host.request(
        "POST",
        "/v1/embeddings",
        body=msgspec.msgpack.encode({"input": "a", "model": "tiny"}),
        headers=[("content-type", "application/msgpack")],
    )
    assert msgpack.status == 415
    assert msgpack.json()["error"]["type"] == "invalid_request_error"
    large = await host.request("POST", "/v1/embeddings", json={"input": ["a" * 3000], "model": "tiny"})
    assert large.status == 413
    assert large.json()["error"] == {
        "message": "request body is larger than max_body_bytes=2000",
        "type": "invalid_request_error",
        "param": None,
        "code": "payload_too_large",
    }


async def test_errors_of_the_model_keep_their_status_in_openais_shape(
    host: LifespanDriver, fake: FakeEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"input": ["a", "b"], "model": "tiny"}
    fake.fail = HTTPError(503, "the batch queue is full", headers=[("retry-after", "3")])
    full = await host.request("POST", "/v1/embeddings", json=body)
    assert (full.status, full.header("retry-after")) == (503, "3")
    assert full.json()["error"] == {
        "message": "the batch queue is full",
        "type": "server_error",
        "param": None,
        "code": "unavailable",
    }
    fake.fail = OutOfMemory("CUDA out of memory", rows=2)
    oom = await host.request("POST", "/v1/embeddings", json=body)
    assert oom.status == 503
    assert oom.json()["error"]["code"] == "out_of_memory"
    fake.fail = HTTPError(422, "not finite", path="$.texts[0]")  # the host's 422 is OpenAI's 400
    assert (await host.request("POST", "/v1/embeddings", json=body)).status == 400

    fake.fail = OpenAIError(429, "slow down", type="rate_limit_error", code="rate_limit_exceeded")
    limited = await host.request("POST", "/v1/embeddings", json=body)
    assert limited.status == 429
    assert limited.json()["error"] == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }

    fake.fail = RuntimeError("the model broke")
    with caplog.at_level(logging.ERROR, logger="asgi_host"):
        broken = await host.request("POST", "/v1/embeddings", json=body)
    assert broken.status == 500
    assert broken.json()["error"]["type"] == "server_error"
    assert b"the model broke" not in broken.body  # the traceback goes to the log only
    assert "the model broke" in caplog.text

    fake.fail = None
    fake.output = [[math.nan, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]]
    nan = await host.request("POST", "/v1/embeddings", json=body)
    assert nan.status == 400
    assert nan.json()["error"]["message"] == "the model's output for input[0] is not finite"
    fake.output = [[1.0, 0.0, 0.0]] * 2  # three floats where four were promised: a bug, 500
    with caplog.at_level(logging.ERROR, logger="asgi_host"):
        short = await host.request("POST", "/v1/embeddings", json=body)
    assert short.status == 500
    assert "embed returned 3 floats for input[0], not 4" in caplog.text


async def test_finite_outputs_whose_sum_overflows_and_other_sequences_are_answered(
    host: LifespanDriver, fake: FakeEmbedder
) -> None:
    body = {"input": ["a", "b"], "model": "tiny"}
    fake.output = [[1e308, 1e308, 0.0, 0.0], array.array("d", [0.5, 0.5, 0.5, 0.5])]  # type: ignore[list-item]
    result = await host.request("POST", "/v1/embeddings", json=body)
    assert result.status == 200, result.body
    assert [d["embedding"] for d in result.json()["data"]] == [[1e308, 1e308, 0.0, 0.0], [0.5] * 4]


async def test_a_client_that_went_away_is_not_answered(fake: FakeEmbedder) -> None:
    api = OpenAIEmbeddings(fake, model="tiny", dimensions=4)
    body = msgspec.json.encode({"input": "a", "model": "tiny"})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []}
    fake.fail = ClientDisconnect("gone")
    with pytest.raises(ClientDisconnect):
        await api.create(Request(scope, receive, {}, max_body_bytes=None))


def test_constructor_checks() -> None:
    async def embed(texts: list[str], request: Request) -> tuple[list[list[float]], list[int]]:
        return [], []

    with pytest.raises(ValueError, match="model id"):
        OpenAIEmbeddings(embed, model="", dimensions=4)
    with pytest.raises(ValueError, match="dimensions must be a positive integer"):
        OpenAIEmbeddings(embed, model="m", dimensions=0)
    with pytest.raises(ValueError, match="max_inputs"):
        OpenAIEmbeddings(embed, model="m", dimensions=4, max_inputs=0)
    paths = [
        route.path
        for route in OpenAIEmbeddings(embed, model="org/m", dimensions=4, prefix="/api/v1/").routes()
        if isinstance(route, Route)
    ]
    assert paths == ["/api/v1/embeddings", "/api/v1/models", "/api/v1/models/org/m"]


# ---- examples.embed: the real model, in process ---------------------------------------------------


def token_counts(texts: Sequence[str], max_tokens: int) -> list[int]:
    """Tokens per text from a fresh tokenizer: [CLS] and [SEP] included, truncated, no padding."""
    from tokenizers import Tokenizer

    from examples.minilm import model_dir

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()  # the file's own settings truncate at 128 and pad to 128
    tokenizer.no_padding()
    return [min(len(tokenizer.encode(text).ids), max_tokens) for text in texts]


async def test_the_example_answers_what_embed_answers_with_the_tokens_the_model_saw() -> None:
    from examples.embed import EmbedConfig, make_app

    long_text = "the weather is nice today " * 10  # 50 words: truncated to max_tokens=16
    texts = [*FOOD, long_text]
    counts = token_counts(texts, 16)
    assert counts[-1] == 16
    assert counts[0] < 16
    async with LifespanDriver(make_app(EmbedConfig(max_tokens=16)), startup_timeout_s=60) as lifespan:
        ours = await lifespan.request("POST", "/v1/embeddings", json={"input": texts, "model": MODEL})
        embed = await lifespan.request("POST", "/embed", json={"texts": texts})
        models = await lifespan.request("GET", "/v1/models")
    assert ours.status == 200, ours.body
    answer = ours.json()
    assert [d["embedding"] for d in answer["data"]] == embed.json()["embeddings"]  # the same floats
    assert answer["usage"] == {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
    assert [m["id"] for m in models.json()["data"]] == [MODEL]


async def test_with_batching_both_routes_share_the_batcher_and_its_passes() -> None:
    from examples.embed import EmbedConfig, make_app

    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the weather'}" for i in range(8)]
    app = make_app(EmbedConfig(batching=Batching(max_batch_rows=64)))
    async with LifespanDriver(app, startup_timeout_s=60) as lifespan:
        answers: list[list[float] | None] = [None] * len(texts)

        async def one(i: int) -> None:
            if i % 2:
                body = {"input": texts[i], "model": MODEL, "encoding_format": "base64"}
                result = await lifespan.request("POST", "/v1/embeddings", json=body)
                answers[i] = decode_base64(result.json()["data"][0]["embedding"])
            else:
                result = await lifespan.request("POST", "/embed", json={"texts": [texts[i]]})
                answers[i] = result.json()["embeddings"][0]

        async with anyio.create_task_group() as tg:
            for i in range(len(texts)):
                tg.start_soon(one, i)
        passes = lifespan.state["model"].forward_passes
        alone = await lifespan.request("POST", "/embed", json={"texts": texts})
    assert passes < len(texts)  # requests of both routes were coalesced
    expected = alone.json()["embeddings"]
    for got, want in zip(answers, expected, strict=True):
        assert got is not None
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5


# ---- examples.embed under hypercorn, with the official openai client ------------------------------


async def test_every_route_describes_its_body_and_answers_in_the_openapi_document() -> None:
    api = OpenAIEmbeddings(FakeEmbedder(), model="tiny", dimensions=4)
    async with LifespanDriver(Host(routes=api.routes())) as lifespan:
        document = (await lifespan.request("GET", "/openapi.json")).json()
    create = document["paths"]["/v1/embeddings"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EmbeddingsRequest"
    }
    assert create["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EmbeddingsResponse"
    }
    assert create["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    for path, answer in (("/v1/models", "ModelList"), ("/v1/models/tiny", "Model")):
        operation = document["paths"][path]["get"]
        assert operation["summary"]
        assert "requestBody" not in operation
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{answer}"
        }


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    env = {"EMBED_BATCHING": "on", "EMBED_MAX_TEXTS": "8"}
    tmp = tmp_path_factory.mktemp("openai")
    command = server_command("hypercorn", "examples.embed:app", port)
    with run_server(command, port, tmp, env=env, ready_path="/readyz", timeout_s=120) as server:
        yield server


@pytest.fixture
def client(embed_server: ServerProcess) -> Iterator[Any]:
    import openai

    with openai.OpenAI(base_url=f"{embed_server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.mark.server
def test_the_official_client_gets_the_embeddings_of_embed(embed_server: ServerProcess, client: Any) -> None:
    reference = httpx.post(f"{embed_server.url}/embed", json={"texts": FOOD}, timeout=30).json()["embeddings"]

    response = client.embeddings.create(model=MODEL, input=FOOD)  # the client asks for base64
    vectors = [item.embedding for item in response.data]
    assert [item.index for item in response.data] == [0, 1, 2]
    assert response.model == MODEL
    for got, want in zip(vectors, reference, strict=True):
        assert len(got) == 384
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-6
        assert math.sqrt(sum(x * x for x in got)) == pytest.approx(1.0, abs=1e-5)
    counts = token_counts(FOOD, 256)
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (sum(counts), sum(counts))

    floats = client.embeddings.create(model=MODEL, input=FOOD, encoding_format="float")
    assert [item.embedding for item in floats.data] == reference  # JSON floats: the very same

    single = client.embeddings.create(model=MODEL, input=FOOD[1])
    assert len(single.data) == 1
    assert max(abs(a - b) for a, b in zip(single.data[0].embedding, reference[1], strict=True)) < 1e-5
    assert single.usage.prompt_tokens == counts[1]

    listed = client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in listed.data] == [(MODEL, "model", "sentence-transformers")]
    assert client.models.retrieve(MODEL).id == MODEL


@pytest.mark.server
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the async client runs on asyncio
async def test_the_async_client_batches_with_embed_on_the_server(
    embed_server: ServerProcess, anyio_backend: str
) -> None:
    import openai

    async with openai.AsyncOpenAI(
        base_url=f"{embed_server.url}/v1", api_key="unused", max_retries=0
    ) as client:
        answers: list[Any] = [None] * len(FOOD)

        async def one(i: int) -> None:
            answers[i] = await client.embeddings.create(model=MODEL, input=FOOD[i])

        async with anyio.create_task_group() as tg:
            for i in range(len(FOOD)):
                tg.start_soon(one, i)
    async with httpx.AsyncClient() as http:
        reference = (await http.post(f"{embed_server.url}/embed", json={"texts": FOOD}, timeout=30)).json()
    for answer, want in zip(answers, reference["embeddings"], strict=True):
        got = answer.data[0].embedding
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5


@pytest.mark.server
def test_the_official_client_raises_openais_errors(client: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError, match=r"input\[1\] is an empty string") as empty:
        client.embeddings.create(model=MODEL, input=["fine", ""])
    assert (empty.value.status_code, empty.value.param, empty.value.type) == (
        400,
        "input",
        "invalid_request_error",
    )
    with pytest.raises(openai.BadRequestError, match="takes text only"):
        client.embeddings.create(model=MODEL, input=[[101, 2023, 102]])
    with pytest.raises(openai.BadRequestError, match="9 inputs is more than max_inputs=8"):
        client.embeddings.create(model=MODEL, input=["a"] * 9)
    with pytest.raises(openai.BadRequestError, match="dimensions=128 is not supported") as dims:
        client.embeddings.create(model=MODEL, input="a", dimensions=128)
    assert dims.value.param == "dimensions"
    with pytest.raises(openai.NotFoundError, match="does not exist") as missing:
        client.embeddings.create(model="text-embedding-3-small", input="a")
    assert missing.value.code == "model_not_found"


@pytest.mark.server
def test_the_snippet_in_protocols_md_runs(
    embed_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_doc_snippets import python_block

    block = python_block("docs/protocols.md", "## OpenAI-compatible embeddings")
    assert "http://127.0.0.1:8001/v1" in block
    code = block.replace("http://127.0.0.1:8001", embed_server.url)
    namespace: dict[str, Any] = {"__name__": "protocols_md"}
    try:
        exec(compile(code, "docs/protocols.md", "exec", dont_inherit=True), namespace)
    finally:
        if "client" in namespace:
            namespace["client"].close()  # its pooled connections, else a ResourceWarning
    printed = capsys.readouterr().out.splitlines()
    size, similarity = printed[0].split()
    assert size == "384"
    assert 0.5 < float(similarity) < 1.0
    assert printed[1] == str(sum(token_counts(FOOD[:2], 256)))
    assert printed[2] == "400 input[0] is an empty string"


async def test_the_own_model_snippet_in_protocols_md_serves() -> None:
    from tests.test_doc_snippets import python_block

    block = python_block("docs/protocols.md", "### Your own embedding model behind the OpenAI routes")
    namespace: dict[str, Any] = {"__name__": "protocols_md_own_model"}
    exec(compile(block, "docs/protocols.md", "exec", dont_inherit=True), namespace)
    async with LifespanDriver(namespace["app"]) as lifespan:
        body = {"input": ["a b c", "hello"], "model": "my-embedder"}
        result = await lifespan.request("POST", "/v1/embeddings", json=body)
        card = await lifespan.request("GET", "/v1/models/my-embedder")
        wrong = await lifespan.request("POST", "/v1/embeddings", json={**body, "model": "other"})
    assert result.status == 200, result.body
    assert [len(d["embedding"]) for d in result.json()["data"]] == [8, 8]
    assert result.json()["usage"]["prompt_tokens"] == 4
    assert card.json()["id"] == "my-embedder"
    assert wrong.json()["error"]["code"] == "model_not_found"


@pytest.mark.server
def test_the_module_needs_neither_torch_nor_openai() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['openai'] = None\n"
        "import asgi_host.openai_embeddings\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.server
def test_the_bench_script_starts() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "openai",
            "-n",
            "3",
            "--texts",
            "2",
            "--model-n",
            "1",
            "--model-texts",
            "1",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| POST")]
    assert len(rows) == 6  # three routes, stand-in and real model


@pytest.mark.parametrize("model", ["", "a?b", "a#b"])
def test_both_openai_adapters_refuse_a_model_id_that_is_not_one_path_segment(model: str) -> None:
    from asgi_host.openai_chat import OpenAIChat

    async def embed(texts: list[str], request: Request) -> tuple[list[list[float]], list[int]]:
        return [], []

    with pytest.raises(ValueError, match="must be a non-empty path segment"):
        OpenAIEmbeddings(embed, model=model, dimensions=4)
    with pytest.raises(ValueError, match="must be a non-empty path segment"):
        OpenAIChat(None, encode=list, chat_prompt=str, model=model)  # type: ignore[arg-type]
