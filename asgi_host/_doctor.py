"""`python -m asgi_host check MODULE:APP`: run any ASGI app's lifespan and report what happened.

Exit codes: 0 startup and shutdown clean, 1 a failure (or a timeout), 2 the
app does not support lifespan (it raised before its first `receive()`), 3
MODULE:APP could not be loaded (no such module or attribute, or its import
raised). An app that raises after receiving `lifespan.startup` has failed its
startup (1), as under `Mount(..., lifespan=True)` and in the test kit: one rule.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
from typing import Any, TextIO

import anyio
import msgspec

from ._device import cuda_memory
from ._driver import AppTimeout, LifespanFailed, LifespanUnsupported, ProtocolViolation
from ._errors import AsgiHostError
from ._types import ASGIApp
from ._version import __version__
from .testing import LifespanDriver

__all__ = ["Report", "check", "main"]

OK, FAILED, UNSUPPORTED, TARGET_ERROR = 0, 1, 2, 3


class Phase(msgspec.Struct, omit_defaults=True):
    ok: bool
    seconds: float
    message: str | None = None


class Report(msgspec.Struct, omit_defaults=True):
    app: str
    supported: bool
    exit_code: int
    startup: Phase | None = None
    shutdown: Phase | None = None
    state_keys: list[str] | None = None
    cuda_memory: dict[str, dict[str, int]] | None = None
    resources: dict[str, dict[str, Any]] | None = None  # an asgi_host Host's readiness detail
    error: str | None = None
    note: str | None = None  # what servers make of the failure, when they differ from us


# For an app that raised after receiving lifespan.startup (not for one that answered .failed).
SERVERS_SERVE_ANYWAY = (
    "the app raised instead of answering lifespan.startup.failed: hypercorn and uvicorn would log"
    " the exception and serve the app without lifespan"
)


class TargetError(AsgiHostError):
    """MODULE:APP could not be loaded; the message says why in one line (exit code 3)."""


def load_app(target: str) -> ASGIApp:
    """Import `module:attribute` (the attribute may be dotted), from the current directory too."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise TargetError(f"expected MODULE:APP (like examples.app:app), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise TargetError(
                f"no module named {exc.name!r} (from {target!r}; the current directory is {os.getcwd()})"
            ) from None
        raise TargetError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise TargetError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(obj):
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}"
        raise TargetError(
            f"{target} is a {kind}, not an ASGI app (an async callable of scope, receive, send)"
        )
    return obj  # type: ignore[no-any-return]


async def check(app: ASGIApp, name: str, *, timeout_s: float, progress: TextIO | None = None) -> Report:
    """Run `app`'s lifespan once; never raises for what the app does.

    With `progress`, the time spent starting is shown there until startup ends.
    """
    starting = anyio.Event()
    started = anyio.Event()
    async with anyio.create_task_group() as tg:
        if progress is not None:
            tg.start_soon(_show_progress, progress, starting, started)
        report = await _run(app, name, timeout_s, starting, started)
        tg.cancel_scope.cancel()
    return report


async def _run(
    app: ASGIApp, name: str, timeout_s: float, starting: anyio.Event, started: anyio.Event
) -> Report:
    memory: dict[str, dict[str, int]] = {}
    before = cuda_memory()  # None unless the app imported torch and CUDA is there
    if before is not None:
        memory["before_startup"] = before
    driver = LifespanDriver(app, startup_timeout_s=timeout_s, shutdown_timeout_s=timeout_s)
    report = Report(app=name, supported=True, exit_code=OK)
    began = time.perf_counter()
    starting.set()
    try:
        await driver.__aenter__()
    except LifespanUnsupported as exc:
        report.supported, report.exit_code, report.error = False, UNSUPPORTED, str(exc)
        return report
    except (LifespanFailed, AppTimeout, ProtocolViolation) as exc:
        report.exit_code = FAILED
        report.startup = Phase(False, round(time.perf_counter() - began, 6), _message(exc))
        if isinstance(exc, LifespanFailed) and exc.error is not None:
            report.note = SERVERS_SERVE_ANYWAY
        return report
    finally:
        started.set()
    report.startup = Phase(True, round(time.perf_counter() - began, 6))
    report.state_keys = sorted(driver.state)
    report.resources = _resource_detail(app)
    after_startup = cuda_memory()
    if after_startup is not None:
        memory["after_startup"] = after_startup
    began = time.perf_counter()
    try:
        await driver.shutdown()
    except (LifespanFailed, AppTimeout, ProtocolViolation) as exc:
        report.exit_code = FAILED
        report.shutdown = Phase(False, round(time.perf_counter() - began, 6), _message(exc))
    else:
        report.shutdown = Phase(True, round(time.perf_counter() - began, 6))
    try:
        await driver.__aexit__(None, None, None)
    except AppTimeout as exc:  # answered shutdown but did not return
        report.exit_code = FAILED
        report.shutdown = Phase(False, report.shutdown.seconds, str(exc))
    after_shutdown = cuda_memory()
    if after_shutdown is not None:
        memory["after_shutdown"] = after_shutdown
    report.cuda_memory = memory or None
    return report


def _resource_detail(app: ASGIApp) -> dict[str, dict[str, Any]] | None:
    """What an asgi_host `Host` says of its resources once started (a model: where passes run)."""
    readiness = getattr(app, "readiness", None)
    resources = getattr(readiness() if callable(readiness) else None, "resources", None)
    return {name: dict(detail) for name, detail in resources.items()} if resources else None


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, LifespanFailed) else str(exc)


async def _show_progress(stream: TextIO, starting: anyio.Event, started: anyio.Event) -> None:
    await starting.wait()
    began = time.perf_counter()
    while not started.is_set():
        with anyio.move_on_after(0.5):
            await started.wait()
        if not started.is_set():
            stream.write(f"\rstarting... {time.perf_counter() - began:.1f} s")
            stream.flush()
    stream.write("\r" + " " * 40 + "\r")
    stream.flush()


def render(report: Report) -> str:
    lines = [f"asgi_host check {report.app}"]
    lines.append(f"  lifespan supported: {'yes' if report.supported else 'no'}")
    if not report.supported:
        lines.append(f"  {report.error}")
    for label, phase in (("startup", report.startup), ("shutdown", report.shutdown)):
        if phase is None:
            continue
        verdict = f"ok in {phase.seconds:.3f} s" if phase.ok else f"FAILED after {phase.seconds:.3f} s"
        lines.append(f"  {label}: {verdict}")
        if phase.message:
            lines.append(f"    {phase.message}")
        if label == "startup" and report.note:
            lines.append(f"    note: {report.note}")
    if report.state_keys is not None:
        lines.append(f"  state keys: {', '.join(report.state_keys) or '(none)'}")
    for name, detail in (report.resources or {}).items():
        lines.append(f"  {name}: " + ", ".join(f"{key}={value}" for key, value in detail.items()))
    if report.cuda_memory:
        for moment, numbers in report.cuda_memory.items():
            lines.append(
                f"  cuda {moment.replace('_', ' ')}: allocated {numbers['allocated_bytes']:,} B,"
                f" reserved {numbers['reserved_bytes']:,} B"
            )
    elif report.supported:
        lines.append("  cuda memory: not in use")
    lines.append(
        {OK: "result: ok", FAILED: "result: FAILED", UNSUPPORTED: "result: no lifespan support"}[
            report.exit_code
        ]
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="asgi-host",
        description="Tools for ASGI apps. `check` runs an app's lifespan with raw messages and reports.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="run MODULE:APP's lifespan startup and shutdown")
    check_parser.add_argument("target", metavar="MODULE:APP", help="for example examples.app:app")
    check_parser.add_argument("--json", action="store_true", help="print a JSON report")
    check_parser.add_argument("--timeout-s", type=float, default=120.0, help="per phase (default 120)")
    check_parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        print(
            "asgi-host check: --backend trio needs trio, which is not installed: pip install trio",
            file=sys.stderr,
        )
        return TARGET_ERROR
    try:
        app = load_app(args.target)
    except TargetError as exc:
        print(f"asgi-host check: {exc}", file=sys.stderr)
        return TARGET_ERROR
    progress = sys.stderr if sys.stderr.isatty() and not args.json else None
    report = anyio.run(
        lambda: check(app, args.target, timeout_s=args.timeout_s, progress=progress), backend=args.backend
    )
    print(msgspec.json.encode(report).decode() if args.json else render(report))
    return report.exit_code
