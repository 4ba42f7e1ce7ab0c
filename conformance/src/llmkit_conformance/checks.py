"""Behaviour checks: what every backend must do, seen through the public interface only.

Each check takes an engine (anything with llmkit's `Engine` methods) and returns a `CheckResult`:
`passed`, `failed` (with what was seen), or `unsupported` (the backend declares it lacks the feature
and refuses it with `UnsupportedFeatureError`, as it must). `tests/test_negative_controls.py` runs every
check against a deliberately broken engine and shows it failing.
"""

from __future__ import annotations

import json
import math
import re
import time
import traceback
from collections.abc import Callable
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


CHECKS: dict[str, Callable[[Any], dict | None]] = {}


def check(fn: Callable[[Any], dict | None]) -> Callable[[Any], dict | None]:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def run_check(name: str, engine: Any) -> CheckResult:
    start = time.perf_counter()
    try:
        data = CHECKS[name](engine) or {}
        result = CheckResult(name, "passed", data=data)
    except llmkit.UnsupportedFeatureError as exc:
        result = CheckResult(name, "unsupported", f"{exc}")
    except CheckFailed as exc:
        result = CheckResult(name, "failed", str(exc), data=exc.data)
    except Exception as exc:  # noqa: BLE001 - a check that crashes is reported, not raised
        result = CheckResult(name, "error", f"{type(exc).__name__}: {exc}", data={"traceback": traceback.format_exc(limit=4)})
    result.seconds = time.perf_counter() - start
    return result


def _supports(engine: Any, feature: str, probe: SamplingParams) -> None:
    """Return if the backend declares `feature`. If it does not, a request using it must be refused
    with UnsupportedFeatureError (which makes the check `unsupported`); accepting it is a failure."""
    if engine.capabilities().supports(feature):
        return
    engine.generate(PROMPT, probe)  # raises UnsupportedFeatureError when the backend behaves
    raise CheckFailed(f"{feature} is not declared in capabilities, yet a request using it was accepted (silently dropped?)")


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
    chunks = [c.text for c in engine.stream(PROMPT, params)]
    require("".join(chunks) == expected, "streamed text with a stop string differs", got="".join(chunks), expected=expected)
    leaked = [c for c in chunks if c and stop.startswith(c.strip()) and "".join(chunks).find(c) >= len(expected)]
    require(not leaked, "part of the stop string was streamed", leaked=leaked)
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
        require(lp.logprob <= 0 and all(v <= 0 for v in lp.top.values()), "log-probabilities must be <= 0", entry=lp.model_dump())
        require(len(lp.top) == 3, f"{len(lp.top)} top alternatives, asked for 3")
        require(abs(max(lp.top.values()) - lp.logprob) < 1e-3, "greedy token is not the most likely alternative")
    return {}


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
        require(entry.logprob <= 0 and all(v <= 0 for v in entry.top.values()), "log-probabilities must be <= 0", entry=entry.model_dump())
        require(len(entry.top) == 2, f"{len(entry.top)} top alternatives, asked for 2")
        require(entry.logprob <= max(entry.top.values()) + 1e-3, "a prompt token is more likely than the most likely alternative")
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
    if not engine.capabilities().prefix_caching:
        raise llmkit.UnsupportedFeatureError(engine.backend, "prefix_caching")
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

@check
def check_quality_sentiment(engine) -> dict:
    labels = LABELS
    _supports(engine, "constraint:choice", greedy(max_tokens=4, constraint=labels))
    out = engine.generate([FEW_SHOT.format(review=r) for r, _ in REVIEWS],
                          greedy(max_tokens=4, constraint=labels))
    right = sum(c.text.strip() == gold for c, (_, gold) in zip(out, REVIEWS))
    require(right >= 4, f"{right}/{len(REVIEWS)} reviews classified right (SmolLM2 gets 5/5 on the reference engine)")
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
    """Short factual questions, reported as a rate (small models sit close to the decision boundary)."""
    answers = [engine.chat([{"role": "user", "content": q}], greedy(max_tokens=32)).text for q, _ in FACTS]
    right = sum(re.search(a, text, re.IGNORECASE) is not None for text, (_, a) in zip(answers, FACTS))
    require(right >= 1, f"none of {len(FACTS)} factual questions answered right", answers=answers)
    return {"accuracy": right / len(FACTS), "answers": answers}
