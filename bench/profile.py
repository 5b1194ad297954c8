"""Flame graphs of POST /predict: where the host's time goes against the work floor.

    pip install 'asgi_host[bench]'     # py-spy
    python -m bench.profile            # in process: docs/flame_predict.svg, docs/flame_floor.svg
    python -m bench.profile --hypercorn   # under hypercorn and 32 wrk clients:
                                          # docs/flame_hypercorn_predict.svg, ..._floor.svg

In process, py-spy samples a process that drives one app in a loop with raw
ASGI messages (no server), as `python -m bench.predict` measures it. With
`--hypercorn`, it samples the hypercorn process serving the app while wrk
loads it (needs wrk). The frames the floor lacks are the host's own cost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import anyio

from asgi_host.testing import free_port

ROOT = Path(__file__).resolve().parent.parent


async def drive(app_name: str, seconds: float) -> None:
    from bench import peers
    from bench.predict import ONE_ROW, in_process, running
    from examples.app import IrisConfig, make_app

    app = peers.floor_app if app_name == "floor" else make_app(IrisConfig())
    async with running(app) as (state, _):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await in_process(app, state, ONE_ROW, b"application/json", 2000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--drive", choices=["default", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--hypercorn", action="store_true", help="profile the server under wrk")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs", help="where the SVGs go")
    args = parser.parse_args()
    args.port = args.port or free_port()
    if args.drive:
        anyio.run(drive, args.drive, args.seconds)
        return
    if args.hypercorn:
        under_hypercorn(args.seconds, args.port, args.out_dir)
        return
    for name, out in (("default", "flame_predict.svg"), ("floor", "flame_floor.svg")):
        target = args.out_dir / out
        subprocess.run(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--format",
                "flamegraph",
                "--rate",
                "500",
                "--output",
                str(target),
                "--",
                sys.executable,
                "-m",
                "bench.profile",
                "--drive",
                name,
                "--seconds",
                str(args.seconds),
            ],
            cwd=ROOT,
            check=True,
        )
        print(f"wrote {target}")


def under_hypercorn(seconds: float, port: int, out_dir: Path) -> None:
    import threading

    from bench.http import serve, wrk

    script = ROOT / "bench" / "post_predict.lua"
    apps = (
        ("examples.app:app", "flame_hypercorn_predict.svg"),
        ("bench.peers:floor_app", "flame_hypercorn_floor.svg"),
    )
    for app, out in apps:
        process = serve("hypercorn", app, port, {"IRIS_METRICS": "true"})
        try:
            wrk(port, 8, 1, script, "/predict")  # warm up
            load = threading.Thread(target=wrk, args=(port, 32, int(seconds) + 2, script, "/predict"))
            load.start()
            target = out_dir / out
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            subprocess.run(
                [
                    py_spy,
                    "record",
                    "--format",
                    "flamegraph",
                    "--rate",
                    "500",
                    "--subprocesses",  # hypercorn serves from a worker process it starts
                    "--duration",
                    str(int(seconds)),
                    "--output",
                    str(target),
                    "--pid",
                    str(process.pid),
                ],
                check=True,
            )
            load.join()
            print(f"wrote {target}")
        finally:
            process.stop()


if __name__ == "__main__":
    main()
