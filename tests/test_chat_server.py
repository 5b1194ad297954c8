"""examples.chat under hypercorn, uvicorn and granian, with the official `openai` client, sync and async;
and a client that leaves mid-stream, which stops its generation within a step under each server."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import httpx
import msgspec
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from asgi_host.testing import SERVERS, ServerProcess, free_port, server_command
from tests._server import run_server

pytestmark = [pytest.mark.server, pytest.mark.anyio]

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SETTINGS = {"CHAT_MAX_SEQUENCES": "4", "CHAT_MAX_SEQUENCE_TOKENS": "512", "CHAT_DEVICE": "cpu"}


@pytest.fixture(scope="module", params=SERVERS)
def chat_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    port = free_port()
    command = server_command(request.param, "examples.chat:app", port)
    tmp = tmp_path_factory.mktemp(request.param)
    with run_server(command, port, tmp, env=SETTINGS, ready_path="/readyz", timeout_s=120) as server:
        ready = time.monotonic() + 120
        while httpx.get(server.url + "/readyz", timeout=5).status_code != 200 and time.monotonic() < ready:
            time.sleep(0.1)
        yield server


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


def test_the_official_client_chats_streams_and_completes(chat_server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=chat_server.url + "/v1", api_key="unused", max_retries=0)
    question: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    answer = client.chat.completions.create(model=MODEL, messages=question, temperature=0, max_tokens=20)
    assert answer.choices[0].message.content == "The capital of France is Paris."
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8
    pieces = []
    usage = None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=question,
        temperature=0,
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert "".join(pieces) == "The capital of France is Paris."
    assert usage is not None
    assert usage.total_tokens == answer.usage.total_tokens
    text = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0
    )
    assert text.choices[0].text.startswith(" Paris")
    assert [m.id for m in client.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=question)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model=MODEL, messages=question, max_tokens=1000)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_client_streams(chat_server: ServerProcess) -> None:
    client = openai.AsyncOpenAI(base_url=chat_server.url + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=20,
        stream=True,
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "The capital of France is Paris."
    await client.close()


def test_a_client_that_leaves_mid_stream_stops_its_generation(chat_server: ServerProcess) -> None:
    cancelled = metric(chat_server, "asgi_host_generations_cancelled_total")
    generated = metric(chat_server, "vllm:generation_tokens_total")
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    body = msgspec.json.encode(
        {"model": MODEL, "stream": True, "max_tokens": 400, "temperature": 0, "messages": messages}
    )
    with socket.create_connection(("127.0.0.1", chat_server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        sock.settimeout(60)
        received = b""
        while received.count(b"data: ") < 5:  # the role chunk, then a few tokens
            received += sock.recv(65536)
        left = time.monotonic()
    deadline = left + 10
    while metric(chat_server, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped_within = time.monotonic() - left
    assert metric(chat_server, "vllm:num_requests_running") == 0
    assert metric(chat_server, "asgi_host_generations_cancelled_total") == cancelled + 1
    assert metric(chat_server, "vllm:generation_tokens_total") - generated < 30  # not the 400 asked
    assert stopped_within < 1.0, stopped_within  # a step is ~40 ms here; the scrape loop adds a little
