"""llmkit's `transformers` engine against raw `transformers.generate` on SmolLM2, in one run.

Same weights (the catalog's converted folder), same prompts, greedy, `ignore_eos` (raw: min_new_tokens)
so both produce exactly the same number of tokens. Reports output tokens/s at batch 1 and 8 and the
ratio llmkit / raw. Writes a Markdown table to stdout and JSON to --out.

    python benchmarks/transformers_overhead.py --tokens 64 --repeats 3 --out benchmarks/results/transformers_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

PROMPT = "Explain, in a few sentences, why the sky is blue and why sunsets are red."


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmkit
    from llmkit.catalog import hf_folder

    folder = hf_folder(llmkit.DEFAULT_MODEL)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    engine = llmkit.load("transformers", llmkit.DEFAULT_MODEL, device=args.device)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    raw = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(args.device).eval()
    params = llmkit.greedy(max_tokens=args.tokens, ignore_eos=True)

    def run_llmkit(batch: int) -> int:
        out = engine.generate([PROMPT] * batch, params)
        assert all(len(c.token_ids) == args.tokens for c in out)
        return sum(len(c.token_ids) for c in out)

    def run_raw(batch: int) -> int:
        enc = tokenizer([PROMPT] * batch, return_tensors="pt", padding=True).to(args.device)
        with torch.inference_mode():
            out = raw.generate(**enc, do_sample=False, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                               pad_token_id=tokenizer.pad_token_id)
        return (out.shape[1] - enc.input_ids.shape[1]) * batch

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        result = {"batch": batch}
        rates: dict[str, list[float]] = {"raw": [], "llmkit": []}
        run_raw(batch), run_llmkit(batch)  # warm-up
        for _ in range(args.repeats):  # alternate, so drift of a shared machine hits both alike
            for name, fn in [("raw", run_raw), ("llmkit", run_llmkit)]:
                start = time.perf_counter()
                tokens = fn(batch)
                rates[name].append(tokens / (time.perf_counter() - start))
        for name, values in rates.items():
            result[name] = statistics.median(values)
        result["ratio"] = result["llmkit"] / result["raw"]
        rows.append(result)

    print(f"| batch | raw transformers.generate tok/s | llmkit transformers tok/s | llmkit / raw |")
    print(f"| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['batch']} | {r['raw']:.1f} | {r['llmkit']:.1f} | {r['ratio']:.2f} |")
    meta = {
        "model": llmkit.DEFAULT_MODEL, "device": args.device, "tokens": args.tokens, "repeats": args.repeats,
        "torch": torch.__version__, "transformers": transformers.__version__, "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "command": "python benchmarks/transformers_overhead.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if v is not None),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    engine.close()


if __name__ == "__main__":
    main()
