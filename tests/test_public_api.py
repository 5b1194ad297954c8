"""The curated public surface, and importing without torch."""

from __future__ import annotations

import re
import subprocess
import sys

import asgi_host
import asgi_host.testing
import asgi_host.types
from tests._server import ROOT


def test_public_names() -> None:
    assert asgi_host.__all__ == [
        "AsgiHostError",
        "Batcher",
        "Batching",
        "ClientDisconnect",
        "HTTPError",
        "Host",
        "LifespanError",
        "LifespanPhase",
        "LifespanProtocolError",
        "Mount",
        "OutOfMemory",
        "Progress",
        "Readiness",
        "ReloadError",
        "ReloadInProgress",
        "ReloadResult",
        "Reloadable",
        "Replacement",
        "Request",
        "Resource",
        "Response",
        "Route",
        "ShutdownError",
        "StartupError",
        "StructEndpoint",
    ]
    assert asgi_host.__all__ == sorted(asgi_host.__all__)
    for name in asgi_host.__all__:
        assert getattr(asgi_host, name).__module__.startswith("asgi_host")


def test_testing_kit_names() -> None:
    assert asgi_host.testing.__all__ == sorted(asgi_host.testing.__all__)
    assert {"LifespanDriver", "request", "call", "HTTPResult", "LifespanFailed", "lifespan_scope"} <= set(
        asgi_host.testing.__all__
    )


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


def test_examples_and_docs_import_only_public_modules() -> None:
    private = re.compile(r"\b(from|import)\s+asgi_host\._")
    files = [*ROOT.glob("examples/**/*.py"), *ROOT.glob("docs/*.md"), ROOT / "README.md"]
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert offenders == []


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
