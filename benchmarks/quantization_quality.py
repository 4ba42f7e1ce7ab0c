"""Does a quantization damage the model? SmolLM2 quantized by `llmkit.quantize("llamacpp", ...)` into several
GGUF formats, each scored by the conformance suite's quality checks on llama.cpp: held-out perplexity (ch. 7
instruction data, responses only) and the two-shot sentiment task. The baseline is the catalog's Q4_1 file
the others are made from (through its dequantised f16 copy), so every further format stacks its own error on
top of Q4_1's.

    python benchmarks/quantization_quality.py --out benchmarks/results/quantization_quality.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import llmkit
from llmkit.catalog import gguf_path
from llmkit_conformance.checks import run_check

METHODS = ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]


def score(model: str) -> dict:
    with llmkit.load("llamacpp", model, max_model_len=2048) as engine:
        ppl = run_check("quality_perplexity", engine)
        sentiment = run_check("quality_sentiment", engine)
    return {"perplexity": ppl.data.get("perplexity"), "perplexity_status": ppl.status,
            "sentiment_accuracy": sentiment.data.get("accuracy"), "sentiment_status": sentiment.status}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [{"method": "q4_1 (catalog file)", "mib": gguf_path(llmkit.DEFAULT_MODEL).stat().st_size / 2**20,
             **score(llmkit.DEFAULT_MODEL)}]
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            start = time.perf_counter()
            path = llmkit.quantize("llamacpp", llmkit.DEFAULT_MODEL, method, Path(tmp) / f"smollm2-{method}.gguf")
            rows.append({"method": method, "mib": path.stat().st_size / 2**20, "quantize_s": time.perf_counter() - start,
                         **score(str(path))})
    print("| GGUF | MiB | held-out perplexity | vs Q4_1 | sentiment (5 reviews) |")
    print("| --- | --- | --- | --- | --- |")
    base = rows[0]["perplexity"]
    for r in rows:
        print(f"| {r['method']} | {r['mib']:.1f} | {r['perplexity']:.3f} | {r['perplexity'] / base:.3f}× | {r['sentiment_accuracy']:.0%} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python benchmarks/quantization_quality.py", "date": time.strftime("%Y-%m-%d"),
                                        "machine": f"{platform.processor() or platform.machine()}", "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
