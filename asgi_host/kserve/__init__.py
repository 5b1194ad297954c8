"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) for any `TorchModel`.

Needs the `torch` extra. Existing clients (`tritonclient.http`, KServe's `InferenceRESTClient`,
`perf_analyzer`) talk to the host unchanged::

    iris = V2Model(
        name="iris",
        resource="model",                                   # the TorchModel's name
        inputs=[TensorSpec("input", "FP32", [-1, 4])],      # -1: the batch dimension
        outputs=[TensorSpec("probabilities", "FP32", [-1, 3])],
        fn=lambda module, x: torch.softmax(module(x), dim=-1),
    )
    app = Host(resources=[model], routes=[KServe(iris)])

Routes: exact routes per model (`/v2/models/{name}[/versions/{v}]`, `/ready`, `/infer`,
`/config`) plus `/v2`, `/v2/health/live` and `/v2/health/ready`, and a prefix route `/v2`
that answers every other path under `/v2` with the protocol's 404 (an unknown model, say).
Errors are the protocol's `{"error": "..."}`. The binary tensor data extension is supported
both ways. See docs/protocols.md. `ModelRepository` adds Triton's model repository extension
(index, load, unload behind the admin token) for the models of a `ModelPool`: docs/pool.md.

The package: `_tensors` (datatypes, `TensorSpec`, the JSON and binary codecs), `_model`
(`V2Model`: a model's metadata, its forward pass, a request parsed and answered), `_routes`
(`KServe`: the routes and the protocol's error format), `_repository` (`ModelRepository`).
"""

from ._model import V2Model
from ._repository import ModelRepository
from ._routes import KServe, v2_error_response
from ._tensors import DATATYPES, TensorSpec

__all__ = ["DATATYPES", "KServe", "ModelRepository", "TensorSpec", "V2Model", "v2_error_response"]
