"""Generative models: one decode loop per model with continuous batching, and what it streams.

::

    generator = Generator(new_cache=..., detokenize=tokenizer.decode, eos_token_ids=[2])
    app = Host(resources=[TorchModel(...), generator], routes=[...])

    async for delta in generator.generate(prompt_ids, SamplingParams(max_tokens=64, temperature=0)):
        ...  # delta.text, delta.token_ids; the last one has finish_reason

Needs the `torch` extra. `examples/chat.py` serves SmolLM2 with it behind OpenAI's chat and
completions API (`asgi_host.openai_chat`); docs/streaming.md says how to stream from your own
model.
"""

from ._engine import GenerationEvent, Generator
from ._sampling import SamplingParams
from ._sequence import Delta, FinishReason

__all__ = ["Delta", "FinishReason", "GenerationEvent", "Generator", "SamplingParams"]
