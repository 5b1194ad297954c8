"""PyTorch models as host resources (needs the `torch` extra: `pip install asgi_host[torch]`).

::

    from asgi_host.model import TorchModel, classifier_endpoint

    model = TorchModel(IrisMLP, "weights.safetensors", warmup=torch.zeros(1, 4))
    predict = classifier_endpoint(labels=["setosa", "versicolor", "virginica"], n_features=4)
    app = Host(resources=[model], routes=[Route("/predict", predict, methods=["POST"])])

`TorchModel` loads the model at startup and yields a `ModelHandle` into the
state; `classifier_endpoint` is `POST /predict` for a classifier; the device
helpers place a model and give CUDA memory back. This module only gathers
them: `_torch_model` (the resource and the handle), `_classifier` (the
endpoint), `_device` (devices and CUDA memory). See docs/model.md.
"""

from __future__ import annotations

from ._classifier import ClassifierOutput, classifier_endpoint
from ._device import cuda_memory, release_cuda_memory, resolve_device
from ._errors import ModelLoadError
from ._torch_model import (
    INLINE_THRESHOLD_S,
    TIMED_PASSES,
    Execution,
    ModelHandle,
    TorchModel,
)

__all__ = [
    "INLINE_THRESHOLD_S",
    "TIMED_PASSES",
    "ClassifierOutput",
    "Execution",
    "ModelHandle",
    "ModelLoadError",
    "TorchModel",
    "classifier_endpoint",
    "cuda_memory",
    "release_cuda_memory",
    "resolve_device",
]
