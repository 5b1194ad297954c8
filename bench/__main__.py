"""`python -m bench`: run the benchmarks (by hand; numbers go to docs/benchmarks.md).

python -m bench quick                 # every benchmark, short, in about 2 minutes on 2 cores
python -m bench predict [args]        # in-process and HTTP cost of /predict vs the floor, FastAPI, Litestar
python -m bench batching [args]       # batching off vs on under hypercorn (needs wrk)
python -m bench startup [args]        # time to ready vs weights size
python -m bench ray [args]            # Iris on Ray Serve, 1 vs 2 replicas (needs the ray extra and wrk)
python -m bench hop [args]            # a thread hand-off and back: the model's own thread vs anyio.to_thread
python -m bench embed [args]          # MiniLM /embed against FastAPI + sentence-transformers (needs wrk)
python -m bench profile [args]        # flame graphs of /predict against the work floor (needs py-spy)
python -m bench execution [args]      # inline vs thread by pass length: where execution="auto" switches
python -m bench protocols [args]      # KServe v2 infer vs /predict, in-process and over hypercorn
python -m bench gpu [args]            # GPU: memory, time to ready, MiniLM batching, compile, OOM
python -m bench reload [args]         # swapping a model in place: time to swap, memory peak
python -m bench openai [args]         # the OpenAI embeddings layer against /embed, in process
python -m bench pool [args]           # ModelPool: resident cost, 16 clients on 8 models, memory back, cycles
python -m bench generate [args]       # streaming generation: examples.chat vs FastAPI + transformers
python -m bench abandon [args]        # work for clients that left: MiniLM unbatched and batched (CPU-s)
python -m bench context [args]        # request ids, the access log, tracing: their cost per request
python -m bench buckets [args]        # bucketed batch shapes against one per size, compiled (CPU)
python -m bench gc [args]             # garbage collection under load, gc_freeze on and off (needs wrk)
python -m bench footprint [args]      # the host's code beside the model's work: what each costs the other
"""

from __future__ import annotations

import shutil
import subprocess
import sys

COMMANDS = {
    "predict": "bench.predict",
    "http": "bench.http",
    "batching": "bench.batching",
    "startup": "bench.startup",
    "gpu": "bench.gpu",
    "hop": "bench.hop",
    "execution": "bench.execution",
    "profile": "bench.profile",
    "embed": "bench.embed_peers",
    "protocols": "bench.protocols",
    "ray": "bench.ray_replicas",
    "reload": "bench.reload",
    "openai": "bench.openai_embeddings",
    "pool": "bench.pool",
    "generate": "bench.generate",
    "abandon": "bench.abandon",
    "context": "bench.request_context",
    "buckets": "bench.buckets",
    "gc": "bench.gc_pauses",
    "footprint": "bench.footprint",
}

QUICK = [
    ["bench.predict", "-n", "1000", "--http-n", "300"],
    ["bench.startup", "--sizes-mb", "10", "100", "--repeats", "1"],
    ["bench.batching", "-c", "1", "32", "-d", "3"],
    ["bench.http", "-c", "32", "-d", "2", "--servers", "hypercorn"],
]


def run(module: str, args: list[str]) -> int:
    print(f"$ python -m {module} {' '.join(args)}", flush=True)
    return subprocess.call([sys.executable, "-m", module, *args])


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, args = argv[0], argv[1:]
    if command == "quick":
        status = 0
        for module, *quick_args in QUICK:
            if module in ("bench.batching", "bench.http") and shutil.which("wrk") is None:
                print(f"skipping {module}: wrk not found (apt-get install wrk)")
                continue
            status = run(module, quick_args) or status
        return status
    if command not in COMMANDS:
        print(f"unknown benchmark {command!r}; one of: quick, {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run(COMMANDS[command], args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
