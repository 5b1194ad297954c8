"""Sentence embeddings with all-MiniLM-L6-v2 behind `POST /embed`.

    pip install 'asgi_host[embed]'        # make serve/test install it already
    hypercorn examples.embed:app
    curl -X POST localhost:8000/embed -H 'content-type: application/json' \\
         -d '{"texts":["A man is eating food.","A man is eating a piece of bread."]}'

Answers `{"embeddings": [[384 floats], ...]}`, unit length, so a dot product is
the cosine similarity. JSON or MessagePack, the same errors and limits as
/predict, and the same micro-batcher (on by default; `EMBED_BATCHING=off`). Settings:
`EmbedConfig`, from `EMBED_CONFIG` (TOML) and `EMBED_*` variables
(`EMBED_ACCESS_LOG=json`: one JSON line per request).

The same model and batcher also answer OpenAI's embeddings API
(`asgi_host.openai_embeddings`): `POST /v1/embeddings`, `GET /v1/models` and
`GET /v1/models/sentence-transformers/all-MiniLM-L6-v2` (the id is
`EmbedConfig.model_name`), so the official client works as it is::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=["A man is eating food."])

`usage.prompt_tokens` counts the WordPiece tokens each text was run with:
[CLS] and [SEP] included, after truncation to `max_tokens`, padding excluded.
See docs/protocols.md.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any

import msgspec
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from asgi_host import (
    Batching,
    Host,
    HTTPError,
    Request,
    Resource,
    Route,
    Rows,
    StructEndpoint,
)
from asgi_host.config import HostConfig, load_config
from asgi_host.model import TorchModel
from asgi_host.openai_embeddings import OpenAIEmbeddings

from ._compile import CompileMode, compile_setting
from .minilm import MiniLM, load_tokenizer, model_dir


class EmbedConfig(HostConfig, frozen=True, kw_only=True):
    device: str = "auto"
    max_texts: Annotated[int, msgspec.Meta(ge=1)] = 64  # per request; more is 413
    max_chars: Annotated[int, msgspec.Meta(ge=1)] = 2000  # per text; longer is 422
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=512)] = 256  # longer texts are truncated
    # torch.compile at startup, as IrisConfig.compile ("default", "reduce-overhead", ...).
    compile: CompileMode = "off"
    # The model id of the OpenAI-compatible routes (clients send it; another is 404).
    model_name: str = "sentence-transformers/all-MiniLM-L6-v2"
    # Batching on by default: at 32 clients it serves 2.9x the requests of one pass per request,
    # at 1 client 0.75x (docs/benchmarks.md); EMBED_BATCHING=off for one client's latency.
    batching: Batching | None = msgspec.field(default_factory=Batching)


class Embeddings(msgspec.Struct):
    embeddings: list[list[float]]


DIMENSIONS = 384  # all-MiniLM-L6-v2's hidden size: floats per embedding


def _forward(module: nn.Module, texts: list[str], tokenizer: Any, device: torch.device) -> list[list[float]]:
    """The texts' embeddings in one call: tokenized, run and turned into lists together (the reference
    for the split path below, which serving uses; bench/gpu.py times the model with it)."""
    encoded = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encoded], device=device)
    mask = torch.tensor([e.attention_mask for e in encoded], device=device)
    embeddings: list[list[float]] = module(ids, mask).float().cpu().tolist()
    return embeddings


# Serving splits that into three steps, so that the model's thread, which every request of a batch
# waits for, runs only the middle one (`Rows(prepare=..., finish=...)`):


def _prepare(texts: list[str], tokenizer: Any) -> list[torch.Tensor]:
    """In the request's task: each text's token ids, truncated to `max_tokens`, without padding."""
    return [torch.tensor(e.ids[: sum(e.attention_mask)]) for e in tokenizer.encode_batch(texts)]


def _forward_ids(module: nn.Module, rows: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """On the model's thread: the rows (of one request or many) padded to the longest, rounded up to
    a multiple of 8 as the tokenizer pads (so a compiled model meets the lengths it was warmed up
    at), and run; the embeddings, one row each, as a float32 tensor on the CPU."""
    lengths = torch.tensor([len(row) for row in rows])
    longest = int(lengths.max())
    ids = F.pad(pad_sequence(rows, batch_first=True), (0, -longest % 8))
    mask = (torch.arange(ids.shape[1]) < lengths[:, None]).to(torch.int64)
    return module(ids.to(device), mask.to(device)).float().cpu()  # type: ignore[no-any-return]


def _finish(rows: list[torch.Tensor], embeddings: list[torch.Tensor]) -> list[tuple[list[float], int]]:
    """In the request's task: each text's embedding as floats, and the tokens it was run with
    ([CLS] and [SEP] included, after truncation, padding excluded)."""
    return [(vector.tolist(), len(ids)) for vector, ids in zip(embeddings, rows, strict=True)]


def make_app(config: EmbedConfig | None = None) -> Host:
    config = config or EmbedConfig()
    text = Annotated[str, msgspec.Meta(min_length=1, max_length=config.max_chars)]
    request_type = msgspec.defstruct(
        "EmbedRequest",
        [("texts", Annotated[list[text], msgspec.Meta(min_length=1)])],
        forbid_unknown_fields=True,
    )

    def tokenizer() -> None:
        load_tokenizer(config.max_tokens)  # at startup: a missing tokenizer.json fails it, with the path

    def prepare(texts: list[str]) -> list[torch.Tensor]:
        return _prepare(texts, load_tokenizer(config.max_tokens))  # cached

    def forward(
        module: nn.Module, rows: list[torch.Tensor], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return _forward_ids(module, rows, device)

    # Tokenizing and the embeddings' lists in each request's task; the model's thread runs the pass.
    rows: Rows[str, tuple[list[float], int]] = Rows(
        forward, batching=config.batching, prepare=prepare, finish=_finish
    )

    async def run(texts: list[str], request: Request) -> tuple[list[list[float]], list[int]]:
        """The vectors and token counts of `texts`: one pass of the model, or through the batcher."""
        pairs = await rows.run(texts, request)
        return [vector for vector, _ in pairs], [tokens for _, tokens in pairs]

    async def embed(body: Any, request: Request) -> Embeddings:
        """Embed texts: one unit-length vector of 384 floats per text."""
        texts: list[str] = body.texts
        if len(texts) > config.max_texts:
            raise HTTPError(413, f"{len(texts)} texts is more than max_texts={config.max_texts}; split them")
        vectors, _ = await run(texts, request)
        for i, vector in enumerate(vectors):
            if not all(math.isfinite(x) for x in vector):  # never answer NaN as an embedding
                raise HTTPError(422, "the model's output for this text is not finite", path=f"$.texts[{i}]")
        return Embeddings(vectors)

    def warmup(module: nn.Module, rows: int | None = None) -> None:
        # One short text; with a batch size (compiled), that many texts of the longest length.
        texts = ["warm up"] if rows is None else ["warm up " * config.max_tokens] * rows
        _forward_ids(module, prepare(texts), next(module.parameters()).device)

    largest = config.batching.max_batch_rows if config.batching else config.max_texts

    endpoint = StructEndpoint(embed, request_type, resources=rows.resources)
    # OpenAI's embeddings API over the same model and batcher (the batcher starts with /embed's endpoint).
    openai = OpenAIEmbeddings(
        run,
        model=config.model_name,
        dimensions=DIMENSIONS,
        max_inputs=config.max_texts,
        max_chars=config.max_chars,
        owned_by="sentence-transformers",
    )
    return Host(
        resources=[
            Resource.from_hooks(tokenizer, name="tokenizer"),
            TorchModel(
                MiniLM,
                model_dir() / "model.safetensors",
                device=config.device,
                warmup=warmup,
                compile=compile_setting(config.compile),
                # With bucket_rows, every size a pass is padded to (each a shape compiled once).
                warmup_batch_sizes=config.batching.pass_sizes()
                if config.batching and config.batching.bucket_rows
                else (1, largest)
                if config.compile != "off"
                else (),
            ),
        ],
        routes=[Route("/embed", endpoint, methods=["POST"]), openai],
        **config.host_kwargs(),
    )


app = make_app(load_config(EmbedConfig, env_prefix="EMBED_", toml_path=os.environ.get("EMBED_CONFIG")))
