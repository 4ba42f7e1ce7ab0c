"""The concurrency contract (llmkit/engine.py) on real SGLang: many callers at once from threads and from
asyncio loops share one engine, each gets its own output, and cancelling or abandoning one frees it only.

The session engine runs with enable_deterministic_inference, so greedy output does not depend on what else
is in the batch (capabilities().batch_invariant_greedy): every concurrent output must equal the same
prompt's output run alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import llmkit
from llmkit import greedy

pytestmark = [pytest.mark.smollm2, pytest.mark.engine("sglang")]

PROMPTS = [f"Item {i}: the {word} of the story is" for i, word in enumerate(
    ["beginning", "middle", "end", "hero", "villain", "weather", "city", "river", "song", "book", "door", "key",
     "letter", "garden", "winter", "summer", "island", "bridge", "tower", "forest", "clock", "ship", "lamp", "road",
     "mountain", "market", "school", "window", "horse", "dream", "storm", "candle"])]
PARAMS = greedy(max_tokens=40, ignore_eos=True)


@pytest.fixture(scope="module")
def solo(sglang_engine):
    """Each prompt run alone: the reference every concurrent run must equal."""
    assert sglang_engine.capabilities().batch_invariant_greedy, "the comparison needs batch-invariant greedy decoding"
    return {p: (c.text, c.token_ids) for p in PROMPTS for c in [sglang_engine.generate(p, PARAMS)[0]]}


def _no_requests_left(engine, timeout: float = 10.0) -> bool:
    manager = engine.engine.tokenizer_manager
    deadline = time.monotonic() + timeout
    while manager.rid_to_state and time.monotonic() < deadline:
        time.sleep(0.05)
    return not manager.rid_to_state


def test_threads_get_their_own_outputs(sglang_engine, solo):
    def one(prompt: str) -> tuple[str, tuple]:
        if PROMPTS.index(prompt) % 2:
            chunks = list(sglang_engine.stream(prompt, PARAMS))
            return prompt, ("".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids])
        out = sglang_engine.generate(prompt, PARAMS)[0]
        return prompt, (out.text, out.token_ids)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, PROMPTS * 2))
    for prompt, got in results:
        assert got == solo[prompt], prompt
    assert _no_requests_left(sglang_engine)


def test_asyncio_tasks_and_a_second_loop(sglang_engine, solo):
    async def stream(prompt: str) -> tuple[str, tuple]:
        chunks = [c async for c in sglang_engine.astream(prompt, PARAMS)]
        return prompt, ("".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids])

    async def batch(prompts: list[str]) -> list[tuple[str, tuple]]:
        outs = await sglang_engine.agenerate(prompts, PARAMS)
        return [(p, (o.text, o.token_ids)) for p, o in zip(prompts, outs)]

    async def main(prompts: list[str]) -> list:
        results = await asyncio.gather(*[stream(p) for p in prompts], batch(prompts[:8]))
        return [r for r in results[:-1]] + results[-1]

    other: list = []
    thread = threading.Thread(target=lambda: other.extend(asyncio.run(main(PROMPTS[16:]))))
    thread.start()
    mine = asyncio.run(main(PROMPTS[:16]))
    thread.join(120)
    assert not thread.is_alive() and len(other) == 16 + 8 and len(mine) == 16 + 8
    for prompt, got in mine + other:
        assert got == solo[prompt], prompt


def test_an_unread_stream_does_not_hold_others(sglang_engine, solo):
    idle = sglang_engine.stream(PROMPTS[0], PARAMS)
    first = next(idle)
    started = time.monotonic()
    outs = sglang_engine.generate(PROMPTS[1:9], PARAMS)
    assert time.monotonic() - started < 60
    assert [(o.text, o.token_ids) for o in outs] == [solo[p] for p in PROMPTS[1:9]]
    rest = list(idle)  # its output waited for it
    chunks = [first] + rest
    assert ("".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids]) == solo[PROMPTS[0]]


def test_cancelling_some_frees_them_only(sglang_engine, solo):
    long = greedy(max_tokens=1200, ignore_eos=True)

    async def cancelled_task():
        async for _ in sglang_engine.astream(PROMPTS[0], long):
            pass

    async def abandoned():
        stream = sglang_engine.astream(PROMPTS[1], long)
        async for _ in stream:
            break
        await stream.aclose()

    async def finished(prompt: str):
        out = await sglang_engine.agenerate(prompt, PARAMS)
        return prompt, (out[0].text, out[0].token_ids)

    async def main():
        victim = asyncio.ensure_future(cancelled_task())
        survivors = [asyncio.ensure_future(finished(p)) for p in PROMPTS[2:12]]
        await abandoned()
        await asyncio.sleep(0.3)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        return await asyncio.gather(*survivors)

    for prompt, got in asyncio.run(main()):
        assert got == solo[prompt], prompt
    sync_stream = sglang_engine.stream(PROMPTS[2], long)
    next(sync_stream)
    sync_stream.close()
    assert _no_requests_left(sglang_engine)  # every cancelled request was aborted upstream
    assert (lambda o: (o.text, o.token_ids))(sglang_engine.generate(PROMPTS[3], PARAMS)[0]) == solo[PROMPTS[3]]


def test_timeouts_cancel_the_request(sglang_engine, solo):
    with pytest.raises(llmkit.GenerationTimeoutError):
        sglang_engine.generate(PROMPTS[0], greedy(max_tokens=1500, ignore_eos=True), timeout=0.2)
    with pytest.raises(llmkit.GenerationTimeoutError):
        list(sglang_engine.stream(PROMPTS[0], greedy(max_tokens=1500, ignore_eos=True), timeout=0.2))
    assert _no_requests_left(sglang_engine)
    assert (lambda o: (o.text, o.token_ids))(sglang_engine.generate(PROMPTS[4], PARAMS)[0]) == solo[PROMPTS[4]]


def test_many_samples_per_prompt_from_threads(sglang_engine):
    params = llmkit.SamplingParams(temperature=1.0, seed=5, n=3, max_tokens=16, ignore_eos=True)
    reference = [c.token_ids for c in sglang_engine.generate(PROMPTS[5], params)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: [c.token_ids for c in sglang_engine.generate(PROMPTS[5], params)], range(8)))
    assert all(r == reference for r in results)  # seeded samples do not depend on what ran beside them
    assert [c.index for c in sglang_engine.generate(PROMPTS[5], params)] == [0, 1, 2]
