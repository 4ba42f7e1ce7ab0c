"""Why two constrained checks fail on SGLang (first GPU run, 2026-11-27): quality_sentiment and
multibyte_stream ended with "Grammar accept_token failed ... token 0" (SGLang aborts the request when its
grammar rejects the sampled token; token 0 is what argmax returns when every logit is -inf or NaN).

One engine per setting (deterministic inference on, as the conformance run and the tests load it; the same
without the overlap scheduler; off; llguidance instead of xgrammar);
on each, the same two prompts and choices are sent greedy and sampled, as `ebnf` (llmkit's mapping) and as
`regex` (SGLang's own regex path), through SGLang's API directly. Prints one JSON line per case.

    python benchmarks/gpu/sglang_constraint_probe.py > $OUT/probe.jsonl
"""

from __future__ import annotations

import json
import sys

import llmkit
from llmkit.kit.constraints import choice_regex
from llmkit.tasks import FEW_SHOT, LABELS, REVIEWS
from llmkit_sglang.mapping import constraint_native

CASES = {
    "sentiment": (FEW_SHOT.format(review=REVIEWS[0][0]), list(LABELS.choices)),
    "multibyte": ([{"role": "user", "content": "今日の天気は? Answer in Japanese with an emoji."}], ["晴れ ☀️ です", "雨 🌧️ です"]),
    "ascii": ([{"role": "user", "content": "Give one example."}], ["red", "green", "blue"]),
}


SETTINGS = {
    "deterministic": {"enable_deterministic_inference": True},
    "deterministic-no-overlap": {"enable_deterministic_inference": True, "disable_overlap_schedule": True},
    "default": {},
    "llguidance": {"grammar_backend": "llguidance"},
}


def probe(setting: str) -> None:
    options = dict(max_model_len=2048, dtype="bfloat16", memory_fraction=0.4, attention_backend="fa3", **SETTINGS[setting])
    with llmkit.load("sglang", llmkit.DEFAULT_MODEL, **options) as engine:
        for name, (prompt, choices) in CASES.items():
            ids = engine.tokenize(prompt)
            for field, value in (("ebnf", constraint_native(llmkit.Choice(choices=choices))["ebnf"]), ("regex", choice_regex(choices))):
                for sampling in ({"temperature": 0.0}, {"temperature": 0.8, "top_p": 1.0}, {"temperature": 1.0, "top_k": 1}):
                    params = {**sampling, "max_new_tokens": 16, field: value}
                    out = engine._loop.run(engine.engine.async_generate(input_ids=ids, sampling_params=params))
                    meta = out.get("meta_info", {})
                    print(json.dumps({"setting": setting, "case": name, "field": field, **sampling, "text": out.get("text"),
                                      "output_ids": out.get("output_ids"), "finish": meta.get("finish_reason")}, ensure_ascii=False), flush=True)
            # and through llmkit, as the checks call it
            try:
                result = engine.generate(prompt, llmkit.greedy(max_tokens=16, constraint=llmkit.Choice(choices=choices)))[0]
            except Exception as exc:  # noqa: BLE001 - the refusal is the finding
                print(json.dumps({"setting": setting, "case": name, "field": "llmkit", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
                continue
            print(json.dumps({"setting": setting, "case": name, "field": "llmkit", "text": result.text,
                              "finish": result.finish_reason}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    for setting in sys.argv[1:] or SETTINGS:
        try:
            probe(setting)
        except Exception as exc:  # noqa: BLE001 - report and go on to the other setting
            print(json.dumps({"setting": setting, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    sys.exit(0)
