"""The Iris model served by LitServe, for `bench.http` (`python -m bench.litserve_iris PORT`).

Written the way LitServe's docs teach: a LitAPI with setup/decode/predict/encode,
run by LitServer (its own uvicorn server and inference worker process).
Needs `pip install litserve` (not a project dependency).
"""

from __future__ import annotations

import sys
from typing import Any

import litserve as ls
import torch

from asgi_host.model import TorchModel
from examples.iris import LABELS, WEIGHTS, IrisMLP


class IrisAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = TorchModel(IrisMLP, WEIGHTS, device="cpu").load()[0]

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # LitServe reads the annotation
        inputs: list[list[float]] = request["inputs"]
        return inputs

    def predict(self, inputs: list[list[float]]) -> dict[str, Any]:
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(torch.tensor(inputs)), dim=-1)
        return {
            "outputs": probabilities.tolist(),
            "labels": [LABELS[i] for i in probabilities.argmax(dim=-1).tolist()],
        }

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


if __name__ == "__main__":
    server = ls.LitServer(IrisAPI(), accelerator="cpu", api_path="/predict")
    server.run(host="127.0.0.1", port=int(sys.argv[1]), generate_client_file=False, log_level="warning")
