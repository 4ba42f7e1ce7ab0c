"""The llama.cpp adapter on the real SmolLM2 GGUF (loads in under a second)."""

import json
import re

import jsonschema
import pytest

import llmkit
from llmkit import Choice, Grammar, JsonSchema, Regex, SamplingParams, greedy
from llmkit.tasks import FEW_SHOT, LABELS, REVIEWS

from llmkit.testing import concurrency_tests

pytestmark = pytest.mark.smollm2
CHAT = [{"role": "user", "content": "Name three colours."}]

# One sequence at a time (first come, first served): the contract holds, there is just no batching.
TestConcurrency = concurrency_tests("llamacpp_engine", "fresh_llamacpp_engine")


def test_choice_classifies_reviews(llamacpp_engine):
    out = llamacpp_engine.generate([FEW_SHOT.format(review=r) for r, _ in REVIEWS], greedy(max_tokens=4, constraint=LABELS))
    assert [c.text.strip() for c in out] == [gold for _, gold in REVIEWS]


def test_prefix_cache_is_reused_and_reported(llamacpp_engine):
    prompts = [FEW_SHOT.format(review=r) for r, _ in REVIEWS[:2]]
    llamacpp_engine.generate("An unrelated prompt to clear the cache.", greedy(max_tokens=1))
    first, second = llamacpp_engine.generate(prompts, greedy(max_tokens=1))
    assert first.usage.cached_tokens <= 1
    shared = len(FEW_SHOT.split("{review}")[0])
    assert second.usage.cached_tokens >= llamacpp_engine.count_tokens(FEW_SHOT[:shared]) - 2
    assert llamacpp_engine.stats().engine["prompt_eval_tokens"] > 0


@pytest.fixture(scope="module")
def cold_engine():
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, prefix_caching=False) as engine:
        yield engine


def test_greedy_repeatable_without_prefix_cache_and_stream_matches(cold_engine):
    params = greedy(max_tokens=32)
    a = cold_engine.chat(CHAT, params)
    b = cold_engine.chat(CHAT, params)
    assert a.token_ids == b.token_ids and a.usage.cached_tokens == b.usage.cached_tokens == 0
    assert not cold_engine.capabilities().prefix_caching
    chunks = list(cold_engine.stream(CHAT, params))
    assert "".join(c.text for c in chunks) == a.text
    assert [t for c in chunks for t in c.token_ids] == a.token_ids


def test_prefix_cache_reuse_does_not_change_greedy_output(llamacpp_engine, cold_engine):
    """The prompt's last token is evaluated alone whether the rest came from the cache or not, so a warm
    request gives exactly the cold output (before that, SmolLM2 Q4_1 diverged within 5 tokens)."""
    params = greedy(max_tokens=32)
    cold = cold_engine.chat(CHAT, params)
    llamacpp_engine.chat(CHAT, params)
    warm = llamacpp_engine.chat(CHAT, params)
    assert warm.usage.cached_tokens == len(cold_engine._encode(llmkit.Request(messages=CHAT))) - 1
    assert warm.token_ids == cold.token_ids


def test_seed_and_sampling(llamacpp_engine):
    p = dict(temperature=1.0, max_tokens=24, ignore_eos=True)
    a, b = (llamacpp_engine.generate("Once upon a time", SamplingParams(seed=5, **p))[0] for _ in range(2))
    c = llamacpp_engine.generate("Once upon a time", SamplingParams(seed=6, **p))[0]
    assert a.token_ids == b.token_ids != c.token_ids
    g = llamacpp_engine.generate("Once upon a time", greedy(max_tokens=12, ignore_eos=True))[0]
    k1 = llamacpp_engine.generate("Once upon a time", SamplingParams(temperature=1.5, top_k=1, seed=1, max_tokens=12, ignore_eos=True))[0]
    assert k1.token_ids == g.token_ids


def test_max_tokens_ignore_eos_and_stop(llamacpp_engine):
    out = llamacpp_engine.chat([{"role": "user", "content": "Hi"}], greedy(max_tokens=40, ignore_eos=True))
    assert len(out.token_ids) == 40 and out.finish_reason == "length"
    full = llamacpp_engine.chat(CHAT, greedy(max_tokens=32)).text
    stop = full.split()[1]
    out = llamacpp_engine.chat(CHAT, greedy(max_tokens=32, stop=[stop]))
    assert out.finish_reason == "stop" and out.stop_reason == stop and stop not in out.text
    assert "".join(c.text for c in llamacpp_engine.stream(CHAT, greedy(max_tokens=32, stop=[stop]))) == out.text


def test_logprobs(llamacpp_engine):
    out = llamacpp_engine.generate("The sky is", greedy(max_tokens=4, logprobs=2, ignore_eos=True))[0]
    assert len(out.logprobs) == 4
    for token, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == token and lp.logprob <= 0 and len(lp.top) == 2
        assert max(lp.top.values()) == pytest.approx(lp.logprob)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.mark.parametrize(
    "constraint, valid",
    [
        (Choice(choices=["yes", "no"]), lambda t: t in ("yes", "no")),
        (Regex(pattern=r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}"), lambda t: re.fullmatch(r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", t)),
        (Regex(pattern=r"(cat|dog)s? [a-z]{1,8}"), lambda t: re.fullmatch(r"(cat|dog)s? [a-z]{1,8}", t)),
        (JsonSchema(schema=PERSON), lambda t: jsonschema.validate(json.loads(t), PERSON) is None),
        (Grammar(grammar='root ::= "(" [a-z]+ ")"'), lambda t: re.fullmatch(r"\([a-z]+\)", t)),
    ],
)
def test_constraints(llamacpp_engine, constraint, valid):
    for seed in range(2):
        out = llamacpp_engine.chat([{"role": "user", "content": "Give an example."}],
                                   SamplingParams(temperature=0.7, seed=seed, max_tokens=60, constraint=constraint))
        assert out.finish_reason == "stop", out
        assert valid(out.text), out.text


def test_unparseable_grammar_and_inexpressible_regex(llamacpp_engine):
    with pytest.raises(llmkit.InvalidRequestError) as info:
        llamacpp_engine.generate("x", greedy(constraint=Grammar(grammar="root ::= (unclosed")))
    assert info.value.parameter == "constraint.grammar"
    with pytest.raises(llmkit.UnsupportedFeatureError) as info:
        llamacpp_engine.generate("x", greedy(constraint=Regex(pattern=r"(a)\1")))
    assert info.value.backend == "llamacpp" and info.value.feature == "constraint:regex"
    assert len(llamacpp_engine.generate("x", greedy(max_tokens=2, ignore_eos=True))[0].token_ids) == 2


def test_json_schema_keywords_llamacpp_cannot_enforce_are_refused(llamacpp_engine):
    schema = {"type": "object", "properties": {"age": {"type": "integer", "maximum": 120}}, "$defs": {"x": {"multipleOf": 2}}}
    with pytest.raises(llmkit.UnsupportedFeatureError) as info:
        llamacpp_engine.generate("x", greedy(constraint=JsonSchema(schema=schema)))
    assert "#/properties/age/maximum" in str(info.value) and "#/$defs/x/multipleOf" in str(info.value)


def test_multibyte_stream(llamacpp_engine):
    chunks = list(llamacpp_engine.stream("Translate to Japanese: good morning →", greedy(max_tokens=24, ignore_eos=True)))
    assert all("\ufffd" not in c.text for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == llamacpp_engine.generate(
        "Translate to Japanese: good morning →", greedy(max_tokens=24, ignore_eos=True))[0].text


def test_cancelled_stream_leaves_engine_healthy(llamacpp_engine):
    stream = llamacpp_engine.stream("Once upon a time", greedy(max_tokens=50, ignore_eos=True))
    next(stream)
    stream.close()
    assert len(llamacpp_engine.generate("Once", greedy(max_tokens=3, ignore_eos=True))[0].token_ids) == 3


def test_prompt_too_long_and_context_option():
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, max_model_len=64) as engine:
        limit = engine.context_length
        assert limit == 256  # llama.cpp rounds n_ctx up to a multiple of 256
        with pytest.raises(llmkit.PromptTooLongError):
            engine.generate("word " * limit)
        out = engine.generate("Hello", greedy(max_tokens=1000, ignore_eos=True))[0]
        assert out.finish_reason == "length" and len(out.token_ids) + engine.count_tokens("Hello") == limit


def test_prompt_logprobs_score_the_prompt_and_leave_the_cache_consistent(llamacpp_engine, cold_engine):
    """A scoring request evaluates the prompt from scratch with every position's logits; what follows
    it (warm or cold) decodes exactly as before."""
    params = greedy(max_tokens=16)
    before = cold_engine.chat(CHAT, params)
    ids = llamacpp_engine.tokenize(CHAT)
    scored = llamacpp_engine.generate(llmkit.Request(prompt_token_ids=ids), greedy(max_tokens=1, prompt_logprobs=1))[0]
    assert scored.usage.cached_tokens == 0 and scored.prompt_logprobs[0] is None
    assert [e.token_id for e in scored.prompt_logprobs[1:]] == ids[1:]
    assert all(e.logprob <= 0 and len(e.top) == 1 for e in scored.prompt_logprobs[1:])
    assert llamacpp_engine.chat(CHAT, params).token_ids == before.token_ids


def test_memory_reports_llamacpp_allocations(llamacpp_engine):
    from llmkit.planner import compare_with_engine, load_shape

    usage = llamacpp_engine.memory()
    assert usage.weights_dtype == "q4_1" and usage.kv_dtype == "fp16"
    assert usage.kv_cache_tokens == llamacpp_engine.context_length
    rows = {r["quantity"].split(" (")[0]: r["ratio"] for r in compare_with_engine(load_shape(llmkit.DEFAULT_MODEL), usage)}
    assert rows["KV cache per token"] == 1.0
    # Q4_1 GGUF keeps some tensors wider than 5 bits per weight: more than the plan, not less
    assert 1.0 < rows["weights"] < 1.3


def test_scoring_ranks_special_tokens_and_weights(llamacpp_engine):
    out = llamacpp_engine.generate("The capital of France is", greedy(max_tokens=0, prompt_logprobs=0))[0]
    assert out.token_ids == [] and out.finish_reason == "length" and all(e.rank >= 1 for e in out.prompt_logprobs[1:])
    special = llamacpp_engine.special_tokens()
    assert special.eos_token_ids and special.adds_bos is not None
    weights = llamacpp_engine.weights()
    assert (weights.format, weights.dtype, weights.kv_cache_dtype) == ("gguf", "q4_1", "fp16")


def test_kv_cache_type_is_an_option():
    with pytest.raises(llmkit.InvalidRequestError, match="flash_attn"):
        llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, kv_cache_dtype="q8_0")
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, kv_cache_dtype="q8_0", flash_attn=True, max_model_len=512) as engine:
        assert engine.weights().kv_cache_dtype == "q8_0" and engine.memory().kv_dtype == "q8_0"
        assert engine.generate("Hello", greedy(max_tokens=3, ignore_eos=True))[0].usage.completion_tokens == 3


def test_closed_engine_still_knows_its_context(llamacpp_engine):
    engine = llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, max_model_len=512)
    engine.close()
    assert engine.context_length == 512  # 413c71b: AttributeError
    with pytest.raises(llmkit.EngineClosedError):
        engine.generate("x")
