"""The SGLang adapter on real SGLang (GPU only: SGLang has no CPU build) with SmolLM2.

The behaviour checks are the conformance suite's own, run here against the real engine; this file adds
what is specific to SGLang: its API as the mapping was written against it, options, seeds, token-id
prompts and the radix cache, logprobs, upstream errors and cancellation. LoRA, close and engine death are in
test_sglang_lifecycle.py (engines of their own), concurrency in test_sglang_concurrency.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import time

import pytest

import llmkit
from llmkit import Grammar, Request, SamplingParams, greedy
from llmkit_conformance.checks import CHECKS, DESTRUCTIVE
from llmkit_conformance.pytest_plugin import conformance_tests

import sglang_api
from sglang_options import require_sglang

pytestmark = [pytest.mark.smollm2, pytest.mark.engine("sglang")]

# close_in_flight ends the engine it runs on, and this module's engine is the session's: it runs in
# test_sglang_lifecycle.py on an engine of its own (first GPU run, 2026-11-27: here it closed the engine for
# every test after it).
test_conformance = conformance_tests("sglang_engine", checks=[c for c in CHECKS if c not in DESTRUCTIVE])

PROMPT = "The three primary colours are"


def test_api_snapshot_matches_the_installed_sglang(sglang_engine):
    """The names and defaults the mapping was written against (tests/sglang_api.py, from the 0.5.17 source)."""
    import msgspec
    import sglang
    from sglang.srt.entrypoints.engine import Engine
    from sglang.srt.sampling.sampling_params import SamplingParams as SGLSamplingParams
    from sglang.srt.server_args import ServerArgs

    assert sglang.__version__ == sglang_api.VERSION
    defaults = {f.name: f.default for f in msgspec.structs.fields(SGLSamplingParams)}
    assert {name: defaults.get(name, "<missing>") for name in sglang_api.SAMPLING_PARAMS} == sglang_api.SAMPLING_PARAMS
    assert set(sglang_api.ASYNC_GENERATE_ARGS) <= set(inspect.signature(Engine.async_generate).parameters)
    fields = {f.name: f for f in dataclasses.fields(ServerArgs)}
    for name, default in sglang_api.SERVER_ARGS.items():
        assert name in fields, name
        if name != "model_path":
            assert fields[name].default == default, (name, fields[name].default)


def test_native_sampling_params_pass_sglangs_own_validation(sglang_engine):
    from sglang.srt.sampling.sampling_params import SamplingParams as SGLSamplingParams

    tokenizer = sglang_engine.engine.tokenizer_manager.tokenizer
    vocab = sglang_engine.engine.tokenizer_manager.model_config.vocab_size
    prompt = sglang_engine.tokenize(PROMPT)
    for params in (SamplingParams(), greedy(max_tokens=5), SamplingParams(temperature=0.7, top_p=0.9, top_k=7, min_p=0.05, seed=3,
                   stop=["x"], repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3, logprobs=2, max_tokens=9),
                   greedy(constraint=llmkit.Choice(choices=["red", "green"])), SamplingParams(max_tokens=0, prompt_logprobs=1)):
        kwargs = sglang_engine.request_kwargs(params, prompt)
        native = SGLSamplingParams(**kwargs["sampling_params"])
        native.normalize(tokenizer)
        native.verify(vocab)
        assert native.max_new_tokens == max(params.max_tokens, 1)
        if params.greedy:
            assert native.top_k == 1  # SGLang's greedy
        elif params.top_k == 0:
            assert native.top_k == sglang_api.TOP_K_ALL


def test_answers_and_streams(sglang_engine):
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    out = sglang_engine.chat(chat, greedy(max_tokens=24))
    assert "Paris" in out.text and out.finish_reason == "stop"
    assert out.stop_reason == out.token_ids[-1] and out.stop_reason in sglang_engine.special_tokens().eos_token_ids
    chunks = list(sglang_engine.stream(chat, greedy(max_tokens=24)))
    assert len(chunks) > 3 and "".join(c.text for c in chunks) == out.text
    assert [t for c in chunks for t in c.token_ids] == out.token_ids


def test_token_id_prompts_and_the_radix_cache(sglang_engine):
    text = "The quick brown fox jumps over the lazy dog. " * 40
    prompt = sglang_engine.tokenize(text)
    assert len(prompt) > 400
    first = sglang_engine.generate(Request(prompt_token_ids=prompt), greedy(max_tokens=4))[0]
    second = sglang_engine.generate(Request(prompt_token_ids=prompt), greedy(max_tokens=4))[0]
    assert first.token_ids == second.token_ids and second.usage.prompt_tokens == len(prompt)
    assert second.usage.cached_tokens >= 0.8 * len(prompt) > (first.usage.cached_tokens or 0)
    with pytest.raises(llmkit.InvalidRequestError, match="outside the vocabulary"):
        sglang_engine.generate(Request(prompt_token_ids=[10**7]))


def test_seeds_with_deterministic_inference(sglang_engine):
    assert sglang_engine.capabilities().supports("seed")
    params = dict(temperature=1.0, max_tokens=24, ignore_eos=True)
    a = sglang_engine.generate(PROMPT, SamplingParams(seed=11, **params))[0].token_ids
    assert a == sglang_engine.generate(PROMPT, SamplingParams(seed=11, **params))[0].token_ids
    assert a != sglang_engine.generate(PROMPT, SamplingParams(seed=12, **params))[0].token_ids
    samples = [c.token_ids for c in sglang_engine.generate(PROMPT, SamplingParams(seed=11, n=4, **params))]
    assert len({tuple(s) for s in samples}) == 4  # SGLang's own n would give every sample the same seed
    assert samples[0] == a  # sample 0 keeps the request's seed
    assert samples == [c.token_ids for c in sglang_engine.generate(PROMPT, SamplingParams(seed=11, n=4, **params))]
    # unseeded requests draw their own seed (SGLang would give each the seed 42)
    unseeded = {tuple(sglang_engine.generate(PROMPT, SamplingParams(**params))[0].token_ids) for _ in range(3)}
    assert len(unseeded) == 3


def test_logprobs_are_of_the_raw_distribution(sglang_engine):
    """At temperature 2 the sampled tokens' logprobs are still the model's own (SGLANG_RETURN_ORIGINAL_LOGPROB)."""
    ids = sglang_engine.tokenize(PROMPT)
    sampled = sglang_engine.generate(Request(prompt_token_ids=ids), SamplingParams(temperature=2.0, seed=1, max_tokens=6,
                                                                                     logprobs=1, ignore_eos=True))[0]
    scored = sglang_engine.generate(Request(prompt_token_ids=ids + sampled.token_ids), greedy(max_tokens=1, prompt_logprobs=0))[0]
    diffs = [abs(a.logprob - b.logprob) for a, b in zip(sampled.logprobs, scored.prompt_logprobs[len(ids):])]
    assert max(diffs) < 0.25, diffs  # temperature-scaled logprobs would be off by far more


def test_upstream_grammar_errors_are_invalid_requests(sglang_engine):
    with pytest.raises(llmkit.InvalidRequestError):
        sglang_engine.generate(PROMPT, greedy(max_tokens=4, constraint=Grammar(grammar='root ::= "a" (')))
    assert sglang_engine.generate(PROMPT, greedy(max_tokens=2))[0].usage.completion_tokens == 2


def test_cancelled_stream_is_aborted_upstream(sglang_engine):
    manager = sglang_engine.engine.tokenizer_manager
    stream = sglang_engine.stream(PROMPT, greedy(max_tokens=1500, ignore_eos=True))
    next(stream)
    assert any(rid.startswith(stream.request_id + "/") for rid in manager.rid_to_state)
    stream.close()
    deadline = time.monotonic() + 10
    while any(rid.startswith(stream.request_id + "/") for rid in manager.rid_to_state) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(rid.startswith(stream.request_id + "/") for rid in manager.rid_to_state)


def test_capabilities_come_from_the_engine(sglang_engine):
    caps = sglang_engine.capabilities()
    assert caps.batch_invariant_greedy and caps.prefix_caching and caps.tensor_parallel
    assert "fp8" in caps.quantization and not caps.lora
    assert sglang_engine.weights().dtype == "bf16"
    memory = sglang_engine.memory()
    assert memory.kv_cache_tokens > 0 and memory.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2  # SmolLM2-135M, bf16


def test_bad_options_fail_before_start():
    require_sglang()
    with pytest.raises(llmkit.InvalidRequestError, match="unknown engine option"):
        llmkit.load("sglang", llmkit.DEFAULT_MODEL, disable_radix_cach=True)
    with pytest.raises(llmkit.UnsupportedFeatureError, match="quantization"):
        llmkit.load("sglang", llmkit.DEFAULT_MODEL, quantization="no-such-method")
    with pytest.raises(llmkit.InvalidRequestError, match="given twice") as info:
        llmkit.load("sglang", llmkit.DEFAULT_MODEL, max_batch_size=4, max_running_requests=8)
    assert info.value.parameter == "max_running_requests"
