"""Your own model behind POST /predict, complete: the README's "Your own model" is this file.

hypercorn examples.own_model:app      # from the repository root (the weights path is relative)
"""

import torch
from torch import nn

from asgi_host import Host
from asgi_host.model import Classifier, TorchModel


class MyNet(nn.Module):
    """8 features in, one raw score (logit) per label out: the endpoint applies the softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(x)
        return logits


# Saved with safetensors.torch.save_file(net.state_dict(), path) after training (the file shipped
# here holds MyNet's initial parameters, seed 0, so this runs). A relative path is relative to the
# directory the server is started from.
WEIGHTS = "examples/mynet.safetensors"

app = Host(
    resources=[TorchModel(MyNet, WEIGHTS, device="auto", warmup=torch.zeros(1, 8))],
    routes=[Classifier(labels=["cat", "dog"], n_features=8)],
)
