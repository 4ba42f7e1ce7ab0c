"""The adapter's own plumbing, over a stand-in for `sglang.Engine` (`sglang_standin`: not SGLang; it replays
SGLang-shaped outputs and runs real child processes): one task per request, aborts with prefix-free ids,
n > 1 fan-out, LoRA loading, close with requests in flight, process handling, the SIGQUIT guard and death
detection. What SGLang itself does is tested on the GPU (test_sglang.py, test_sglang_concurrency.py)."""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import signal
import threading
import time
import weakref

import psutil
import pytest

import llmkit
from llmkit import Request, SamplingParams, greedy
from llmkit.testing import tiny_tokenizer

import sglang_standin
from sglang_options import registered_plugin

# The stand-in replaces `sglang` in sys.modules for each test: where the real one is installed (the GPU run,
# whose engine tests cover these paths on SGLang itself) its modules must not be swapped under a live engine.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("sglang") is not None,
                                reason="real SGLang is installed: test_sglang.py and test_sglang_concurrency.py run instead")


@pytest.fixture
def load(monkeypatch, tmp_path):
    """llmkit.load("sglang", ...) over the stand-in; every engine made is closed afterwards."""
    sglang_standin.install(monkeypatch)
    tiny_tokenizer(tmp_path / "model")
    engines = []

    def make(**options):
        engine = llmkit.load("sglang", str(tmp_path / "model"), **options)
        engines.append(engine)
        return engine

    with registered_plugin():
        yield make
        for engine in engines:
            engine.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_generate_and_stream_agree(load):
    engine = load()
    standin = engine.engine
    out = engine.generate("Hello", greedy(max_tokens=20))[0]
    chunks = list(engine.stream("Hello", greedy(max_tokens=20)))
    assert [t for c in chunks for t in c.token_ids] == out.token_ids and len(out.token_ids) == 20
    assert "".join(c.text for c in chunks) == out.text and out.finish_reason == "length"
    assert all("\ufffd" not in c.text for c in chunks)
    sent = standin.calls[-1]
    assert sent["sampling_params"]["max_new_tokens"] == 20 and sent["input_ids"] == engine.tokenize("Hello")
    assert sent["rid"].endswith("/0/") and sent["sampling_params"]["n"] == 1
    assert standin.server_args.incremental_streaming_output is True  # the adapter's default


def test_cumulative_stream_mode(load):
    engine = load(incremental_streaming_output=False)
    out = engine.generate("Hello", greedy(max_tokens=30))[0]
    chunks = list(engine.stream("Hello", greedy(max_tokens=30)))
    assert [t for c in chunks for t in c.token_ids] == out.token_ids and len(out.token_ids) == 30
    assert "".join(c.text for c in chunks) == out.text


def test_many_samples_are_one_request_each_with_their_own_seed(load):
    engine = load(enable_deterministic_inference=True)
    outs = engine.generate(["one", "two"], SamplingParams(seed=9, n=3, max_tokens=5))
    assert [(c.prompt_index, c.index) for c in outs] == [(p, i) for p in (0, 1) for i in range(3)]
    calls = engine.engine.calls[-6:]
    rids = [c["rid"] for c in calls]
    assert len(set(rids)) == 6 and not [(a, b) for a in rids for b in rids if a != b and b.startswith(a)]
    seeds = [c["sampling_params"]["sampling_seed"] for c in calls]
    assert seeds[0] == 9 and len(set(seeds[:3])) == 3 and seeds[:3] == seeds[3:]
    unseeded = [engine.engine.calls[-1]["sampling_params"]["sampling_seed"] for _ in range(2)
                if engine.generate("x", SamplingParams(max_tokens=2))]
    assert None not in unseeded and unseeded[0] != unseeded[1]  # drawn per request, never SGLang's fixed 42


def test_refusals_come_before_the_engine(load):
    engine = load()
    with pytest.raises(llmkit.UnsupportedFeatureError, match="enable_deterministic_inference"):
        engine.generate("x", SamplingParams(seed=1, max_tokens=2))
    with pytest.raises(llmkit.InvalidRequestError) as info:  # SGLang's verify: (0, 2]
        engine.generate("x", SamplingParams(repetition_penalty=3.0, max_tokens=2))
    assert info.value.parameter == "repetition_penalty"
    with pytest.raises(llmkit.UnsupportedFeatureError, match="constraint:regex"):
        engine.generate("x", greedy(max_tokens=2, constraint=llmkit.Regex(pattern=r"(a)\1")))
    assert engine.engine.calls == []


def test_more_gpus_than_the_machine_shows_are_refused_before_sglang_starts(load, monkeypatch):
    started = []
    original = sglang_standin.Engine.__init__
    monkeypatch.setattr(sglang_standin.Engine, "__init__", lambda self, **kw: started.append(kw) or original(self, **kw))
    with pytest.raises(llmkit.UnsupportedFeatureError, match=r"tp_size=2 × pp_size=1 × dp_size=1 puts schedulers on "
                                                             r"GPUs \[0, 1\], and 1 is visible"):
        load(tp_size=2)
    with pytest.raises(llmkit.UnsupportedFeatureError, match="dp_size=2"):
        load(dp_size=2)
    assert started == []
    load(dp_size=2, tp_size=1, enable_dp_attention=True).close()  # inside the one GPU's group: starts
    assert started[0]["dp_size"] == 2 and started[0]["pp_size"] == 1


def test_cancel_aborts_the_request_upstream(load):
    engine = load()
    manager = engine.engine.tokenizer_manager
    stream = engine.stream("Hello", greedy(max_tokens=400))
    next(stream)
    (rid,) = manager.rid_to_state
    stream.close()
    deadline = time.monotonic() + 5
    while manager.rid_to_state and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.aborted == [rid] and not manager.rid_to_state

    async def cancelled():
        task = asyncio.ensure_future(engine.agenerate("Hello", greedy(max_tokens=400)))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    deadline = time.monotonic() + 5
    while manager.rid_to_state and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(manager.aborted) == 2 and not manager.rid_to_state


def test_timeout(load):
    engine = load()
    with pytest.raises(llmkit.GenerationTimeoutError):
        engine.generate("Hello", greedy(max_tokens=400), timeout=0.05)
    assert engine.generate("Hello", greedy(max_tokens=3))[0].usage.completion_tokens == 3


def test_lora_is_loaded_once_under_a_content_key(load, tmp_path):
    engine = load(enable_lora=True, max_lora_rank=8, lora_target_modules=["q_proj"])
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    engine.generate([Request(prompt="a", lora=str(adapter)), Request(prompt="b", lora=str(adapter))], greedy(max_tokens=2))
    ((name, path),) = engine.engine.loras
    assert path == str(adapter) and name.startswith("adapter-")
    assert [c["lora_path"] for c in engine.engine.calls[-2:]] == [name, name]
    (adapter / "adapter_config.json").write_text('{"r": 8}')  # rewritten in place: loaded again
    engine.generate(Request(prompt="a", lora=str(adapter)), greedy(max_tokens=2))
    assert len(engine.engine.loras) == 2 and engine.engine.loras[1][0] != name
    with pytest.raises(llmkit.InvalidRequestError, match="does not exist"):
        engine.generate(Request(prompt="a", lora=str(tmp_path / "missing")))


def test_lora_needs_enable_lora(load, tmp_path):
    engine = load()
    with pytest.raises(llmkit.UnsupportedFeatureError, match="enable_lora"):
        engine.generate(Request(prompt="a", lora=str(tmp_path)))


def test_options_are_checked_against_server_args(load):
    with pytest.raises(llmkit.InvalidRequestError, match="unknown engine option"):
        load(disable_radix_cach=True)
    with pytest.raises(llmkit.InvalidRequestError, match="given twice"):
        load(max_batch_size=4, max_running_requests=8)
    with pytest.raises(llmkit.UnsupportedFeatureError, match="quantization"):
        load(quantization="no-such-method")
    engine = load(max_batch_size=4, prefix_caching=False, seed=3, kv_cache_dtype="auto")
    args = engine.engine.server_args
    assert (args.max_running_requests, args.disable_radix_cache, args.random_seed, args.log_level) == (4, True, 3, "error")
    assert not engine.capabilities().prefix_caching


def test_token_ids_only(load):
    engine = load(skip_tokenizer_init=True)
    caps = engine.capabilities()
    assert not caps.chat and not caps.constraints and not caps.supports("stop")
    out = engine.generate(Request(prompt_token_ids=[5, 6, 7]), greedy(max_tokens=4))[0]
    assert len(out.token_ids) == 4 and out.text == ""
    with pytest.raises(llmkit.InvalidRequestError, match="prompt_token_ids"):
        engine.generate("text")
    with pytest.raises(llmkit.UnsupportedFeatureError):
        engine.generate(Request(prompt_token_ids=[5]), greedy(max_tokens=4, stop=["x"]))


def test_close_with_requests_in_flight(load):
    engine = load()
    standin = engine.engine
    pids = engine.engine_processes()
    assert {p.pid for p in standin.procs} <= pids and all(_alive(p) for p in pids)
    errors: list = []

    def reader():
        stream = engine.stream("Hello", greedy(max_tokens=400))
        try:
            for _ in stream:
                pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    async def tasks():
        return await asyncio.gather(engine.agenerate(["a", "b"], greedy(max_tokens=400)),
                                    _drain(engine.astream("c", greedy(max_tokens=400))), return_exceptions=True)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    results: list = []
    threads.append(threading.Thread(target=lambda: results.extend(asyncio.run(tasks()))))
    for t in threads:
        t.start()
    time.sleep(0.3)
    engine.close()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert len(errors) == 3 and all(isinstance(e, llmkit.EngineClosedError) for e in errors)
    assert len(results) == 2 and all(isinstance(r, llmkit.EngineClosedError) for r in results)
    assert not any(_alive(p) for p in pids)
    assert not standin.shutdown_called  # upstream's shutdown would kill every child of this process
    with pytest.raises(llmkit.EngineClosedError):
        engine.generate("x")


async def _drain(stream):
    async for _ in stream:
        pass


def test_close_ends_this_engines_processes_only(load):
    first, second = load(), load()
    theirs = second.engine_processes()
    first.close()
    assert all(_alive(p) for p in theirs)
    assert second.generate("Hello", greedy(max_tokens=3))[0].usage.completion_tokens == 3


def test_close_closes_the_tokenizer_managers_sockets(load):
    """A context collected with its sockets in one garbage-collector pass blocks forever in term(): close
    destroys it first (the session engine's close hung there on the GPU, 2026-11-28)."""
    pytest.importorskip("zmq")
    engine = load()
    manager = engine.engine.tokenizer_manager
    sockets = [weakref.ref(manager.recv_from_detokenizer), weakref.ref(manager.send_to_scheduler)]
    del manager  # the test must not keep them alive: the hang needs them garbage with their context
    closer = threading.Thread(target=engine.close, daemon=True)
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "close() hung"
    assert all(ref() is None or ref().closed for ref in sockets)


def test_sglangs_atexit_shutdown_is_unregistered_at_close(load, monkeypatch):
    unregistered = []
    monkeypatch.setattr(atexit, "unregister", lambda fn: unregistered.append(fn))
    engine = load()
    standin = engine.engine
    engine.close()
    assert unregistered == [standin.shutdown]


def test_death_of_a_process_ends_everything_with_engine_died_error(load):
    engine = load()
    stream = engine.stream("Hello", greedy(max_tokens=2000))
    next(stream)
    engine.engine.procs[0].kill()
    started = time.monotonic()
    with pytest.raises(llmkit.EngineDiedError, match="exited"):
        for _ in stream:
            pass
    assert time.monotonic() - started < 5
    with pytest.raises(llmkit.EngineDiedError):
        engine.generate("x", greedy(max_tokens=2))
    pids = engine.engine_processes()
    engine.close()
    assert not any(_alive(p) for p in pids)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signal handlers: main thread only")
def test_sigquit_does_not_end_the_process_while_an_engine_is_open(load):
    before = signal.getsignal(signal.SIGQUIT)
    engine = load()
    os.kill(os.getpid(), signal.SIGQUIT)  # what SGLang's processes send when they fail
    time.sleep(0.2)
    assert engine.generate("Hello", greedy(max_tokens=3))[0].usage.completion_tokens == 3
    engine.close()
    assert signal.getsignal(signal.SIGQUIT) == before
