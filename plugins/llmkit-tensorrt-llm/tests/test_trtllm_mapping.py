"""The TensorRT-LLM mapping tables, refusals and metrics, without TensorRT-LLM. Constraint grammars are
compiled by xgrammar as TensorRT-LLM's xgrammar backend compiles them (_torch/pyexecutor/grammar_matcher.py:
EBNF_GRAMMAR → GrammarCompiler.compile_grammar) and checked against the strings they must accept."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

import llmkit
from llmkit.errors import BackendUnavailableError, UnsupportedFeatureError
from llmkit.kit.grammars import RegexNotExpressible
from llmkit.types import Choice, Grammar, JsonSchema, Regex
from llmkit_tensorrt_llm import mapping
from llmkit_tensorrt_llm.engine import TensorRTLLMEngine, checkpoint_quantization
from llmkit_tensorrt_llm.mapping import StatsReader, TensorRTLLMOptions, llm_kwargs, to_native

HAVE_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None


def native(params, prompt_tokens=10, context_length=100, seed=7):
    return to_native(params, prompt_tokens=prompt_tokens, context_length=context_length, seed=seed)


def test_sampling_values_pass_through():
    out = native(llmkit.SamplingParams(temperature=0.7, top_p=0.9, top_k=0, min_p=0.1, max_tokens=20, seed=5, n=2,
                                       logprobs=3, ignore_eos=True, repetition_penalty=1.2, presence_penalty=0.5,
                                       frequency_penalty=-0.5))
    assert (out["temperature"], out["top_p"], out["top_k"], out["min_p"]) == (0.7, 0.9, 0, 0.1)
    assert (out["max_tokens"], out["seed"], out["n"], out["logprobs"], out["ignore_eos"]) == (20, 5, 2, 3, True)
    assert (out["repetition_penalty"], out["presence_penalty"], out["frequency_penalty"]) == (1.2, 0.5, -0.5)
    assert out["prompt_ignore_length"] == 10  # presence/frequency count output tokens only
    assert out["detokenize"] is False and out["logprobs_mode"] == "raw" and out["use_beam_search"] is False
    assert out["guided_decoding"] is None


def test_greedy_is_top_k_1_with_the_rest_unset():
    for params in (llmkit.greedy(), llmkit.SamplingParams(temperature=1e-6, top_p=0.3, min_p=0.5, top_k=9)):
        out = native(params)
        assert (out["top_k"], out["temperature"], out["top_p"], out["min_p"]) == (1, None, None, None)
    assert native(llmkit.SamplingParams(temperature=1e-5))["top_k"] == 0  # from 1e-5 on it samples


def test_max_tokens_is_always_sent_and_capped_to_the_context_left():
    assert native(llmkit.SamplingParams(), context_length=4096)["max_tokens"] == 256  # llmkit's default, not 32
    assert native(llmkit.SamplingParams(max_tokens=500), prompt_tokens=90, context_length=100)["max_tokens"] == 10


def test_seed_is_the_requests_or_the_one_drawn_for_it():
    assert native(llmkit.SamplingParams(seed=3), seed=99)["seed"] == 3
    assert native(llmkit.SamplingParams(), seed=99)["seed"] == 99
    assert native(llmkit.SamplingParams(seed=0), seed=99)["seed"] == 0


def test_stop_strings_are_not_sent():
    out = native(llmkit.SamplingParams(stop=["\n\n", "END"]))
    assert "stop" not in out and "stop_token_ids" not in out


def test_prompt_logprobs_are_refused_with_the_reason():
    with pytest.raises(UnsupportedFeatureError, match="context-logit row"):
        native(llmkit.greedy(max_tokens=1, prompt_logprobs=0))
    caps = TensorRTLLMEngine.capabilities_
    assert not caps.supports("prompt_logprobs") and "context-logit" in caps.limits["prompt_logprobs"]
    assert all(caps.supports(f) for f in ("top_k", "min_p", "seed", "n", "logprobs", "stop", "repetition_penalty"))
    assert all(caps.supports(f"constraint:{k}") for k in ("choice", "regex", "json_schema", "grammar"))


@pytest.fixture(scope="module")
def compiler(tmp_path_factory):
    import xgrammar as xgr

    from llmkit.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    return xgr.GrammarCompiler(info, max_threads=1)


def grammar_of(constraint) -> str:
    kwargs = native(llmkit.greedy(constraint=constraint))["guided_decoding"]
    assert set(kwargs) == {"grammar"}
    return kwargs["grammar"]


def accepts(text: str, grammar: str) -> bool:
    import xgrammar as xgr

    return xgr.testing._is_grammar_accept_string(xgr.Grammar.from_ebnf(grammar), text)


def test_choice_is_exactly_its_strings(compiler):
    grammar = grammar_of(Choice(["yes", "no", "maybe so", 'a "q"']))
    compiler.compile_grammar(grammar)
    assert all(accepts(s, grammar) for s in ("yes", "no", "maybe so", 'a "q"'))
    assert not any(accepts(s, grammar) for s in ("ye", "yesno", "maybe", ""))


def test_regex_means_what_re_fullmatch_means(compiler):
    pattern = r"[0-9]{3}-[a-z]+(\.[a-z]{2})?"
    grammar = grammar_of(Regex(pattern))
    compiler.compile_grammar(grammar)
    for text in ("123-abc", "123-abc.de", "12-abc", "123-abc.d", "123-", "1234-ab"):
        assert accepts(text, grammar) == bool(re.fullmatch(pattern, text)), text


def test_json_schema_grammar_is_compact_json_without_control_characters(compiler):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "s": {"type": "string", "maxLength": 5}},
              "required": ["a", "s"], "additionalProperties": False}
    grammar = grammar_of(JsonSchema(schema))
    compiler.compile_grammar(grammar)
    assert accepts('{"a": 1, "s": "hi"}', grammar)  # xgrammar's compact separators: ", " and ": "
    assert not accepts('{"a": "1", "s": "hi"}', grammar) and not accepts('{"a": 1, "s": "h\x1ei"}', grammar)
    assert not accepts('{\n  "a": 1, "s": "hi"\n}', grammar)
    # Why not GuidedDecodingParams(json=...): TensorRT-LLM compiles that with xgrammar's own converter, which
    # admits the raw control character (invalid JSON).
    import xgrammar as xgr

    plain = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
    assert xgr.testing._is_grammar_accept_string(plain, '{"a": 1, "s": "h\x1ei"}')


def test_grammar_is_sent_as_given(compiler):
    text = 'root ::= "x" digit+\ndigit ::= [0-9]\n'
    assert grammar_of(Grammar(text)) == text
    compiler.compile_grammar(text)


def test_a_regex_no_grammar_can_express_is_refused():
    with pytest.raises(RegexNotExpressible):
        native(llmkit.greedy(constraint=Regex(r"(a)\1")))


def test_llm_kwargs_defaults():
    kwargs = llm_kwargs(TensorRTLLMOptions(), "/m")
    assert kwargs == {"model": "/m", "backend": "pytorch", "tensor_parallel_size": 1, "pipeline_parallel_size": 1,
                      "trust_remote_code": False, "enable_chunked_prefill": False, "load_format": "auto",
                      "enable_iter_perf_stats": True, "guided_decoding_backend": "xgrammar", "kv_cache_config": {}}


def test_llm_kwargs_portable_and_own_options():
    kwargs = llm_kwargs(TensorRTLLMOptions(max_batch_size=4, max_model_len=2048, dtype="float16", prefix_caching=False,
                                           free_gpu_memory_fraction=0.4, enable_lora=True, max_lora_rank=8,
                                           guided_decoding=False, seed=1), "/m")
    assert (kwargs["max_batch_size"], kwargs["max_seq_len"], kwargs["dtype"]) == (4, 2048, "float16")
    assert kwargs["kv_cache_config"] == {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.4}
    assert kwargs["lora_config"] == {"lora_dir": [], "max_lora_rank": 8, "max_loras": 4, "max_cpu_loras": 4}
    assert kwargs["guided_decoding_backend"] is None and "seed" not in kwargs


def test_memory_fraction_is_refused_before_tensorrt_llm_is_imported():
    with pytest.raises(UnsupportedFeatureError, match="free_gpu_memory_fraction"):
        llm_kwargs(TensorRTLLMOptions(memory_fraction=0.5), "/m")
    with pytest.raises(UnsupportedFeatureError, match="left free after loading the weights"):
        llmkit.load("tensorrt-llm", "/nonexistent/model", memory_fraction=0.5)


def test_bad_options_are_refused_before_start():
    with pytest.raises(llmkit.InvalidRequestError) as info:
        llmkit.load("tensorrt-llm", "/nonexistent/model", free_gpu_memory_fraction=1.5)
    assert info.value.parameter == "free_gpu_memory_fraction"
    with pytest.raises(llmkit.InvalidRequestError):
        llmkit.load("tensorrt-llm", "/nonexistent/model", load_format="safetensors")


@pytest.mark.skipif(HAVE_TRTLLM, reason="tensorrt_llm is installed here")
def test_without_tensorrt_llm_the_backend_says_it_is_unavailable():
    with pytest.raises(BackendUnavailableError, match="tensorrt_llm") as info:
        llmkit.load("tensorrt-llm", "/nonexistent/model")
    assert "NVIDIA's package index" in str(info.value)


def test_stats_reader_keeps_the_latest_iteration():
    reader = StatsReader()
    assert reader.metrics() == {}
    first = {"iter": 1, "numActiveRequests": 2, "gpuMemUsage": 10,
             "kvCacheStats": {"usedNumBlocks": 5, "maxNumBlocks": 100, "cacheHitRate": 0.0, "reusedBlocks": 0, "missedBlocks": 5}}
    second = {"iter": 2, "numActiveRequests": 1, "gpuMemUsage": 11,
              "kvCacheStats": {"usedNumBlocks": 30, "maxNumBlocks": 120, "cacheHitRate": 0.25, "reusedBlocks": 2, "missedBlocks": 6}}
    reader.update([json.dumps(first), second])
    metrics = reader.metrics()
    assert metrics["iterations"] == 2 and metrics["iter"] == 2 and metrics["numActiveRequests"] == 1
    assert metrics["kv_cache_usage"] == 0.25 and metrics["engine_prefix_cache_hit_rate"] == 0.25
    assert metrics["kvCacheStats.reusedBlocks"] == 2
    reader.update([])
    assert reader.metrics()["iter"] == 2  # nothing new since: the latest stays


def test_checkpoint_quantization(tmp_path):
    assert checkpoint_quantization(str(tmp_path)) is None
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    assert checkpoint_quantization(str(tmp_path)) == "awq"
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8"}}))
    assert checkpoint_quantization(str(tmp_path)) == "NVFP4"
    assert checkpoint_quantization("org/hub-model") is None


def test_the_tables_cover_every_llmkit_field():
    assert {row.name for row in mapping.SAMPLING.rows} == set(llmkit.SamplingParams.model_fields)
    assert {row.name for row in mapping.OPTIONS.rows} == set(llmkit.EngineOptions.PORTABLE)
