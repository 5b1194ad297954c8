"""The decode loop: continuous batching, sequences joining and leaving, cancellation at each stage.

The model here is a toy decoder that needs its KV cache to answer right: it writes each token it
is fed into its cache at the row's slot and position, and its next token is the slot's first
token plus the position it is at (mod the vocabulary). A sequence read from another slot, or a
prompt chunk written to the wrong positions, gives another answer.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from asgi_host import Host, HTTPError
from asgi_host.generation import Delta, GenerationEvent, Generator, SamplingParams
from asgi_host.model import TorchModel
from asgi_host.testing import LifespanDriver
from tests._wait import until

pytestmark = pytest.mark.anyio

VOCAB = 26
EOS = 25  # "z"


class Recall(nn.Module):
    """Next token = (the slot's first token + the position after the row's last) % VOCAB."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []  # (rows, tokens per row) of each forward
        self.delay_s = 0.0  # each forward takes this long: a model busy between tokens
        self.gate: threading.Event | None = None  # when set: each forward waits for it
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        self.calls.append((tokens.shape[0], tokens.shape[1]))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.gate is not None:
            self.gate.wait(10)
        store: torch.Tensor = cache.data  # a tensor's .data is itself; a CopyingCache's its tensor
        store[slots[:, None], positions] = tokens
        following = (store[slots, 0] + positions[:, -1] + 1) % VOCAB
        return F.one_hot(following, VOCAB).float() * 10


class CopyingCache:
    """The toy model's cache, able to copy a prefix from one slot to another."""

    def __init__(self, slots: int, tokens: int) -> None:
        self.data = torch.zeros(slots, tokens, dtype=torch.long)

    def copy_prefix(self, source: int, target: int, tokens: int) -> None:
        self.data[target, :tokens] = self.data[source, :tokens]


def expected(prompt: list[int], count: int) -> list[int]:
    return [(prompt[0] + len(prompt) + i) % VOCAB for i in range(count)]


def letters(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i) for i in ids if i != EOS)


def generator(*, copying: bool = False, **settings: Any) -> Generator:
    settings.setdefault("max_sequences", 4)
    settings.setdefault("max_sequence_tokens", 64)
    return Generator(
        new_cache=lambda module, slots, tokens: (
            CopyingCache(slots, tokens) if copying else torch.zeros(slots, tokens, dtype=torch.long)
        ),
        detokenize=letters,
        eos_token_ids=[EOS],
        **settings,
    )


async def run(gen: Generator, prompt: list[int], **params: Any) -> Delta:
    params.setdefault("temperature", 0)
    return await gen.complete(prompt, SamplingParams(**params))


def host(gen: Generator) -> Host:
    return Host(resources=[TorchModel(Recall, None, execution="thread"), gen])


def model_of(lifespan: LifespanDriver) -> Recall:
    module: Recall = lifespan.state["model"].module
    return module


async def test_one_sequence_is_the_models_greedy_answer() -> None:
    gen = generator()
    async with LifespanDriver(host(gen)):
        answer = await run(gen, [3, 1, 4], max_tokens=5)
    assert answer.token_ids == expected([3, 1, 4], 5) == [6, 7, 8, 9, 10]
    assert answer.text == "ghijk"
    assert (answer.finish_reason, answer.prompt_tokens, answer.completion_tokens) == ("length", 3, 5)


async def test_sequences_joining_and_leaving_mid_batch_get_their_own_answers() -> None:
    gen = generator(max_sequences=4)
    prompts = [[i, i + 1, i + 2][: 2 + i % 2] for i in range(10)]  # 2 or 3: a prefill is never 1 wide
    lengths = [3 + 2 * i for i in range(10)]
    answers: dict[int, Delta] = {}
    async with LifespanDriver(host(gen)) as lifespan:
        model_of(lifespan).delay_s = 0.003  # a step takes time: requests arrive while others decode

        async def one(i: int) -> None:
            await anyio.sleep(0.002 * i)  # arriving one after another, while others decode
            answers[i] = await run(gen, prompts[i], max_tokens=lengths[i], ignore_eos=True)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i)
        calls = model_of(lifespan).calls
        assert (gen.active, gen.waiting, gen.free_slots) == (0, 0, 4)
    for i in range(10):
        assert answers[i].token_ids == expected(prompts[i], lengths[i]), i
    decode_rows = [rows for rows, width in calls if width == 1]
    assert max(decode_rows) == 4  # four sequences stepped together
    assert sum(lengths) - 10 == sum(decode_rows)  # every decoded token was one row of some step
    assert len(decode_rows) < sum(lengths) / 2  # ... in far fewer steps than tokens


async def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps() -> None:
    gen = generator(prefill_chunk=4)
    prompt = list(range(1, 15))  # 14 tokens: 4 chunks
    async with LifespanDriver(host(gen)) as lifespan:
        answer = await run(gen, prompt, max_tokens=3)
        calls = model_of(lifespan).calls
    assert answer.token_ids == expected(prompt, 3)
    assert [width for _, width in calls[:4]] == [4, 4, 4, 2]


async def test_streamed_deltas_add_up_to_the_answer() -> None:
    gen = generator()
    async with LifespanDriver(host(gen)):
        deltas = [d async for d in gen.generate([2], SamplingParams(max_tokens=6, temperature=0))]
    assert [t for d in deltas for t in d.token_ids] == expected([2], 6)
    assert "".join(d.text for d in deltas) == letters(expected([2], 6))
    assert [d.finish_reason for d in deltas][-1] == "length"
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_the_end_of_sequence_token_ends_it_and_is_not_in_the_text() -> None:
    gen = generator()
    async with LifespanDriver(host(gen)):
        answer = await run(gen, [20, 0], max_tokens=10)  # 22, 23, 24, then 25: EOS
    assert answer.token_ids == [22, 23, 24, EOS]
    assert (answer.text, answer.finish_reason) == ("wxy", "stop")


async def test_a_stop_string_ends_it_is_cut_off_and_never_half_sent() -> None:
    gen = generator()
    async with LifespanDriver(host(gen)):
        deltas = [
            d
            async for d in gen.generate(
                [0], SamplingParams(max_tokens=20, temperature=0, stop=("efg", "xyz"))
            )
        ]
    text = "".join(d.text for d in deltas)
    assert (text, deltas[-1].finish_reason) == ("bcd", "stop")
    assert all("e" not in d.text for d in deltas)  # "e" might have begun "efg": it was held back


async def test_a_seed_reproduces_a_sampled_answer() -> None:
    gen = generator()
    async with LifespanDriver(host(gen)):
        first = await run(gen, [1], max_tokens=20, temperature=2.0, seed=7, ignore_eos=True)
        again = await run(gen, [1], max_tokens=20, temperature=2.0, seed=7, ignore_eos=True)
        other = await run(gen, [1], max_tokens=20, temperature=2.0, seed=8, ignore_eos=True)
        narrow = await run(gen, [1], max_tokens=20, temperature=2.0, top_p=0.5, seed=8, ignore_eos=True)
        greedy = await run(gen, [1], max_tokens=20, ignore_eos=True)
    assert first.token_ids == again.token_ids
    assert first.token_ids != greedy.token_ids != other.token_ids  # temperature 2 strays from greedy
    assert narrow.token_ids == greedy.token_ids  # top_p 0.5 keeps the most likely token alone


async def test_a_reader_that_leaves_frees_its_slot_at_each_stage() -> None:
    gen = generator(max_sequences=1, prefill_chunk=2)
    async with LifespanDriver(host(gen)) as lifespan:
        model = model_of(lifespan)
        model.delay_s = 0.02
        # Decoding: leaves after two deltas.
        stream = gen.generate([1], SamplingParams(max_tokens=50, temperature=0))
        await anext(stream)
        await anext(stream)
        await stream.aclose()
        await until(lambda: gen.active == 0)
        # Queued: the one slot is busy with a long generation; the second request leaves waiting.
        busy = gen.generate([1], SamplingParams(max_tokens=50, temperature=0))
        await anext(busy)
        queued = gen.generate([2], SamplingParams(max_tokens=5, temperature=0))
        with anyio.move_on_after(0.05):
            await anext(queued)
        assert gen.waiting == 1
        await queued.aclose()
        await until(lambda: gen.waiting == 0)
        await busy.aclose()
        # Prefilling: a 40-token prompt in chunks of 2 (20 steps); leaves after two steps.
        calls = len(model.calls)
        prefilling = gen.generate(list(range(1, 41)), SamplingParams(max_tokens=5, temperature=0))
        with anyio.move_on_after(0.06):
            await anext(prefilling)
        await prefilling.aclose()
        await until(lambda: gen.active == 0)
        assert len(model.calls) - calls < 10  # stopped long before its 20 chunks
        assert (gen.active, gen.waiting, gen.free_slots, gen.cancelled) == (0, 0, 1, 4)
        # The slot serves the next request right.
        assert (await run(gen, [5], max_tokens=3)).token_ids == expected([5], 3)


async def test_cancellation_takes_at_most_the_step_that_is_running() -> None:
    gen = generator()
    events: list[GenerationEvent] = []
    gen.observers.append(events.append)
    async with LifespanDriver(host(gen)) as lifespan:
        model = model_of(lifespan)
        model.delay_s = 0.3  # each step 300 ms
        stream = gen.generate([1], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
        await anext(stream)
        left = anyio.current_time()
        steps = len(model.calls)
        await stream.aclose()
        await until(lambda: gen.active == 0, timeout_s=2)
        freed = anyio.current_time() - left
        # The step running when it left (it may have just begun: on trio the decode loop can wake
        # before the reader), and no more: a second step would take it past 0.6 s.
        assert freed < 2 * 0.3
        assert len(model.calls) <= steps + 1
    cancelled = [event for event in events if event.kind == "cancelled"]
    assert len(cancelled) == 1  # observed when the slot was freed, for the metrics and benchmarks
    assert 0 <= cancelled[0].seconds <= freed
    assert not any(event.kind == "finished" for event in events)


async def test_limits_are_errors_with_the_right_status() -> None:
    gen = generator(max_sequences=1, max_sequence_tokens=16, max_waiting=1)
    async with LifespanDriver(host(gen)) as lifespan:
        with pytest.raises(HTTPError, match="context is 16 tokens") as too_long:
            await run(gen, list(range(10)), max_tokens=8)
        assert too_long.value.status == 400
        assert (await run(gen, list(range(10)), max_tokens=7)).finish_reason == "length"  # 10 + 7 - 1 fits
        model_of(lifespan).delay_s = 0.05
        busy = gen.generate([1], SamplingParams(max_tokens=15, temperature=0))
        await anext(busy)
        waiting = gen.generate([1], SamplingParams(max_tokens=2, temperature=0))
        async with anyio.create_task_group() as tg:
            tg.start_soon(anext, waiting)
            await until(lambda: gen.waiting == 1)
            with pytest.raises(HTTPError, match="1 requests are waiting") as full:
                await run(gen, [1], max_tokens=2)
            assert full.value.status == 503
            assert dict(full.value.headers)["retry-after"].isdigit()
            tg.cancel_scope.cancel()
        await waiting.aclose()
        await busy.aclose()


async def test_requests_that_arrive_during_a_step_take_the_free_slots_before_any_waits() -> None:
    # Before: a burst into free slots while the loop ran a step counted as waiting, and was refused.
    gen = generator(max_sequences=3, max_waiting=1)
    async with LifespanDriver(host(gen)) as lifespan:
        model = model_of(lifespan)
        model.gate = threading.Event()  # every step waits until the gate opens
        busy = gen.generate([1], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
        params = SamplingParams(max_tokens=2, temperature=0)
        joined = [gen.generate([2], params) for _ in range(3)]  # two free slots, then one waits
        async with anyio.create_task_group() as tg:
            tg.start_soon(anext, busy)
            await until(lambda: len(model.calls) == 1)  # its prefill is running (held at the gate)
            assert gen.free_slots == 2
            for stream in joined:
                tg.start_soon(anext, stream)
            await until(lambda: gen.waiting == 3)
            with pytest.raises(HTTPError, match="1 requests are waiting for one of 3") as full:
                await anext(gen.generate([3], params))
            assert full.value.status == 503
            model.gate.set()
        for stream in [*joined, busy]:
            await stream.aclose()


async def test_shutdown_ends_the_generations_in_flight_with_503() -> None:
    gen = generator()
    errors: list[int] = []
    app = host(gen)
    async with LifespanDriver(app) as lifespan:
        model_of(lifespan).delay_s = 0.02

        async def reader() -> None:
            try:
                await run(gen, [1], max_tokens=60, ignore_eos=True)
            except HTTPError as exc:
                errors.append(exc.status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await until(lambda: gen.active == 1)
            await lifespan.shutdown()
    assert errors == [503]


async def test_the_metrics_observe_queue_first_token_tokens_and_the_end() -> None:
    gen = generator()
    seen: list[GenerationEvent] = []
    gen.observers.append(seen.append)
    async with LifespanDriver(host(gen)):
        await run(gen, [1, 2], max_tokens=4)
    assert [e.kind for e in seen] == ["queued", "first_token", "token", "token", "token", "finished"]
    assert (seen[-1].reason, seen[-1].prompt_tokens, seen[-1].completion_tokens) == ("length", 2, 4)
    assert all(e.seconds >= 0 for e in seen)
    assert (gen.generated_tokens, gen.prompt_tokens, gen.finished) == (4, 2, 1)


async def test_many_readers_that_leave_leave_nothing_behind() -> None:
    gen = generator(max_sequences=2, prefill_chunk=2)
    async with LifespanDriver(host(gen)):
        for i in range(150):
            stream = gen.generate(list(range(1, 2 + i % 7)), SamplingParams(max_tokens=30, temperature=0))
            if i % 3:
                await anext(stream)  # decoding, then leaves
            else:
                with anyio.move_on_after(0.0005):  # queued or prefilling, then leaves
                    await anext(stream)
            await stream.aclose()
        await until(lambda: gen.active == 0 and gen.waiting == 0)
        assert gen.free_slots == 2
        assert gen.cancelled + gen.finished == 150
        assert (await run(gen, [4], max_tokens=3)).token_ids == expected([4], 3)


async def test_a_prompt_that_begins_as_a_cached_one_starts_after_the_shared_prefix() -> None:
    gen = generator(max_sequences=2)
    shared = list(range(3, 15))  # 12 tokens, as a system prompt
    async with LifespanDriver(host(gen)) as lifespan:
        calls = model_of(lifespan).calls
        first = await run(gen, [*shared, 1, 2], max_tokens=3)
        before = len(calls)
        second = await run(gen, [*shared, 7, 7, 7], max_tokens=3)
        prefill = [width for _, width in calls[before:] if width > 1]
    assert first.token_ids == expected([*shared, 1, 2], 3)
    assert second.token_ids == expected([*shared, 7, 7, 7], 3)
    assert prefill == [3]  # the 12 shared tokens were in the slot it took: only 3 prefilled
    assert (gen.prefix_hit_tokens, gen.prefix_queried_tokens) == (12, 14 + 15)


@pytest.mark.parametrize("copying", [True, False])
async def test_a_prefix_another_slot_holds_is_copied_when_the_cache_can(copying: bool) -> None:
    gen = generator(max_sequences=2, copying=copying)
    shared = list(range(3, 15))
    async with LifespanDriver(host(gen)) as lifespan:
        model = model_of(lifespan)
        model.delay_s = 0.005
        busy = gen.generate([*shared, 1], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
        await anext(busy)  # decoding in its slot; the other slot is free and holds nothing
        before = len(model.calls)
        answer = await run(gen, [*shared, 9, 9], max_tokens=4)
        prefill = [width for _, width in model.calls[before:] if width > 1]
        await busy.aclose()
    assert answer.token_ids == expected([*shared, 9, 9], 4)
    assert prefill == ([2] if copying else [14])  # copied from the busy slot, or prefilled whole


def test_sampling_settings_are_checked() -> None:
    with pytest.raises(Exception, match="temperature"):
        SamplingParams(temperature=3)
    with pytest.raises(ValueError, match="a stop string is not empty"):
        SamplingParams(stop=("",))
    with pytest.raises(ValueError, match="max_sequences must be at least 1"):
        generator(max_sequences=0)
