"""PyTorch models as host resources (needs the `torch` extra: `pip install asgi_host[torch]`).

::

    from asgi_host.model import Classifier, TorchModel

    model = TorchModel(IrisMLP, "weights.safetensors", warmup=torch.zeros(1, 4))
    iris = Classifier(labels=["setosa", "versicolor", "virginica"], n_features=4)
    app = Host(resources=[model], routes=[iris])

`TorchModel` loads the model at startup and yields a `ModelHandle` into the
state; `ModelPool` holds many `TorchModel`s within one memory budget, loaded on
demand (a `PooledModel` per model in the state); `Classifier` is `POST /predict`
for a classifier; the device helpers place a model and give CUDA memory back.
This module only gathers them: `_torch_model` (the resource), `_loading`
(loading one version: `ModelVersion`), `_handle` (`ModelHandle`), `_pool` and
`_pooled` (the pool), `_classifier` (the adapter), `_device` (devices and CUDA
memory). See docs/model.md and docs/pool.md.
"""

from __future__ import annotations

from ._classifier import Classifier, ClassifierOutput
from ._device import cuda_memory, release_cuda_memory, resolve_device
from ._handle import ModelHandle
from ._loading import INLINE_THRESHOLD_S, TIMED_PASSES, Execution, ModelVersion
from ._pool import ModelPool
from ._pooled import PooledModel
from ._torch_model import TorchModel

__all__ = [
    "INLINE_THRESHOLD_S",
    "TIMED_PASSES",
    "Classifier",
    "ClassifierOutput",
    "Execution",
    "ModelHandle",
    "ModelPool",
    "ModelVersion",
    "PooledModel",
    "TorchModel",
    "cuda_memory",
    "release_cuda_memory",
    "resolve_device",
]
