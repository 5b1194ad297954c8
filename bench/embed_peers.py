"""MiniLM sentence embeddings over HTTP: examples.embed against FastAPI + sentence-transformers.

    python -m bench.embed_peers                  # hypercorn, 1 and 32 clients, 10 s per cell
    python -m bench.embed_peers -c 32 -d 5

The peer (`bench.embed_peers:fastapi_app`) is what a FastAPI user writes: a
lifespan that loads `SentenceTransformer` from the same packaged weights, a
pydantic body, a sync `def` endpoint calling `model.encode(...,
normalize_embeddings=True)`, returning the same JSON as `POST /embed`. Both run
under hypercorn on 127.0.0.1 and are loaded by wrk with one 12-word sentence
per request; examples.embed runs with batching on and off. Needs the `embed`
extra, sentence-transformers (in the test extra) and wrk.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from asgi_host.testing import free_port
from bench.http import serve, wrk

SCRIPT = Path(__file__).resolve().parent / "post_embed.lua"
WARM = {"texts": ["warm"]}
APPS: dict[str, tuple[str, dict[str, str]]] = {
    "asgi_host, batching on": ("examples.embed:app", {"EMBED_BATCHING": "on"}),
    "asgi_host, batching off": ("examples.embed:app", {"EMBED_BATCHING": "off"}),
    "FastAPI + sentence-transformers": ("bench.embed_peers:fastapi_app", {}),
}

models: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    from sentence_transformers import SentenceTransformer

    from examples.minilm import model_dir

    models["minilm"] = SentenceTransformer(str(model_dir()), device="cpu")
    yield
    models.clear()


fastapi_app = FastAPI(lifespan=lifespan)


class EmbedBody(BaseModel):
    texts: list[str]


@fastapi_app.post("/embed")
def embed(body: EmbedBody) -> dict[str, Any]:
    vectors = models["minilm"].encode(body.texts, normalize_embeddings=True)
    return {"embeddings": vectors.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("-d", "--seconds", type=int, default=10)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args()
    args.port = args.port or free_port()
    results: dict[tuple[str, int], dict[str, float]] = {}
    for name, (app, env) in APPS.items():
        # MiniLM's first pass can take seconds on a loaded machine: a longer wait than Iris's.
        process = serve("hypercorn", app, args.port, env, ready_path="/embed", ready_json=WARM, wait_s=180)
        try:
            wrk(args.port, 4, 2, SCRIPT, "/embed")  # warm up
            for c in args.connections:
                results[name, c] = wrk(args.port, c, args.seconds, SCRIPT, "/embed")
        finally:
            process.stop()
    print("| clients | app | req/s | p50 ms | p99 ms | / FastAPI + sentence-transformers |")
    print("|---|---|---|---|---|---|")
    for c in args.connections:
        peer = results["FastAPI + sentence-transformers", c]["rps"]
        for name in APPS:
            r = results[name, c]
            print(
                f"| {c} | {name} | {r['rps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['rps'] / peer:.2f}x |"
            )


if __name__ == "__main__":
    main()
