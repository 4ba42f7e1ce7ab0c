"""The whole Engine interface on a tiny random Llama (fast; text is gibberish, mechanics are real)."""

import asyncio
import json
import re

import jsonschema
import pytest

import llmkit
from llmkit import Choice, Grammar, JsonSchema, Regex, SamplingParams, greedy

from llmkit.testing import concurrency_tests

PROMPTS = ["Beautiful is better than", "Errors should never", "Now is better"]

TestConcurrency = concurrency_tests("tiny_engine", "fresh_tiny_engine")


def test_capabilities_declared_without_loading():
    from llmkit_transformers.engine import TransformersEngine

    caps = TransformersEngine.capabilities_
    assert caps.constraints == {"choice", "regex", "json_schema", "grammar"}
    assert "int8" in caps.quantization


def test_greedy_is_repeatable_and_batch_matches_single(tiny_engine):
    params = greedy(max_tokens=12)
    batch = tiny_engine.generate(PROMPTS, params)
    again = tiny_engine.generate(PROMPTS, params)
    assert [c.token_ids for c in batch] == [c.token_ids for c in again]
    singles = [tiny_engine.generate(p, params)[0] for p in PROMPTS]
    assert [c.token_ids for c in singles] == [c.token_ids for c in batch]
    assert [c.prompt_index for c in batch] == [0, 1, 2]


def test_stream_deltas_concatenate_to_generate(tiny_engine):
    params = greedy(max_tokens=20)
    full = tiny_engine.generate(PROMPTS[0], params)[0]
    chunks = list(tiny_engine.stream(PROMPTS[0], params))
    assert "".join(c.text for c in chunks) == full.text
    assert [t for c in chunks for t in c.token_ids] == full.token_ids
    assert chunks[-1].finish_reason == full.finish_reason
    assert chunks[-1].usage.completion_tokens == len(full.token_ids)
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_max_tokens_with_ignore_eos_gives_exactly_n(tiny_engine):
    out = tiny_engine.generate(PROMPTS, greedy(max_tokens=17, ignore_eos=True))
    assert all(len(c.token_ids) == 17 and c.finish_reason == "length" for c in out)
    assert all(c.usage.completion_tokens == 17 for c in out)


def test_stop_string_is_excluded_and_not_leaked_in_stream(tiny_engine):
    reference = tiny_engine.generate(PROMPTS[1], greedy(max_tokens=30, ignore_eos=True))[0].text
    assert len(reference) > 12
    stop = reference[6:9]  # a string the model is certain to produce
    out = tiny_engine.generate(PROMPTS[1], greedy(max_tokens=30, stop=[stop]))[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == reference[: reference.index(stop)]
    streamed = list(tiny_engine.stream(PROMPTS[1], greedy(max_tokens=30, stop=[stop])))
    assert "".join(c.text for c in streamed) == out.text
    assert all(stop[:2] not in c.text or c is streamed[-1] for c in streamed)


def test_seed_gives_same_text_and_other_seed_differs(tiny_engine):
    p = dict(temperature=1.0, max_tokens=24, ignore_eos=True)
    a = tiny_engine.generate(PROMPTS[0], SamplingParams(seed=7, **p))[0]
    b = tiny_engine.generate(PROMPTS[0], SamplingParams(seed=7, **p))[0]
    c = tiny_engine.generate(PROMPTS[0], SamplingParams(seed=8, **p))[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_n_samples_per_prompt(tiny_engine):
    out = tiny_engine.generate(PROMPTS[:2], SamplingParams(n=3, seed=1, max_tokens=8, ignore_eos=True))
    assert [(c.prompt_index, c.index) for c in out] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len({tuple(c.token_ids) for c in out[:3]}) > 1


def test_sampling_filters_are_applied(tiny_engine):
    """top_k=1 and a tiny top_p both reduce sampling to greedy."""
    g = tiny_engine.generate(PROMPTS[0], greedy(max_tokens=12, ignore_eos=True))[0].token_ids
    for params in (dict(top_k=1), dict(top_p=1e-6), dict(min_p=1.0)):
        out = tiny_engine.generate(PROMPTS[0], SamplingParams(temperature=1.5, seed=3, max_tokens=12, ignore_eos=True, **params))
        assert out[0].token_ids == g, params


def test_penalties_change_output(tiny_engine):
    base = tiny_engine.generate(PROMPTS[2], greedy(max_tokens=24, ignore_eos=True))[0]
    assert len(set(base.token_ids)) < len(base.token_ids)  # the random model repeats itself
    for params in (dict(repetition_penalty=5.0), dict(frequency_penalty=2.0), dict(presence_penalty=2.0)):
        out = tiny_engine.generate(PROMPTS[2], greedy(max_tokens=24, ignore_eos=True, **params))[0]
        assert out.token_ids != base.token_ids, params


def test_logprobs_shape_and_sign(tiny_engine):
    out = tiny_engine.generate(PROMPTS[0], greedy(max_tokens=6, logprobs=3, ignore_eos=True))[0]
    assert len(out.logprobs) == 6
    for token_id, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == token_id and lp.logprob <= 0
        assert len(lp.top) == 3 and all(v <= 0 for v in lp.top.values())
        assert max(lp.top.values()) == pytest.approx(lp.logprob)  # greedy picks the top token
    assert tiny_engine.generate(PROMPTS[0], greedy(max_tokens=3))[0].logprobs is None


def test_prompt_logprobs_are_the_same_alone_and_in_a_left_padded_batch(tiny_engine):
    params = greedy(max_tokens=1, prompt_logprobs=2)
    batch = tiny_engine.generate(PROMPTS, params)
    for prompt, together in zip(PROMPTS, batch):
        alone = tiny_engine.generate(prompt, params)[0]
        ids = tiny_engine.tokenize(prompt)
        assert len(together.prompt_logprobs) == len(ids) and together.prompt_logprobs[0] is None
        assert [e.token_id for e in together.prompt_logprobs[1:]] == ids[1:]
        for a, b in zip(alone.prompt_logprobs[1:], together.prompt_logprobs[1:]):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4) and len(b.top) == 2


def test_prompt_scoring_is_chunked_to_bound_logits_memory(tiny_engine, monkeypatch):
    """A scored prompt is prefilled in chunks of PROMPT_LOGITS_BUDGET // vocabulary positions, so a long
    prompt never holds length × vocabulary logits at once; the scores do not change."""
    from llmkit_transformers import engine as module

    params = greedy(max_tokens=2, prompt_logprobs=0)
    whole = tiny_engine.generate(PROMPTS, params)
    monkeypatch.setattr(module, "PROMPT_LOGITS_BUDGET", 3 * tiny_engine._vocab_size)  # 3 positions per chunk
    split = tiny_engine.generate(PROMPTS, params)
    for a, b in zip(whole, split):
        assert a.token_ids == b.token_ids
        assert [e.logprob for e in a.prompt_logprobs[1:]] == pytest.approx([e.logprob for e in b.prompt_logprobs[1:]], abs=1e-4)


@pytest.mark.parametrize(
    "constraint, check",
    [
        (Choice(choices=["red", "green", "blue"]), lambda t: t in ("red", "green", "blue")),
        (Regex(pattern=r"[0-9]{3}-[a-z]{2,4}"), lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", t)),
        (
            JsonSchema(schema={"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
                               "required": ["n", "ok"], "additionalProperties": False}),
            lambda t: jsonschema.validate(json.loads(t), {"type": "object", "required": ["n", "ok"]}) is None,
        ),
        (Grammar(grammar='root ::= "(" digit+ ")"\ndigit ::= [0-9]'), lambda t: re.fullmatch(r"\([0-9]+\)", t)),
    ],
)
def test_every_constraint_kind_gives_valid_output(tiny_engine, constraint, check):
    for seed in range(3):
        out = tiny_engine.generate(PROMPTS, SamplingParams(temperature=1.0, seed=seed, max_tokens=40, constraint=constraint))
        for c in out:
            assert c.finish_reason == "stop", c
            assert check(c.text), c.text


def test_constraint_in_stream(tiny_engine):
    chunks = list(tiny_engine.stream(PROMPTS[0], greedy(max_tokens=20, constraint=Regex(pattern="[a-c]{5}"))))
    assert re.fullmatch("[a-c]{5}", "".join(c.text for c in chunks))


def test_bad_grammar_is_an_invalid_request(tiny_engine):
    with pytest.raises(llmkit.InvalidRequestError) as info:
        tiny_engine.generate("x", greedy(constraint=Grammar(grammar="root ::= (unbalanced")))
    assert info.value.parameter == "constraint.grammar"


def test_chat_applies_template(tiny_engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    direct = tiny_engine.chat(messages, greedy(max_tokens=5))
    assert tiny_engine.count_tokens(messages) > tiny_engine.count_tokens("Hi")
    assert direct.usage.prompt_tokens == tiny_engine.count_tokens(messages)
    batch = tiny_engine.generate([messages, messages], greedy(max_tokens=5))
    assert batch[0].token_ids == direct.token_ids


def test_prompt_too_long(tiny_engine):
    with pytest.raises(llmkit.PromptTooLongError) as info:
        tiny_engine.generate("word " * 2000)
    assert info.value.limit == tiny_engine.context_length and info.value.parameter == "prompt"


def test_generation_stops_at_context_end(tiny_model_dir):
    with llmkit.load("transformers", tiny_model_dir, max_model_len=20) as engine:
        prompt = "Beautiful is better than ugly."
        room = 20 - engine.count_tokens(prompt)
        out = engine.generate(prompt, greedy(max_tokens=100, ignore_eos=True))[0]
        assert out.finish_reason == "length" and len(out.token_ids) == room


def test_multibyte_text_is_never_split_in_a_stream(tiny_engine):
    """Byte-level BPE emits emoji and CJK bytes one token at a time; chunks must hold whole characters."""
    tokenizer = tiny_engine.tokenizer
    text = "naïve 😀 中文"
    ids = tokenizer(text).input_ids
    assert len(ids) > len(text) - 3  # several tokens per multi-byte character
    from llmkit.kit.decoding import DecodeState

    state = DecodeState([1], greedy(max_tokens=100), tiny_engine.encoder.decode, 512)
    pieces = []
    for token in ids:
        state.append(token)
        pieces.append(state.take_chunk().text)
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_cancelled_stream_leaves_engine_healthy(tiny_engine):
    stream = tiny_engine.stream(PROMPTS[0], greedy(max_tokens=50, ignore_eos=True))
    next(stream)
    next(stream)
    stream.close()
    assert tiny_engine.stats().engine["aborted_streams"] >= 1
    out = tiny_engine.generate(PROMPTS[0], greedy(max_tokens=4, ignore_eos=True))[0]
    assert len(out.token_ids) == 4


def test_async_twins(tiny_engine):
    async def main():
        params = greedy(max_tokens=10)
        gen = await tiny_engine.agenerate(PROMPTS[0], params)
        text = "".join([c.text async for c in tiny_engine.astream(PROMPTS[0], params)])
        chat = await tiny_engine.achat([{"role": "user", "content": "hi"}], params)
        return gen[0].text, text, chat

    gen_text, stream_text, chat = asyncio.run(main())
    assert gen_text == stream_text and chat.usage.completion_tokens >= 1


def test_async_stream_cancel(tiny_engine):
    async def main():
        async for _ in tiny_engine.astream(PROMPTS[0], greedy(max_tokens=50, ignore_eos=True)):
            break

    asyncio.run(main())
    assert len(tiny_engine.generate(PROMPTS[0], greedy(max_tokens=3, ignore_eos=True))[0].token_ids) == 3


def test_stats_are_measured(tiny_engine):
    tiny_engine.reset_stats()
    tiny_engine.generate(PROMPTS, greedy(max_tokens=8, ignore_eos=True))
    list(tiny_engine.stream(PROMPTS[0], greedy(max_tokens=8, ignore_eos=True)))
    s = tiny_engine.stats()
    assert s.requests == 4 and s.completion_tokens == 32
    assert s.prompt_tokens == sum(tiny_engine.count_tokens(p) for p in PROMPTS) + tiny_engine.count_tokens(PROMPTS[0])
    assert s.ttft.count == 4 and s.tpot.count == 4 and s.itl.count == 4 * 7
    assert 0 < s.ttft.mean < s.e2e.mean
    assert s.output_tokens_per_s > 0


def test_int8_quantization_loads_and_generates(tiny_model_dir):
    pytest.importorskip("torchao")
    with llmkit.load("transformers", tiny_model_dir, quantization="int8") as engine:
        out = engine.generate(PROMPTS[0], greedy(max_tokens=5, ignore_eos=True))[0]
        assert len(out.token_ids) == 5
        assert type(engine.hf_model.model.layers[0].mlp.up_proj.weight).__name__ != "Parameter"


def test_unknown_quantization_is_unsupported(tiny_model_dir):
    with pytest.raises(llmkit.UnsupportedFeatureError, match="awq"):
        llmkit.load("transformers", tiny_model_dir, quantization="awq")


def test_closed_engine_refuses_calls(tiny_model_dir):
    engine = llmkit.load("transformers", tiny_model_dir)
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(llmkit.EngineClosedError):
        engine.generate("x")
    with pytest.raises(llmkit.EngineClosedError):
        engine.stream("x")


def test_bad_inputs_are_refused_before_the_engine_runs(tiny_engine):
    with pytest.raises(llmkit.InvalidRequestError):
        tiny_engine.generate([])
    with pytest.raises(llmkit.InvalidRequestError):
        tiny_engine.generate("")
    with pytest.raises(llmkit.InvalidRequestError):
        tiny_engine.generate("x", temperature=float("nan"))
    with pytest.raises(llmkit.InvalidRequestError):
        tiny_engine.stream(["a", "b"])
    with pytest.raises(llmkit.InvalidRequestError):
        tiny_engine.chat("not a conversation")


def test_token_id_prompts(tiny_engine):
    ids = tiny_engine.tokenizer(PROMPTS[0]).input_ids
    by_ids = tiny_engine.generate(llmkit.Request(prompt_token_ids=ids), greedy(max_tokens=6))[0]
    assert by_ids.token_ids == tiny_engine.generate(PROMPTS[0], greedy(max_tokens=6))[0].token_ids
    with pytest.raises(llmkit.InvalidRequestError) as info:
        tiny_engine.generate(llmkit.Request(prompt_token_ids=[10**6]))
    assert info.value.parameter == "prompt_token_ids"


def test_lora_requests_are_refused_where_unsupported(tiny_engine):
    with pytest.raises(llmkit.UnsupportedFeatureError, match="lora"):
        tiny_engine.generate(llmkit.Request(prompt="x", lora="/some/adapter"))


def test_each_prompt_is_tokenized_once(tiny_engine, monkeypatch):
    """The core's length check tokenizes; the adapter then gets token ids and does not tokenize again."""
    texts = []
    encode = tiny_engine.encoder.encode

    def counting(request):
        if request.prompt_token_ids is None:
            texts.append(request)
        return encode(request)

    monkeypatch.setattr(tiny_engine.encoder, "encode", counting)
    tiny_engine.generate(PROMPTS, greedy(max_tokens=2))
    list(tiny_engine.stream(PROMPTS[0], greedy(max_tokens=2)))
    assert len(texts) == len(PROMPTS) + 1


def test_tokenize_takes_one_input(tiny_engine):
    """413c71b tokenized the first of a list silently."""
    with pytest.raises(llmkit.InvalidRequestError, match="one prompt"):
        tiny_engine.tokenize(["a", "b"])
    assert tiny_engine.tokenize(["only one"]) == tiny_engine.tokenize("only one")


def test_scoring_only_generates_nothing(tiny_engine):
    out = tiny_engine.generate(PROMPTS[0], greedy(max_tokens=0, prompt_logprobs=1))[0]
    ids = tiny_engine.tokenize(PROMPTS[0])
    assert out.token_ids == [] and out.text == "" and out.finish_reason == "length" and out.usage.completion_tokens == 0
    assert len(out.prompt_logprobs) == len(ids) and out.prompt_logprobs[0] is None
    scored = tiny_engine.generate(PROMPTS[0], greedy(max_tokens=1, prompt_logprobs=1))[0].prompt_logprobs
    assert [e.logprob for e in out.prompt_logprobs[1:]] == pytest.approx([e.logprob for e in scored[1:]], abs=1e-5)


def test_each_logprob_carries_its_rank(tiny_engine):
    out = tiny_engine.generate(PROMPTS[0], SamplingParams(temperature=1.0, seed=4, max_tokens=12, logprobs=0, prompt_logprobs=0))[0]
    for entry in out.logprobs + out.prompt_logprobs[1:]:
        assert entry.rank >= 1 and entry.top == {}
    greedy_out = tiny_engine.generate(PROMPTS[0], greedy(max_tokens=6, logprobs=0))[0]
    assert all(entry.rank == 1 for entry in greedy_out.logprobs)


def test_special_tokens_and_an_empty_context_score(tiny_engine):
    """With BOS exposed, a text's first token gets a logprob too: prepend BOS and score."""
    special = tiny_engine.special_tokens()
    assert special.bos_token_id is not None and special.eos_token_ids
    ids = tiny_engine.tokenize("Beautiful")
    scored = tiny_engine.generate(llmkit.Request(prompt_token_ids=[special.bos_token_id] + ids), greedy(max_tokens=0, prompt_logprobs=0))[0]
    assert scored.prompt_logprobs[1].token_id == ids[0] and scored.prompt_logprobs[1].logprob < 0


def test_weights_name_what_ran(tiny_engine):
    weights = tiny_engine.weights()
    assert weights.format == "safetensors" and weights.dtype == "fp32" and weights.kv_cache_dtype == "fp32"


def test_stats_stay_bounded_and_percentiles_stay_close():
    """413c71b kept every latency sample (stats() took 297 ms at 2M samples)."""
    import random as rnd

    from llmkit.stats import RECENT, SKETCH_ERROR, LatencySketch

    sketch, values = LatencySketch(), [rnd.lognormvariate(-4, 1) for _ in range(200_000)]
    for v in values:
        sketch.add(v)
    assert len(sketch.recent) == RECENT and len(sketch.buckets) < 5_000
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert abs(sketch.quantile(q) - exact) <= 2 * SKETCH_ERROR * exact
