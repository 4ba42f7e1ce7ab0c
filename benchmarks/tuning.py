"""Fine-tuning through llmkit against the same library called directly: tokens/s and peak memory, one run.

"direct" builds TRL's SFTTrainer by hand, the way TRL's documentation does, with the same hyper-parameters
written out; "llmkit" runs `llmkit.tune("trl", job)` with them. The two alternate (direct, llmkit, direct,
llmkit, ...) on the same data (ch. 7 records), and the median of each is reported. Tokens are the non-padding
tokens of the training batches, as TRL counts them (`num_tokens`), over the trainer's own runtime. Peak
memory compares only on a GPU (torch's peak allocation, reset per run); on CPU it is the process's peak RSS,
which one process running both paths cannot separate.

    python benchmarks/tuning.py --data ../shared/datasets/instruction-data.json --out benchmarks/results/tuning_trl_cpu.json
    # GPU: --model a Hugging Face folder, e.g. a Llama-3.2-1B shape with random weights, --batch-size 8 --steps 60
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def job_fields(args) -> dict:
    return {"model": args.model, "data": str(args.data), "method": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "max_steps": args.steps, "batch_size": args.batch_size, "gradient_accumulation_steps": 1, "learning_rate": 2e-4,
            "lr_scheduler": "linear", "warmup_ratio": 0.0, "max_seq_length": args.seq, "seed": 0, "checkpoint_steps": 10_000,
            "split": {"train": 1.0, "test": 0.0}}


def run_llmkit(args, folder: Path) -> dict:
    import llmkit

    result = llmkit.tune("trl", {**job_fields(args), "output_dir": str(folder / "llmkit")})
    return {"tokens": result.train_tokens, "seconds": result.seconds, "train_seconds": result.train_tokens / result.tokens_per_second,
            "peak_bytes": result.peak_memory_bytes}


def run_direct(args, folder: Path) -> dict:
    """TRL as its docs show it: SFTTrainer with SFTConfig and a peft LoraConfig, on prompt-completion rows."""
    import resource

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from llmkit.catalog import hf_folder
    from llmkit.tasks import alpaca_prompt

    start = time.perf_counter()
    records = json.loads(Path(args.data).read_text())
    rows = [{"prompt": alpaca_prompt(r), "completion": r["output"]} for r in records]
    path = hf_folder(args.model)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = SFTConfig(output_dir=str(folder / "direct"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       gradient_accumulation_steps=1, learning_rate=2e-4, lr_scheduler_type="linear", warmup_steps=0.0,
                       max_length=args.seq, seed=0, data_seed=0, save_strategy="no", logging_steps=1, report_to="none",
                       bf16=cuda, fp16=False, use_cpu=not cuda, gradient_checkpointing=False, disable_tqdm=True,
                       completion_only_loss=True, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainer.remove_callback(PrinterCallback)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    tokens = next(e["num_tokens"] for e in reversed(trainer.state.log_history) if "num_tokens" in e)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "train_seconds": output.metrics["train_runtime"], "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = folder / "data.json"
        data.write_text(json.dumps(json.loads(args.data.read_text())[: args.records]))
        args.data = data
        runs: dict[str, list[dict]] = {"direct": [], "llmkit": []}
        for repeat in range(args.repeats):
            for name, fn in (("direct", run_direct), ("llmkit", run_llmkit)):
                sub = folder / f"{name}-{repeat}"
                sub.mkdir()
                runs[name].append(fn(args, sub))
                print(name, repeat, runs[name][-1], flush=True)
    rate = {name: statistics.median(r["tokens"] / r["train_seconds"] for r in rs) for name, rs in runs.items()}
    peak = {name: statistics.median(r["peak_bytes"] for r in rs) for name, rs in runs.items()}
    result = {"model": args.model, "steps": args.steps, "batch_size": args.batch_size, "seq": args.seq, "records": args.records,
              "machine": f"{platform.machine()}", "tokens_per_second": rate, "llmkit_over_direct": rate["llmkit"] / rate["direct"],
              "peak_bytes": peak, "runs": runs, "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("tokens_per_second", "llmkit_over_direct", "peak_bytes")}, indent=2))


if __name__ == "__main__":
    main()
