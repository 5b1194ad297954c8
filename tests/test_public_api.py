"""The curated public surface, and importing without torch."""

from __future__ import annotations

import subprocess
import sys

import asgi_host
import asgi_host.testing


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
    assert {"LifespanDriver", "request", "call", "HTTPResult", "LifespanFailed"} <= set(
        asgi_host.testing.__all__
    )


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
