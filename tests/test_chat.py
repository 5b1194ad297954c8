"""examples.chat: SmolLM2 behind OpenAI's chat and completions API, in process with the test kit.

The model's greedy answers equal transformers' (tests/test_smollm2.py checks `greedy` against
`generate`); here the served answers are checked against `greedy` run alone, whatever shares the
decode batch, streamed or not, and cut short by a client that leaves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
import pytest

from asgi_host.generation import Generator, SamplingParams
from asgi_host.testing import LifespanDriver
from examples.chat import ChatConfig, make_app
from examples.smollm2 import KVCache, greedy
from tests._wait import until
from tests.conftest import LOOPS

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # SmolLM2, greedy answers checked token by token

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CHAT = "/v1/chat/completions"
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
]


@pytest.fixture(scope="module", params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module-scoped: the module's tests share one loaded model per event loop."""
    backend: str = request.param
    return backend


@pytest.fixture(scope="module")
async def chat() -> AsyncIterator[LifespanDriver]:
    app = make_app(ChatConfig(device="cpu", max_sequences=4, max_sequence_tokens=512, max_waiting=4))
    async with LifespanDriver(app, startup_timeout_s=120, shutdown_timeout_s=30) as lifespan:
        yield lifespan


def ask(question: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 0, **fields}


def alone(lifespan: LifespanDriver, question: str, max_tokens: int) -> list[int]:
    """`greedy` on the served model, alone in a cache of its own: the reference answer's tokens."""
    files = lifespan.state["smollm2"]
    prompt = files.encode(files.chat_prompt([{"role": "user", "content": question}]))
    module = lifespan.state["model"].module
    cache = KVCache(module.config, 1, 512)
    return greedy(module, cache, prompt, max_tokens, eos_token_id=2)


def generator_of(lifespan: LifespanDriver) -> Generator:
    app: Any = lifespan.app
    found: Generator = next(r for r in app.resources if isinstance(r, Generator))
    return found


async def post(lifespan: LifespanDriver, path: str, body: Any, **kwargs: Any) -> Any:
    return await lifespan.request("POST", path, json=body, timeout_s=60, **kwargs)


async def test_a_chat_completion_is_the_greedy_answer(chat: LifespanDriver) -> None:
    result = await post(chat, CHAT, ask(QUESTIONS[0], max_tokens=24))
    assert result.status == 200, result.body
    answer = result.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == MODEL
    message = answer["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "The capital of France is Paris."}
    assert answer["choices"][0]["finish_reason"] == "stop"
    expected = alone(chat, QUESTIONS[0], 24)
    usage = answer["usage"]
    assert usage["completion_tokens"] == len(expected)  # its end-of-turn token included
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 30  # the template's default system prompt is in it


async def test_streamed_text_equals_the_whole_answer_and_ends_as_openai_does(chat: LifespanDriver) -> None:
    whole = (await post(chat, CHAT, ask(QUESTIONS[1], max_tokens=30))).json()
    options = {"stream": True, "stream_options": {"include_usage": True}}
    result = await post(chat, CHAT, ask(QUESTIONS[1], max_tokens=30, **options))
    assert result.status == 200
    assert result.header("content-type") == "text/event-stream; charset=utf-8"
    events = result.events()
    assert events[-1].data == "[DONE]"
    chunks = [event.json() for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    final, usage = chunks[-2], chunks[-1]
    assert (final["choices"][0]["delta"], final["choices"][0]["finish_reason"]) == (
        {},
        whole["choices"][0]["finish_reason"],
    )
    assert all(c["usage"] is None for c in chunks[:-1])
    assert (usage["choices"], usage["usage"]) == ([], whole["usage"])
    plain = await post(chat, CHAT, ask(QUESTIONS[1], max_tokens=5, stream=True))
    assert all("usage" not in event.json() for event in plain.events()[:-1])  # no include_usage


async def test_sequences_that_join_and_leave_mid_batch_each_get_their_greedy_answer(
    chat: LifespanDriver,
) -> None:
    lengths = [40, 8, 25, 3, 16, 30]
    answers: dict[int, str] = {}

    async def one(i: int) -> None:
        await anyio.sleep(0.05 * i)  # each joins a batch that is already decoding
        result = await post(chat, CHAT, ask(QUESTIONS[i % 4], max_tokens=lengths[i]))
        assert result.status == 200, result.body
        answers[i] = result.json()["choices"][0]["message"]["content"]

    generator = generator_of(chat)
    steps_before = generator.steps
    async with anyio.create_task_group() as tg:
        for i in range(len(lengths)):
            tg.start_soon(one, i)
    files = chat.state["smollm2"]
    for i, length in enumerate(lengths):
        assert answers[i] == files.decode(alone(chat, QUESTIONS[i % 4], length)), i
    assert generator.steps - steps_before < sum(lengths)  # the sequences shared steps


async def test_completions_and_the_models_list(chat: LifespanDriver) -> None:
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    answer = (await post(chat, "/v1/completions", body)).json()
    assert answer["object"] == "text_completion"
    assert answer["choices"][0]["text"].startswith(" Paris")
    assert answer["usage"]["completion_tokens"] == 4
    streamed = await post(chat, "/v1/completions", {**body, "stream": True})
    pieces = [e.json()["choices"][0]["text"] for e in streamed.events()[:-1]]
    assert "".join(pieces) == answer["choices"][0]["text"]
    models = (await chat.request("GET", "/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [MODEL]


async def test_a_client_that_leaves_stops_its_generation(chat: LifespanDriver) -> None:
    generator = generator_of(chat)
    cancelled, generated = generator.cancelled, generator.generated_tokens
    result = await post(chat, CHAT, ask(QUESTIONS[3], max_tokens=200, stream=True), disconnect_after=3)
    assert not result.complete
    await until(lambda: generator.active == 0)
    assert generator.cancelled == cancelled + 1
    assert generator.generated_tokens - generated < 10  # not the 200 it asked for


async def test_a_client_that_leaves_a_whole_answer_stops_it_too(chat: LifespanDriver) -> None:
    generator = generator_of(chat)
    cancelled = generator.cancelled
    # The client sends its body, then leaves while the answer is being generated.
    result = await post(chat, CHAT, ask(QUESTIONS[3], max_tokens=200), then_disconnect=True)
    assert result.status is None
    await until(lambda: generator.active == 0)
    assert generator.cancelled == cancelled + 1


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (ask("hi", model="gpt-4"), 404, "model", "model_not_found"),
        (ask("hi", n=2), 400, "n", None),
        (ask("hi", temperature=3), 400, "temperature", None),
        (ask("hi", stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
        (ask("hi", stream_options={"include_usage": True}), 400, "stream_options", None),
        (ask("hi", tools=[]), 400, "tools", None),
        (ask("hi", max_tokens=600), 400, "max_tokens", "context_length_exceeded"),
        ({"model": MODEL, "messages": []}, 400, "messages", None),
        (ask("word " * 600), 400, "messages", "context_length_exceeded"),
    ],
)
async def test_invalid_requests_get_openais_error_object(
    chat: LifespanDriver, body: Any, status: int, param: str | None, code: str | None
) -> None:
    result = await post(chat, CHAT, body)
    assert result.status == status, result.body
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


async def test_the_hosts_own_refusals_are_openai_errors_too(chat: LifespanDriver) -> None:
    wrong_method = await chat.request("GET", CHAT)
    assert (wrong_method.status, wrong_method.header("allow")) == (405, "POST")
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"
    not_json = await chat.request("POST", CHAT, body=b"x", headers=[("content-type", "text/plain")])
    assert (not_json.status, not_json.json()["error"]["param"]) == (415, None)


async def test_a_full_queue_is_a_503_before_any_byte(chat: LifespanDriver) -> None:
    # tests/test_generation.py fills the queue of a toy model; here the answer's shape is checked:
    # the generator's 503 comes before any byte of the stream, as OpenAI's error object.
    generator = generator_of(chat)
    params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    holding = [generator.generate([1, 2, 3], params) for _ in range(generator.max_sequences)]
    generator.max_waiting = 0  # every slot taken and no waiting: the next request is refused
    try:
        for stream in holding:
            await anext(stream)
        refused = await post(chat, CHAT, ask(QUESTIONS[0], stream=True))
        whole = await post(chat, CHAT, ask(QUESTIONS[0]))
    finally:
        generator.max_waiting = 4
        for stream in holding:
            await stream.aclose()
    for result in (refused, whole):
        assert result.status == 503
        assert result.header("retry-after") is not None
        assert result.json()["error"]["type"] == "server_error"
    assert (await post(chat, CHAT, ask(QUESTIONS[0], max_tokens=2))).status == 200


async def test_the_metrics_have_vllms_names(chat: LifespanDriver) -> None:
    await post(chat, CHAT, ask(QUESTIONS[2], max_tokens=4))
    text = (await chat.request("GET", "/metrics")).body.decode()
    for name in (
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        'vllm:request_success_total{finished_reason="length",model_name="generator"}',
        "asgi_host_generations_cancelled_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "asgi_host_generation_cancel_seconds_bucket",
    ):
        assert name in text, name


async def test_a_prompt_asked_again_reuses_its_cached_prefix_and_answers_the_same(
    chat: LifespanDriver,
) -> None:
    generator = generator_of(chat)
    question = QUESTIONS[3]
    first = await post(chat, CHAT, ask(question, max_tokens=12))
    hits = generator.prefix_hit_tokens
    second = await post(chat, CHAT, ask(question, max_tokens=12))
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    prompt_tokens = second.json()["usage"]["prompt_tokens"]
    # Every prompt token but the last is reused (the last is run again for its logits).
    assert generator.prefix_hit_tokens - hits == prompt_tokens - 1
    text = (await chat.request("GET", "/metrics")).body.decode()
    hits_line = f'vllm:prefix_cache_hits_total{{model_name="generator"}} {float(generator.prefix_hit_tokens)}'
    assert hits_line in text


async def test_the_routes_are_in_the_openapi_document(chat: LifespanDriver) -> None:
    document = msgspec.json.decode((await chat.request("GET", "/openapi.json")).body)
    operation = document["paths"][CHAT]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatRequest"
    }
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert "/v1/completions" in document["paths"]
