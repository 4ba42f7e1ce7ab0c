"""Every check passes on a real engine and fails on an engine broken in exactly the way it guards against.

The broken engines are proxies over the real reference engine (tiny random Llama), each with one defect.
"""

from __future__ import annotations

import random

import pytest

import llmkit
from llmkit_conformance.checks import CHECKS, run_check

# Checks the tiny random model cannot pass on merit (they need a model that knows language).
NEEDS_REAL_MODEL = {"quality_sentiment", "quality_facts", "quality_perplexity"}
NOT_DECLARED_BY_TRANSFORMERS = {"prefix_cache"}


class Broken:
    """Delegates to a real engine; subclasses break one behaviour."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)


class Nondeterministic(Broken):
    def generate(self, inputs, params=None, **kw):
        params = llmkit.engine.to_params(params, kw)
        if params.greedy:
            params = params.model_copy(update={"temperature": 1.0, "seed": random.randrange(1 << 30)})
        return self._engine.generate(inputs, params)


class CumulativeStream(Broken):
    def stream(self, inputs, params=None, **kw):
        text = ""
        for chunk in self._engine.stream(inputs, params, **kw):
            text += chunk.text
            yield chunk.model_copy(update={"text": text})


class IgnoresStop(Broken):
    def generate(self, inputs, params=None, **kw):
        return self._engine.generate(inputs, llmkit.engine.to_params(params, kw).model_copy(update={"stop": []}))


class OffByOne(Broken):
    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        return [c.model_copy(update={"token_ids": c.token_ids + [0]}) for c in out]


class IgnoresSeed(Broken):
    def generate(self, inputs, params=None, **kw):
        return self._engine.generate(inputs, llmkit.engine.to_params(params, kw).model_copy(update={"seed": None}))


class PositiveLogprobs(Broken):
    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        for c in out:
            for lp in c.logprobs or []:
                object.__setattr__(lp, "logprob", 0.5)
        return out


class MisalignedPromptLogprobs(Broken):
    """Gives each prompt token the logprob of the token after it: an off-by-one in slicing the logits."""

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        for c in out:
            entries = c.prompt_logprobs or []
            for entry, following in zip(entries[1:], entries[2:]):
                object.__setattr__(entry, "logprob", following.logprob)
        return out


class ClaimsBatchInvariance(Broken):
    def capabilities(self):
        return self._engine.capabilities().model_copy(update={"batch_invariant_greedy": True})

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        if len(out) > 1:
            ids = out[-1].token_ids
            out[-1] = out[-1].model_copy(update={"token_ids": ids[:-1] + [ids[-1] + 1]})
        return out


class ClaimsPrefixCache(Broken):
    def capabilities(self):
        return self._engine.capabilities().model_copy(update={"prefix_caching": True})


class DropsConstraint(Broken):
    def generate(self, inputs, params=None, **kw):
        return self._engine.generate(inputs, llmkit.engine.to_params(params, kw).model_copy(update={"constraint": None}))

    def chat(self, messages, params=None, **kw):
        return self.generate([list(messages)], params, **kw)[0]


class AcceptsUndeclaredConstraint(DropsConstraint):
    def capabilities(self):
        return self._engine.capabilities().model_copy(update={"constraints": frozenset()})


class SplitsCharacters(Broken):
    def stream(self, inputs, params=None, **kw):
        for chunk in self._engine.stream(inputs, params, **kw):
            raw = chunk.text.encode()
            if len(raw) > len(chunk.text):
                yield chunk.model_copy(update={"text": raw[:1].decode(errors="replace")})
                yield chunk.model_copy(update={"text": raw[1:].decode(errors="replace"), "token_ids": []})
            else:
                yield chunk


class BreaksAfterCancel(Broken):
    cancelled = False

    def stream(self, inputs, params=None, **kw):
        try:
            yield from self._engine.stream(inputs, params, **kw)
        finally:
            self.cancelled = True

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        if not self.cancelled:
            return out
        short = llmkit.Usage(prompt_tokens=1, completion_tokens=1)
        return [c.model_copy(update={"token_ids": c.token_ids[:1], "text": c.text[:1], "usage": short}) for c in out]


class SwallowsBadInput(Broken):
    def generate(self, inputs, params=None, **kw):
        try:
            return self._engine.generate(inputs, params, **kw)
        except llmkit.LLMKitError:
            return []


BREAKAGES = {
    "greedy_repeatable": Nondeterministic,
    "stream_matches_generate": CumulativeStream,
    "stop_strings": IgnoresStop,
    "max_tokens_exact": OffByOne,
    "seed": IgnoresSeed,
    "logprobs": PositiveLogprobs,
    "prompt_logprobs": MisalignedPromptLogprobs,
    "batch_matches_single": ClaimsBatchInvariance,
    "prefix_cache": ClaimsPrefixCache,
    "constraint_choice": DropsConstraint,
    "constraint_regex": AcceptsUndeclaredConstraint,
    "constraint_json_schema": DropsConstraint,
    "constraint_grammar": AcceptsUndeclaredConstraint,
    "multibyte_stream": SplitsCharacters,
    "cancelled_stream": BreaksAfterCancel,
    "bad_inputs": SwallowsBadInput,
}


def test_every_check_has_a_negative_control():
    assert set(BREAKAGES) | NEEDS_REAL_MODEL == set(CHECKS)


# Measured 2026-11-26: xgrammar 0.2.8's JSON-schema grammar lets raw control characters (U+0000-U+001F)
# into strings, which JSON forbids; the random tiny model emits such bytes, SmolLM2 does not.
XGRAMMAR_CONTROL_CHARS = pytest.mark.xfail(reason="xgrammar admits raw control characters in JSON strings", strict=False)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=XGRAMMAR_CONTROL_CHARS) if n == "constraint_json_schema" else n
     for n in sorted(set(CHECKS) - NEEDS_REAL_MODEL - NOT_DECLARED_BY_TRANSFORMERS)],
)
def test_check_passes_on_the_real_engine(tiny_engine, name):
    result = run_check(name, tiny_engine)
    assert result.status == "passed", (result.detail, result.data)


def test_undeclared_prefix_cache_is_unsupported(tiny_engine):
    assert run_check("prefix_cache", tiny_engine).status == "unsupported"


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_check_fails_on_a_broken_engine(tiny_engine, name):
    result = run_check(name, BREAKAGES[name](tiny_engine))
    assert result.status == "failed", (result.status, result.detail)


@pytest.mark.parametrize("name", sorted(NEEDS_REAL_MODEL))
def test_quality_checks_fail_on_a_model_that_knows_no_language(tiny_engine, name):
    """The random tiny model is the damaged model these checks exist to catch."""
    assert run_check(name, tiny_engine).status == "failed"
