"""The llmkit → vLLM mapping, tested without vLLM (pure functions over the declared tables)."""

from types import SimpleNamespace

import pytest

import llmkit
from llmkit.engine import EngineOptions
from llmkit_vllm.mapping import OPTIONS, SAMPLING, DeltaReader, engine_args, to_native


def test_the_table_covers_every_sampling_field():
    assert {row.name for row in SAMPLING.rows} == set(llmkit.SamplingParams.model_fields)
    assert {row.name for row in OPTIONS.rows} == set(EngineOptions.PORTABLE)


def test_every_field_is_sent_explicitly():
    native = to_native(llmkit.SamplingParams())
    assert native["max_tokens"] == 256 and native["n"] == 1 and native["top_k"] == 0 and native["stop"] == []
    assert native["skip_special_tokens"] is True and native["include_stop_str_in_output"] is False
    assert native["structured_outputs"] is None


@pytest.mark.parametrize("temperature, sent", [(0.0, 0.0), (1e-40, 0.0), (0.7, 0.7)])
def test_greedy_temperatures(temperature, sent):
    assert to_native(llmkit.SamplingParams(temperature=temperature))["temperature"] == sent


def test_temperatures_vllm_would_change_are_refused():
    with pytest.raises(llmkit.UnsupportedFeatureError) as info:
        to_native(llmkit.SamplingParams(temperature=0.005))
    assert info.value.feature == "temperature" and "0.01" in str(info.value)


def test_constraints_and_scoring():
    assert to_native(llmkit.greedy(constraint=llmkit.Choice(["a", "b"])))["structured_outputs"] == {"choice": ["a", "b"]}
    assert to_native(llmkit.greedy(constraint=llmkit.Regex("[0-9]+")))["structured_outputs"]["grammar"].startswith("root ::=")
    assert to_native(llmkit.greedy(max_tokens=0, prompt_logprobs=0))["max_tokens"] == 1  # vLLM needs one; dropped


def test_portable_options():
    assert engine_args(EngineOptions(max_batch_size=8, max_model_len=1024, prefix_caching=False, memory_fraction=0.5)) == {
        "max_num_seqs": 8, "max_model_len": 1024, "enable_prefix_caching": False, "gpu_memory_utilization": 0.5}
    assert engine_args(EngineOptions()) == {}


def _output(index, text, ids, finish=None, stop=None, cached=0, prompt_logprobs=None):
    seq = SimpleNamespace(index=index, text=text, token_ids=ids, logprobs=None, finish_reason=finish, stop_reason=stop)
    return SimpleNamespace(outputs=[seq], prompt_token_ids=[1, 2, 3], prompt_logprobs=prompt_logprobs, num_cached_tokens=cached)


def test_delta_reader_counts_usage_and_names_the_eos_token():
    reader = DeltaReader(llmkit.greedy(max_tokens=8), prompt_tokens=3)
    first = reader.chunks(_output(0, "Hel", [10, 11]))
    last = reader.chunks(_output(0, "lo", [12], finish="stop", cached=2))
    assert [c.text for c in first + last] == ["Hel", "lo"]
    assert last[-1].finish_reason == "stop" and last[-1].stop_reason == 12  # the end-of-sequence token
    assert last[-1].usage.completion_tokens == 3 and last[-1].usage.cached_tokens == 2


def test_delta_reader_for_scoring_drops_the_token_vllm_had_to_generate():
    lp = SimpleNamespace(logprob=-1.5, rank=2, decoded_token="b")
    top = SimpleNamespace(logprob=-0.5, rank=1, decoded_token="a")
    reader = DeltaReader(llmkit.greedy(max_tokens=0, prompt_logprobs=1), prompt_tokens=3)
    [chunk] = reader.chunks(_output(0, "x", [99], finish="length", prompt_logprobs=[None, {2: lp, 7: top}, {3: top}]))
    assert chunk.token_ids == [] and chunk.text == "" and chunk.finish_reason == "length"
    assert chunk.usage.completion_tokens == 0
    assert chunk.prompt_logprobs[0] is None and chunk.prompt_logprobs[1].rank == 2 and chunk.prompt_logprobs[1].top == {7: -0.5}


def test_json_schemas_go_as_a_grammar_with_valid_strings():
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 4}}, "required": ["name"]}
    grammar = to_native(llmkit.greedy(constraint=llmkit.JsonSchema(schema)))["structured_outputs"]["grammar"]
    assert "root ::=" in grammar and "[^" not in grammar  # negated classes rewritten as positive ones
    # string characters: from the space up, without `"`, `\` or surrogates (no raw control character)
    assert "[ !#-\\u005B\\u005D-\\uD7FF\\uE000-\\U0010FFFF]" in grammar
