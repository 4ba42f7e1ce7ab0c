"""The Ollama adapter over real HTTP against a server that follows Ollama's documented REST protocol,
backed by llama.cpp on SmolLM2 (tests/ollama_protocol.py). When OLLAMA_HOST points at a real Ollama
with `OLLAMA_TEST_MODEL` pulled, the conformance checks run against it as well.

The backing llama.cpp engine serves one request at a time, deterministically (prefix caching off), so every
greedy request has one right answer however many callers share the engine: its solo twin."""

import asyncio
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import llmkit
from llmkit import greedy
from llmkit_conformance.checks import CHECKS, DESTRUCTIVE, run_check

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from ollama_protocol import OllamaProtocolServer  # noqa: E402

pytestmark = [pytest.mark.smollm2, pytest.mark.timeout(900)]  # tighter limits below where a hang is the risk
MODEL = "smollm2:135m"
PROMPT = "The capital of France is"
# Distinct prompts with distinct greedy continuations, so an output handed to the wrong caller shows.
PROMPTS = ["def fibonacci(n):", "My favourite fruit is", "The recipe calls for", "In 1969, astronauts",
           "The best way to learn Python is", "Dear Sir or Madam,", "The weather today is", "import numpy as np\n",
           "The three primary colours are", "A haiku about the sea:", "The mitochondria is", "To bake bread, first",
           "SELECT name FROM", "The quick brown fox", "Water boils at", "The largest planet in the solar system is"]

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
# Checks that fail here for reasons outside the adapter: what the check must report, and why.
KNOWN_FAILURES = {
    "quality_sentiment": (
        r"9/12 reviews classified right",
        lambda data: True,
        "Ollama constrains a choice only through a JSON schema (format: {enum}), so the model must open a JSON "
        "string first, which the two-shot prompt never shows: measured on the backing llama.cpp, a choice "
        "constraint gets 12/12, the same labels as a JSON-schema enum 9/12 (the check needs 10)."),
}


# One thread: on a busy 2-core machine llama.cpp's two threads wait on each other (16 tokens took from 3 s to
# 45 s); one thread slows down in proportion. The process-server test starts its server the same way.
BACKING_THREADS = 1


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("llama_cpp")
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, prefix_caching=False, n_threads=BACKING_THREADS) as backing:
        with OllamaProtocolServer(backing, MODEL, pullable=("tinyllama:latest",)) as srv:
            yield srv


@pytest.fixture(scope="module")
def engine(server):
    with llmkit.load("ollama", MODEL, host=server.url, num_ctx=2048) as eng:
        yield eng


@pytest.fixture(scope="module")
def twin(engine):
    """The solo greedy output of a prompt (cached)."""
    cache = {}

    def solo(prompt: str, max_tokens: int = 8) -> str:
        if (prompt, max_tokens) not in cache:
            cache[prompt, max_tokens] = engine.generate(prompt, greedy(max_tokens=max_tokens))[0].text
        return cache[prompt, max_tokens]

    return solo


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_conformance_check(engine, server, name):
    server.fail_after_chunks = None
    if name in DESTRUCTIVE:  # these close the engine they are given
        with llmkit.load("ollama", MODEL, host=server.url, num_ctx=2048) as fresh:
            result = run_check(name, fresh)
    else:
        result = run_check(name, engine)
    if name in KNOWN_FAILURES:
        detail, data_holds, why = KNOWN_FAILURES[name]
        assert result.status == "failed" and re.search(detail, result.detail) and data_holds(result.data), \
            (why, result.status, result.detail, result.data)
        return
    assert result.status == EXPECTED[name], (result.detail, result.data)


def test_every_option_is_sent_explicitly(engine, server):
    engine.generate("Hello", greedy(max_tokens=5))
    body = server.requests[-1]
    assert body["path"] == "/api/generate" and body["raw"] is True and body["stream"] is True  # generate is assembled from the stream
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
def test_conformance_against_a_real_ollama(name, request):
    if name in ("concurrent_requests", "quality_sentiment"):  # not about the server: see KNOWN_FAILURES
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILURES[name][2]))
    with llmkit.load("ollama", os.environ["OLLAMA_TEST_MODEL"]) as real:
        assert run_check(name, real).status in ("passed", "unsupported")


# ---- many callers, cancellation, close ------------------------------------------------------------


@pytest.mark.timeout(600)
def test_threads_and_tasks_share_one_engine(engine, server, twin):
    """8 threads and 8 asyncio tasks at once, streams and whole generations: each gets its solo twin."""
    params = greedy(max_tokens=12)
    twins = [twin(p, 12) for p in PROMPTS]
    assert len(set(twins)) == len(PROMPTS)  # distinct, so a mix-up cannot go unseen
    outputs: dict[int, str] = {}
    errors: list[BaseException] = []
    server.reset_counts()
    before = set(threading.enumerate())
    seen: set[threading.Thread] = set()

    def in_thread(i: int) -> None:
        try:
            if i % 2:
                outputs[i] = "".join(c.text for c in engine.stream(PROMPTS[i], params))
            else:
                outputs[i] = engine.generate(PROMPTS[i], params)[0].text
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    async def in_task(i: int) -> None:
        if i % 2:
            outputs[i] = "".join([c.text async for c in engine.astream(PROMPTS[i], params)])
        else:
            outputs[i] = (await engine.agenerate(PROMPTS[i], params))[0].text

    async def tasks() -> None:
        async def watch() -> None:  # which threads exist while the requests run
            while True:
                seen.update(threading.enumerate())
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(in_task(i) for i in range(8, 16)))
        watcher.cancel()

    threads = [threading.Thread(target=in_thread, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    asyncio.run(asyncio.wait_for(tasks(), 500))
    for thread in threads:
        thread.join(500)
    assert not errors and not any(t.is_alive() for t in threads)
    assert outputs == dict(enumerate(twins))
    assert server.max_in_flight > 2, "the requests did not overlap on the server"
    # the engine's one event loop carries every request: no thread per call (beside the callers' own
    # threads and the test server's connection handlers)
    extra = {t.name for t in seen - before - set(threads) if "process_request_thread" not in t.name}
    assert not extra, f"threads started for calls: {sorted(extra)}"


@pytest.mark.timeout(300)
def test_max_batch_size_caps_requests_in_flight(server, twin):
    params = greedy(max_tokens=8)
    prompts = PROMPTS[:6]
    twins = [twin(p) for p in prompts]
    outputs: dict[int, str] = {}
    with llmkit.load("ollama", MODEL, host=server.url, num_ctx=2048, max_batch_size=2) as capped:
        assert server.wait_for(lambda s: s.in_flight == 0, 30)
        server.reset_counts()
        threads = [threading.Thread(target=lambda i=i: outputs.__setitem__(i, capped.generate(prompts[i], params)[0].text))
                   for i in range(3)]
        for thread in threads:
            thread.start()

        async def tasks() -> None:
            async def one(i: int) -> None:
                outputs[i] = (await capped.agenerate(prompts[i], params))[0].text

            await asyncio.gather(*(one(i) for i in range(3, 6)))

        asyncio.run(asyncio.wait_for(tasks(), 250))
        for thread in threads:
            thread.join(250)
    assert outputs == dict(enumerate(twins))
    assert server.max_in_flight == 2  # never more than the cap, and the cap was reached


@pytest.mark.timeout(120)
def test_a_request_cancelled_while_waiting_for_a_slot_never_reaches_the_server(server):
    with llmkit.load("ollama", MODEL, host=server.url, num_ctx=2048, max_batch_size=1) as capped:
        running = capped.stream(PROMPTS[0], greedy(max_tokens=200))
        next(running)
        sent = len(server.requests)
        waiting = capped.stream(PROMPTS[1], greedy(max_tokens=8))
        waiting.close()
        running.close()
        assert server.wait_for(lambda s: s.in_flight == 0, 60)
        time.sleep(0.5)  # a request the cancelled one would have sent had time to arrive
        assert len(server.requests) == sent
        assert capped.generate(PROMPT, greedy(max_tokens=4))[0].finish_reason == "length"  # the slot was given back


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["close", "asyncio-cancel", "timeout"])
def test_a_cancelled_request_frees_the_server(engine, server, twin, how):
    """The client's HTTP response is closed: the server sees the disconnect and stops generating."""
    expected = twin(PROMPT)
    assert server.wait_for(lambda s: s.in_flight == 0, 30)
    server.reset_counts()
    params = greedy(max_tokens=400)
    if how == "close":
        stream = engine.stream("Once upon a time", params)
        next(stream), next(stream)
        stream.close()
    elif how == "asyncio-cancel":
        async def reader(started: asyncio.Event) -> None:
            async for _ in engine.astream("Once upon a time", params):
                started.set()

        async def cancel_it() -> None:
            started = asyncio.Event()
            task = asyncio.create_task(reader(started))
            await asyncio.wait_for(started.wait(), 60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancel_it())
    else:
        stream = engine.stream("Once upon a time", params, timeout=1.5)
        with pytest.raises(llmkit.GenerationTimeoutError):
            list(stream)
    assert server.wait_for(lambda s: s.disconnects == 1 and s.in_flight == 0, 60), "the server did not see the client go"
    gone = server.served[-1]
    assert gone["outcome"] == "client gone" and gone["lines"] < 400
    assert engine.generate(PROMPT, greedy(max_tokens=8))[0].text == expected


@pytest.mark.timeout(120)
def test_close_with_streams_in_flight(server, monkeypatch):
    loops_before = [t for t in threading.enumerate() if t.name == "llmkit-ollama-loop"]
    engine = llmkit.load("ollama", MODEL, host=server.url, num_ctx=2048)
    assert server.wait_for(lambda s: s.in_flight == 0, 30)
    server.reset_counts()
    # A reply that lasts: SmolLM2 may end the first answer at EOS within a second, and on a loaded machine it was
    # answered before the second request was counted (CI, 2026-11-28: in_flight never reached 2 in 30 s).
    monkeypatch.setattr(server, "line_delay", 0.05)  # until the test ends (the closing needs the replies in flight)
    first = engine.stream(PROMPTS[0], greedy(max_tokens=400))
    second = engine.stream(PROMPTS[1], greedy(max_tokens=400))
    next(first)  # generating; the second waits its turn on the server (its backing engine serves FIFO)
    assert server.wait_for(lambda s: s.in_flight == 2, 30)
    endings: dict[str, BaseException | None] = {}

    def consume(name: str, stream) -> None:
        try:
            list(stream)
            endings[name] = None
        except BaseException as exc:  # noqa: BLE001 - judged below
            endings[name] = exc

    readers = [threading.Thread(target=consume, args=(n, s), daemon=True) for n, s in (("first", first), ("second", second))]
    for thread in readers:
        thread.start()
    started = time.perf_counter()
    engine.close()
    closed_in = time.perf_counter() - started
    for thread in readers:
        thread.join(max(0.1, 10 - (time.perf_counter() - started)))
    assert closed_in < 10 and not any(t.is_alive() for t in readers)
    assert set(endings) == {"first", "second"} and all(isinstance(e, llmkit.EngineClosedError) for e in endings.values()), endings
    assert server.wait_for(lambda s: s.disconnects == 2 and s.in_flight == 0, 60), "the server still serves a closed engine"
    with pytest.raises(llmkit.EngineClosedError):
        engine.generate(PROMPT, greedy(max_tokens=2))
    assert [t for t in threading.enumerate() if t.name == "llmkit-ollama-loop"] == loops_before  # its loop is gone


# ---- failures of the server or the connection -------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("status,message,kind", [
    (400, "invalid options: num_foo", llmkit.InvalidRequestError),
    (404, "model 'smollm2:135m' not found, try pulling it first", llmkit.ModelNotFoundError),
    (500, "llama runner process has terminated: exit status 2", llmkit.EngineError),
    (400, "the input length exceeds the context length", llmkit.PromptTooLongError),
])
def test_error_replies_become_llmkit_errors(engine, server, twin, status, message, kind):
    expected = twin(PROMPT)
    server.reply_error = (status, message)
    try:
        for call in (lambda: engine.generate(PROMPT, greedy(max_tokens=4)),
                     lambda: list(engine.stream(PROMPT, greedy(max_tokens=4))),
                     lambda: asyncio.run(engine.agenerate(PROMPT, greedy(max_tokens=4)))):
            with pytest.raises(kind, match=re.escape(message)) as info:
                call()
            assert type(info.value) is kind
    finally:
        server.reply_error = None
    assert engine.generate(PROMPT, greedy(max_tokens=8))[0].text == expected


@pytest.mark.timeout(120)
def test_a_model_removed_from_the_server_after_load(engine, server, twin):
    expected = twin(PROMPT)
    server.models.discard(MODEL)
    try:
        with pytest.raises(llmkit.ModelNotFoundError, match="not found"):
            engine.generate(PROMPT, greedy(max_tokens=4))
    finally:
        server.models.add(MODEL)
    assert engine.generate(PROMPT, greedy(max_tokens=8))[0].text == expected


@pytest.mark.timeout(120)
def test_a_server_that_stops_answering(server, twin):
    expected = twin(PROMPT)
    # 5 s: room for the answer after the hold on a loaded machine (2 s failed at load 7, in one process or two).
    with llmkit.load("ollama", MODEL, host=server.url, num_ctx=2048, timeout=5) as engine:
        server.hold.set()
        try:
            calls = {"generate": lambda: engine.generate(PROMPT, greedy(max_tokens=4)),
                     "stream": lambda: list(engine.stream(PROMPT, greedy(max_tokens=4))),
                     "agenerate": lambda: asyncio.run(engine.agenerate(PROMPT, greedy(max_tokens=4)))}
            for name, call in calls.items():
                started = time.perf_counter()
                with pytest.raises(llmkit.EngineError, match="did not answer within the timeout of 5 s") as info:
                    call()
                assert type(info.value) is llmkit.EngineError and time.perf_counter() - started < 15, name
        finally:
            server.hold.clear()
        # The same engine answers again, once the server has let go of the three abandoned requests (on a busy
        # machine their backlog alone outlasted a 2 s timeout).
        assert server.wait_for(lambda s: s.in_flight == 0, timeout=60)
        assert engine.generate(PROMPT, greedy(max_tokens=8))[0].text == expected


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_at_load():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections are accepted by the kernel; nothing ever replies
    try:
        started = time.perf_counter()
        with pytest.raises(llmkit.EngineStartupError, match="did not answer within the timeout of 1 s"):
            llmkit.load("ollama", MODEL, host=f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=1)
        assert time.perf_counter() - started < 10
    finally:
        listener.close()


@pytest.mark.timeout(60)
def test_an_unresolvable_host():
    with pytest.raises(llmkit.EngineStartupError, match="cannot reach ollama at http://no-such-host.invalid:11434"):
        llmkit.load("ollama", MODEL, host="http://no-such-host.invalid:11434", timeout=10)


@contextmanager
def protocol_server_process(port: int = 0):
    """The protocol server in a process of its own, which a test can kill."""
    process = subprocess.Popen([sys.executable, str(HERE / "ollama_protocol.py"), "--port", str(port), "--model-name", MODEL,
                                "--n-threads", str(BACKING_THREADS)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        url = process.stdout.readline().strip() if ready else ""
        assert url.startswith("http://127.0.0.1:"), f"the protocol server did not start (exit code {process.poll()})"
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(30)


@pytest.mark.timeout(400)
def test_a_server_killed_mid_stream_then_back(twin):
    pytest.importorskip("llama_cpp")
    expected = twin(PROMPT)
    with protocol_server_process() as (process, url):
        port = int(url.rsplit(":", 1)[1])
        engine = llmkit.load("ollama", MODEL, host=url, num_ctx=2048, timeout=60)
        try:
            assert engine.generate(PROMPT, greedy(max_tokens=8))[0].text == expected
            stream = engine.stream("Once upon a time", greedy(max_tokens=400))
            next(stream), next(stream)
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            with pytest.raises(llmkit.EngineError, match=f"ollama at {re.escape(url)}: the connection broke") as info:
                list(stream)
            assert type(info.value) is llmkit.EngineError
            # the port is closed now: each request fails alone, the engine stays open
            with pytest.raises(llmkit.EngineError, match=f"cannot reach ollama at {re.escape(url)}.*(refused|ConnectError)"):
                engine.generate(PROMPT, greedy(max_tokens=8))
            with pytest.raises(llmkit.EngineError, match="cannot reach ollama"):
                list(engine.stream(PROMPT, greedy(max_tokens=8)))
            with pytest.raises(llmkit.EngineError, match="cannot reach ollama"):
                asyncio.run(engine.agenerate(PROMPT, greedy(max_tokens=8)))
            assert not engine.closed
            with protocol_server_process(port):  # back on the same port
                assert engine.generate(PROMPT, greedy(max_tokens=8))[0].text == expected
                assert "".join(c.text for c in engine.stream(PROMPT, greedy(max_tokens=8))) == expected
        finally:
            engine.close()


# ---- portable options ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_engine_seed_draws_reproducible_per_request_seeds(server):
    params = llmkit.SamplingParams(temperature=1.0, max_tokens=12)
    runs = []
    for _ in range(2):
        with llmkit.load("ollama", MODEL, host=server.url, num_ctx=2048, seed=7) as seeded:
            start = len(server.requests)
            texts = [seeded.generate(PROMPT, params)[0].text for _ in range(3)]
            runs.append((texts, [body["options"]["seed"] for body in server.requests[start:]]))
            seeded.generate(PROMPT, params, seed=3)
            assert server.requests[-1]["options"]["seed"] == 3  # a request's own seed wins
    draws = random.Random(7)
    assert runs[0][1] == [draws.randrange(2**31) for _ in range(3)] and len(set(runs[0][1])) == 3
    assert runs[0] == runs[1]  # same engine seed: same per-request seeds, same samples


@pytest.mark.timeout(120)
def test_max_model_len_is_num_ctx(server):
    with llmkit.load("ollama", MODEL, host=server.url, max_model_len=1024) as engine:
        assert engine.context_length == 1024
        engine.generate(PROMPT, greedy(max_tokens=2))
        assert server.requests[-1]["options"]["num_ctx"] == 1024
        with pytest.raises(llmkit.PromptTooLongError):
            engine.generate("word " * 1100, greedy(max_tokens=2))  # the server enforces the smaller context
    trained = server.engine.context_length
    with pytest.raises(llmkit.InvalidRequestError, match="trained context"):
        llmkit.load("ollama", MODEL, host=server.url, max_model_len=trained + 1)
    with pytest.raises(llmkit.InvalidRequestError, match="both set the context"):
        llmkit.load("ollama", MODEL, host=server.url, max_model_len=1024, num_ctx=2048)


def test_weights_come_from_the_servers_model_details(engine):
    weights = engine.weights()
    assert weights.format == "gguf" and weights.quantization == "Q4_1" and weights.dtype == "q4_1" and weights.bits == 5.0
