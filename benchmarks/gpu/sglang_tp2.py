"""SGLang through llmkit with tp_size=2 on a Llama-3-8B shape (dummy weights): start time, what the engine
reports per GPU, batch-1 TPOT and throughput at 64 streams. One run, for docs/multi-node.md.

    bash benchmarks/gpu/run_sglang.sh tp   (two GPUs; TP=2, then TP=1 on the same machine)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path

from sglang_overhead import ENGINE_OPTIONS, LLAMA_8B, VOCAB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/llama8b-shape"))
    args = parser.parse_args()
    import llmkit

    args.model_dir.mkdir(parents=True, exist_ok=True)
    (args.model_dir / "config.json").write_text(json.dumps(LLAMA_8B))
    options = dict(ENGINE_OPTIONS, tp_size=args.tp)
    result: dict = {"options": options}
    start = time.perf_counter()
    with llmkit.load("sglang", str(args.model_dir), **options) as engine:
        result["load_s"] = time.perf_counter() - start
        print("loaded in", round(result["load_s"], 1), "s", flush=True)
        result["memory"] = engine.memory().model_dump(mode="json")
        result["weights"] = engine.weights().model_dump(mode="json")
        rng = random.Random(0)

        def prompt() -> list[int]:
            return [rng.randrange(3, VOCAB) for _ in range(512)]

        params = llmkit.greedy(max_tokens=256, ignore_eos=True)

        async def one() -> tuple[int, float, float]:
            t0, first, tokens = time.perf_counter(), None, 0
            async for chunk in engine.astream(llmkit.Request(prompt_token_ids=prompt()), params):
                if chunk.token_ids and first is None:
                    first = time.perf_counter() - t0
                tokens += len(chunk.token_ids)
            return tokens, first, time.perf_counter() - t0

        async def batch(n: int) -> dict:
            t0 = time.perf_counter()
            runs = await asyncio.gather(*[one() for _ in range(n)])
            wall = time.perf_counter() - t0
            tpot = [(w - f) / (t - 1) * 1000 for t, f, w in runs]
            return {"streams": n, "tok_s": sum(r[0] for r in runs) / wall, "tpot_ms_median": sorted(tpot)[n // 2]}

        caller = asyncio.new_event_loop()
        caller.run_until_complete(batch(4))  # warm-up
        result["rows"] = [caller.run_until_complete(batch(n)) for n in (1, 1, 64, 64)]
        for row in result["rows"]:
            print(row, flush=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
