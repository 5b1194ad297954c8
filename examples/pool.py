"""Eight classifiers in one memory budget: `mlp-0` to `mlp-7`, 16 MiB of float32 weights each,
served over the Open Inference Protocol (KServe v2) from a `ModelPool` that loads them on demand.

    hypercorn examples.pool:app
    curl -X POST localhost:8000/v2/models/mlp-3/infer -H 'content-type: application/json' -d \\
      '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1013],"data":[0.5, ...]}]}'

The budget (`POOL_BUDGET_MIB`, default 48) holds three of them: a request for a fourth evicts the
least recently used idle one. With `POOL_ADMIN_TOKEN` (16 characters or more) Triton's model
repository API is on too (`POST /v2/repository/index`, `.../models/{name}/load|unload`, with
`Authorization: Bearer <token>`). The weights are made on first start, from one seed per model,
into `POOL_CACHE_DIR` (default: `asgi_host-pool` under the user's cache directory), so nothing
large is in the repository; the same seed gives the same files, and so the same answers. Other
settings: `POOL_DEVICE` (`auto`, `cpu`, `cuda:0`), `POOL_PINNED` (names loaded at startup and never
evicted, comma-separated), `POOL_WAIT_S`, `POOL_METRICS`, and every `HostConfig` setting with the
`POOL_` prefix. See docs/pool.md.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import anyio
import msgspec
import torch
from torch import nn

from asgi_host import Host, Resource
from asgi_host.config import HostConfig, load_config
from asgi_host.kserve import KServe, ModelRepository, TensorSpec, V2Model
from asgi_host.model import ModelPool, TorchModel

if TYPE_CHECKING:
    from asgi_host.metrics import Metrics

MODELS = 8
FEATURES, HIDDEN, CLASSES = 1013, 4096, 10
# 4096 x 1013 + 4096 (the hidden layer) + 10 x 4096 (the head, no bias) = 2**22 floats: 16 MiB.
MODEL_BYTES = 4 * (HIDDEN * FEATURES + HIDDEN + CLASSES * HIDDEN)
SEED = 20_240_601


class MLP(nn.Module):
    """FEATURES in, a hidden layer of HIDDEN, CLASSES logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(FEATURES, HIDDEN)
        self.head = nn.Linear(HIDDEN, CLASSES, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.relu(self.hidden(x)))
        return logits


class PoolConfig(HostConfig, frozen=True, kw_only=True):
    """The host's settings plus the pool's."""

    budget_mib: Annotated[float, msgspec.Meta(gt=0)] = 48.0
    device: str = "auto"
    cache_dir: str | None = None
    pinned: str = ""  # comma-separated model names
    wait_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    metrics: bool = True  # GET /metrics (needs the `metrics` extra: prometheus-client)


def names() -> list[str]:
    return [f"mlp-{i}" for i in range(MODELS)]


def cache_dir(configured: str | None = None) -> Path:
    if configured:
        return Path(configured)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "asgi_host-pool"


def weights_path(directory: Path, index: int) -> Path:
    return directory / f"mlp-{index}-seed{SEED + index}.safetensors"


def make_weights(directory: Path) -> list[Path]:
    """The eight weights files, made from their seeds where missing (written whole, then renamed:
    several workers starting together never read half a file)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(MODELS):
        path = weights_path(directory, index)
        paths.append(path)
        if path.is_file():
            continue
        generator = torch.Generator().manual_seed(SEED + index)
        with torch.device("cpu"):
            state = {
                name: (torch.rand(tensor.shape, generator=generator) * 2 - 1) / tensor.shape[-1] ** 0.5
                for name, tensor in MLP().state_dict().items()
            }
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".part", delete=False) as part:
            save_file(state, part.name)
        os.replace(part.name, path)
    return paths


def make_app(config: PoolConfig | None = None) -> Host:
    config = config or PoolConfig()
    directory = cache_dir(config.cache_dir)

    @asynccontextmanager
    async def weights() -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(make_weights, directory)
        yield

    models = [
        TorchModel(MLP, weights_path(directory, i), name=name, warmup=torch.zeros(1, FEATURES))
        for i, name in enumerate(names())
    ]
    pool = ModelPool(
        models,
        budget_bytes=int(config.budget_mib * 2**20),
        device=config.device,
        pinned=[name.strip() for name in config.pinned.split(",") if name.strip()],
        wait_s=config.wait_s,
    )
    served = [
        V2Model(
            name=name,
            resource=name,
            inputs=[TensorSpec("input", "FP32", [-1, FEATURES])],
            outputs=[TensorSpec("probabilities", "FP32", [-1, CLASSES])],
            fn=lambda module, x: torch.softmax(module(x).float(), dim=-1),
        )
        for name in names()
    ]
    return Host(
        resources=[Resource(weights, name="weights"), pool],
        routes=[KServe(*served), ModelRepository(pool, admin_token=config.admin_token)],
        metrics=_metrics() if config.metrics else None,
        **config.host_kwargs(),
    )


def _metrics() -> Metrics:
    from asgi_host.metrics import Metrics

    return Metrics()


app = make_app(load_config(PoolConfig, env_prefix="POOL_", toml_path=os.environ.get("POOL_CONFIG")))
