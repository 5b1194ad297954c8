"""The curated public surface, and importing without torch."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
import types

import pytest

import asgi_host
import asgi_host.testing
import asgi_host.types
from tests._server import ROOT


def test_public_names() -> None:
    assert asgi_host.__all__ == [
        "Adapter",
        "AppTimeout",
        "AsgiHostError",
        "Batcher",
        "Batching",
        "ClientDisconnect",
        "ConfigError",
        "DriverError",
        "ErrorFormat",
        "Event",
        "EventStream",
        "HTTPError",
        "Host",
        "HostView",
        "LifespanError",
        "LifespanFailed",
        "LifespanPhase",
        "LifespanProtocolError",
        "LifespanUnsupported",
        "ModelLoadError",
        "ModelTooLarge",
        "Mount",
        "OpenAIError",
        "OutOfMemory",
        "PoolFull",
        "Progress",
        "ProtocolViolation",
        "Readiness",
        "ReloadError",
        "ReloadInProgress",
        "ReloadResult",
        "Reloadable",
        "Replacement",
        "ReplicaUnhealthy",
        "Request",
        "RequestContextFilter",
        "Resource",
        "Response",
        "Route",
        "Rows",
        "ShutdownError",
        "StartupError",
        "StructEndpoint",
        "SubAppLifespanError",
        "current_request_id",
        "current_trace_id",
        "error_response",
    ]
    assert asgi_host.__all__ == sorted(asgi_host.__all__)
    for name in asgi_host.__all__:
        assert getattr(asgi_host, name).__module__.startswith("asgi_host")


def test_testing_kit_names() -> None:
    assert {"LifespanDriver", "request", "call", "HTTPResult", "lifespan_scope"} <= set(
        asgi_host.testing.__all__
    )


def _package_modules() -> list[types.ModuleType]:
    """Every module of the package, imported (the optional extras are installed for the tests)."""
    modules = []
    for info in pkgutil.walk_packages(asgi_host.__path__, "asgi_host."):
        if info.name.endswith("__main__"):
            continue
        modules.append(importlib.import_module(info.name))
    return [asgi_host, *modules]


def test_every_error_derives_from_the_root_and_is_exported_from_the_package_once() -> None:
    defined = {
        obj
        for module in _package_modules()
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__.startswith("asgi_host")
    }
    assert len(defined) >= 20
    assert [error for error in defined if not issubclass(error, asgi_host.AsgiHostError)] == []
    public = {error for error in defined if not error.__name__.startswith("_")}
    internal = {"TargetError", "WeightsOutside"}  # the check command's and the loader's own
    exported = {getattr(asgi_host, name) for name in asgi_host.__all__}
    assert {error.__name__ for error in public - exported} == internal
    # ... and from nowhere else: no other module lists an error in its __all__.
    elsewhere = [
        f"{module.__name__}.{name}"
        for module in _package_modules()
        if module is not asgi_host
        for name in getattr(module, "__all__", ())
        if isinstance(getattr(module, name), type)
        and issubclass(getattr(module, name), BaseException)
        and not module.__name__.split(".")[-1].startswith("_")
    ]
    assert elsewhere == []


def test_the_asgi_types_are_a_public_module() -> None:
    assert asgi_host.types.__all__ == sorted(asgi_host.types.__all__)
    assert {
        "ASGIApp",
        "ASGIReceiveEvent",
        "ASGISendEvent",
        "HTTPRequestEvent",
        "HTTPResponseStartEvent",
        "HTTPScope",
        "LifespanScope",
        "LifespanStartupEvent",
        "LifespanStartupFailedEvent",
        "Receive",
        "Scope",
        "Send",
    } <= set(asgi_host.types.__all__)
    for name in asgi_host.types.__all__:
        assert getattr(asgi_host.types, name) is not None
    # The keys the spec gives a default are optional, at run time too.
    assert asgi_host.types.HTTPRequestEvent.__required_keys__ == {"type"}
    assert asgi_host.types.LifespanStartupFailedEvent.__required_keys__ == {"type", "message"}


def test_examples_bench_and_docs_import_only_public_modules() -> None:
    private = re.compile(r"\b(from|import)\s+asgi_host\._")
    files = [
        *ROOT.glob("examples/**/*.py"),
        *ROOT.glob("bench/*.py"),
        *ROOT.glob("docs/*.md"),
        ROOT / "README.md",
    ]
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == []


def test_tests_take_no_helpers_from_bench() -> None:
    # The benchmarks are run by hand and change with what they measure; tests run them as scripts.
    importing = re.compile(r"^\s*(from|import)\s+bench\b", re.MULTILINE)
    offenders = [path.name for path in ROOT.glob("tests/*.py") if importing.search(path.read_text())]
    assert offenders == []


@pytest.mark.server
def test_imports_without_torch_or_prometheus() -> None:
    # `sys.modules["torch"] = None` makes any `import torch` fail, as if it were not installed.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['prometheus_client'] = None\n"
        "import asgi_host, asgi_host.testing, examples.mounts\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.server
def test_metrics_and_the_check_command_never_import_torch() -> None:
    # They read CUDA memory through asgi_host._device.cuda_memory, which looks torch up in
    # sys.modules: a process that has not imported torch has no CUDA memory to report.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import asgi_host.metrics, asgi_host._doctor, asgi_host.config\n"
        "from asgi_host._device import cuda_memory\n"
        "print(cuda_memory())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
