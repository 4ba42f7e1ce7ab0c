"""llmkit-over-vLLM against raw vLLM on the GPU, in one run, on the same engine instance.

Model: a Llama-3-8B-shaped config with random weights (`load_format="dummy"`, bf16), random token-id
prompts, greedy, ignore_eos: the workload of ../shared/gpu/README.md's raw figures. One llmkit engine is
loaded; raw calls go straight to its `vllm.LLM` (`engine.llm`) and its `LLMEngine`, llmkit calls go
through `engine.generate` / `engine.stream`. Raw and llmkit alternate, each on fresh prompts (no prefix-
cache hits), and the median of the repeats is reported.

    python benchmarks/gpu/vllm_overhead.py --out $OUT/vllm_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="16,64,256")
    args = parser.parse_args()

    import torch
    import vllm
    from vllm.sampling_params import RequestOutputKind

    import llmkit

    folder = Path("/tmp/llama8b-shape")
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(LLAMA_8B))
    start = time.perf_counter()
    engine = llmkit.load("vllm", str(folder), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
                         max_model_len=4096, gpu_memory_utilization=0.85, enable_prefix_caching=True)
    load_s = time.perf_counter() - start
    llm = engine.llm
    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, 128000) for _ in range(n)]

    def raw_params(n: int, delta: bool = False):
        return vllm.SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False,
                                   output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY)

    def ours(n: int):
        return llmkit.greedy(max_tokens=n, ignore_eos=True)

    def raw_generate(prompts: list[list[int]], n: int) -> int:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], raw_params(n), use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    def llmkit_generate(prompts: list[list[int]], n: int) -> int:
        outs = engine.generate([llmkit.Request(prompt_token_ids=p) for p in prompts], ours(n))
        return sum(len(o.token_ids) for o in outs)

    def raw_stream(prompt: list[int], n: int) -> tuple[float, float]:
        core = llm.llm_engine
        start = time.perf_counter()
        core.add_request(f"raw-{rng.random()}", {"prompt_token_ids": prompt}, raw_params(n, delta=True))
        first = None
        tokens = 0
        while core.has_unfinished_requests():
            for out in core.step():
                got = len(out.outputs[0].token_ids)
                if got and first is None:
                    first = time.perf_counter()
                tokens += got
        end = time.perf_counter()
        return first - start, (end - first) / (tokens - 1)

    def llmkit_stream(prompt: list[int], n: int) -> tuple[float, float]:
        start = time.perf_counter()
        first = None
        tokens = 0
        for chunk in engine.stream(llmkit.Request(prompt_token_ids=prompt), ours(n)):
            if chunk.token_ids and first is None:
                first = time.perf_counter()
            tokens += len(chunk.token_ids)
        end = time.perf_counter()
        return first - start, (end - first) / (tokens - 1)

    # warm-up of every path and batch shape
    for fn in (raw_generate, llmkit_generate):
        fn([ids(64) for _ in range(2)], 16)
        fn([ids(512) for _ in range(16)], 8)
    raw_stream(ids(64), 8)
    llmkit_stream(ids(64), 8)

    def alternate(measure_raw, measure_llmkit) -> tuple[list, list]:
        raw, mine = [], []
        for _ in range(args.repeats):
            raw.append(measure_raw())
            mine.append(measure_llmkit())
        return raw, mine

    rows: dict[str, dict] = {}

    def timed(fn, prompts, n):
        t = time.perf_counter()
        fn(prompts, n)
        return time.perf_counter() - t

    # batch-1 TTFT (128-token prompt, 1 token) and TPOT (257 tokens), as the raw figures define them
    raw, mine = alternate(lambda: timed(raw_generate, [ids(128)], 1), lambda: timed(llmkit_generate, [ids(128)], 1))
    rows["b1_ttft_ms"] = {"raw": 1000 * statistics.median(raw), "llmkit": 1000 * statistics.median(mine)}
    ttft_raw, ttft_ours = statistics.median(raw), statistics.median(mine)
    raw, mine = alternate(lambda: timed(raw_generate, [ids(128)], 257), lambda: timed(llmkit_generate, [ids(128)], 257))
    rows["b1_tpot_ms"] = {"raw": 1000 * (statistics.median(raw) - ttft_raw) / 256,
                          "llmkit": 1000 * (statistics.median(mine) - ttft_ours) / 256}
    for b in [int(x) for x in args.batches.split(",")]:
        raw, mine = alternate(
            lambda: b * 256 / timed(raw_generate, [ids(512) for _ in range(b)], 256),
            lambda: b * 256 / timed(llmkit_generate, [ids(512) for _ in range(b)], 256),
        )
        rows[f"b{b}_out_tok_s"] = {"raw": statistics.median(raw), "llmkit": statistics.median(mine)}
    raw, mine = alternate(lambda: raw_stream(ids(128), 257), lambda: llmkit_stream(ids(128), 257))
    rows["stream_ttft_ms"] = {"raw": 1000 * statistics.median(r[0] for r in raw), "llmkit": 1000 * statistics.median(r[0] for r in mine)}
    rows["stream_tpot_ms"] = {"raw": 1000 * statistics.median(r[1] for r in raw), "llmkit": 1000 * statistics.median(r[1] for r in mine)}
    # 2,048-token shared prefix, cold then warm (each side on its own prefix)
    for name, fn in (("raw", raw_generate), ("llmkit", llmkit_generate)):
        shared = ids(2048)
        rows.setdefault("prefix_cold_ttft_ms", {})[name] = 1000 * timed(fn, [shared + [5]], 1)
        rows.setdefault("prefix_warm_ttft_ms", {})[name] = 1000 * timed(fn, [shared + [7]], 1)

    for key, row in rows.items():
        if "tok_s" in key:
            row["ratio"] = row["llmkit"] / row["raw"]
        else:
            row["delta_ms"] = row["llmkit"] - row["raw"]
            row["ratio"] = row["llmkit"] / row["raw"]
    meta = {
        "device": torch.cuda.get_device_name(0), "vllm": vllm.__version__, "torch": torch.__version__,
        "model": "Llama-3-8B shape, dummy bf16 weights", "load_s": load_s, "repeats": args.repeats,
        "engine_metrics_on": True, "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"device: {meta['device']}, vLLM {meta['vllm']}")
    print("| figure | raw vLLM | llmkit over vLLM | llmkit / raw | difference |")
    print("| --- | --- | --- | --- | --- |")
    for key, row in rows.items():
        diff = f"{row['delta_ms']:+.2f} ms" if "delta_ms" in row else f"{100 * (row['ratio'] - 1):+.1f}%"
        print(f"| {key} | {row['raw']:.2f} | {row['llmkit']:.2f} | {row['ratio']:.3f} | {diff} |")
    engine.close()


if __name__ == "__main__":
    main()
