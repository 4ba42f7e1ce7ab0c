"""llmkit-over-SGLang against raw `sglang.Engine`, on the GPU, in one run, on the same engine instance.

Model: a Llama-3-8B-shaped config (written here) with random weights (`load_format="dummy"`, bf16) and no
tokenizer (`skip_tokenizer_init=True`), random token-id prompts of 512 tokens, 256 output tokens, greedy,
ignore_eos: the workload of ../shared/gpu/README.md's raw figures. One llmkit engine is loaded.

- "raw": `Engine.async_generate(input_ids=..., sampling_params=..., stream=True)` called directly, N streams
  gathered on the event loop the engine lives on (`engine._loop`), as SGLang's own server drives it. The
  sampling parameters are the very dict llmkit sends (`engine.request_kwargs`), so both paths ask the same.
- "llmkit": N concurrent `engine.astream(...)` from the caller's own event loop (the main thread), the way
  an application uses llmkit.

Each stream's time to first token (first output token seen by the caller) and the output tokens/s over the
wall time of the N streams (first request to last token, on the loop that drives them). The paths alternate (order flipped every repeat), each on fresh random prompts
(no radix-cache hits), at 1 / 8 / 32 / 128 concurrent streams; medians of the repeats are reported.
Targets (issue 12): llmkit ≥ 0.98× raw throughput, TTFT overhead ≤ 1 ms.

    python benchmarks/gpu/sglang_overhead.py --out $OUT/sglang_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
import uuid
from pathlib import Path

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
    "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
}
VOCAB = 128000
# The engine both benchmarks start (sglang_tp2.py adds tp_size): dummy weights, token-id prompts.
ENGINE_OPTIONS = dict(load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=4096,
                      memory_fraction=0.85, max_batch_size=256)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", default="1,8,32,128", help="comma-separated stream counts")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens")
    parser.add_argument("--output", type=int, default=256, help="output tokens per stream")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/llama8b-shape"))
    args = parser.parse_args()

    import llmkit

    args.model_dir.mkdir(parents=True, exist_ok=True)
    (args.model_dir / "config.json").write_text(json.dumps(LLAMA_8B))
    options = dict(ENGINE_OPTIONS)
    levels = [int(x) for x in args.concurrency.split(",")]
    start = time.perf_counter()
    engine = llmkit.load("sglang", str(args.model_dir), **options)
    load_s = time.perf_counter() - start
    sgl = engine.engine  # the sglang.Engine
    loop = engine._loop  # the event loop it lives on
    rng = random.Random(0)
    params = llmkit.greedy(max_tokens=args.output, ignore_eos=True)
    sampling = engine.request_kwargs(params, [1] * args.prompt)["sampling_params"]  # what llmkit sends, for raw too
    assert sampling["max_new_tokens"] == args.output and sampling["ignore_eos"] is True

    def prompts(n: int) -> list[list[int]]:
        return [[rng.randrange(3, VOCAB) for _ in range(args.prompt)] for _ in range(n)]

    async def raw_round(batch: list[list[int]]) -> tuple[int, list[float]]:
        async def one(ids: list[int]) -> tuple[int, float]:
            t0, first, tokens = time.perf_counter(), None, 0
            stream = await sgl.async_generate(input_ids=ids, sampling_params=dict(sampling), stream=True,
                                              rid=f"raw-{uuid.uuid4().hex}")
            async for out in stream:
                got = len(out["output_ids"])  # deltas: the engine runs with incremental_streaming_output
                if got and first is None:
                    first = time.perf_counter() - t0
                tokens += got
            return tokens, first

        t0 = time.perf_counter()
        results = await asyncio.gather(*[one(ids) for ids in batch])
        return sum(r[0] for r in results), [r[1] for r in results], time.perf_counter() - t0

    async def llmkit_round(batch: list[list[int]]) -> tuple[int, list[float]]:
        async def one(ids: list[int]) -> tuple[int, float]:
            t0, first, tokens = time.perf_counter(), None, 0
            async for chunk in engine.astream(llmkit.Request(prompt_token_ids=ids), params):
                if chunk.token_ids and first is None:
                    first = time.perf_counter() - t0
                tokens += len(chunk.token_ids)
            return tokens, first

        t0 = time.perf_counter()
        results = await asyncio.gather(*[one(ids) for ids in batch])
        return sum(r[0] for r in results), [r[1] for r in results], time.perf_counter() - t0

    caller = asyncio.new_event_loop()  # the application's loop: one for the whole run, as an application has

    def timed(path: str, batch: list[list[int]]) -> dict:
        # Wall time from the first request to the last token, measured on the loop that drives the path.
        if path == "raw":
            tokens, ttfts, wall = loop.run(raw_round(batch))
        else:
            tokens, ttfts, wall = caller.run_until_complete(llmkit_round(batch))
        assert tokens == len(batch) * args.output, (path, tokens)
        return {"tok_s": tokens / wall, "ttft_p50_ms": statistics.median(ttfts) * 1000, "wall_s": wall}

    for n in (2, max(levels)):  # warm-up: kernels, CUDA graphs for the batch sizes, allocator
        timed("raw", prompts(n))
        timed("llmkit", prompts(n))
    print("| streams | raw tok/s | llmkit tok/s | llmkit / raw | raw TTFT p50 ms | llmkit TTFT p50 ms | TTFT overhead ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    rows = []
    for n in levels:
        runs: dict[str, list[dict]] = {"raw": [], "llmkit": []}
        for repeat in range(args.repeats):
            order = ("raw", "llmkit") if repeat % 2 == 0 else ("llmkit", "raw")
            for path in order:
                runs[path].append(timed(path, prompts(n)))
        row: dict = {"streams": n}
        for path, results in runs.items():
            row[f"{path}_tok_s"] = statistics.median(r["tok_s"] for r in results)
            row[f"{path}_ttft_p50_ms"] = statistics.median(r["ttft_p50_ms"] for r in results)
            row[f"{path}_runs"] = results
        row["throughput_ratio"] = row["llmkit_tok_s"] / row["raw_tok_s"]
        row["ttft_overhead_ms"] = row["llmkit_ttft_p50_ms"] - row["raw_ttft_p50_ms"]
        row["meets_targets"] = row["throughput_ratio"] >= 0.98 and row["ttft_overhead_ms"] <= 1.0
        rows.append(row)
        print(f"| {n} | {row['raw_tok_s']:,.0f} | {row['llmkit_tok_s']:,.0f} | {row['throughput_ratio']:.3f} | "
              f"{row['raw_ttft_p50_ms']:.1f} | {row['llmkit_ttft_p50_ms']:.1f} | {row['ttft_overhead_ms']:+.2f} |", flush=True)

    import sglang
    import torch

    memory = engine.memory()
    result = {
        "engine": f"sglang {sglang.__version__}", "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
        "model": "Llama-3-8B shape, dummy bf16 weights", "options": options,
        "server_args": {k: getattr(engine._server_args, k) for k in ("attention_backend", "incremental_streaming_output",
                                                                     "max_running_requests", "mem_fraction_static",
                                                                     "disable_radix_cache", "cuda_graph_max_bs")
                        if hasattr(engine._server_args, k)},
        "kv_cache_tokens": memory.kv_cache_tokens if memory else None,
        "prompt_tokens": args.prompt, "output_tokens": args.output, "repeats": args.repeats, "load_s": load_s,
        "sampling_params": sampling, "rows": rows, "date": time.strftime("%Y-%m-%d"),
        "targets": "llmkit/raw throughput >= 0.98, TTFT p50 overhead <= 1 ms",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"device: {result['device']}, {result['engine']}, load {load_s:.0f} s, KV tokens {result['kv_cache_tokens']}")
    caller.close()
    engine.close()


if __name__ == "__main__":
    main()
