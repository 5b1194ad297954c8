"""Streaming generation: examples.chat against the tutorial peer, cancellation, aborts, a slow reader.

    python -m bench.generate                  # every section (a few minutes)
    python -m bench.generate --only throughput cancel

- `throughput`: generated tokens/s with 1 and 16 concurrent streams (greedy, max_tokens 64,
  prompts that do not end sooner), time to first token and between tokens, for examples.chat and
  the peer (`bench.chat_peer`: FastAPI + transformers' TextIteratorStreamer, generate() in a thread
  per request), both under uvicorn on the same GGUF weights; tokens counted by the file's tokenizer.
- `cancel`: a client reads five chunks and leaves; the time until its generation has left its cache
  slot (written by the server, `bench.chat_probe`, on the machine's monotonic clock, so nothing
  polls the server meanwhile), under hypercorn, uvicorn and granian, beside the time of a decode step.
- `aborts`: 1,000 clients leave in process (queued, in prefill, in decode); what is left after:
  sequences, slots, asyncio tasks, and the resident memory against the start.
- `slow-reader`: a client that stops reading for `--slow-s` seconds while its generation goes on:
  the bytes held for it in the host (the stream's pending frame and the text not taken yet).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec

from asgi_host.testing import LifespanDriver, ServerProcess, free_port, http_scope, server_command

ROOT = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOPICS = ["a dragon", "the sea", "a clockmaker", "a lost key", "winter", "a city", "a robot", "a garden"]
SETTINGS = {
    "CHAT_DEVICE": "cpu",
    "CHAT_MAX_SEQUENCES": "16",
    "CHAT_MAX_SEQUENCE_TOKENS": "512",
    "CHAT_METRICS": "true",
}


def question(i: int, max_tokens: int, stream: bool = True) -> dict[str, Any]:
    content = f"Write a long story about {TOPICS[i % len(TOPICS)]}, with many details."
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


def start(app: str, server: str, env: dict[str, str]) -> ServerProcess:
    port = free_port()
    process = ServerProcess(server_command(server, app, port), port=port, env=env, cwd=ROOT)  # type: ignore[arg-type]
    process.wait_ready(lambda url: httpx.get(url + "/docs", timeout=5).status_code < 500, 300)
    return process


async def one_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    sent = time.perf_counter()
    arrivals: list[float] = []
    text = []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = msgspec.json.decode(line[6:])
            piece = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
            if piece:
                arrivals.append(time.perf_counter() - sent)
                text.append(piece)
    return {"text": "".join(text), "arrivals": arrivals}


async def load(url: str, clients: int, max_tokens: int, count: Any) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=600) as client:
        await one_stream(client, url, question(0, 4))  # warm
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_stream(client, url, question(i, max_tokens)) for i in range(clients))
        )
        elapsed = time.perf_counter() - started
    tokens = sum(count(r["text"]) for r in results)
    ttft = [r["arrivals"][0] for r in results if r["arrivals"]]
    gaps = [b - a for r in results for a, b in zip(r["arrivals"], r["arrivals"][1:], strict=False)]
    return {
        "tokens_per_s": tokens / elapsed,
        "tokens": tokens,
        "seconds": elapsed,
        "ttft_p50_s": statistics.median(ttft),
        "itl_p50_s": statistics.median(gaps) if gaps else 0.0,
        "itl_p99_s": sorted(gaps)[int(len(gaps) * 0.99)] if gaps else 0.0,
    }


def throughput(args: argparse.Namespace) -> None:
    from examples.smollm2 import build_tokenizer, read_gguf

    tokenizer = build_tokenizer(read_gguf())

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    print("| app | streams | tokens/s | tokens | ttft p50 s | between tokens p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for name, app in (("examples.chat", "examples.chat:app"), ("peer", "bench.chat_peer:app")):
        server = start(app, "uvicorn", SETTINGS)
        try:
            for clients in args.clients:
                r = rows[name, clients] = asyncio.run(load(server.url, clients, args.max_tokens, count))
                numbers = f"{r['tokens_per_s']:.1f} | {r['tokens']:.0f} | {r['ttft_p50_s']:.3f}"
                gaps = f"{r['itl_p50_s'] * 1e3:.1f} / {r['itl_p99_s'] * 1e3:.1f}"
                print(f"| {name} | {clients} | {numbers} | {gaps} |", flush=True)
        finally:
            server.stop()
    for clients in args.clients:
        ours, peer = rows["examples.chat", clients], rows["peer", clients]
        print(
            f"{clients} streams: tokens/s {ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x the peer; "
            f"time to first token {ours['ttft_p50_s'] / peer['ttft_p50_s']:.2f}x the peer's"
        )


def cancel(args: argparse.Namespace) -> None:
    import socket
    import tempfile

    print(
        "| server | client gone -> slot freed, ms: median / max | of which host saw it -> freed | "
        "a decode step, ms |\n|---|---|---|---|"
    )
    for server_name in ("hypercorn", "uvicorn", "granian"):
        probe = Path(tempfile.mkdtemp()) / "cancelled"
        server = start("bench.chat_probe:app", server_name, {**SETTINGS, "BENCH_PROBE_FILE": str(probe)})
        try:
            body = msgspec.json.encode(question(0, 400))
            request = (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            latencies, after_seen, steps = [], [], []
            for trial in range(args.trials):
                with socket.create_connection(("127.0.0.1", server.port)) as sock:
                    sock.sendall(request)
                    data, arrived = b"", []
                    while data.count(b"data: ") < 6:
                        data += sock.recv(65536)
                        arrived.append(time.perf_counter())
                    left = time.monotonic()  # the clock the probe writes
                steps.append((arrived[-1] - arrived[-3]) / 2 if len(arrived) > 3 else 0.0)
                deadline = left + 30
                lines: list[str] = []
                while len(lines) <= trial and time.monotonic() < deadline:
                    time.sleep(0.001)
                    lines = probe.read_text().splitlines() if probe.exists() else []
                freed_at, seconds = (float(x) for x in lines[trial].split())
                latencies.append(freed_at - left)
                after_seen.append(seconds)
            stopped = f"{statistics.median(latencies) * 1e3:.0f} / {max(latencies) * 1e3:.0f}"
            seen = f"{statistics.median(after_seen) * 1e3:.0f} / {max(after_seen) * 1e3:.0f}"
            step = statistics.median(steps) * 1e3
            print(f"| {server_name} | {stopped} | {seen} | {step:.0f} |", flush=True)
        finally:
            server.stop()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def aborts(args: argparse.Namespace) -> None:
    from asgi_host.generation import Generator
    from asgi_host.testing import call
    from examples.chat import ChatConfig, make_app

    app = make_app(
        ChatConfig(device="cpu", max_sequences=4, max_sequence_tokens=512, max_waiting=64, metrics=False)
    )
    async with LifespanDriver(app, startup_timeout_s=120) as lifespan:
        generator = next(r for r in app.resources if isinstance(r, Generator))
        body = msgspec.json.encode(
            {**question(0, 200), "messages": [{"role": "user", "content": "Hi " * 40}]}
        )
        tasks_before, rss_before = len(asyncio.all_tasks()), rss_bytes()
        stages = {"queued or prefilling (left at once)": 0, "decoding (left after 3 chunks)": 3}
        started = time.perf_counter()
        checkpoints: list[str] = []
        for i in range(args.aborts):
            scope = http_scope(
                "POST",
                "/v1/chat/completions",
                headers=[("content-type", "application/json")],
                state=lifespan.state,
            )
            after = list(stages.values())[i % 2]
            await call(
                app, scope, [{"type": "http.request", "body": body}], disconnect_after=after, timeout_s=30
            )
            if (i + 1) % (args.aborts // 4 or 1) == 0:  # growth would show as a rising series
                checkpoints.append(f"{rss_bytes() / 2**20:.0f}")
        await anyio.sleep(0.5)
        seconds = time.perf_counter() - started
        state = f"active {generator.active}, waiting {generator.waiting}, free slots {generator.free_slots}/4"
        print(
            f"{args.aborts} clients left ({', '.join(stages)}, alternating) in {seconds:.1f} s: {state}, "
            f"cancelled {generator.cancelled}, asyncio tasks {tasks_before} -> {len(asyncio.all_tasks())}, "
            f"RSS {rss_before / 2**20:.0f} MiB before, then at each quarter {' / '.join(checkpoints)} MiB"
        )


async def slow_reader(args: argparse.Namespace) -> None:
    from asgi_host import EventStream
    from asgi_host.generation import Generator
    from examples.chat import ChatConfig, make_app

    app = make_app(ChatConfig(device="cpu", max_sequences=4, max_sequence_tokens=2048, metrics=False))
    streams: list[EventStream] = []
    real_prime = EventStream.prime

    async def keep(self: EventStream, receive: Any) -> None:
        streams.append(self)
        await real_prime(self, receive)

    EventStream.prime = keep  # type: ignore[method-assign]
    async with LifespanDriver(app, startup_timeout_s=120) as lifespan:
        generator = next(r for r in app.resources if isinstance(r, Generator))
        body = msgspec.json.encode(question(0, args.slow_tokens))
        read = anyio.Event()

        async def receive() -> Any:
            await anyio.sleep(3600)

        async def send(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body") and not read.is_set():
                read.set()
                await anyio.sleep(args.slow_s)  # the client stops reading: the server's send waits

        scope = http_scope(
            "POST",
            "/v1/chat/completions",
            headers=[("content-type", "application/json")],
            state=lifespan.state,
        )
        first = True

        async def receive_body() -> Any:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": body}
            return await receive()

        async with anyio.create_task_group() as tg:
            tg.start_soon(app, scope, receive_body, send)
            await read.wait()
            await anyio.sleep(args.slow_s - 1)
            stream = streams[-1]
            sequence = next(iter(generator._active.values()), None)
            untaken = len(sequence.text) - sequence._taken_text if sequence else 0
            print(
                f"a reader stopped for {args.slow_s} s: its generation went on to "
                f"{len(sequence.generated) if sequence else 'its end'} tokens; held for it: the stream's "
                f"pending frame {stream._pending_bytes} bytes + text not taken {untaken} bytes "
                f"(max_tokens={args.slow_tokens})"
            )
            tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=["throughput", "cancel", "aborts", "slow-reader"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--aborts", type=int, default=1000)
    parser.add_argument("--slow-s", type=float, default=60.0)
    parser.add_argument("--slow-tokens", type=int, default=1500)
    args = parser.parse_args()
    # A SIGTERM (a timeout, a kill) unwinds like Ctrl-C, so the servers started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(
        f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, python "
        f"{sys.version.split()[0]}\n",
        flush=True,
    )
    if "throughput" in args.only:
        throughput(args)
    if "cancel" in args.only:
        cancel(args)
    if "aborts" in args.only:
        anyio.run(aborts, args)
    if "slow-reader" in args.only:
        anyio.run(slow_reader, args)


if __name__ == "__main__":
    main()
