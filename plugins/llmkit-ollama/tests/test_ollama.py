"""The Ollama adapter over real HTTP against a server that follows Ollama's documented REST protocol,
backed by llama.cpp on SmolLM2 (tests/ollama_protocol.py). When OLLAMA_HOST points at a real Ollama
with `OLLAMA_TEST_MODEL` pulled, the conformance checks run against it as well."""

import os
import sys
from pathlib import Path

import pytest

import llmkit
from llmkit import greedy
from llmkit_conformance.checks import CHECKS, run_check

sys.path.insert(0, str(Path(__file__).parent))
from ollama_protocol import OllamaProtocolServer  # noqa: E402

pytestmark = pytest.mark.smollm2
MODEL = "smollm2:135m"

# What the adapter can and cannot do over Ollama's API, as the suite must report it.
EXPECTED = {name: "passed" for name in CHECKS} | {
    "max_tokens_exact": "unsupported",  # no ignore_eos in Ollama
    "logprobs": "unsupported",  # token strings without ids
    "prompt_logprobs": "unsupported",  # Ollama does not score prompts
    "quality_perplexity": "unsupported",
    "prefix_cache": "unsupported",  # not reported per request
    "constraint_regex": "unsupported",
    "constraint_grammar": "unsupported",
}


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("llama_cpp")
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, prefix_caching=False) as backing:
        with OllamaProtocolServer(backing, MODEL, pullable=("tinyllama:latest",)) as srv:
            yield srv


@pytest.fixture(scope="module")
def engine(server):
    with llmkit.load("ollama", MODEL, host=server.url, num_ctx=2048) as eng:
        yield eng


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_conformance_check(engine, server, name):
    server.fail_after_chunks = None
    result = run_check(name, engine)
    assert result.status == EXPECTED[name], (result.detail, result.data)


def test_every_option_is_sent_explicitly(engine, server):
    engine.generate("Hello", greedy(max_tokens=5))
    body = server.requests[-1]
    assert body["path"] == "/api/generate" and body["raw"] is True and body["stream"] is False
    assert body["truncate"] is False and body["shift"] is False
    opts = body["options"]
    assert opts["temperature"] == 0 and opts["top_k"] == 0 and opts["top_p"] == 1.0 and opts["num_predict"] == 5
    assert opts["seed"] == -1 and opts["repeat_last_n"] == -1 and opts["num_ctx"] == 2048
    assert set(opts) >= {"min_p", "typical_p", "stop", "repeat_penalty", "presence_penalty", "frequency_penalty"}


def test_chat_goes_to_api_chat_and_stats_come_from_ollama_counters(engine, server):
    before = engine.stats().engine.get("eval_count", 0)
    out = engine.chat([{"role": "user", "content": "What is the capital of France?"}], greedy(max_tokens=24))
    assert server.requests[-1]["path"] == "/api/chat"
    assert out.usage.completion_tokens > 0 and out.usage.prompt_tokens > 0
    stats = engine.stats()
    assert stats.engine["eval_count"] - before == out.usage.completion_tokens and stats.engine["eval_tokens_per_s"] > 0


def test_stream_timing_uses_text_chunks(engine):
    """Ollama streams text without token ids; llmkit's TTFT must still be measured."""
    engine.reset_stats()
    list(engine.stream([{"role": "user", "content": "Hi"}], greedy(max_tokens=8)))
    stats = engine.stats()
    assert stats.ttft.count == 1 and 0 < stats.ttft.mean <= stats.e2e.mean


def test_choice_is_sent_as_enum_and_unwrapped(engine, server):
    out = engine.generate("Is the sky blue? Answer:", greedy(max_tokens=8, constraint=llmkit.Choice(choices=["yes", "no"])))[0]
    assert server.requests[-1]["format"] == {"enum": ["yes", "no"]}
    assert out.text in ("yes", "no")
    streamed = "".join(c.text for c in engine.stream("Is the sky blue? Answer:", greedy(max_tokens=8, constraint=llmkit.Choice(choices=["yes", "no"]))))
    assert streamed == out.text


def test_mid_stream_error_line_becomes_an_llmkit_error(engine, server):
    server.fail_after_chunks = 2
    try:
        stream = engine.stream("Once upon a time", greedy(max_tokens=30))
        with pytest.raises(llmkit.EngineError, match="error was encountered"):
            list(stream)
    finally:
        server.fail_after_chunks = None
    assert engine.generate("Once", greedy(max_tokens=3)).__len__() == 1


def test_over_long_prompt_is_an_error_not_truncation(engine):
    with pytest.raises(llmkit.PromptTooLongError, match="exceeds the context length"):
        engine.generate("word " * 3000, greedy(max_tokens=4))


def test_unsupported_parameters_are_refused(engine):
    for params in (dict(ignore_eos=True), dict(logprobs=1), dict(n=2, temperature=1.0)):
        with pytest.raises(llmkit.UnsupportedFeatureError):
            engine.generate("x", **params)
    with pytest.raises(llmkit.UnsupportedFeatureError, match="prompt_token_ids"):
        engine.generate(llmkit.Request(prompt_token_ids=[1, 2, 3]))


def test_missing_model_and_pull_with_progress(server):
    with pytest.raises(llmkit.ModelNotFoundError, match="tinyllama"):
        llmkit.load("ollama", "tinyllama:latest", host=server.url)
    with llmkit.load("ollama", "tinyllama:latest", host=server.url, pull=True) as engine:
        assert "tinyllama:latest" in engine.list_models()
        events = []
        engine.pull(events.append)
        assert events[0].status == "pulling manifest" and events[-1].status == "success"
        assert any(e.completed == e.total == 1000 for e in events if e.total)


def test_unreachable_server():
    with pytest.raises(llmkit.EngineStartupError, match="cannot reach ollama"):
        llmkit.load("ollama", MODEL, host="http://127.0.0.1:9", timeout=2)


@pytest.mark.skipif(not os.environ.get("OLLAMA_HOST") or not os.environ.get("OLLAMA_TEST_MODEL"), reason="no real Ollama configured")
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_conformance_against_a_real_ollama(name):
    with llmkit.load("ollama", os.environ["OLLAMA_TEST_MODEL"]) as real:
        assert run_check(name, real).status in ("passed", "unsupported")
