"""Every check passes on a real engine and fails on an engine broken the way the check guards against.

Each broken engine is the bug as it really occurs: a proxy over the real reference engine (tiny random
Llama) that reproduces what the bug's output looks like (a missing normalisation adds the log-partition
function to every logprob; shared mutable state hands one caller another's output), or the real engine
with the bug injected in its own code path (prompt logprobs scored from the wrong row). Checks that need a
model which knows language have their controls on SmolLM2.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

import llmkit
from llmkit_conformance import checks
from llmkit_conformance.checks import CHECKS, DESTRUCTIVE, run_check

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
    """temperature=0 not mapped to greedy: the engine samples."""

    def generate(self, inputs, params=None, **kw):
        params = llmkit.engine.to_params(params, kw)
        if params.greedy:
            params = params.model_copy(update={"temperature": 1.0, "seed": random.randrange(1 << 30)})
        return self._engine.generate(inputs, params)


class CumulativeStream(Broken):
    """Chunks carry the text so far (SGLang's default), not deltas."""

    def stream(self, inputs, params=None, **kw):
        text = ""
        for chunk in self._engine.stream(inputs, params, **kw):
            text += chunk.text
            yield chunk.model_copy(update={"text": text})


class IgnoresStop(Broken):
    def generate(self, inputs, params=None, **kw):
        return self._engine.generate(inputs, llmkit.engine.to_params(params, kw).model_copy(update={"stop": []}))


class StreamsStopString(Broken):
    """Checks stop strings only on the finished text: the stream has already sent the stop string."""

    def stream(self, inputs, params=None, **kw):
        params = llmkit.engine.to_params(params, kw)
        text = ""
        for chunk in self._engine.stream(inputs, params.model_copy(update={"stop": []})):
            text += chunk.text
            yield chunk
            if any(stop in text for stop in params.stop):
                return


class OffByOne(Broken):
    """max_tokens + 1 tokens."""

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        return [c.model_copy(update={"token_ids": c.token_ids + [0]}) for c in out]


class IgnoresSeed(Broken):
    def generate(self, inputs, params=None, **kw):
        return self._engine.generate(inputs, llmkit.engine.to_params(params, kw).model_copy(update={"seed": None}))


class UnnormalisedLogprobs(Broken):
    """Reports logits where log-probabilities belong (no log-softmax): each position's values are the
    true logprobs plus that position's log-partition function, log(sum(exp(logits)))."""

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        for c in out:
            for position, lp in enumerate(c.logprobs or []):
                log_z = 4.0 + 0.5 * position
                object.__setattr__(lp, "logprob", lp.logprob + log_z)
                object.__setattr__(lp, "top", {t: v + log_z for t, v in lp.top.items()})
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


class LeaksCancelledOutput(Broken):
    """A cancelled stream's remaining output is not dropped: it reaches the next caller."""

    leftover: list = []

    def stream(self, inputs, params=None, **kw):
        params = llmkit.engine.to_params(params, kw)
        full = self._engine.generate(inputs, params)[0]
        sent = []
        try:
            for chunk in self._engine.stream(inputs, params):
                sent += chunk.token_ids
                yield chunk
        finally:
            self.leftover = full.token_ids[len(sent):]

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        if self.leftover:
            leaked, self.leftover = self.leftover, []
            out[0] = out[0].model_copy(update={"token_ids": leaked + out[0].token_ids, "text": "?" + out[0].text})
        return out


class SwallowsBadInput(Broken):
    def generate(self, inputs, params=None, **kw):
        try:
            return self._engine.generate(inputs, params, **kw)
        except llmkit.LLMKitError:
            return []


class SerialisesCallers(Broken):
    """One lock around every call, held across a stream's yields (the 413c71b transformers engine)."""

    def __init__(self, engine):
        super().__init__(engine)
        self._lock = threading.RLock()

    def generate(self, *args, **kw):
        with self._lock:
            return self._engine.generate(*args, **kw)

    def stream(self, *args, **kw):
        with self._lock:
            yield from self._engine.stream(*args, **kw)

    async def agenerate(self, *args, **kw):
        while not self._lock.acquire(blocking=False):
            await _sleep()
        try:
            return await self._engine.agenerate(*args, **kw)
        finally:
            self._lock.release()

    async def astream(self, *args, **kw):
        while not self._lock.acquire(blocking=False):
            await _sleep()
        try:
            async for chunk in self._engine.astream(*args, **kw):
                yield chunk
        finally:
            self._lock.release()


async def _sleep():
    import asyncio

    await asyncio.sleep(0.01)


class SwapsOutputs(Broken):
    """Results pass through one shared slot: under concurrency a caller reads another caller's output."""

    slot = None

    def generate(self, *args, **kw):
        SwapsOutputs.slot = self._engine.generate(*args, **kw)
        time.sleep(0.05)
        return SwapsOutputs.slot


class ClosedStreamsFailVaguely(Broken):
    """close() ends in-flight streams, but they report a generic EngineError (seen on 413c71b's
    transformers engine) instead of EngineClosedError."""

    def stream(self, *args, **kw):
        try:
            yield from self._engine.stream(*args, **kw)
        except llmkit.EngineClosedError as exc:
            raise llmkit.EngineError("generation failed") from exc


class RefusesEverything(Broken):
    """Declares every capability and refuses every call: nothing it does may count as 'unsupported'."""

    def capabilities(self):
        caps = self._engine.capabilities()
        return caps.model_copy(update={"sampling": frozenset(llmkit.SamplingParams.NEUTRAL) - {"constraint"},
                                       "constraints": frozenset({"choice", "regex", "json_schema", "grammar"}),
                                       "prefix_caching": True})

    def _refuse(self, *args, **kw):
        raise llmkit.UnsupportedFeatureError(self._engine.backend, "generate", "refused")

    generate = chat = stream = astream = agenerate = achat = _refuse


class RankCountsItselfTwice(Broken):
    """1 + how many tokens are at least as likely, the token itself included: every rank one too high."""

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        for c in out:
            for lp in c.logprobs or []:
                object.__setattr__(lp, "rank", lp.rank + 1)
        return out


class RankCountsOnlyBetter(Broken):
    """How many tokens are more likely, without the token itself (the kit's formula missing its + 1): rank 0 on top."""

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        for c in out:
            for lp in c.logprobs or []:
                object.__setattr__(lp, "rank", lp.rank - 1)
        return out


class TiedAlternative(Broken):
    """Not a bug: another token exactly as likely as the greedy one, which vLLM counts in the rank (`>=`), as
    on TP=2 with dummy weights (2026-11-28: rank 2, two tokens at -10.802657127380371)."""

    def generate(self, inputs, params=None, **kw):
        out = self._engine.generate(inputs, params, **kw)
        for c in out:
            for lp in c.logprobs or []:
                other = next(t for t in lp.top if t != lp.token_id)
                object.__setattr__(lp, "top", {**lp.top, other: lp.logprob})
                object.__setattr__(lp, "rank", 2)
        return out


BREAKAGES = {  # check → the realistic bugs that must make it fail
    "greedy_repeatable": [Nondeterministic],
    "stream_matches_generate": [CumulativeStream],
    "stop_strings": [IgnoresStop, StreamsStopString],
    "max_tokens_exact": [OffByOne],
    "seed": [IgnoresSeed],
    "logprobs": [UnnormalisedLogprobs, RankCountsItselfTwice, RankCountsOnlyBetter],
    "batch_matches_single": [ClaimsBatchInvariance],
    "prefix_cache": [ClaimsPrefixCache],
    "constraint_choice": [DropsConstraint],
    "constraint_regex": [AcceptsUndeclaredConstraint],
    "constraint_json_schema": [DropsConstraint],
    "constraint_grammar": [AcceptsUndeclaredConstraint],
    "multibyte_stream": [SplitsCharacters],
    "cancelled_stream": [LeaksCancelledOutput],
    "bad_inputs": [SwallowsBadInput],
    "concurrent_requests": [SerialisesCallers, SwapsOutputs],
}
# Controls that need their own engine or the real engine's code path (tests below).
ENGINE_LEVEL = {"prompt_logprobs", "close_in_flight"}


def test_every_check_has_a_negative_control():
    assert set(BREAKAGES) | ENGINE_LEVEL | NEEDS_REAL_MODEL == set(CHECKS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(set(CHECKS) - NEEDS_REAL_MODEL - NOT_DECLARED_BY_TRANSFORMERS - DESTRUCTIVE))
def test_check_passes_on_the_real_engine(tiny_engine, name):
    result = run_check(name, tiny_engine)
    assert result.status == "passed", (result.detail, result.data)


def test_logprobs_accepts_a_rank_behind_exact_ties(tiny_engine):
    result = run_check("logprobs", TiedAlternative(tiny_engine))
    assert result.status == "passed", (result.detail, result.data)


def test_undeclared_prefix_cache_is_unsupported(tiny_engine):
    assert run_check("prefix_cache", tiny_engine).status == "unsupported"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name, breakage", [(n, b) for n, bs in sorted(BREAKAGES.items()) for b in bs],
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_check_fails_on_a_broken_engine(tiny_engine, name, breakage, monkeypatch):
    if breakage is SerialisesCallers:
        # The serialising engine blocks its callers until the check gives up: at the check's patience, 60 s at
        # least. 15 s here (the tiny engine answers the 8 callers in about 1 s), and the real engine passes
        # under the same patience, so the failure is the lock's, not the shorter wait's.
        monkeypatch.setattr(checks, "_patience", lambda engine, solo_seconds: max(15.0, 30 * solo_seconds))
        assert run_check(name, tiny_engine).status == "passed"
    result = run_check(name, breakage(tiny_engine))
    assert result.status == "failed", (result.status, result.detail)
    if breakage is SerialisesCallers:
        assert "did not finish within 15 s" in result.detail, result.detail


@pytest.mark.timeout(300)
def test_refusing_what_is_declared_is_never_unsupported(tiny_engine):
    """An engine that declares everything and refuses every call scored 18 of 19 'unsupported' on 413c71b."""
    broken = RefusesEverything(tiny_engine)
    statuses = {name: run_check(name, broken).status for name in sorted(set(CHECKS) - DESTRUCTIVE)}
    assert "unsupported" not in statuses.values() and "passed" not in statuses.values(), statuses


def test_a_refusal_must_name_the_feature(tiny_engine):
    """Undeclared and refused, but the refusal names another feature: not an honest 'unsupported'."""

    class MisnamesRefusal(Broken):
        def capabilities(self):
            caps = self._engine.capabilities()
            return caps.model_copy(update={"sampling": caps.sampling - {"seed"}})

        def generate(self, inputs, params=None, **kw):
            raise llmkit.UnsupportedFeatureError(self._engine.backend, "something else")

    assert run_check("seed", MisnamesRefusal(tiny_engine)).status == "failed"


# ---- controls in the engine's own code path ------------------------------------------------------


@pytest.mark.smollm2
@pytest.mark.timeout(600)
def test_prompt_logprobs_fails_when_token_i_is_scored_from_row_i(smollm2_engine, monkeypatch):
    """The realistic off-by-one: prompt token i scored with the distribution at position i (which predicts
    token i+1) instead of position i-1, injected in the transformers engine's own scoring path. On the
    random tiny model it went unseen (its greedy output repeats one token, and its flat distributions kept
    the gap to generation at 0.022 nats on 413c71b); on SmolLM2 the direct assertion — a greedy token is the
    top choice of the position that predicted it — catches it."""
    from llmkit.kit.decoding import top_logprobs
    from llmkit_transformers import engine as module

    def shifted(rows, next_tokens, k, token_text):
        return [top_logprobs(rows[min(i + 1, len(rows) - 1)], token, k, token_text) for i, token in enumerate(next_tokens)]

    assert run_check("prompt_logprobs", smollm2_engine).status == "passed"
    monkeypatch.setattr(module, "prompt_logprobs", shifted)
    result = run_check("prompt_logprobs", smollm2_engine)
    assert result.status == "failed" and "top alternative" in result.detail, (result.status, result.detail)


@pytest.mark.timeout(300)
def test_close_in_flight_passes_on_the_real_engine(fresh_tiny_engine):
    result = run_check("close_in_flight", fresh_tiny_engine)
    assert result.status == "passed", (result.detail, result.data)
    assert fresh_tiny_engine.closed


@pytest.mark.timeout(300)
def test_close_in_flight_fails_when_streams_end_with_a_vague_error(fresh_tiny_engine):
    result = run_check("close_in_flight", ClosedStreamsFailVaguely(fresh_tiny_engine))
    assert result.status == "failed" and "EngineClosedError" in result.detail, (result.status, result.detail)


# ---- quality: the damaged model these checks exist to catch ---------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(NEEDS_REAL_MODEL))
def test_quality_checks_fail_on_a_model_that_knows_no_language(tiny_engine, name):
    assert run_check(name, tiny_engine).status == "failed"


class TruncatesPrompts(Broken):
    """Keeps the first tokens of every prompt and drops the rest (a context limit applied from the end):
    the question never reaches the model."""

    keep = 48

    def _cut(self, inputs):
        requests = llmkit.engine.to_requests(inputs)
        return [llmkit.Request(prompt_token_ids=self._engine.tokenize(r)[: self.keep]) for r in requests]

    def generate(self, inputs, params=None, **kw):
        return self._engine.generate(self._cut(inputs), params, **kw)

    def chat(self, messages, params=None, **kw):
        return self.generate([list(messages)], params, **kw)[0]


@pytest.mark.smollm2
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", ["quality_sentiment", "quality_facts"])
def test_quality_checks_pass_on_smollm2_and_fail_when_prompts_are_truncated(smollm2_engine, name):
    from llmkit.tasks import FEW_SHOT

    passed = run_check(name, smollm2_engine)
    assert passed.status == "passed", (passed.detail, passed.data)
    broken = TruncatesPrompts(smollm2_engine)
    # Sentiment: the two examples survive, the review is cut. Facts: the chat template's system turn
    # survives, the question is cut.
    broken.keep = {"quality_sentiment": len(smollm2_engine.tokenize(FEW_SHOT.split("{review}")[0])),
                   "quality_facts": len(smollm2_engine.tokenize([{"role": "user", "content": "?"}])) - 6}[name]
    result = run_check(name, broken)
    assert result.status == "failed", (result.status, result.detail, result.data)
