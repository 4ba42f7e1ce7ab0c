"""Parity between backends on the same weights: greedy token agreement, read beside logit margins.

Small models sit close to decision boundaries (SmolLM2's top two logits on "capital of France?" are 0.1
apart), and engines differ in arithmetic (llama.cpp quantises activations to 8 bits; vLLM runs bf16;
the reference engine float32). So parity is a rate, and each divergence is reported with the margin
between the first backend's top two candidates at that position: a small margin is arithmetic, a large
one is a bug.
"""

from __future__ import annotations

import itertools
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


def collect(backend: str, model: str, options: dict[str, Any], max_tokens: int) -> list[dict[str, Any]]:
    with llmkit.load(backend, model, **options) as engine:
        out = engine.generate(PROMPTS, llmkit.greedy(max_tokens=max_tokens, logprobs=2))
    return [{"token_ids": c.token_ids, "margins": [_margin(lp) for lp in c.logprobs or []]} for c in out]


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


def run(specs: list[tuple[str, dict[str, Any]]], model: str, max_tokens: int = 32) -> dict[str, Any]:
    outputs = {_label(name, opts): collect(name, model, opts, max_tokens) for name, opts in specs}
    pairs = []
    for (la, oa), (lb, ob) in itertools.combinations(outputs.items(), 2):
        pairs.append({"a": la, "b": lb, **compare_pair(oa, ob)})
    return {"model": model, "max_tokens": max_tokens, "prompts": PROMPTS, "pairs": pairs}


def _label(name: str, options: dict[str, Any]) -> str:
    return name + "".join(f" {k}={v}" for k, v in sorted(options.items()))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Parity on `{result['model']}` ({len(result['prompts'])} prompts, {result['max_tokens']} greedy tokens)",
        "",
        "| backends | identical outputs | mean agreeing prefix | divergences: position (margin of A's top two, nats) |",
        "| --- | --- | --- | --- |",
    ]
    for p in result["pairs"]:
        divs = ", ".join(f"{d['position']} ({d['margin']:.2f})" if d["margin"] is not None else str(d["position"]) for d in p["divergences"])
        lines.append(f"| {p['a']} vs {p['b']} | {p['identical_rate']:.0%} | {p['mean_agreeing_prefix']:.0%} | {divs or '-'} |")
    return "\n".join(lines) + "\n"
