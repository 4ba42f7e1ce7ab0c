"""The stream reader on TensorRT-LLM's output shapes (tests/trtllm_shapes.py, built from the snapshot of
executor/result.py), with a real byte-level BPE tokenizer: multibyte characters span several tokens."""

from __future__ import annotations

import pytest
from trtllm_shapes import Logprob, UpstreamStream, logprobs_of

import llmkit
from llmkit.errors import EngineError
from llmkit.kit.chat import HFPromptEncoder
from llmkit_tensorrt_llm.mapping import FINISH_REASONS, StreamReader

TEXT = "Grüße, 世界! naïve café — done."


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> HFPromptEncoder:
    from llmkit.testing import tiny_tokenizer

    return HFPromptEncoder(tiny_tokenizer(tmp_path_factory.mktemp("tok")), "tensorrt-llm", "tiny")


def reader(encoder, params, *, prompt=(5, 6, 7), context=4096) -> StreamReader:
    return StreamReader(params, list(prompt), decode=encoder.decode, token_text=encoder.token_text, context_length=context,
                        end_ids=frozenset({encoder.tokenizer.eos_token_id}))


def ids_of(encoder, text: str) -> list[int]:
    return encoder.tokenizer(text, add_special_tokens=False).input_ids


def test_multibyte_text_streams_whole_characters_only(encoder):
    ids = ids_of(encoder, TEXT)
    eos = encoder.tokenizer.eos_token_id
    assert any("\ufffd" in encoder.decode(ids[:i]) for i in range(1, len(ids)))  # the tokens split characters
    stream, r = UpstreamStream(prompt_token_ids=[5, 6, 7], cached_tokens=2), reader(encoder, llmkit.greedy(max_tokens=200))
    chunks = []
    for i, token in enumerate(ids):
        chunks += r.chunks(stream.respond(0, [token]))
    chunks += r.chunks(stream.respond(0, [eos], finish="stop"))
    assert all("\ufffd" not in c.text for c in chunks)
    assert "".join(c.text for c in chunks) == TEXT
    assert [t for c in chunks for t in c.token_ids] == ids + [eos]
    last = chunks[-1]
    assert (last.finish_reason, last.stop_reason) == ("stop", eos)
    assert last.usage.prompt_tokens == 3 and last.usage.completion_tokens == len(ids) + 1 and last.usage.cached_tokens == 2
    assert r.finished


def test_stop_string_inside_a_token_is_enforced_and_never_streamed_in_part(encoder):
    ids = ids_of(encoder, "the cat sat on the mat")
    stop = "t sa"  # ends inside a token of "sat": upstream's token-sequence matching would not fire
    assert not any(encoder.decode(ids[:i]).endswith("t sa") for i in range(len(ids) + 1))
    stream, r = UpstreamStream(), reader(encoder, llmkit.greedy(max_tokens=50, stop=[stop]))
    chunks = []
    for token in ids:
        chunks += r.chunks(stream.respond(0, [token]))
        if r.finished:
            break
    assert r.finished and not stream.result.finished  # llmkit stopped first: the engine aborts the request
    streamed = "".join(c.text for c in chunks)
    assert streamed == "the ca"
    assert (chunks[-1].finish_reason, chunks[-1].stop_reason) == ("stop", stop)


def test_stop_string_prefix_is_held_back_until_it_cannot_be_one(encoder):
    ids = ids_of(encoder, "abcab abd")
    stream, r = UpstreamStream(), reader(encoder, llmkit.greedy(max_tokens=50, stop=["abx"]))
    texts = []
    for token in ids:
        texts += [c.text for c in r.chunks(stream.respond(0, [token]))]
    texts += [c.text for c in r.chunks(stream.respond(0, [], finish="length"))]
    assert "".join(texts) == "abcab abd"
    assert not r.states[0].stop_reason


def test_stop_token_stripped_upstream_is_the_stop_reason(encoder):
    ids = ids_of(encoder, "hello world")
    stop_token = ids[-1]
    stream, r = UpstreamStream(), reader(encoder, llmkit.greedy(max_tokens=50))
    chunks = r.chunks(stream.respond(0, ids[:-1]))
    chunks += r.chunks(stream.respond(0, [stop_token], finish="stop", stop_reason=stop_token, stop_ids=[stop_token]))
    assert (chunks[-1].finish_reason, chunks[-1].stop_reason) == ("stop", stop_token)
    assert [t for c in chunks for t in c.token_ids] == ids[:-1]
    assert "".join(c.text for c in chunks) == encoder.decode(ids[:-1])


def test_length_and_cancelled(encoder):
    ids = ids_of(encoder, "one two three four")
    stream, r = UpstreamStream(), reader(encoder, llmkit.greedy(max_tokens=len(ids)))
    chunks = r.chunks(stream.respond(0, ids, finish="length"))
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == len(ids)
    stream, r = UpstreamStream(), reader(encoder, llmkit.greedy(max_tokens=50))
    chunks = r.chunks(stream.respond(0, ids[:2])) + r.chunks(stream.respond(0, [], finish="cancelled"))
    assert chunks[-1].finish_reason == "abort"


def test_upstream_length_before_llmkits_own_limit_still_ends_the_sequence(encoder):
    """An engine-side limit llmkit did not know of (a smaller max_seq_len) ends with 'length', not a hang."""
    stream, r = UpstreamStream(), reader(encoder, llmkit.greedy(max_tokens=100))
    chunks = r.chunks(stream.respond(0, ids_of(encoder, "short"), finish="length"))
    assert chunks[-1].finish_reason == "length" and r.finished


def test_every_upstream_finish_reason_maps_and_an_unknown_one_is_an_error(encoder):
    for upstream, ours in FINISH_REASONS.items():
        stream, r = UpstreamStream(), reader(encoder, llmkit.greedy(max_tokens=50))
        chunks = r.chunks(stream.respond(0, ids_of(encoder, "ab"), finish=upstream))
        assert chunks[-1].finish_reason == ours
    stream, r = UpstreamStream(), reader(encoder, llmkit.greedy(max_tokens=50))
    with pytest.raises(EngineError, match="unknown finish reason 'not_finished'"):
        r.chunks(stream.respond(0, [1], finish="not_finished"))


def test_n_samples_each_read_from_their_own_cursor(encoder):
    """Upstream moves _last_token_ids_len only for the sequence a response carries, so token_ids_diff
    repeats the other samples' tokens; the reader's own cursor does not."""
    a, b = ids_of(encoder, "alpha beta"), ids_of(encoder, "gamma delta")
    stream = UpstreamStream(n=2)
    r = reader(encoder, llmkit.SamplingParams(temperature=0.8, n=2, max_tokens=50))
    chunks = []
    chunks += r.chunks(stream.respond(0, a[:1]))
    out = stream.respond(1, b[:1])
    assert out.outputs[0].token_ids_diff == a[:1]  # stale: a naive reader would emit it twice
    chunks += r.chunks(out)
    chunks += r.chunks(stream.respond(0, a[1:], finish="length"))
    chunks += r.chunks(stream.respond(1, b[1:], finish="length"))
    for index, ids in ((0, a), (1, b)):
        mine = [c for c in chunks if c.index == index]
        assert [t for c in mine for t in c.token_ids] == ids
        assert "".join(c.text for c in mine) == encoder.decode(ids)
        assert sum(c.finish_reason is not None for c in mine) == 1
    assert r.finished


def test_logprobs_top_k_and_sampled_token(encoder):
    ids = ids_of(encoder, "xyz")
    tables = [{tok: -0.1, 900 + i: -2.0, 950 + i: -3.0, 990: -4.0} for i, tok in enumerate(ids)]
    tables[-1] = {ids[-1]: -5.0, 1: -0.5, 2: -1.0, 3: -2.0}  # the sampled token outside the top 2
    stream, r = UpstreamStream(), reader(encoder, llmkit.SamplingParams(temperature=0.7, max_tokens=50, logprobs=2))
    positions = [logprobs_of(tok, table, 2) for tok, table in zip(ids, tables)]
    chunks = r.chunks(stream.respond(0, ids, positions, finish="length"))
    entries = [e for c in chunks for e in c.logprobs]
    assert [e.token_id for e in entries] == ids
    assert entries[0].logprob == -0.1 and entries[0].rank == 1 and entries[0].top == {ids[0]: -0.1, 900: -2.0}
    last = entries[-1]
    assert last.logprob == -5.0 and last.rank == 4 and last.top == {1: -0.5, 2: -1.0}
    assert last.token == encoder.token_text(ids[-1])


def test_logprobs_zero_is_the_sampled_token_only(encoder):
    ids = ids_of(encoder, "ok")
    stream, r = UpstreamStream(), reader(encoder, llmkit.SamplingParams(temperature=0.7, max_tokens=50, logprobs=0))
    positions = [{tok: Logprob(logprob=-0.25, rank=1)} for tok in ids]
    chunks = r.chunks(stream.respond(0, ids, positions, finish="length"))
    assert [(e.logprob, e.top) for c in chunks for e in c.logprobs] == [(-0.25, {})] * len(ids)


def test_logprobs_that_lack_the_sampled_token_are_an_error(encoder):
    stream, r = UpstreamStream(), reader(encoder, llmkit.SamplingParams(temperature=0.7, max_tokens=50, logprobs=1))
    with pytest.raises(EngineError, match="lack the sampled token"):
        r.chunks(stream.respond(0, [7], [{8: Logprob(logprob=-0.1, rank=1)}]))
