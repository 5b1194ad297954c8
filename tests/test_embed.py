"""examples.embed: MiniLM sentence embeddings behind POST /embed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import torch

from asgi_host import Batcher, Batching
from asgi_host.testing import LifespanDriver
from examples.embed import EmbedConfig, _forward, make_app
from examples.minilm import MiniLM, load_tokenizer, model_dir, save_half_copy
from tests.conftest import LOOPS

pytestmark = pytest.mark.anyio

# These compare against the package's float32 weights, which a MINILM_DIR copy (the float16 one
# bench/gpu_carry.py carries to the GPU machine) replaces.
needs_packaged_weights = pytest.mark.skipif(
    "MINILM_DIR" in os.environ, reason="MINILM_DIR replaces the package's float32 weights"
)

FOOD = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]


@pytest.fixture(scope="module", params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module-scoped: the module's tests share one model per event loop (`embedder`)."""
    backend: str = request.param
    return backend


@pytest.fixture(scope="module")
async def embedder() -> AsyncIterator[LifespanDriver]:
    """MiniLM loaded once per event loop for this module's tests (they only send it requests)."""
    async with LifespanDriver(
        make_app(EmbedConfig(max_texts=8, max_chars=100)), startup_timeout_s=60
    ) as lifespan:
        yield lifespan


async def test_a_paraphrase_ranks_above_an_unrelated_sentence(embedder: LifespanDriver) -> None:
    result = await embedder.request("POST", "/embed", json={"texts": FOOD})
    vectors = torch.tensor(result.json()["embeddings"])
    assert vectors.shape == (3, 384)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.5


async def test_msgpack_round_trip(embedder: LifespanDriver) -> None:
    body = msgspec.msgpack.encode({"texts": FOOD[:1]})
    headers = [("content-type", "application/msgpack"), ("accept", "application/msgpack")]
    result = await embedder.request("POST", "/embed", body=body, headers=headers)
    as_json = await embedder.request("POST", "/embed", json={"texts": FOOD[:1]})
    assert msgspec.msgpack.decode(result.body) == as_json.json()


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({"texts": []}, 422, "$.texts"),
        ({"texts": ["ok", ""]}, 422, "$.texts[1]"),
        ({"texts": ["x" * 101]}, 422, "$.texts[0]"),
        ({"texts": ["ok", 3]}, 422, "$.texts[1]"),
        ({"text": ["ok"]}, 422, "$"),
        ({"texts": ["a"] * 9}, 413, None),
    ],
)
async def test_limits_and_errors(embedder: LifespanDriver, body: Any, status: int, path: str | None) -> None:
    result = await embedder.request("POST", "/embed", json=body)
    assert result.status == status
    assert result.json()["error"].get("path") == path


async def test_malformed_body_is_400(embedder: LifespanDriver) -> None:
    result = await embedder.request(
        "POST", "/embed", body=b'{"texts": [', headers=[("content-type", "application/json")]
    )
    assert result.status == 400


@pytest.mark.slow
@needs_packaged_weights
def test_same_embeddings_as_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    # The light path (tokenizers + plain torch) must agree with the reference implementation.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    model = MiniLM()
    model.load_state_dict(load_file(str(model_dir() / "model.safetensors")), strict=True)
    model.eval()
    encoded = load_tokenizer().encode_batch(FOOD)
    with torch.inference_mode():
        ours = model(
            torch.tensor([e.ids for e in encoded]), torch.tensor([e.attention_mask for e in encoded])
        )
    reference = torch.tensor(SentenceTransformer(str(model_dir()), device="cpu").encode(FOOD))
    assert torch.allclose(ours, reference, atol=1e-5)


@pytest.mark.slow
async def test_batched_and_bucketed_passes_answer_what_the_one_call_reference_does() -> None:
    # Requests of 3 texts of different lengths: a shared pass pads them to its longest, and with
    # bucket sizes (4, 8) every pass (3 or 6 rows) is padded by repeating its last prepared row.
    words = ["cats", "the weather in the mountains this week", "a very long sentence " * 9]
    bodies = [[f"request {i} text {j} about {words[(i + j) % 3]}" for j in range(3)] for i in range(8)]
    modes = {
        "off": None,
        "on": Batching(max_batch_rows=64),
        "bucketed": Batching(max_batch_rows=8, bucket_rows=(4,)),
    }
    for mode, batching in modes.items():
        app = make_app(EmbedConfig(batching=batching))
        async with LifespanDriver(app, startup_timeout_s=60) as lifespan:
            answers: list[Any] = [None] * len(bodies)

            async def one(i: int, lifespan: LifespanDriver = lifespan, answers: list[Any] = answers) -> None:
                answers[i] = (await lifespan.request("POST", "/embed", json={"texts": bodies[i]})).json()

            async with anyio.create_task_group() as tg:
                for i in range(len(bodies)):
                    tg.start_soon(one, i)
            handle = lifespan.state["model"]
            with torch.inference_mode():  # the previous code path: each request in one call
                reference = [_forward(handle.module, t, load_tokenizer(), handle.device) for t in bodies]
            passes = handle.forward_passes
            # float32 weights; MINILM_DIR's float16 copy on a GPU rounds differently by padding length
            exact = handle.device.type == "cpu" and next(handle.module.parameters()).dtype == torch.float32
        ours = torch.tensor([answer["embeddings"] for answer in answers])
        assert torch.allclose(ours, torch.tensor(reference), rtol=0, atol=1e-6 if exact else 1e-3), mode
        if batching is None:
            assert passes == len(bodies)
            if exact:
                assert torch.equal(ours, torch.tensor(reference))  # the same pass, padded the same
        else:
            assert passes < len(bodies)  # requests shared passes
            batcher = next(r for r in app.resources if isinstance(r, Batcher))
            assert batcher.batched_rows == 3 * len(bodies)
            assert (batcher.padded_rows > 0) is (mode == "bucketed")


@needs_packaged_weights
async def test_a_half_precision_copy_loads_through_minilm_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What bench/gpu_carry.py carries to the GPU machine instead of the 88 MB package.

    async with LifespanDriver(make_app(EmbedConfig()), startup_timeout_s=60) as lifespan:
        full = torch.tensor(
            (await lifespan.request("POST", "/embed", json={"texts": FOOD})).json()["embeddings"]
        )
    copy = save_half_copy(tmp_path / "minilm")
    assert (copy / "model.safetensors").stat().st_size < 0.55 * (
        model_dir() / "model.safetensors"
    ).stat().st_size
    monkeypatch.setenv("MINILM_DIR", str(copy))
    assert model_dir() == copy
    async with LifespanDriver(make_app(EmbedConfig()), startup_timeout_s=60) as lifespan:
        half = torch.tensor(
            (await lifespan.request("POST", "/embed", json={"texts": FOOD})).json()["embeddings"]
        )
    assert torch.nn.functional.cosine_similarity(full, half).min() > 0.999
    assert not torch.equal(full, half)  # it really ran on the float16 weights

    (copy / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks tokenizer\.json"):
        model_dir()


def test_the_embedding_example_batches_by_default() -> None:
    from asgi_host import Batching
    from asgi_host.config import load_config
    from examples.embed import EmbedConfig

    assert EmbedConfig().batching == Batching()
    assert load_config(EmbedConfig, env_prefix="EMBED_", environ={"EMBED_BATCHING": "off"}).batching is None
