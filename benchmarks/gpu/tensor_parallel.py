"""Tensor parallelism through llmkit: TP=1 against TP=2 in one run, on a Llama-3-8B shape with dummy weights.

For each set-up (`--setups tp1,tp2` or `tp2-ray`) one llmkit vLLM engine is loaded with
`tensor_parallel_size` (and, for `-ray`, `distributed_executor_backend="ray"` on a local Ray cluster of the
GPUs), then measured the same way: batch-1 TPOT (one stream, 256 tokens), and output tokens/s with 64 and
256 concurrent requests (512-token random prompts, 256 out, greedy, ignore_eos). Memory: llmkit's plan
(weights and KV per GPU, from the model's config) beside what vLLM allocated (its KV blocks) and what each
GPU has in use (nvidia-smi), all per GPU.

Known: vLLM 0.25.1–0.26.0 crash at start-up with TP=2 unless the allreduce+RMSNorm fusion is off
(vllm-project/vllm#34948); NVLink multicast stays off (NCCL_NVLS_ENABLE=0, see the device documentation).

    python benchmarks/gpu/tensor_parallel.py --setups tp1,tp2 --out $OUT/tensor_parallel.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import time
from pathlib import Path

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
    "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
}
SETUPS = {"tp1": (1, None), "tp2": (2, None), "tp4": (4, None), "tp2-ray": (2, "ray")}


def gpu_memory_mib() -> list[int]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def measure(setup: str, folder: Path, prompt_len: int, out_len: int, batches: tuple[int, ...] = (64, 256),
            repeats: int = 2, extra: dict | None = None) -> dict:
    import llmkit
    from llmkit.planner import Shape, WEIGHT_BYTES

    tp, backend = SETUPS[setup]
    options = dict(load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", max_model_len=4096, memory_fraction=0.85,
                   max_batch_size=256, tensor_parallel_size=tp)
    if tp > 1:
        options["compilation_config"] = {"pass_config": {"fuse_allreduce_rms": False}}
    if backend:
        options["distributed_executor_backend"] = backend
    options.update(extra or {})
    before = gpu_memory_mib()
    start = time.perf_counter()
    engine = llmkit.load("vllm", str(folder), **options)
    load_s = time.perf_counter() - start
    print(f"# {setup}: llmkit.load returned after {load_s:.0f} s", flush=True)
    rng = random.Random(tp)

    def prompt() -> llmkit.Request:
        return llmkit.Request(prompt_token_ids=[rng.randrange(3, 128000) for _ in range(prompt_len)])

    params = llmkit.greedy(max_tokens=out_len, ignore_eos=True)
    engine.generate([prompt() for _ in range(4)], params)  # warm-up
    print(f"# {setup}: warm-up done", flush=True)

    async def batch(n: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        out = await asyncio.gather(*[engine.agenerate(prompt(), params) for _ in range(n)])
        return time.perf_counter() - t0, sum(c[0].usage.completion_tokens for c in out)

    tpots = []
    for _ in range(3):
        completion = engine.generate(prompt(), params)[0]
        tpots.append(completion.metrics.tpot(completion.usage.completion_tokens))
    throughput = {}
    for n in batches:
        runs = [asyncio.run(batch(n)) for _ in range(repeats)]
        throughput[n] = max(tokens / seconds for seconds, tokens in runs)
    shape = Shape.from_config(LLAMA_8B)
    usage = engine.memory()
    in_use = gpu_memory_mib()
    result = {
        "setup": setup, "tensor_parallel_size": tp, "executor": backend or "mp", "load_s": load_s,
        "engine_options": extra or {}, "vllm_env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "RAY_"))},
        "batch1_tpot_ms": sorted(tpots)[1] * 1000,
        "tokens_per_s": {str(k): v for k, v in throughput.items()},
        "memory": {
            "planned_weights_gib_per_gpu": shape.parameters * WEIGHT_BYTES["bf16"] / tp / 2**30,
            "planned_kv_bytes_per_token_per_gpu": shape.kv_bytes_per_token("bf16") / tp,
            "vllm_kv_tokens": usage.kv_cache_tokens,
            "vllm_kv_bytes_per_token": usage.kv_bytes_per_token,
            "vllm_kv_gib_per_gpu": (usage.kv_cache_bytes or 0) / tp / 2**30,
            "gpu_mib_in_use": [after - was for after, was in zip(in_use, before)],
        },
        "weights": engine.weights().model_dump(),
    }
    engine.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setups", default="tp1,tp2")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--output", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="one run at 64 concurrent only (short device time)")
    parser.add_argument("--engine-options", type=json.loads, default={},
                        help='more vLLM engine options for every set-up, as JSON (e.g. \'{"enforce_eager": true}\')')
    args = parser.parse_args()
    folder = Path("/tmp/llama8b-shape")
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(LLAMA_8B))
    import torch
    import vllm

    rows = []
    for setup in args.setups.split(","):
        try:
            quick = {"batches": (64,), "repeats": 1} if args.quick else {}
            rows.append(measure(setup, folder, args.prompt, args.output, extra=args.engine_options, **quick))
        except Exception as exc:  # noqa: BLE001 - one set-up failing is a result too
            rows.append({"setup": setup, "error": f"{type(exc).__name__}: {exc}"})
        print(json.dumps(rows[-1]), flush=True)
    result = {"engine": f"vllm {vllm.__version__}", "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
              "prompt_tokens": args.prompt, "output_tokens": args.output, "rows": rows, "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
