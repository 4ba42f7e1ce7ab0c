"""The SGLang adapter's lifecycle on real SGLang (GPU only), each test on an engine of its own beside nothing
else: per-request LoRA, close with requests in flight from threads and asyncio, engine death, no process
left behind."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import psutil
import pytest

import llmkit
from llmkit import Request, greedy

from sglang_options import SMALL_OPTIONS, require_sglang

pytestmark = [pytest.mark.smollm2, pytest.mark.engine("sglang")]

PROMPT = "The three primary colours are"


@pytest.fixture(scope="module")
def lora_engine():
    require_sglang()
    engine = llmkit.load("sglang", llmkit.DEFAULT_MODEL, enable_lora=True, max_lora_rank=8,
                         lora_target_modules=["q_proj", "v_proj"], **SMALL_OPTIONS)
    yield engine
    engine.close()


def test_per_request_lora_adapter(lora_engine, tmp_path):
    from llmkit.catalog import hf_folder
    from llmkit.testing import random_lora

    assert lora_engine.capabilities().lora
    adapter = str(random_lora(hf_folder(llmkit.DEFAULT_MODEL), tmp_path / "lora"))
    base = lora_engine.generate(PROMPT, greedy(max_tokens=12))[0]
    tuned = lora_engine.generate(Request(prompt=PROMPT, lora=adapter), greedy(max_tokens=12))[0]
    assert tuned.token_ids != base.token_ids  # the adapter applies to that request...
    assert lora_engine.generate(PROMPT, greedy(max_tokens=12))[0].token_ids == base.token_ids  # ...and only to it
    # In one batch too (this engine is not batch-invariant, so only: the adapter's request is the one that differs)
    both = lora_engine.generate([Request(prompt=PROMPT, lora=adapter), Request(prompt=PROMPT), Request(prompt=PROMPT)],
                                greedy(max_tokens=12))
    assert both[1].token_ids == both[2].token_ids != both[0].token_ids
    streamed = list(lora_engine.stream(Request(prompt=PROMPT, lora=adapter), greedy(max_tokens=12)))
    assert [t for c in streamed for t in c.token_ids] == tuned.token_ids
    with pytest.raises(llmkit.InvalidRequestError, match="does not exist"):
        lora_engine.generate(Request(prompt=PROMPT, lora=str(tmp_path / "missing")))


def test_close_with_requests_in_flight(lora_engine):
    """Threads and asyncio tasks mid-stream all end with EngineClosedError; no process is left."""
    engine = lora_engine
    started = [psutil.Process(pid) for pid in engine.engine_processes() if psutil.pid_exists(pid)]
    assert any("sglang::scheduler" in " ".join(p.cmdline()) for p in started)
    params = greedy(max_tokens=900, ignore_eos=True)
    errors: list[BaseException] = []
    reading = threading.Barrier(5)

    def reader() -> None:
        stream = engine.stream(PROMPT, params)
        next(stream)
        reading.wait()
        try:
            for _ in stream:
                pass
            errors.append(AssertionError("the stream ended normally"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    async def tasks() -> list:
        async def one():
            async for _ in engine.astream(PROMPT, params):
                pass

        running = [asyncio.ensure_future(one()) for _ in range(3)] + [asyncio.ensure_future(engine.agenerate([PROMPT] * 2, params))]
        await asyncio.sleep(0.5)
        return await asyncio.gather(*running, return_exceptions=True)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    async_results: list = []
    closer = threading.Thread(target=lambda: async_results.extend(asyncio.run(tasks())))
    closer.start()
    reading.wait()
    time.sleep(0.3)
    engine.close()
    for t in threads + [closer]:
        t.join(30)
        assert not t.is_alive()
    assert len(errors) == 4 and all(isinstance(e, llmkit.EngineClosedError) for e in errors), errors
    assert len(async_results) == 4 and all(isinstance(r, llmkit.EngineClosedError) for r in async_results), async_results
    for process in started:  # gone, or exited and waiting to be reaped
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(llmkit.EngineClosedError):
        engine.generate("x")
    engine.close()  # idempotent


def test_engine_death_is_engine_died_error():
    require_sglang()
    engine = llmkit.load("sglang", llmkit.DEFAULT_MODEL, **SMALL_OPTIONS)
    try:
        # SGLang's processes signal failure with SIGQUIT to this process; it must survive that.
        os.kill(os.getpid(), signal.SIGQUIT)
        time.sleep(0.5)
        assert engine.generate(PROMPT, greedy(max_tokens=3))[0].usage.completion_tokens == 3
        stream = engine.stream(PROMPT, greedy(max_tokens=1000, ignore_eos=True))
        next(stream)
        scheduler = next(pid for pid in engine._main_pids if "sglang::scheduler" in " ".join(psutil.Process(pid).cmdline()))
        os.kill(scheduler, signal.SIGKILL)
        with pytest.raises(llmkit.EngineDiedError, match="scheduler"):
            deadline = time.monotonic() + 30
            for _ in stream:
                assert time.monotonic() < deadline, "the stream went on after the scheduler died"
        with pytest.raises(llmkit.EngineDiedError):
            engine.generate(PROMPT, greedy(max_tokens=3))
    finally:
        pids = engine.engine_processes()
        engine.close()
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
