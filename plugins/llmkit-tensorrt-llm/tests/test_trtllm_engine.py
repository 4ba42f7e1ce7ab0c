"""The TensorRT-LLM adapter on real TensorRT-LLM (a GPU with TensorRT-LLM installed) and SmolLM2. Skipped
where tensorrt_llm does not import: it has never run (see README.md), so a first run on hardware is what
these tests are for.

The behaviour checks are the conformance suite's own, run here against the real engine; this file adds what is
specific to TensorRT-LLM: the native parameters, stop strings inside tokens, cancellation, stats and shutdown.
"""

import psutil
import pytest

import llmkit
from llmkit import greedy
from llmkit_conformance.pytest_plugin import conformance_tests

pytestmark = [pytest.mark.smollm2, pytest.mark.engine("tensorrt-llm")]


@pytest.fixture(scope="session")
def tensorrt_llm_engine():
    """One real TensorRT-LLM engine per session (bf16: TensorRT-LLM's attention kernels take no float32)."""
    pytest.importorskip("tensorrt_llm")
    with llmkit.load("tensorrt-llm", llmkit.DEFAULT_MODEL, dtype="bfloat16", max_model_len=2048, max_batch_size=64,
                     free_gpu_memory_fraction=0.3, enable_lora=True, max_lora_rank=8) as engine:
        yield engine


# The adapter refuses prompt logprobs (README.md): the checks that score prompts report "unsupported".
test_conformance = conformance_tests("tensorrt_llm_engine", expected={"prompt_logprobs": "unsupported",
                                                                       "quality_perplexity": "unsupported"})


def test_every_field_is_sent_explicitly(tensorrt_llm_engine):
    params = llmkit.SamplingParams(temperature=0.5, top_p=0.9, top_k=7, min_p=0.05, seed=3, max_tokens=11, stop=["x"],
                                   repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3, logprobs=2,
                                   constraint=llmkit.Regex(pattern="[a-z]+"))
    native = tensorrt_llm_engine.native_params(params, prompt_tokens=5)
    assert (native.temperature, native.top_p, native.top_k, native.min_p, native.seed, native.max_tokens) == (0.5, 0.9, 7, 0.05, 3, 11)
    assert (native.repetition_penalty, native.presence_penalty, native.frequency_penalty, native.logprobs) == (1.1, 0.2, 0.3, 2)
    assert native.stop is None and native.prompt_ignore_length == 5 and native.detokenize is False
    assert native.guided_decoding.grammar.startswith("root ::=")
    assert tensorrt_llm_engine.native_params(llmkit.SamplingParams(), prompt_tokens=5).max_tokens == 256  # not 32
    first, second = (tensorrt_llm_engine.native_params(llmkit.SamplingParams(), prompt_tokens=5).seed for _ in range(2))
    assert first != second  # no seed: a fresh one per request, not upstream's 0 for all


def test_answers_and_streams(tensorrt_llm_engine):
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    out = tensorrt_llm_engine.chat(chat, greedy(max_tokens=24))
    assert "Paris" in out.text and out.finish_reason == "stop"
    chunks = list(tensorrt_llm_engine.stream(chat, greedy(max_tokens=24)))
    assert len(chunks) > 3 and "".join(c.text for c in chunks) == out.text


def test_stop_string_that_need_not_fall_on_token_boundaries(tensorrt_llm_engine):
    prompt = "Count: one, two, three, four, five, six,"
    full = tensorrt_llm_engine.generate(prompt, greedy(max_tokens=24))[0].text
    middle = len(full) // 2
    stop = full[middle:middle + 2]  # two characters from the middle of the text, wherever tokens split it
    out = tensorrt_llm_engine.generate(prompt, greedy(max_tokens=24, stop=[stop]))[0]
    assert out.text == full[:full.index(stop)] and (out.finish_reason, out.stop_reason) == ("stop", stop)
    streamed = list(tensorrt_llm_engine.stream(prompt, greedy(max_tokens=24, stop=[stop])))
    assert "".join(c.text for c in streamed) == out.text


def test_cancelled_stream_frees_the_request(tensorrt_llm_engine):
    stream = tensorrt_llm_engine.stream("Write a long story about a dragon.", greedy(max_tokens=500))
    next(stream)
    stream.close()
    assert tensorrt_llm_engine.generate("Hello", greedy(max_tokens=3))[0].usage.completion_tokens == 3
    assert tensorrt_llm_engine.stats().engine["in_flight"] == 0


def test_stats_and_prefix_cache(tensorrt_llm_engine):
    text = "The quick brown fox jumps over the lazy dog. " * 30
    tensorrt_llm_engine.generate(text, greedy(max_tokens=4))
    again = tensorrt_llm_engine.generate(text, greedy(max_tokens=4))[0]
    assert again.usage.cached_tokens and again.usage.cached_tokens >= 32  # at least one reused KV block
    stats = tensorrt_llm_engine.stats()
    assert 0 <= stats.kv_cache_usage <= 1 and stats.engine["iterations"] > 0


def test_per_request_lora_adapter(tensorrt_llm_engine, tmp_path):
    from llmkit.catalog import hf_folder
    from llmkit.testing import random_lora

    adapter = str(random_lora(hf_folder(llmkit.DEFAULT_MODEL), tmp_path / "lora"))
    prompt = "The three primary colours are"
    base = tensorrt_llm_engine.generate(prompt, greedy(max_tokens=12))[0]
    tuned = tensorrt_llm_engine.generate(llmkit.Request(prompt=prompt, lora=adapter), greedy(max_tokens=12))[0]
    assert tuned.token_ids != base.token_ids
    assert tensorrt_llm_engine.generate(prompt, greedy(max_tokens=12))[0].token_ids == base.token_ids


def test_refusals_on_the_real_engine(tensorrt_llm_engine):
    with pytest.raises(llmkit.UnsupportedFeatureError, match="context-logit"):
        tensorrt_llm_engine.generate("Hello", greedy(max_tokens=1, prompt_logprobs=0))
    with pytest.raises(llmkit.InvalidRequestError, match="unknown engine option"):
        llmkit.load("tensorrt-llm", llmkit.DEFAULT_MODEL, enable_lorra=True)


def test_close_leaves_no_engine_process():
    pytest.importorskip("tensorrt_llm")
    engine = llmkit.load("tensorrt-llm", llmkit.DEFAULT_MODEL, dtype="bfloat16", max_model_len=512, free_gpu_memory_fraction=0.05)
    started = [psutil.Process(pid) for pid in engine.engine_processes()]
    engine.close()
    for process in started:
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    with pytest.raises(llmkit.EngineClosedError):
        engine.generate("x")
