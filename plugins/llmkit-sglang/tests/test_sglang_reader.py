"""The SGLang stream reader on outputs shaped as SGLang 0.5.17's TokenizerManager shapes them
(`sglang_recorded`), with a real byte-level BPE tokenizer (llmkit.testing's), in both of SGLang's stream
modes. No SGLang needed."""

from __future__ import annotations

import pytest

import llmkit
from llmkit import SamplingParams, greedy
from llmkit.testing import tiny_tokenizer
from llmkit_sglang.engine import _decoders
from llmkit_sglang.mapping import DeltaReader

from sglang_recorded import Prompt, Step, abort, length, stop_string, stop_token, stream

MODES = [pytest.param(True, id="incremental"), pytest.param(False, id="cumulative")]
MULTIBYTE = "晴れ ☀️ です、雨 🌧️ です"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def decoders(tok):
    return _decoders(tok)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def read(tok, decoders, params, steps, *, incremental, prompt=None, limit=4096, decode_text=True, **kw):
    decode, token_text = decoders
    prompt = prompt or Prompt(ids=ids_of(tok, "Hello there"))
    reader = DeltaReader(params, prompt.ids, decode=decode, token_text=token_text, limit=limit, incremental=incremental)
    chunks = []
    outs = stream(prompt, steps, incremental=incremental, decode=(lambda ids: tok.decode(ids)) if decode_text else None, **kw)
    for out in outs:  # fed one by one, as the adapter does: cumulative outs share a list that keeps growing
        chunks += reader.feed(out)
        if reader.finished:
            break
    return reader, chunks


def one_per_step(ids, finish):
    return [Step(ids=[t], finish=finish if i == len(ids) - 1 else None) for i, t in enumerate(ids)]


def test_the_tokenizer_splits_characters_across_tokens(tok):
    """The case the reader must handle is really here: decoding each token alone gives U+FFFD."""
    ids = ids_of(tok, MULTIBYTE)
    assert any("\ufffd" in tok.decode([t]) for t in ids)
    assert tok.decode(ids) == MULTIBYTE


@pytest.mark.parametrize("incremental", MODES)
def test_no_chunk_holds_a_broken_character(tok, decoders, incremental):
    ids = ids_of(tok, MULTIBYTE)
    steps = one_per_step(ids, length(len(ids)))
    sglang_texts = [o.get("text", "") for o in stream(Prompt(ids=[1]), steps, incremental=incremental, decode=lambda x: tok.decode(x))]
    assert any("\ufffd" in t for t in sglang_texts)  # what SGLang's own text would have shown
    reader, chunks = read(tok, decoders, greedy(max_tokens=len(ids)), steps, incremental=incremental)
    texts = [c.text for c in chunks]
    assert all("\ufffd" not in t for t in texts), texts
    assert "".join(texts) == MULTIBYTE
    assert [t for c in chunks for t in c.token_ids] == ids
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1) and chunks[-1].finish_reason == "length"
    assert sum(1 for c in chunks if c.text) < len(ids)  # characters were held back until complete


@pytest.mark.parametrize("incremental", MODES)
def test_multi_token_steps_and_coalesced_outputs(tok, decoders, incremental):
    ids = ids_of(tok, "The quick brown fox " + MULTIBYTE)
    steps = [Step(ids=ids[i:i + 3], queued_with_next=(i // 3) % 2 == 0) for i in range(0, len(ids), 3)]
    steps[-1].finish = length(len(ids))
    steps[-1].queued_with_next = False
    reader, chunks = read(tok, decoders, greedy(max_tokens=len(ids)), steps, incremental=incremental)
    assert "".join(c.text for c in chunks) == tok.decode(ids)
    assert [t for c in chunks for t in c.token_ids] == ids
    assert all("\ufffd" not in c.text for c in chunks)


@pytest.mark.parametrize("incremental", MODES)
def test_end_of_sequence_token(tok, decoders, incremental):
    eos = tok.eos_token_id
    ids = ids_of(tok, "Paris is the capital.") + [eos]
    reader, chunks = read(tok, decoders, greedy(max_tokens=64), one_per_step(ids, stop_token(eos)), incremental=incremental,
                          prompt=Prompt(ids=ids_of(tok, "Q: capital of France? A:"), cached_tokens=3))
    last = chunks[-1]
    assert (last.finish_reason, last.stop_reason) == ("stop", eos)
    assert [t for c in chunks for t in c.token_ids] == ids  # the EOS id is in token_ids, as on vLLM
    assert "".join(c.text for c in chunks) == "Paris is the capital."
    assert last.usage.model_dump() == {"prompt_tokens": len(ids_of(tok, "Q: capital of France? A:")),
                                       "completion_tokens": len(ids), "cached_tokens": 3}
    assert all(c.usage is None and c.finish_reason is None for c in chunks[:-1])


def test_end_of_sequence_on_the_last_allowed_token_is_a_stop(tok, decoders):
    eos = tok.eos_token_id
    ids = ids_of(tok, "Paris.") + [eos]
    reader, chunks = read(tok, decoders, greedy(max_tokens=len(ids)), one_per_step(ids, stop_token(eos)), incremental=True)
    assert (chunks[-1].finish_reason, chunks[-1].stop_reason) == ("stop", eos)


@pytest.mark.parametrize("incremental", MODES)
def test_stop_string_is_trimmed_and_never_streamed_in_part(tok, decoders, incremental):
    text = "alpha beta; gamma delta"
    ids = ids_of(tok, text)
    # SGLang finishes at the token that completes "; g" (its stop check), with the ids through it.
    upto = next(n for n in range(1, len(ids) + 1) if "; g" in tok.decode(ids[:n]))
    steps = one_per_step(ids[:upto], stop_string("; g"))
    reader, chunks = read(tok, decoders, greedy(max_tokens=64, stop=["; g"]), steps, incremental=incremental)
    assert "".join(c.text for c in chunks) == "alpha beta"
    assert (chunks[-1].finish_reason, chunks[-1].stop_reason) == ("stop", "; g")
    assert not any(";" in c.text for c in chunks)
    assert [t for c in chunks for t in c.token_ids] == ids[:upto]


@pytest.mark.parametrize("incremental", MODES)
def test_llmkit_sees_a_stop_string_before_sglang_does(tok, decoders, incremental):
    """The reader ends the sample itself (the adapter then aborts SGLang's request)."""
    ids = ids_of(tok, "one, two, three, four")
    reader, chunks = read(tok, decoders, greedy(max_tokens=64, stop=[", t"]), one_per_step(ids, length(len(ids))),
                          incremental=incremental)
    assert reader.finished and not reader.upstream_finished
    assert "".join(c.text for c in chunks) == "one"
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize("incremental", MODES)
def test_upstream_length_before_llmkits_limit(tok, decoders, incremental):
    """SGLang's scheduler may cap max_new_tokens below the room llmkit computed: its "length" stands."""
    ids = ids_of(tok, "abc def ghi")
    reader, chunks = read(tok, decoders, greedy(max_tokens=50), one_per_step(ids, length(len(ids))), incremental=incremental)
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == len(ids)
    assert "".join(c.text for c in chunks) == "abc def ghi"


def test_context_room_ends_with_length(tok, decoders):
    ids = ids_of(tok, "abc def ghi jkl")
    prompt = Prompt(ids=[5, 6, 7])
    reader, chunks = read(tok, decoders, greedy(max_tokens=50), one_per_step(ids, None), incremental=True, prompt=prompt,
                          limit=len(prompt.ids) + 4)
    assert reader.finished and chunks[-1].finish_reason == "length"
    assert [t for c in chunks for t in c.token_ids] == ids[:4]


@pytest.mark.parametrize("status, error", [(400, llmkit.InvalidRequestError), (500, llmkit.EngineError), (503, llmkit.EngineError)])
def test_aborts_with_a_status_are_errors(tok, decoders, status, error):
    steps = [Step(ids=ids_of(tok, "ab")), Step(ids=[], finish=abort("Invalid grammar: root missing", status))]
    with pytest.raises(error, match="Invalid grammar"):
        read(tok, decoders, greedy(max_tokens=8), steps, incremental=True)


def test_abort_without_status_ends_as_abort(tok, decoders):
    steps = [Step(ids=ids_of(tok, "ab")), Step(ids=[], finish=abort())]
    reader, chunks = read(tok, decoders, greedy(max_tokens=8), steps, incremental=False)
    assert chunks[-1].finish_reason == "abort"


def test_out_of_vocabulary_sample_is_an_error_finish(tok, decoders):
    steps = [Step(ids=ids_of(tok, "ab")), Step(ids=[2], finish=stop_string("NaN happened"))]
    reader, chunks = read(tok, decoders, greedy(max_tokens=8), steps, incremental=True)
    assert chunks[-1].finish_reason == "error"


def _tops(ids, k, base=-0.5):
    # each position: the sampled token most likely, then k-1 others
    return [[(base, t)] + [(base - 1 - j, (t + 1 + j) % 500) for j in range(k - 1)] for t in ids]


@pytest.mark.parametrize("incremental", MODES)
def test_output_logprobs(tok, decoders, incremental):
    ids = ids_of(tok, "one two three")
    steps = [Step(ids=[t], logprobs=[-0.5], tops=_tops([t], 4), finish=length(len(ids)) if i == len(ids) - 1 else None)
             for i, t in enumerate(ids)]
    reader, chunks = read(tok, decoders, greedy(max_tokens=len(ids), logprobs=3), steps, incremental=incremental,
                          logprobs=True, top_logprobs_num=3)
    entries = [e for c in chunks for e in (c.logprobs or [])]
    assert [e.token_id for e in entries] == ids
    assert all(e.logprob == -0.5 and len(e.top) == 3 and e.rank == 1 and e.top[e.token_id] == -0.5 for e in entries)
    assert [e.token for e in entries] == [tok.decode([t]) for t in ids]


def test_rank_is_exact_or_unknown(tok, decoders):
    ids = ids_of(tok, "xy")[:2]
    a, b = ids
    tops = [[(-0.1, 400), (-0.2, a), (-3.0, 401)], [(-0.1, 402), (-0.2, 403)]]  # b is below both shown alternatives
    steps = [Step(ids=[a], logprobs=[-0.2], tops=[tops[0]]), Step(ids=[b], logprobs=[-2.5], tops=[tops[1]], finish=length(2))]
    reader, chunks = read(tok, decoders, SamplingParams(max_tokens=2, logprobs=2), steps, incremental=True,
                          logprobs=True, top_logprobs_num=3)
    first, second = [e for c in chunks for e in c.logprobs]
    assert first.rank == 2 and list(first.top) == [400, a]  # trimmed to the 2 asked for
    assert second.rank is None  # more than 2 tokens may be more likely: not known


@pytest.mark.parametrize("incremental", MODES)
def test_prompt_logprobs_come_once_on_the_first_chunk(tok, decoders, incremental):
    prompt_ids = ids_of(tok, "The three primary colours are")
    prompt = Prompt(ids=prompt_ids, logprobs=[None] + [-1.0 - i for i in range(len(prompt_ids) - 1)],
                    tops=[None] + _tops(prompt_ids[1:], 2, base=-0.25))
    out_ids = ids_of(tok, " red, green")
    steps = [Step(ids=[t], logprobs=[-0.3], finish=length(len(out_ids)) if i == len(out_ids) - 1 else None) for i, t in enumerate(out_ids)]
    reader, chunks = read(tok, decoders, greedy(max_tokens=len(out_ids), prompt_logprobs=2), steps, incremental=incremental,
                          prompt=prompt, prompt_logprobs=True, top_logprobs_num=2)
    first = chunks[0].prompt_logprobs
    assert first is not None and len(first) == len(prompt_ids) and first[0] is None
    assert [e.token_id for e in first[1:]] == prompt_ids[1:]
    assert [e.logprob for e in first[1:]] == prompt.logprobs[1:]
    assert all(len(e.top) == 2 for e in first[1:])
    assert all(c.prompt_logprobs is None for c in chunks[1:])
    assert all(c.logprobs is None for c in chunks)  # output logprobs were not asked for


def test_scoring_only_returns_the_prompt_logprobs_and_no_token(tok, decoders):
    prompt_ids = ids_of(tok, "score me please")
    prompt = Prompt(ids=prompt_ids, logprobs=[None] + [-2.0] * (len(prompt_ids) - 1), tops=[None] * len(prompt_ids))
    steps = [Step(ids=[7], logprobs=[-0.1], finish=length(1))]
    reader, chunks = read(tok, decoders, SamplingParams(max_tokens=0, prompt_logprobs=0), steps, incremental=True,
                          prompt=prompt, prompt_logprobs=True)
    (chunk,) = chunks
    assert chunk.token_ids == [] and chunk.text == "" and chunk.finish_reason == "length"
    assert chunk.usage.completion_tokens == 0 and len(chunk.prompt_logprobs) == len(prompt_ids)


def test_token_ids_only_engine(tok, decoders):
    """skip_tokenizer_init: outs have no "text" key; the adapter decodes to empty text."""
    ids = ids_of(tok, "anything at all")
    reader = DeltaReader(greedy(max_tokens=len(ids), ignore_eos=True), [1, 2], decode=lambda x: "", token_text=lambda t: "",
                         limit=100, incremental=True)
    chunks = [c for out in stream(Prompt(ids=[1, 2]), one_per_step(ids, length(len(ids))), incremental=True, decode=None)
              for c in reader.feed(out)]
    assert [t for c in chunks for t in c.token_ids] == ids and all(c.text == "" for c in chunks)
    assert chunks[-1].finish_reason == "length"


def test_fast_decoders_agree_with_the_tokenizer(tok):
    decode, token_text = _decoders(tok)
    ids = tok("<|im_start|>user\n" + MULTIBYTE + " and some code: def f(x): return x<|im_end|>").input_ids
    for i in range(len(ids)):
        for j in range(i, min(len(ids), i + 12) + 1):
            assert decode(ids[i:j]) == tok.decode(ids[i:j], skip_special_tokens=True)
    assert [token_text(t) for t in ids] == [tok.decode([t]) for t in ids]


def test_only_sample_zero_carries_the_prompt_logprobs(tok, decoders):
    """With n > 1 only sample 0 asks SGLang for them (mapping.generate_kwargs); its reader attaches them."""
    prompt_ids = ids_of(tok, "score me")
    prompt = Prompt(ids=prompt_ids, logprobs=[None] + [-1.0] * (len(prompt_ids) - 1), tops=[None] * len(prompt_ids))
    decode, token_text = decoders
    params = SamplingParams(temperature=1.0, n=2, max_tokens=2, prompt_logprobs=0)
    for index, sends in ((0, True), (1, False)):
        reader = DeltaReader(params, prompt_ids, decode=decode, token_text=token_text, limit=100, incremental=True, index=index)
        outs = stream(prompt, one_per_step(ids_of(tok, "ab")[:2], length(2)), incremental=True, decode=None,
                      prompt_logprobs=sends)
        chunks = [c for out in outs for c in reader.feed(out)]
        assert all(c.index == index for c in chunks)
        assert (chunks[0].prompt_logprobs is not None) == sends


def test_rank_counts_ties_over_the_whole_top_row_and_is_none_when_the_row_may_be_cut():
    from llmkit_sglang.mapping import logprob_entry

    text = str
    # token 7 at -2.0; the row (k=2 shown) holds a tie at -2.0 beyond the cut and a less likely token
    row = [(-1.0, 1, None), (-2.0, 7, None), (-2.0, 9, None), (-3.0, 4, None)]
    assert logprob_entry((-2.0, 7, "x"), row, 2, text).rank == 3  # token 1 above, token 9 tied, itself
    assert logprob_entry((-1.0, 1, "x"), row, 2, text).rank == 1
    # no entry less likely than the token: tokens as likely may lie past the row
    assert logprob_entry((-3.5, 5, "x"), [(-1.0, 1, None), (-2.0, 2, None)], 2, text).rank is None
    assert logprob_entry((-2.0, 2, "x"), [(-1.0, 1, None), (-2.0, 2, None)], 2, text).rank is None
