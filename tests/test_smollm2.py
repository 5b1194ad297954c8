"""examples.smollm2: SmolLM2-135M-Instruct from its GGUF file, against transformers reading the same file."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer

pytestmark = pytest.mark.slow  # transformers, the reference, loaded beside the model

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from examples.smollm2 import (  # noqa: E402
    GGUFModel,
    KVCache,
    SmolLM2,
    gguf_path,
    greedy,
    load,
    render_chat,
)

Loaded = tuple[SmolLM2, Tokenizer, GGUFModel]

TEXTS = [
    "Hello world",
    "  leading spaces, trailing spaces   ",
    "Café, naïve, façade, Ångström, Straße, élève",
    "Emoji: 🦙🚀👩‍👩‍👧 and flags 🇫🇷",
    "Digits 1234567890 3.14159 -42 1e-5 $1,000,000",
    'def f(x):\n\treturn {"a": [x ** 2 for x in range(10)]}  # comment\n',
    "tabs\tand\n\nnewlines\r\n and   runs      of     spaces\n\n\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <file_sep> <|im_end|>",
    "日本語のテキスト、中文文本\uff0c한국어 텍스트",  # with a fullwidth comma
    "I'm sure they'll've done it; we'd've known. DON'T SHOUT",
    "",
]

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a prime number."},
    ],
    "multi-turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about  spaces\nand newlines."},
    ],
    "system multi-turn": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Good morning"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Thank you"},
    ],
}


@pytest.fixture(scope="module")
def smollm2() -> Loaded:
    return load()


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    path = gguf_path()
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def hf_model() -> Any:
    path = gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def chat_ids(loaded: Loaded, content: str) -> list[int]:
    _, tokenizer, file = loaded
    prompt = render_chat(file.chat_template, [{"role": "user", "content": content}])
    ids: list[int] = tokenizer.encode(prompt).ids
    return ids


def run(
    model: SmolLM2, cache: KVCache, ids: list[int], slot: int, start: int = 0, *, last_only: bool = True
) -> torch.Tensor:
    """One row of `ids` at positions start, start + 1, ... into `slot`."""
    positions = torch.arange(start, start + len(ids))[None]
    logits: torch.Tensor = model(
        torch.tensor([ids]), positions, torch.tensor([slot]), cache, last_only=last_only
    )
    return logits[0]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_encodes_and_decodes_as_transformers(smollm2: Loaded, hf_tokenizer: Any, text: str) -> None:
    tokenizer = smollm2[1]
    ids = tokenizer.encode(text).ids
    assert ids == hf_tokenizer(text)["input_ids"]
    for skip in (False, True):
        assert tokenizer.decode(ids, skip_special_tokens=skip) == hf_tokenizer.decode(
            ids, skip_special_tokens=skip
        )


def test_tokenizer_is_transformers_tokenizer(smollm2: Loaded, hf_tokenizer: Any) -> None:
    """The whole serialisation: vocabulary, merges, added tokens, pre-tokenizer, decoder, post-processor."""
    assert json.loads(smollm2[1].to_str()) == json.loads(hf_tokenizer.backend_tokenizer.to_str())


def test_special_tokens_stay_whole(smollm2: Loaded) -> None:
    tokenizer = smollm2[1]
    ids = tokenizer.encode("<|im_start|>user\nHi<|im_end|>").ids
    assert ids[0] == tokenizer.token_to_id("<|im_start|>") == 1
    assert ids[-1] == tokenizer.token_to_id("<|im_end|>") == 2
    assert tokenizer.decode(ids) == "user\nHi"


@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_prompt_is_transformers_prompt(
    smollm2: Loaded, hf_tokenizer: Any, name: str, generation_prompt: bool
) -> None:
    messages = CONVERSATIONS[name]
    ours = render_chat(smollm2[2].chat_template, messages, add_generation_prompt=generation_prompt)
    theirs = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert ours == theirs
    default_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert (default_system in ours) == (messages[0]["role"] != "system")


def test_weights_are_transformers_weights(smollm2: Loaded, hf_model: Any) -> None:
    """Q and K un-permuted as transformers does (llama.cpp interleaves their rows for its rope)."""
    ours = smollm2[0].state_dict()
    theirs = hf_model.state_dict()
    c = smollm2[2].config
    assert len(ours) == 2 + 6 * c.num_layers
    assert torch.equal(ours["embed.weight"], theirs["model.embed_tokens.weight"])
    for i in range(c.num_layers):
        prefix = f"model.layers.{i}"
        q_size, kv_size = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        q, k, v = ours[f"layers.{i}.qkv.weight"].split([q_size, kv_size, kv_size])
        assert torch.equal(q, theirs[f"{prefix}.self_attn.q_proj.weight"])
        assert torch.equal(k, theirs[f"{prefix}.self_attn.k_proj.weight"])
        assert torch.equal(v, theirs[f"{prefix}.self_attn.v_proj.weight"])
        gate, up = ours[f"layers.{i}.gate_up.weight"].chunk(2)
        assert torch.equal(gate, theirs[f"{prefix}.mlp.gate_proj.weight"])
        assert torch.equal(up, theirs[f"{prefix}.mlp.up_proj.weight"])


def test_prefill_logits_match_transformers(smollm2: Loaded, hf_model: Any) -> None:
    model, _, file = smollm2
    ids = chat_ids(smollm2, "Explain rotary position embeddings in one sentence.")
    cache = KVCache(file.config, slots=2, max_tokens=128)
    ours = run(model, cache, ids, slot=1, last_only=False)
    with torch.inference_mode():
        theirs = hf_model(torch.tensor([ids])).logits[0]
    assert ours.shape == theirs.shape == (len(ids), file.config.vocab_size)
    assert (ours - theirs).abs().max() < 1e-3


def test_chunked_prefill_then_decode_equals_one_prefill(smollm2: Loaded) -> None:
    model, _, file = smollm2
    ids = chat_ids(smollm2, "Write a haiku about the sea.")
    cache = KVCache(file.config, slots=3, max_tokens=128)
    full = run(model, cache, ids, slot=0, last_only=False)
    split, last = 13, len(ids) - 1
    first = run(model, cache, ids[:split], slot=2)
    second = run(model, cache, ids[split:last], slot=2, start=split)
    decoded = run(model, cache, ids[last:], slot=2, start=last)
    for ours, row in ((first, split - 1), (second, last - 1), (decoded, last)):
        torch.testing.assert_close(ours, full[row], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("slots", [[5, 1, 3], [2, 3, 4]], ids=["gathered", "consecutive"])
def test_decode_batch_rows_match_running_alone(smollm2: Loaded, slots: list[int]) -> None:
    model, tokenizer, file = smollm2
    cache = KVCache(file.config, slots=6, max_tokens=128)
    # Every slot first held a longer sequence: what lies past a row's length must be masked out.
    stale = torch.randint(3, file.config.vocab_size, (6, 100), generator=torch.Generator().manual_seed(0))
    model(stale, torch.arange(100).expand(6, 100), torch.arange(6), cache)
    prompts = [
        tokenizer.encode(text).ids
        for text in ("The quick brown fox", "Once upon a time, in a land far, far away, there", "1, 2, 3,")
    ]
    following = [int(run(model, cache, ids, slot).argmax()) for ids, slot in zip(prompts, slots, strict=True)]
    batched = model(
        torch.tensor(following)[:, None],
        torch.tensor([len(ids) for ids in prompts])[:, None],
        torch.tensor(slots),
        cache,
    )
    assert batched.shape == (3, file.config.vocab_size)
    fresh = KVCache(file.config, slots=1, max_tokens=128)
    for row, (ids, token, slot) in enumerate(zip(prompts, following, slots, strict=True)):
        alone = run(model, cache, [token], slot, start=len(ids))
        torch.testing.assert_close(batched[row], alone, atol=1e-4, rtol=1e-5)
        from_scratch = run(model, fresh, [*ids, token], slot=0)
        torch.testing.assert_close(batched[row], from_scratch, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    ("text", "chat"),
    [
        ("What is the capital of France?", True),
        ("Give me three tips for learning Python.", True),
        ("The Eiffel Tower is", False),
    ],
)
def test_greedy_matches_transformers_generate(smollm2: Loaded, hf_model: Any, text: str, chat: bool) -> None:
    model, tokenizer, file = smollm2
    ids = chat_ids(smollm2, text) if chat else tokenizer.encode(text).ids
    cache = KVCache(file.config, slots=1, max_tokens=len(ids) + 32)
    ours = greedy(model, cache, ids, 32, eos_token_id=file.config.eos_token_id)
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        generated = hf_model.generate(
            inputs, attention_mask=torch.ones_like(inputs), do_sample=False, max_new_tokens=32
        )
    assert ours == generated[0, len(ids) :].tolist()


def test_kv_cache_layout(smollm2: Loaded) -> None:
    c = smollm2[2].config
    cache = KVCache(c, slots=4, max_tokens=64, dtype=torch.bfloat16)
    assert cache.keys.shape == (c.num_layers, 4, c.num_kv_heads, 64, c.head_dim)
    assert cache.nbytes == 2 * c.num_layers * 4 * c.num_kv_heads * 64 * c.head_dim * 2
    assert cache.dtype == torch.bfloat16
    assert cache.device == torch.device("cpu")
