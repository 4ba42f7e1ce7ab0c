"""Validation at the boundary: bad input raises InvalidRequestError naming the field and the limit."""

import math

import pytest

import llmkit
from llmkit import Choice, Grammar, InvalidRequestError, JsonSchema, Regex, SamplingParams


@pytest.mark.parametrize(
    "field, value, limit_text",
    [
        ("temperature", math.nan, "finite"),
        ("temperature", -0.1, "greater than or equal to 0"),
        ("top_p", 0.0, "greater than or equal to 0.000001"),
            ("top_p", 1e-300, "greater than or equal to 0.000001"),
        ("top_p", 1.5, "less than or equal to 1"),
        ("max_tokens", -1, "greater than or equal to 0"),
            ("max_tokens", True, "valid integer"),
            ("top_k", 2.0, "valid integer"),
        ("top_k", -1, "greater than or equal to 0"),
        ("min_p", 2.0, "less than or equal to 1"),
        ("presence_penalty", 3.0, "less than or equal to 2"),
        ("logprobs", 50, "less than or equal to 20"),
        ("prompt_logprobs", -1, "greater than or equal to 0"),
        ("n", 0, "greater than or equal to 1"),
    ],
)
def test_bad_sampling_values_name_field_and_limit(field, value, limit_text):
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})
    assert info.value.parameter == field
    assert limit_text in str(info.value)
    assert field in str(info.value)


def test_unknown_field_is_an_error_not_ignored():
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(temprature=0.5)
    assert info.value.parameter == "temprature"


def test_defaults_are_llmkits_own():
    p = SamplingParams()
    assert (p.temperature, p.top_p, p.top_k, p.max_tokens, p.n) == (1.0, 1.0, 0, 256, 1)
    assert p.features_used() == []


def test_features_used_lists_non_neutral_values():
    p = SamplingParams(top_k=5, stop="\n", constraint=Choice(choices=["a", "b"]))
    assert p.stop == ["\n"]
    assert set(p.features_used()) == {"top_k", "stop", "constraint:choice"}


def test_one_constraint_per_request_by_type():
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(constraint=[Choice(choices=["a"]), Regex(pattern="a")])
    assert info.value.parameter == "constraint"


def test_constraint_from_dict_is_discriminated():
    p = SamplingParams(constraint={"kind": "regex", "pattern": "[0-9]+"})
    assert isinstance(p.constraint, Regex)


@pytest.mark.parametrize(
    "make, parameter",
    [
        (lambda: Regex(pattern="(unclosed"), "pattern"),
        (lambda: JsonSchema(schema={"type": "no-such-type"}), "schema"),
        (lambda: JsonSchema(schema="{not json"), "schema"),
        (lambda: Choice(choices=[]), "choices"),
        (lambda: Choice(choices=["a", "a"]), "choices"),
        (lambda: Choice(choices=["a", ""]), "choices"),
        (lambda: Grammar(grammar='start ::= "x"'), "grammar"),
    ],
)
def test_bad_constraints(make, parameter):
    with pytest.raises(InvalidRequestError) as info:
        make()
    assert info.value.parameter == parameter


def test_json_schema_accepts_pydantic_model_and_string():
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    assert JsonSchema(schema=Person).schema_["required"] == ["name", "age"]
    assert JsonSchema(schema='{"type": "integer"}').schema_ == {"type": "integer"}


def test_cross_field_rules():
    with pytest.raises(InvalidRequestError, match="n > 1 needs temperature >= 1e-05"):
        SamplingParams(temperature=0, n=2)
    with pytest.raises(InvalidRequestError, match="ignore_eos cannot be combined"):
        SamplingParams(ignore_eos=True, constraint=Choice(choices=["a"]))


def test_empty_prompt_and_empty_messages():
    with pytest.raises(InvalidRequestError, match="prompt must not be empty"):
        llmkit.Request(prompt="")
    with pytest.raises(InvalidRequestError, match="messages must not be empty"):
        llmkit.Request(messages=[])
    with pytest.raises(InvalidRequestError):
        llmkit.Message(role="robot", content="hi")


def test_latency_summary_percentiles():
    s = llmkit.types.LatencySummary.of([float(x) for x in range(1, 101)])
    assert s.count == 100 and s.mean == 50.5 and s.p50 == 50.5
    assert s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)


def test_tpot_follows_vllm_bench_definition():
    m = llmkit.types.RequestMetrics(ttft=0.1, e2e=1.1)
    assert m.tpot(11) == pytest.approx(0.1)
    assert m.tpot(1) is None


def test_errors_form_one_tree():
    for cls in [llmkit.UnsupportedFeatureError, llmkit.BackendNotFoundError, llmkit.PromptTooLongError, llmkit.EngineClosedError]:
        assert issubclass(cls, llmkit.LLMKitError)
    err = llmkit.UnsupportedFeatureError("ollama", "constraint:regex")
    assert "ollama" in str(err) and "constraint:regex" in str(err)


def test_map_engine_errors_wraps_unknown_and_chains():
    from llmkit.errors import EngineError, map_engine_errors

    with pytest.raises(EngineError) as info:
        with map_engine_errors("x"):
            raise KeyError("boom")
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(InvalidRequestError):
        with map_engine_errors("x", {ValueError: InvalidRequestError}):
            raise ValueError("bad")


def test_max_tokens_zero_is_for_scoring_only():
    with pytest.raises(InvalidRequestError, match="prompt_logprobs"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(max_tokens=0, prompt_logprobs=0).scoring_only


@pytest.mark.parametrize("temperature", [0.0, 1e-40, 9.9e-6])
def test_tiny_temperatures_are_greedy(temperature):
    """T → 0 is argmax; dividing logits by 1e-40 overflows in every engine (NaN probabilities seen)."""
    assert SamplingParams(temperature=temperature).greedy
    with pytest.raises(InvalidRequestError, match="n > 1"):
        SamplingParams(temperature=temperature, n=2)
    assert not SamplingParams(temperature=1e-5).greedy


@pytest.mark.parametrize("ids", [[True], [1, False], [1.0]])
def test_token_ids_are_strict_integers(ids):
    with pytest.raises(InvalidRequestError) as info:
        llmkit.Request(prompt_token_ids=ids)
    assert info.value.parameter.startswith("prompt_token_ids")


def test_constraints_take_their_field_positionally():
    assert Choice(["a", "b"]) == Choice(choices=["a", "b"])
    assert Regex(r"[0-9]+").pattern == "[0-9]+"
    assert JsonSchema({"type": "string"}).schema_ == {"type": "string"}
    assert Grammar('root ::= "x"').grammar == 'root ::= "x"'
    with pytest.raises(InvalidRequestError, match="given twice"):
        Choice(["a"], choices=["b"])
    with pytest.raises(InvalidRequestError):
        Choice("ab")  # a string is not a list of choices


@pytest.mark.parametrize("make", [lambda: llmkit.Request(prompt="a\ud800"), lambda: llmkit.Request(messages=[{"role": "user", "content": "\udfff"}]),
                                  lambda: SamplingParams(stop=["x\ud800"])])
def test_text_that_is_not_unicode_is_refused(make):
    """A lone surrogate cannot be encoded; llama.cpp's tokenizer aborts the process on invalid UTF-8."""
    with pytest.raises(InvalidRequestError, match="surrogate"):
        make()
