"""GPU verification: memory around the model's life, time to ready, MiniLM batching, compile, OOM.

    python -m bench.gpu                     # everything; on a machine without CUDA, the CPU path
    python -m bench.gpu --only memory ready # some sections (memory ready throughput compile oom)
    python -m bench.gpu --run-tests         # first runs the tests that can run on the GPU machine
    python -m bench.gpu --out DIR           # also writes DIR/gpu.md and DIR/gpu.json

Sections, each through the real host lifespan (`host.lifespan()`) where a host is involved:

- memory: for the Iris model and MiniLM, CUDA allocated/reserved and this process's memory as
  `nvidia-smi` reports it (which includes the CUDA context, never released before the process
  exits) before load, after load, after a 64-text request, after shutdown, and after also
  clearing cuBLAS's workspaces; on CPU the process's resident set size.
- ready: a fresh process per model, from its start to `lifespan.startup.complete` (import,
  CUDA context, load, warmup), as a server's first ready answer would see it.
- throughput: MiniLM /embed in-process (no HTTP: the model and the batcher are what is
  measured), batching off and on, requests/s with p50/p99 latency per concurrency.
- compile: per-pass latency of eager vs `torch.compile` (default and `mode="reduce-overhead"`,
  which captures CUDA graphs), compile time, largest difference from eager, and whether the
  compiled model runs from worker threads as the host runs it.
- oom: a real CUDA out-of-memory in a MiniLM pass (the GPU filled to leave 2 GiB): what is
  raised, what memory is left, whether halves of the batch then fit and the process serves on.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import torch

from asgi_host import Batching, Host
from asgi_host.model import TorchModel
from asgi_host.testing import request
from examples.app import IrisConfig
from examples.app import make_app as make_iris
from examples.embed import EmbedConfig, _forward
from examples.embed import make_app as make_embed
from examples.minilm import MiniLM, load_tokenizer, model_dir

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "A man is eating a piece of bread in the park."
SECTIONS = ("memory", "ready", "throughput", "gil", "compile", "served", "oom")
MIB = 2**20


def _smi(query: str, *args: str) -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, str]:
    facts = {"python": platform.python_version(), "torch": torch.__version__, "cores": str(os.cpu_count())}
    if torch.cuda.is_available():
        name, _, driver = _smi("gpu=name,driver_version").partition(", ")
        facts |= {
            "gpu": name or torch.cuda.get_device_name(0),
            "driver": driver,
            "cuda": str(torch.version.cuda),
        }
    else:
        facts["cpu"] = platform.processor() or platform.machine()
    return facts


def nvidia_smi_mib() -> int | None:
    """This process's GPU memory as nvidia-smi reports it (context included); None without it."""
    out = _smi("compute-apps=pid,used_memory")
    if not out and not torch.cuda.is_available():
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return int(used.strip())
    return 0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def snapshot() -> dict[str, float | None]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return {
            "allocated_mib": torch.cuda.memory_allocated() / MIB,
            "reserved_mib": torch.cuda.memory_reserved() / MIB,
            "nvidia_smi_mib": nvidia_smi_mib(),
        }
    return {"rss_mib": rss_mib()}


def show(snap: dict[str, float | None]) -> str:
    if "rss_mib" in snap:
        return f"RSS {snap['rss_mib']:.0f} MiB"
    return f"{snap['allocated_mib']:.1f} / {snap['reserved_mib']:.1f} / {snap['nvidia_smi_mib']}"


def clear_cublas_workspaces() -> None:
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if torch.cuda.is_available() and clear is not None:
        clear()
        torch.cuda.empty_cache()


async def memory(device: str) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    hosts: list[tuple[str, Host, str, Any]] = [
        (
            "Iris MLP",
            make_iris(IrisConfig(device=device, metrics=False)),
            "/predict",
            {"inputs": [[5.1, 3.5, 1.4, 0.2]] * 64},
        ),
        ("MiniLM-L6", make_embed(EmbedConfig(device=device)), "/embed", {"texts": [SENTENCE * 4] * 64}),
    ]
    for name, host, path, body in hosts:
        row = {"before load": snapshot()}
        async with host.lifespan() as state:
            row["after load"] = snapshot()
            result = await request(host, "POST", path, json=body, state=state, timeout_s=60)
            assert result.status == 200, result.body
            row["after a 64-row request"] = snapshot()
        row["after shutdown"] = snapshot()
        clear_cublas_workspaces()
        row["cuBLAS workspaces cleared"] = snapshot()
        rows[name] = row
    return rows


READY_CHILD = """
import time, sys, json
started = time.perf_counter()
import anyio, torch
imported = time.perf_counter()
sys.path.insert(0, {root!r})
if {model!r} == "minilm":
    from examples.embed import EmbedConfig, make_app
    host = make_app(EmbedConfig(device={device!r}))
else:
    from examples.app import IrisConfig, make_app
    host = make_app(IrisConfig(device={device!r}, metrics=False))
built = time.perf_counter()
stages = []
report = host.progress.report
def timed(stage=None, fraction=None):
    stages.append((host.progress.resource, stage, time.perf_counter()))
    report(stage, fraction)
host.progress.report = timed
async def main():
    async with host.lifespan():
        ready = time.perf_counter()
        marks = stages + [("ready", None, ready)]
        spans = {{f"{{r}}: {{s}}": round(t2 - t, 3) for (r, s, t), (_, _, t2) in zip(marks, marks[1:]) if s}}
        model = next(r for r in host.resources if hasattr(r, "last_load_s"))
        print(json.dumps({{"import_s": imported - started, "app_s": built - imported,
                           "startup_s": ready - built, "load_s": model.last_load_s, "stages": spans}}))
anyio.run(main)
"""


def ready(device: str) -> dict[str, Any]:
    """A fresh interpreter per model: process start to lifespan startup complete."""
    rows: dict[str, Any] = {}
    for model in ("iris", "minilm"):
        code = READY_CHILD.format(root=str(ROOT), model=model, device=device)
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
        total = time.perf_counter() - started
        rows[model] = json.loads(out.stdout.strip().splitlines()[-1]) | {"process_to_ready_s": total}
    return rows


async def throughput(host: Host, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    async with host.lifespan() as state:
        for _ in range(3):  # warm the tokenizer, allocator and any lazy kernels
            await request(host, "POST", "/embed", json={"texts": [SENTENCE]}, state=state, timeout_s=60)
        deadline = anyio.current_time() + seconds

        async def client() -> None:
            while anyio.current_time() < deadline:
                sent = time.perf_counter()
                result = await request(
                    host, "POST", "/embed", json={"texts": [SENTENCE]}, state=state, timeout_s=60
                )
                assert result.status == 200, result.body
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "requests": len(latencies),
    }


async def throughputs(
    device: str, clients: list[int], seconds: float, compile: Any = "off"
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for c in clients:
        off = await throughput(make_embed(EmbedConfig(device=device, compile=compile)), c, seconds)
        on = await throughput(
            make_embed(EmbedConfig(device=device, compile=compile, batching=Batching(max_batch_rows=128))),
            c,
            seconds,
        )
        rows[str(c)] = {"off": off, "on": on}
        print(f"  {c} clients: off {off['rps']:.0f} req/s, on {on['rps']:.0f} req/s", flush=True)
    return rows


def _timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, float, torch.Tensor]:
    """Median and p99 seconds of `fn()` including the copy back to the host, as a request pays."""
    times: list[float] = []
    out = fn()
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn().cpu()
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)], out


def compiled(device: str, repeats: int = 200) -> dict[str, Any]:
    """Eager vs torch.compile for one-row passes of Iris and MiniLM (and 32 rows of MiniLM)."""
    from examples.iris import WEIGHTS, IrisMLP

    dev = torch.device(device)
    modes: list[tuple[str, dict[str, Any] | None]] = [("eager", None), ("compile", {})]
    if dev.type == "cuda":
        modes.append(("compile reduce-overhead", {"mode": "reduce-overhead"}))
    tokenizer = load_tokenizer(256)
    cases: list[tuple[str, Callable[[], torch.nn.Module], Path, Callable[..., Any]]] = []
    iris_x = torch.tensor([[5.1, 3.5, 1.4, 0.2]], device=dev)
    cases.append(("Iris, 1 row", IrisMLP, WEIGHTS, lambda m: m(iris_x)))
    for rows in (1, 32):
        enc = tokenizer.encode_batch([SENTENCE] * rows)
        ids = torch.tensor([e.ids for e in enc], device=dev)
        mask = torch.tensor([e.attention_mask for e in enc], device=dev)
        cases.append(
            (
                f"MiniLM, {rows} row(s)",
                MiniLM,
                model_dir() / "model.safetensors",
                lambda m, i=ids, k=mask: m(i, k),
            )
        )
    results: dict[str, Any] = {}
    for case, build, weights, call in cases:
        module, _ = TorchModel(build, weights, device=device).load()
        reference: torch.Tensor | None = None
        for mode, options in modes:
            torch._dynamo.reset()
            runner = module if options is None else torch.compile(module, **options)
            with torch.inference_mode():
                started = time.perf_counter()
                call(runner)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                first_s = time.perf_counter() - started
                call(runner)  # reduce-overhead records its graph on the second call
                p50, p99, out = _timed(partial(call, runner), repeats)
            if reference is None:
                reference = out
            row: dict[str, Any] = {
                "first_call_s": first_s,
                "p50_us": p50 * 1e6,
                "p99_us": p99 * 1e6,
                "max_abs_diff_vs_eager": float((out.float() - reference.float()).abs().max()),
            }
            if options is not None:
                row["from_worker_threads"] = _threaded(runner, call)
            results[f"{case} | {mode}"] = row
            print(f"  {case} {mode}: {row}", flush=True)
        del module
        torch._dynamo.reset()
    return results


def _threaded(runner: Any, call: Callable[..., Any]) -> str:
    """Run the compiled model from a pool of 4 threads, as anyio.to_thread does; 'ok' or the error."""

    def one() -> None:
        with torch.inference_mode():
            call(runner).cpu()

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(one) for _ in range(16)]:
                future.result()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return "ok"


MIXED = [
    "Hi.",
    "A man is eating food.",
    SENTENCE,
    "The stock market fell sharply today as investors worried about rising interest rates.",
    " ".join([SENTENCE] * 3),
    " ".join([SENTENCE] * 6),
    " ".join([SENTENCE] * 12),
    " ".join([SENTENCE] * 30),  # truncated at 256 tokens
]


async def served(device: str, repeats: int = 200) -> dict[str, Any]:
    """The examples with `compile` off/default/reduce-overhead through the host, in-process.

    Startup time, the first request after ready, p50/p99 of one-row requests, the worst and
    median request over texts of 8 lengths (MiniLM: each new shape may compile or record a
    graph), and the largest difference from the eager answers.
    """
    modes = ["off", "default"] + (["reduce-overhead"] if device == "cuda" else [])
    rows: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    cases: list[tuple[str, Callable[[Any], Host], str, Callable[[int], Any]]] = [
        ("Iris", lambda m: make_iris(IrisConfig(device=device, metrics=False, compile=m)), "/predict",
         lambda i: {"inputs": [[5.1, 3.5, 1.4, 0.2 + i % 7 * 0.1]]}),
        ("MiniLM", lambda m: make_embed(EmbedConfig(device=device, compile=m)), "/embed",
         lambda i: {"texts": [SENTENCE]}),
    ]  # fmt: skip
    for name, make, path, body in cases:
        for mode in modes:
            key = f"{name} | {mode}"
            try:
                rows[key] = await _served_case(make(mode), name, path, body, repeats)
                reference.setdefault(name, rows[key]["answers"])  # "off" runs first: the eager answers
                rows[key]["max_abs_diff_vs_eager"] = _max_diff(rows[key].pop("answers"), reference[name])
            except Exception as exc:  # one mode failing must not hide the others
                rows[key] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  {key}: {rows[key]}", flush=True)
    return rows


async def _served_case(
    host: Host, name: str, path: str, body: Callable[[int], Any], repeats: int
) -> dict[str, Any]:
    started = time.perf_counter()
    async with host.lifespan() as state:
        ready_s = time.perf_counter() - started

        async def call(payload: Any) -> tuple[float, Any]:
            sent = time.perf_counter()
            result = await request(host, "POST", path, json=payload, state=state, timeout_s=120)
            assert result.status == 200, result.body
            return time.perf_counter() - sent, result.json()

        first_s, first = await call(body(0))
        times = sorted([(await call(body(i)))[0] for i in range(repeats)])
        row: dict[str, Any] = {
            "ready_s": ready_s,
            "first_request_ms": first_s * 1e3,
            "p50_ms": times[len(times) // 2] * 1e3,
            "p99_ms": times[int(len(times) * 0.99)] * 1e3,
            "answers": first,
        }
        if name == "MiniLM":
            mixed = [await call({"texts": [MIXED[i % len(MIXED)]]}) for i in range(4 * len(MIXED))]
            row["mixed_first_pass_worst_ms"] = max(t for t, _ in mixed[: len(MIXED)]) * 1e3
            row["mixed_later_p50_ms"] = sorted(t for t, _ in mixed[len(MIXED) :])[3 * len(MIXED) // 2] * 1e3
            row["answers"] = [first, [answer for _, answer in mixed[: len(MIXED)]]]
    return row


async def gil(device: str, clients: int, seconds: float) -> dict[str, Any]:
    """MiniLM with batching at `clients`, under several `sys.setswitchinterval` values.

    The event loop thread and the model's thread share the GIL; each time the model's thread
    waits on the GPU it lets go, and taking it back can wait up to the switch interval.
    """
    rows: dict[str, Any] = {}
    default = sys.getswitchinterval()
    try:
        for interval in (default, 0.001, 0.0002):
            sys.setswitchinterval(interval)
            host = make_embed(EmbedConfig(device=device, batching=Batching(max_batch_rows=128)))
            rows[f"{interval * 1e3:g} ms"] = await throughput(host, clients, seconds)
            print(f"  switch interval {interval * 1e3:g} ms: {rows[f'{interval * 1e3:g} ms']}", flush=True)
    finally:
        sys.setswitchinterval(default)
    return rows


def _max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two JSON answers of the same shape."""
    if isinstance(a, dict):
        return max((_max_diff(a[k], b[k]) for k in a if k != "labels"), default=0.0)
    if isinstance(a, list):
        return max((_max_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    return abs(float(a) - float(b))


def oom(device: str) -> dict[str, Any]:
    """A real out-of-memory in a MiniLM pass, then halves of the batch, then one row."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA"}
    module, loaded = TorchModel(MiniLM, model_dir() / "model.safetensors", device=device).load()
    dev = loaded.device
    tokenizer = load_tokenizer(256)
    long_text = " ".join([SENTENCE] * 30)  # truncated at 256 tokens
    report: dict[str, Any] = {"load": _oom_at_load(device)}
    free, total = torch.cuda.mem_get_info()
    headroom = 2 * 2**30
    filler = torch.empty(free - headroom, dtype=torch.uint8, device=dev)
    report |= {"free_before_fill_mib": free / MIB, "total_mib": total / MIB, "headroom_mib": headroom / MIB}
    attempts: list[dict[str, Any]] = []
    rows = 4096
    while rows >= 1:
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                out = _forward(module, [long_text] * rows, tokenizer, dev)
            attempts.append(
                {"rows": rows, "ok": True, "s": time.perf_counter() - started, "dims": len(out[0])}
            )
            break
        except torch.cuda.OutOfMemoryError as exc:
            after_error = snapshot()
            torch.cuda.empty_cache()
            attempts.append(
                {
                    "rows": rows,
                    "ok": False,
                    "s": time.perf_counter() - started,
                    "error": type(exc).__name__,
                    "is_RuntimeError": isinstance(exc, RuntimeError),
                    "message": str(exc).splitlines()[0][:160],
                    "after_error": after_error,
                    "after_empty_cache": snapshot(),
                }
            )
            rows //= 2
    report["attempts"] = attempts
    report["num_ooms"] = torch.cuda.memory_stats().get("num_ooms")
    with torch.inference_mode():
        report["one_row_after"] = len(_forward(module, [SENTENCE], tokenizer, dev)[0])
    del filler, module
    torch.cuda.empty_cache()
    report["after_release"] = snapshot()
    return report


def _oom_at_load(device: str) -> dict[str, Any]:
    """Load MiniLM with 16 MiB of the GPU left free: what fails, and what stays allocated."""
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(free - 16 * MIB, dtype=torch.uint8, device=device)
    before = snapshot()
    try:
        TorchModel(MiniLM, model_dir() / "model.safetensors", device=device).load()
        outcome = "loaded"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:300]}"
    after = snapshot()
    del filler
    torch.cuda.empty_cache()
    return {"outcome": outcome, "filled": before, "after_failed_load": after, "after_release": snapshot()}


def markdown(results: dict[str, Any], command: str) -> str:
    facts = results["machine"]
    lines = [
        f"Date: {results['date']}. Command: `{command}`. Machine: "
        + ", ".join(f"{k} {v}" for k, v in facts.items())
        + ".",
        "",
    ]
    if "memory" in results:
        cuda = "gpu" in facts
        unit = "allocated / reserved / nvidia-smi MiB" if cuda else "resident memory"
        lines += [f"Memory ({unit}):", ""]
        stages = list(next(iter(results["memory"].values())))
        lines += ["| model | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for name, row in results["memory"].items():
            lines.append(f"| {name} | " + " | ".join(show(row[s]) for s in stages) + " |")
        lines.append("")
    if "ready" in results:
        lines += ["Time to ready (a fresh process; seconds):", ""]
        lines += [
            "| model | import torch+anyio | build app | lifespan startup | of which load+warmup "
            "| process start to ready |"
        ]
        lines += ["|---|---|---|---|---|---|"]
        for name, r in results["ready"].items():
            lines.append(
                f"| {name} | {r['import_s']:.2f} | {r['app_s']:.2f} | {r['startup_s']:.2f} | "
                f"{r['load_s']:.2f} | {r['process_to_ready_s']:.2f} |"
            )
        lines.append("")
    if "throughput" in results:
        lines += [
            f"MiniLM /embed in-process, one sentence per request, compile {results['compile_mode']}:",
            "",
        ]
        lines += [
            "| clients | off req/s | off p50 ms | off p99 ms | on req/s | on p50 ms | on p99 ms | on/off |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for c, r in results["throughput"].items():
            off, on = r["off"], r["on"]
            lines.append(
                f"| {c} | {off['rps']:.0f} | {off['p50_ms']:.2f} | {off['p99_ms']:.2f} | {on['rps']:.0f} | "
                f"{on['p50_ms']:.2f} | {on['p99_ms']:.2f} | {on['rps'] / off['rps']:.2f}x |"
            )
        lines.append("")
    if "compile" in results:
        lines += ["Eager vs compiled, one pass including the copy back (200 passes):", ""]
        lines += [
            "| case | mode | first call s | p50 us | p99 us | max abs diff vs eager | from worker threads |"
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for key, r in results["compile"].items():
            case, mode = key.split(" | ")
            lines.append(
                f"| {case} | {mode} | {r['first_call_s']:.2f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                f"{r['max_abs_diff_vs_eager']:.2e} | {r.get('from_worker_threads', '-')} |"
            )
        lines.append("")
    if "gil" in results:
        lines += ["MiniLM with batching, 64 clients, by `sys.setswitchinterval`:", ""]
        lines += ["| switch interval | req/s | p50 ms | p99 ms |", "|---|---|---|---|"]
        for interval, r in results["gil"].items():
            lines.append(f"| {interval} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
        lines.append("")
    if "served" in results:
        lines += [
            "The examples served with `IRIS_COMPILE` / `EMBED_COMPILE`, in-process, one row per request:",
            "",
        ]
        lines += [
            "| model | compile | ready s | first request ms | p50 ms | p99 ms | 8 new lengths: worst ms "
            "| then p50 ms | max abs diff vs eager |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, r in results["served"].items():
            name, mode = key.split(" | ")
            if "error" in r:
                lines.append(f"| {name} | {mode} | failed: {r['error'][:200]} |||||||")
                continue
            worst = r.get("mixed_first_pass_worst_ms")
            later = r.get("mixed_later_p50_ms")
            lines.append(
                f"| {name} | {mode} | {r['ready_s']:.2f} | {r['first_request_ms']:.2f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {'-' if worst is None else f'{worst:.1f}'} | "
                f"{'-' if later is None else f'{later:.2f}'} | {r['max_abs_diff_vs_eager']:.1e} |"
            )
        lines.append("")
    if "oom" in results:
        lines += ["Out of memory:", "", "```", json.dumps(results["oom"], indent=1), "```", ""]
    return "\n".join(lines)


def profile(device: str, clients: int, seconds: float, out: Path | None) -> str:
    """Where the time of MiniLM with batching goes, at `clients`: cProfile's top functions."""
    import cProfile
    import io
    import pstats

    host = make_embed(EmbedConfig(device=device, batching=Batching(max_batch_rows=128)))
    profiler = cProfile.Profile()
    profiler.enable()
    result = anyio.run(throughput, host, clients, seconds)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    report = (
        f"MiniLM, batching on, {clients} clients, {result['rps']:.0f} req/s under cProfile\n"
        + text.getvalue()
    )
    if out is not None:
        (out / "profile.txt").write_text(report)
    return report.splitlines()[0]


def run_tests(out: Path | None) -> int:
    """The tests whose imports the GPU machine has (no FastAPI, Starlette, uvicorn, granian, Ray)."""
    modules = [
        "test_model.py", "test_predict.py", "test_batching.py", "test_embed.py", "test_health.py",
        "test_lifespan.py", "test_routing.py", "test_lazy.py", "test_metrics.py", "test_config.py",
        "test_public_api.py", "test_doctor.py", "test_hypercorn.py", "test_gpu_serving.py",
        "test_gpu_cuda.py", "test_placement.py",
    ]  # fmt: skip
    # These import Starlette or FastAPI, which the GPU image lacks.
    lacking = "not fastapi and not mounted_sub_apps and not imports_without_torch"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "-k", lacking]
    if out is not None:
        command.append(f"--junitxml={out / 'junit.xml'}")
    present = [f"tests/{m}" for m in modules if (ROOT / "tests" / m).is_file()]
    code = subprocess.call([*command, *present], cwd=ROOT)
    print(f"pytest exited {code}", flush=True)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description="GPU memory, time to ready, MiniLM batching, compile, OOM")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("-c", "--clients", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("-d", "--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--run-tests", action="store_true")
    parser.add_argument(
        "--compile", default="off", help="EMBED_COMPILE for the throughput section (default off)"
    )
    parser.add_argument(
        "--profile", type=int, metavar="CLIENTS", help="cProfile MiniLM with batching at CLIENTS into --out"
    )
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.run_tests:
        run_tests(args.out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {
        "date": str(datetime.date.today()),
        "machine": machine(),
        "compile_mode": args.compile,
    }
    print(results["machine"], flush=True)
    steps: dict[str, Callable[[], Any]] = {
        "memory": lambda: anyio.run(memory, device),
        "ready": lambda: ready(device),
        "throughput": lambda: anyio.run(throughputs, device, args.clients, args.seconds, args.compile),
        "gil": lambda: anyio.run(gil, device, 64, args.seconds),
        "compile": lambda: compiled(device),
        "served": lambda: anyio.run(served, device),
        "oom": lambda: oom(device),
    }
    for name in SECTIONS:
        if name in args.only:
            print(f"== {name}", flush=True)
            try:
                results[name] = steps[name]()
            except Exception as exc:  # one broken section must not lose the others' numbers
                results[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
                print(f"{name} failed: {exc!r}", flush=True)
            if args.out:
                (args.out / "gpu.json").write_text(json.dumps(results, indent=1, default=str))
    if args.profile:
        results["profile"] = profile(device, args.profile, args.seconds, args.out)
    text = markdown(results, "python -m bench.gpu " + " ".join(sys.argv[1:]))
    print(text)
    if args.out:
        (args.out / "gpu.md").write_text(text)


if __name__ == "__main__":
    main()
