"""Parity between backends on the same weights: greedy token agreement, read beside logit margins.

Small models sit close to decision boundaries (SmolLM2's top two logits on "capital of France?" are 0.1
apart), and engines differ in arithmetic (llama.cpp quantises activations to 8 bits; vLLM runs bf16;
the reference engine float32). So parity is a rate, and each divergence is reported with the margin
between the first backend's top two candidates at that position: a small margin is arithmetic, a large
one is a bug.

Free-running greedy output stops agreeing after its first divergence. So parity is also measured with
teacher forcing: the first backend's greedy continuations are scored as prompts (`prompt_logprobs`) by
every backend, and each position is compared on its own: how often the backends' most likely next token
agrees, and how far apart the logprobs of the same tokens are.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import llmkit

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "def add(a, b):\n    return",
    "The three primary colours are",
    "Once upon a time, in a small village,",
    "The largest planet in the solar system is",
    "To make a cup of tea, first",
    "The opposite of hot is",
    "In 1969, the first person to walk on the moon was",
    "A haiku about autumn:\n",
    "The chemical symbol for gold is",
    "Photosynthesis is the process by which",
]


def collect(backend: str, model: str, options: dict[str, Any], max_tokens: int,
            reference: list[list[int]] | None) -> tuple[list[dict[str, Any]], list[list[int]], list[dict[str, Any]] | None, Any]:
    """Greedy outputs of `backend`; the prompt + continuation ids it produced (the reference, when none is
    given yet); its teacher-forced scores of the reference (None where it cannot score prompts); and the
    weights it ran."""
    with llmkit.load(backend, model, **options) as engine:
        weights = engine.weights()
        out = engine.generate(PROMPTS, llmkit.greedy(max_tokens=max_tokens, logprobs=2))
        greedy = [{"token_ids": c.token_ids, "margins": [_margin(lp) for lp in c.logprobs or []]} for c in out]
        if reference is None:
            reference = [engine.tokenize(p) + c.token_ids for p, c in zip(PROMPTS, out)]
        scored = None
        if engine.capabilities().supports("prompt_logprobs"):
            prompt_lengths = [len(engine.tokenize(p)) for p in PROMPTS]
            requests = [llmkit.Request(prompt_token_ids=ids) for ids in reference]
            results = engine.generate(requests, llmkit.greedy(max_tokens=1, prompt_logprobs=1))
            scored = [{"top": [max(e.top, key=e.top.get) for e in r.prompt_logprobs[n:]],
                       "logprobs": [e.logprob for e in r.prompt_logprobs[n:]]} for r, n in zip(results, prompt_lengths)]
    return greedy, reference, scored, json.loads(weights.model_dump_json()) if weights is not None else None


def _margin(lp: Any) -> float | None:
    values = sorted(lp.top.values(), reverse=True)
    return values[0] - values[1] if len(values) >= 2 else None


def compare_pair(a: list[dict], b: list[dict]) -> dict[str, Any]:
    identical, prefix_fractions, divergences = 0, [], []
    for i, (x, y) in enumerate(zip(a, b)):
        common = next((k for k, (s, t) in enumerate(zip(x["token_ids"], y["token_ids"])) if s != t), None)
        length = max(len(x["token_ids"]), len(y["token_ids"]), 1)
        if common is None and len(x["token_ids"]) == len(y["token_ids"]):
            identical += 1
            prefix_fractions.append(1.0)
            continue
        common = common if common is not None else min(len(x["token_ids"]), len(y["token_ids"]))
        prefix_fractions.append(common / length)
        margin = x["margins"][common] if common < len(x["margins"]) else None
        divergences.append({"prompt": i, "position": common, "margin": margin})
    margins = [d["margin"] for d in divergences if d["margin"] is not None]
    return {
        "identical_rate": identical / len(a),
        "mean_agreeing_prefix": sum(prefix_fractions) / len(prefix_fractions),
        "divergences": divergences,
        "max_divergence_margin": max(margins) if margins else None,
    }


def teacher_forced(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, Any]:
    """Position by position over the reference continuations: top-1 agreement and logprob distance."""
    same_top = [x == y for p, q in zip(a, b) for x, y in zip(p["top"], q["top"])]
    gaps = [abs(x - y) for p, q in zip(a, b) for x, y in zip(p["logprobs"], q["logprobs"])]
    return {"positions": len(same_top), "top1_agreement": sum(same_top) / len(same_top),
            "mean_abs_logprob_diff": sum(gaps) / len(gaps), "max_abs_logprob_diff": max(gaps)}


def run(specs: list[tuple[str, dict[str, Any]]], model: str, max_tokens: int = 32) -> dict[str, Any]:
    outputs, scores, weights, reference = {}, {}, {}, None
    for name, opts in specs:
        label = _label(name, opts)
        outputs[label], reference, scores[label], weights[label] = collect(name, model, opts, max_tokens, reference)
    pairs = []
    for la, lb in itertools.combinations(outputs, 2):
        pair = {"a": la, "b": lb, **compare_pair(outputs[la], outputs[lb])}
        if scores[la] is not None and scores[lb] is not None:
            pair["teacher_forced"] = teacher_forced(scores[la], scores[lb])
        pairs.append(pair)
    from llmkit_conformance.report import weights_warning

    return {"model": model, "max_tokens": max_tokens, "prompts": PROMPTS, "reference": _label(*specs[0]), "pairs": pairs,
            "weights": weights, "warning": weights_warning(weights)}


def _label(name: str, options: dict[str, Any]) -> str:
    return name + "".join(f" {k}={v}" for k, v in sorted(options.items()))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Parity on `{result['model']}` ({len(result['prompts'])} prompts, {result['max_tokens']} greedy tokens)",
        "",
        *([result["warning"], ""] if result.get("warning") else []),
        "## Free-running greedy output",
        "",
        "| backends | identical outputs | mean agreeing prefix | divergences: position (margin of A's top two, nats) |",
        "| --- | --- | --- | --- |",
    ]
    for p in result["pairs"]:
        divs = ", ".join(f"{d['position']} ({d['margin']:.2f})" if d["margin"] is not None else str(d["position"]) for d in p["divergences"])
        lines.append(f"| {p['a']} vs {p['b']} | {p['identical_rate']:.0%} | {p['mean_agreeing_prefix']:.0%} | {divs or '-'} |")
    forced = [p for p in result["pairs"] if p.get("teacher_forced")]
    if forced:
        lines += [
            "",
            f"## Teacher-forced (every backend scores `{result.get('reference')}`'s continuations)",
            "",
            "| backends | positions | same most likely token | mean / max abs logprob difference (nats) |",
            "| --- | --- | --- | --- |",
        ]
        for p in forced:
            t = p["teacher_forced"]
            lines.append(f"| {p['a']} vs {p['b']} | {t['positions']} | {t['top1_agreement']:.1%} | "
                         f"{t['mean_abs_logprob_diff']:.3f} / {t['max_abs_logprob_diff']:.3f} |")
    return "\n".join(lines) + "\n"
