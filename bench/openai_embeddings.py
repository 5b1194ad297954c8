"""The OpenAI embeddings layer's cost per request, against the host's own /embed, in one process.

    python -m bench.openai_embeddings [-n 300] [--texts 64] [--model-n 30] [--model-texts 8]

Two parts, each with raw ASGI messages (no server, no test-kit checks), one request at a time,
the routes alternating so that the figures are comparable within a run:

- the protocol layer alone: a stand-in model that returns fixed vectors of 384 floats, behind
  a `StructEndpoint` shaped like /embed and behind `OpenAIEmbeddings` (floats, base64);
- examples.embed with the real MiniLM: `POST /embed` against `POST /v1/embeddings`.
"""

from __future__ import annotations

import argparse
import array
import random
import statistics
import time
from typing import Any

import anyio
import msgspec

from asgi_host import Host, Request, Route, StructEndpoint
from asgi_host.openai_embeddings import OpenAIEmbeddings
from asgi_host.testing import LifespanDriver

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


async def post(app: Any, path: str, body: bytes) -> tuple[int, int]:
    """One POST with raw messages: (status, response body bytes)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }
    sent = False
    status = 0
    size = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, size
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            size += len(message.get("body", b""))

    await app(scope, receive, send)
    return status, size


async def compare(app: Any, cases: dict[str, tuple[str, bytes]], n: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in cases}
    sizes: dict[str, int] = {}
    for name, (path, body) in cases.items():  # warm up each route
        status, sizes[name] = await post(app, path, body)
        assert status == 200, (name, status)
    for _ in range(n):
        for name, (path, body) in cases.items():
            started = time.perf_counter()
            await post(app, path, body)
            times[name].append(time.perf_counter() - started)
    reference = statistics.median(times[next(iter(cases))])
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"| {name} | {median * 1e6:.0f} us | {median / reference:.2f}x | {sizes[name]:,} |",
            flush=True,
        )


async def layer_alone(n: int, count: int) -> None:
    rng = random.Random(0)
    # float32-representable, as the model's outputs are.
    vectors = [array.array("f", [rng.uniform(-0.2, 0.2) for _ in range(384)]).tolist()] * count

    async def embed(texts: list[str], request: Request) -> tuple[list[list[float]], list[int]]:
        return vectors[: len(texts)], [8] * len(texts)

    class Texts(msgspec.Struct):
        texts: list[str]

    class Embeddings(msgspec.Struct):
        embeddings: list[list[float]]

    async def own(body: Texts, request: Request) -> Embeddings:
        result, _ = await embed(body.texts, request)
        return Embeddings(result)

    api = OpenAIEmbeddings(embed, model=MODEL, dimensions=384)
    app = Host(routes=[Route("/embed", StructEndpoint(own, Texts), methods=["POST"]), *api.routes()])
    texts = [f"sentence number {i}" for i in range(count)]
    async with LifespanDriver(app):
        await compare(app, cases(texts), n)


async def real_model(n: int, count: int) -> None:
    from examples.embed import EmbedConfig, make_app

    app = make_app(EmbedConfig(max_texts=max(count, 1)))
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the weather'}" for i in range(count)]
    async with LifespanDriver(app, startup_timeout_s=120):
        await compare(app, cases(texts), n)


def cases(texts: list[str]) -> dict[str, tuple[str, bytes]]:
    encode = msgspec.json.encode
    return {
        "POST /embed": ("/embed", encode({"texts": texts})),
        "POST /v1/embeddings, float": ("/v1/embeddings", encode({"input": texts, "model": MODEL})),
        "POST /v1/embeddings, base64": (
            "/v1/embeddings",
            encode({"input": texts, "model": MODEL, "encoding_format": "base64"}),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="requests per route, stand-in model")
    parser.add_argument("--texts", type=int, default=64, help="texts per request")
    parser.add_argument("--model-n", type=int, default=30, help="requests per route with the real model")
    parser.add_argument("--model-texts", type=int, default=8, help="texts per request with the real model")
    parser.add_argument("--skip-model", action="store_true", help="the protocol layer alone")
    args = parser.parse_args()
    header = "| route | median per request | against /embed | response bytes |\n|---|---|---|---|"
    print(f"Stand-in model, {args.texts} texts of 384 floats per request, n={args.n}\n\n{header}")
    anyio.run(layer_alone, args.n, args.texts)
    if not args.skip_model:
        print(
            f"\nexamples.embed (MiniLM on CPU), {args.model_texts} short texts per request, "
            f"n={args.model_n}\n\n{header}"
        )
        anyio.run(real_model, args.model_n, args.model_texts)


if __name__ == "__main__":
    main()
