"""The tutorial peer for streaming generation: FastAPI + transformers' `TextIteratorStreamer`, with
`generate()` in a thread per request, on the same GGUF weights as `examples.chat`.

    uvicorn bench.chat_peer:app --port 8000

`POST /v1/chat/completions` with `stream: true` answers OpenAI-style SSE chunks (content only), as
the usual tutorial writes it: the chat template, a streamer, a thread running `generate`, and a
`StreamingResponse` over the streamer. Greedy (`temperature` 0) or sampled. Benchmark peer only
(`python -m bench.generate`); transformers and FastAPI are test extras.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

from examples.smollm2 import GGUF_NAME, gguf_path

folder = str(gguf_path().parent)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_NAME)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=torch.float32)
model.eval()  # type: ignore[no-untyped-call]

app = FastAPI()


@app.post("/v1/chat/completions")
def chat(body: dict[str, Any]) -> StreamingResponse:
    encoded: Any = tokenizer.apply_chat_template(
        body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    inputs: dict[str, Any] = dict(encoded)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    temperature = float(body.get("temperature", 1.0))
    options: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        options["temperature"] = temperature
    thread = threading.Thread(
        target=model.generate,
        kwargs={
            **inputs,
            "max_new_tokens": int(body.get("max_tokens", 64)),
            "streamer": streamer,
            **options,
        },
    )
    thread.start()

    def events() -> Iterator[str]:
        created = int(time.time())
        for text in streamer:
            if text:
                chunk = {
                    "object": "chat.completion.chunk",
                    "created": created,
                    "choices": [{"index": 0, "delta": {"content": text}}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
        thread.join()
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
