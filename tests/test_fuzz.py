"""Inputs that cannot break an engine: generated SamplingParams, Requests and constraints, valid and not.

Every input either completes (and the result is well formed) or raises an llmkit error, within a time
limit, and the engine keeps serving. Seen on 413c71b before this test: temperature=1e-40 gave NaN
probabilities (transformers) or garbage (llama.cpp), top_p=1e-300 underflowed, prompt_token_ids=[True]
was accepted, cyclic $refs returned empty completions or a bare KeyError.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import llmkit

FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e-300, 1e-40, 1e-6, 1e-5, 0.5, 1.0, 2.0, 2.5, 100.0, 101.0, -1e-9]),
)
INTS = st.one_of(st.integers(-5, 40), st.sampled_from([True, False, 2**63, -(2**63), 1.0, 3.5, "4"]))
SMALL_COUNTS = st.one_of(st.integers(0, 12), st.sampled_from([-1, True, 2.0, None]))
TEXT = st.text(max_size=12)
SCHEMAS = st.one_of(
    st.sampled_from([
        {"type": "string", "maxLength": 5},
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {"$ref": "#"},
        {"$defs": {"N": {"type": "object", "properties": {"k": {"type": "array", "items": {"$ref": "#/$defs/N"}, "maxItems": 1}},
                         "required": ["k"]}}, "$ref": "#/$defs/N"},
        {"type": "integer", "minimum": 3, "maximum": 9},
        {"enum": ["x", 1, None]},
        {"type": "no-such-type"},
        {"$ref": "http://example.com/schema"},
    ]),
    st.dictionaries(st.sampled_from(["type", "enum", "const", "maxLength", "items", "$ref", "anyOf"]),
                    st.one_of(st.text(max_size=4), st.integers(-2, 5), st.lists(st.text(max_size=3), max_size=3)), max_size=3),
)
CONSTRAINTS = st.one_of(
    st.none(),
    st.builds(lambda c: {"kind": "choice", "choices": c}, st.lists(TEXT, max_size=4)),
    st.builds(lambda p: {"kind": "regex", "pattern": p}, st.one_of(
        st.sampled_from([r"[0-9]{1,3}", r"[^\w]{1,3}", r"(?i)ab", r"a^b", r"(a)\1", r"(?=x)x", r"\d+\.\d", r"[", r"", r"x*+"]),
        st.text(alphabet="ab()[]{}|*+?.^$\\dws-,0123", max_size=8))),
    st.builds(lambda s: {"kind": "json_schema", "schema": s}, SCHEMAS),
    st.builds(lambda g: {"kind": "grammar", "grammar": g}, st.one_of(
        st.sampled_from(['root ::= "a" | "b"', 'root ::= [0-9]+', 'root ::= root', 'root ::= x', 'start ::= "a"', "root ::="]),
        st.text(max_size=20))),
    st.text(max_size=5),
)
PARAMS = st.fixed_dictionaries({"max_tokens": SMALL_COUNTS}, optional={
    "temperature": FLOATS, "top_p": FLOATS, "top_k": INTS, "min_p": FLOATS,
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=3)), "seed": INTS, "n": st.one_of(st.integers(0, 3), st.just(True)),
    "logprobs": st.one_of(st.integers(-1, 21), st.none()), "prompt_logprobs": st.one_of(st.integers(-1, 3), st.none()),
    "ignore_eos": st.one_of(st.booleans(), st.just("yes")), "repetition_penalty": FLOATS, "presence_penalty": FLOATS,
    "frequency_penalty": FLOATS, "constraint": CONSTRAINTS, "tempreature": st.just(1.0),
})
INPUTS = st.one_of(
    TEXT,
    st.lists(TEXT, max_size=3),
    st.builds(lambda ids: llmkit.Request.model_construct(prompt_token_ids=ids, prompt=None, messages=None, lora=None),
              st.lists(st.one_of(st.integers(-3, 10**6), st.booleans()), max_size=6)),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool"]), "content": TEXT}), max_size=3),
    st.sampled_from([[["hi"]], [{"role": "user"}], {"prompt": "x"}, 42, None, b"bytes", [[]]]),
)


def _exercise(engine, inputs, params) -> None:
    try:
        out = engine.generate(inputs, params, timeout=60)
    except llmkit.GenerationTimeoutError:
        pytest.fail("a request ran into the time limit")
    except llmkit.LLMKitError:
        return
    for completion in out:
        assert completion.finish_reason in ("stop", "length", "abort", "error")
        assert isinstance(completion.text, str)  # (a random model's bytes need not be valid UTF-8: U+FFFD is honest)
        for entry in completion.logprobs or []:
            assert math.isfinite(entry.logprob) and entry.logprob <= 1e-4


def _fuzz(engine) -> None:
    # No shrinking: a failure is reported as found (shrinking through a live engine took over 5 minutes).
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              phases=[Phase.explicit, Phase.reuse, Phase.generate])
    @given(inputs=INPUTS, params=PARAMS)
    def run(inputs, params):
        _exercise(engine, inputs, params)

    run()
    assert engine.generate("still serving?", llmkit.greedy(max_tokens=2, ignore_eos=True), timeout=60)[0].usage.completion_tokens == 2


@pytest.mark.timeout(900)
def test_fuzz_transformers(tiny_engine):
    _fuzz(tiny_engine)


@pytest.mark.smollm2
@pytest.mark.timeout(900)
def test_fuzz_llamacpp(llamacpp_engine):
    _fuzz(llamacpp_engine)
