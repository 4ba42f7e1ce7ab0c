"""CPU engines through llmkit on SmolLM2, one workload, one run: which embedded engine is fastest here.

For each backend: batch-1 TTFT and TPOT on a streamed request (client-side timing, `llmkit.stats`
definitions), and output tokens/s for a batch of 8 prompts, greedy with ignore_eos so every engine
produces the same number of tokens. The prompt cache is defeated by giving every request a distinct
prefix.

    python benchmarks/cpu_engines.py --backends llamacpp,transformers --out benchmarks/results/cpu_engines.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import llmkit

TEXT = ("The history of the printing press begins in the fifteenth century, when movable type changed how "
        "books were made, sold and read across Europe. ") * 3


def prompt(i: int) -> str:
    return f"[{i}] {TEXT}Summarise this in one sentence:"


def measure(backend: str, tokens: int, repeats: int) -> dict:
    start = time.perf_counter()
    engine = llmkit.load(backend, llmkit.DEFAULT_MODEL)
    load_s = time.perf_counter() - start
    params = llmkit.greedy(max_tokens=tokens, ignore_eos=True)
    engine.generate(prompt(-1), params)  # warm-up
    counter = 0
    ttft, tpot, batch_rates = [], [], []
    for _ in range(repeats):
        engine.reset_stats()
        counter += 1
        for chunk in engine.stream(prompt(counter), params):
            pass
        s = engine.stats()
        ttft.append(s.ttft.mean)
        tpot.append(s.tpot.mean)
        batch = [prompt(counter * 100 + j) for j in range(8)]
        t0 = time.perf_counter()
        out = engine.generate(batch, params)
        batch_rates.append(sum(len(c.token_ids) for c in out) / (time.perf_counter() - t0))
    prompt_tokens = engine.count_tokens(prompt(0))
    engine.close()
    return {
        "backend": backend, "load_s": load_s, "prompt_tokens": prompt_tokens,
        "ttft_ms": 1000 * statistics.median(ttft), "tpot_ms": 1000 * statistics.median(tpot),
        "batch1_tok_s": 1 / statistics.median(tpot),
        "batch8_tok_s": statistics.median(batch_rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="llamacpp,transformers")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [measure(b, args.tokens, args.repeats) for b in args.backends.split(",")]
    base = rows[-1]
    print(f"| backend | load s | TTFT ms ({rows[0]['prompt_tokens']}-token prompt) | TPOT ms | batch-1 tok/s | batch-8 tok/s | batch-8 vs {base['backend']} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['load_s']:.1f} | {r['ttft_ms']:.1f} | {r['tpot_ms']:.1f} | {r['batch1_tok_s']:.1f} | "
              f"{r['batch8_tok_s']:.1f} | {r['batch8_tok_s'] / base['batch8_tok_s']:.2f}× |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model": llmkit.DEFAULT_MODEL, "tokens": args.tokens, "repeats": args.repeats,
                "cpu": platform.processor() or platform.machine(), "cores": __import__("os").cpu_count(),
                "command": f"python benchmarks/cpu_engines.py --backends {args.backends} --tokens {args.tokens} --repeats {args.repeats}"}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
