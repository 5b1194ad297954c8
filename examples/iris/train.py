"""Train the Iris MLP and write `examples/iris/iris_mlp.safetensors`.

    python -m examples.iris.train

Deterministic (fixed seed, full-batch Adam, one thread): the same weights on
every run on the same torch build. Takes about a second on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import LABELS, WEIGHTS, IrisMLP, load_dataset

SEED = 20261122
EPOCHS = 500


def train(seed: int = SEED, epochs: int = EPOCHS) -> tuple[IrisMLP, float]:
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    inputs, species = load_dataset()
    x = torch.tensor(inputs, dtype=torch.float32)
    y = torch.tensor([LABELS.index(s) for s in species])
    model = IrisMLP()
    model.mean.copy_(x.mean(dim=0))
    model.std.copy_(x.std(dim=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        accuracy = (model(x).argmax(dim=-1) == y).float().mean().item()
    return model, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    model, accuracy = train()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), training accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
