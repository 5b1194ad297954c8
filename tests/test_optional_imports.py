"""Optional dependencies that are missing: an ImportError that says which extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asgi_host import Host, LifespanFailed
from asgi_host._extras import raise_missing_extra
from asgi_host.testing import LifespanDriver
from tests._server import ROOT


@pytest.mark.server
def test_metrics_without_prometheus_client_names_the_metrics_extra() -> None:
    # `sys.modules[name] = None` makes `import name` fail, as if it were not installed; the module
    # imports prometheus-client at import time, so this runs in a fresh interpreter.
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n"
        "    import asgi_host.metrics\n"
        "except ImportError as error:\n"
        "    print(f'{error}|{error.name}|{type(error.__cause__).__name__}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == (
        "asgi_host.metrics needs prometheus-client, which is not installed;"
        " install the extra: pip install 'asgi_host[metrics]'|prometheus_client|ModuleNotFoundError"
    )


@pytest.mark.anyio
async def test_safetensors_weights_without_safetensors_name_the_torch_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asgi_host.model import TorchModel
    from examples.iris import WEIGHTS, IrisMLP

    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    host = Host(resources=[TorchModel(IrisMLP, WEIGHTS, device="cpu")])
    with pytest.raises(LifespanFailed) as raised:
        async with LifespanDriver(host):
            pass
    assert raised.value.message == (
        f"resource 'model' failed to start: ImportError: reading {WEIGHTS} needs safetensors, which is not"
        " installed; install the extra: pip install 'asgi_host[torch]'"
    )


def test_ray_serve_deployment_without_ray_names_the_ray_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from asgi_host.ray_serve import deployment

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(
        ImportError, match=r"^deployment\(\) needs Ray Serve, which is not installed; "
    ) as raised:
        deployment(Host)
    assert str(raised.value).endswith("install the extra: pip install 'asgi_host[ray]'")


def test_an_unrelated_import_error_is_not_disguised() -> None:
    # A package that is installed but broken must show its own error, not an install hint.
    broken = ModuleNotFoundError("No module named 'numpy'", name="numpy")
    with pytest.raises(ModuleNotFoundError, match="numpy") as raised:
        raise_missing_extra(broken, "safetensors", extra="torch", needed_by="reading w.safetensors")
    assert raised.value is broken
    lookalike = ModuleNotFoundError("No module named 'raylib'", name="raylib")
    with pytest.raises(ModuleNotFoundError, match="raylib"):
        raise_missing_extra(lookalike, "ray", extra="ray", needed_by="deployment()")
