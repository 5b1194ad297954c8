"""Fisher's Iris classifier: the default model `examples.app` serves.

The data (150 rows, 4 features in cm, 3 species) ships as `iris.csv`; the
weights `iris_mlp.safetensors` are written by `python -m examples.iris.train`
(fixed seed, a few seconds on a CPU) and committed, so serving never trains.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DATA = HERE / "iris.csv"
WEIGHTS = HERE / "iris_mlp.safetensors"
FEATURES = ("sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm")
LABELS = ("setosa", "versicolor", "virginica")


class IrisMLP(nn.Module):
    """4 -> 16 -> 3 with the inputs standardised inside, so callers send raw centimetres."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(len(FEATURES)))
        self.register_buffer("std", torch.ones(len(FEATURES)))
        self.layers = nn.Sequential(
            nn.Linear(len(FEATURES), hidden), nn.ReLU(), nn.Linear(hidden, len(LABELS))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers((x - self.mean) / self.std)
        return logits


def load_dataset(path: Path = DATA) -> tuple[list[list[float]], list[str]]:
    """The rows as `[features...]` and their species names."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    inputs = [[float(row[name]) for name in FEATURES] for row in rows]
    species = [row["species"] for row in rows]
    return inputs, species
