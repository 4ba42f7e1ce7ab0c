"""Regex constraints on real engines: whatever the model samples, the output is a full match of the
pattern as Python's `re.fullmatch` reads it, or the engine refuses the pattern with
`UnsupportedFeatureError`. The random patterns are bounded (no match longer than 15 characters, so at
most 60 tokens even at one byte a token): with `max_tokens=64` every request must end with `stop`. The
unbounded regressions may end with `length`, and then must be a prefix of a match."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_grammars import regex_patterns

import llmkit
from llmkit.errors import UnsupportedFeatureError

PROMPT = "Write a short answer:"
SEEDS = st.integers(0, 2**31 - 1)
# The outside review's cases; each bounded one must stop with a full match.
REGRESSIONS = [r"[^\w]{1,3}", r"(?i)abc", r"[^\d]{2}", r"(?i)[^a-z]{1,4}", r"\w\d\s", r"(?s:.)(?a:\w)"]
# Unbounded: a model need not stop within max_tokens. A `length` finish must still be a prefix of a match,
# given here as the regex of those prefixes (a character cut short at the end is U+FFFD).
UNBOUNDED = [(r"[^\s]+x", r"\S*"), (r"(?i)[a-z]+\d", "[a-zA-Z\u0130\u0131\u017f\u212a]*\ufffd?")]


def _generate(engine, pattern: str, seed: int, max_tokens: int = 64) -> llmkit.Completion:
    params = llmkit.SamplingParams(temperature=1.0, seed=seed, max_tokens=max_tokens, constraint=llmkit.Regex(pattern))
    return engine.generate(PROMPT, params)[0]


def check_bounded(engine, pattern: str, refused: bool, seed: int) -> None:
    if refused:
        with pytest.raises(UnsupportedFeatureError):
            _generate(engine, pattern, seed)
        return
    out = _generate(engine, pattern, seed)
    assert out.finish_reason == "stop", (pattern, out.text, out.finish_reason)
    assert re.fullmatch(pattern, out.text), (pattern, out.text)


def check_unbounded(engine, pattern: str, prefixes: str, seed: int, max_tokens: int = 64) -> None:
    out = _generate(engine, pattern, seed, max_tokens)
    if out.finish_reason == "stop":
        assert re.fullmatch(pattern, out.text), (pattern, out.text)
    else:
        assert out.finish_reason == "length", (pattern, out.text, out.finish_reason)
        assert re.fullmatch(prefixes, out.text), (pattern, out.text)


REFUSED = [r"(a)\1", r"a(?=b)", r"(?<!a)b", r"a*+", r"(?>a)b", r"a\bb", r"a^b", r"(a)?(?(1)b|c)"]
PROPERTY = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ---- transformers (xgrammar), the tiny random model: it samples anything the grammar allows ------------


@pytest.mark.parametrize("pattern", REGRESSIONS)
def test_transformers_regressions(tiny_engine, pattern):
    for seed in range(3):
        check_bounded(tiny_engine, pattern, False, seed)


@pytest.mark.parametrize("pattern, prefixes", UNBOUNDED)
def test_transformers_unbounded(tiny_engine, pattern, prefixes):
    for seed in range(2):
        check_unbounded(tiny_engine, pattern, prefixes, seed)


@pytest.mark.parametrize("pattern", REFUSED)
def test_transformers_refuses(tiny_engine, pattern):
    check_bounded(tiny_engine, pattern, True, 0)


@pytest.mark.timeout(300)
@PROPERTY
@given(case=regex_patterns(bounded=True), seed=SEEDS)
def test_transformers_output_fullmatches(tiny_engine, case, seed):
    check_bounded(tiny_engine, case[0], case[1] == "refused", seed)


# ---- llama.cpp (its GBNF sampler), SmolLM2: the grammar checks all 49,152 tokens at every step, which
# costs ~0.1-0.3 s a token on 2 cores (more with Unicode classes), so one seed each ----------------------


@pytest.mark.smollm2
@pytest.mark.parametrize("pattern", REGRESSIONS)
def test_llamacpp_regressions(llamacpp_engine, pattern):
    check_bounded(llamacpp_engine, pattern, False, 0)


@pytest.mark.smollm2
@pytest.mark.parametrize("pattern, prefixes", UNBOUNDED)
def test_llamacpp_unbounded(llamacpp_engine, pattern, prefixes):
    check_unbounded(llamacpp_engine, pattern, prefixes, 0, max_tokens=12)


@pytest.mark.smollm2
@pytest.mark.parametrize("pattern", REFUSED)
def test_llamacpp_refuses(llamacpp_engine, pattern):
    check_bounded(llamacpp_engine, pattern, True, 0)


@pytest.mark.smollm2
@pytest.mark.timeout(300)
@PROPERTY
@given(case=regex_patterns(bounded=True), seed=SEEDS)
def test_llamacpp_output_fullmatches(llamacpp_engine, case, seed):
    check_bounded(llamacpp_engine, case[0], case[1] == "refused", seed)


# ---- vLLM (its xgrammar backend), SmolLM2: slow on CPU, so fewer examples ----------------------------------


@pytest.mark.engine("vllm")
@pytest.mark.smollm2
@pytest.mark.timeout(600)
@settings(PROPERTY, max_examples=10)
@given(case=regex_patterns(bounded=True), seed=SEEDS)
def test_vllm_output_fullmatches(vllm_engine, case, seed):
    check_bounded(vllm_engine, case[0], case[1] == "refused", seed)


@pytest.mark.engine("vllm")
@pytest.mark.smollm2
@pytest.mark.parametrize("pattern", REGRESSIONS)
def test_vllm_regressions(vllm_engine, pattern):
    check_bounded(vllm_engine, pattern, False, 0)


@pytest.mark.engine("vllm")
@pytest.mark.smollm2
@pytest.mark.parametrize("pattern, prefixes", UNBOUNDED[:1])
def test_vllm_unbounded(vllm_engine, pattern, prefixes):
    check_unbounded(vllm_engine, pattern, prefixes, 0, max_tokens=16)


@pytest.mark.engine("vllm")
@pytest.mark.smollm2
@pytest.mark.parametrize("pattern", REFUSED)
def test_vllm_refuses(vllm_engine, pattern):
    check_bounded(vllm_engine, pattern, True, 0)
