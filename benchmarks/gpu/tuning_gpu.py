"""Fine-tuning on one GPU: TRL and Unsloth, each through llmkit and called directly, one run per process.

Unsloth patches trl and transformers when imported and keeps state per trainer, so every run is a fresh
process: `python benchmarks/gpu/tuning_gpu.py run --backend unsloth --path direct ...` prints one JSON line.
`make-model` writes the model the runs share: a Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads, 8 KV
heads, MLP 8192, tied embeddings) with random bf16 weights and SmolLM2's tokenizer (vocabulary 49,152 instead
of Llama-3's 128,256: the catalog's tokenizer is the one on the machine), saved as a Hugging Face folder.

Every run uses the same hyper-parameters, written out (llmkit sends them all; the direct runs set the same
values by hand, as each library's documentation shows its trainer): LoRA r16, alpha 32, dropout 0 on all
linear projections, batch 8, gradient accumulation 1, learning rate 2e-4 linear without warm-up, weight decay
0, AdamW (torch, fused), bf16, max length 512, no packing, no padding-free batching, seed 0; ch. 7 records.
Figures: samples/s and tokens/s (non-padding tokens as TRL counts them) over the trainer's own runtime, and
torch's peak allocated memory (reset after the model is loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # all-linear on Llama


def make_model(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import llmkit
    from llmkit.catalog import hf_folder

    tokenizer = AutoTokenizer.from_pretrained(hf_folder(llmkit.DEFAULT_MODEL))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=4096,
                         rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(json.dumps({"model": str(out), "parameters": sum(p.numel() for p in model.parameters())}))


def rows(data: Path, records: int) -> list[dict]:
    from llmkit.tasks import alpaca_prompt

    return [{"prompt": alpaca_prompt(r), "completion": r["output"]} for r in json.loads(data.read_text())[:records]]


def sft_config(args, output_dir: str, gradient_checkpointing: bool) -> dict:
    return dict(output_dir=output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch, per_device_eval_batch_size=args.batch,
                gradient_accumulation_steps=1, learning_rate=2e-4, lr_scheduler_type="linear", warmup_steps=0.0, weight_decay=0.0,
                max_grad_norm=1.0, max_length=args.seq, seed=0, data_seed=0, save_strategy="no", logging_steps=1, report_to="none",
                bf16=True, fp16=False, gradient_checkpointing=gradient_checkpointing, disable_tqdm=True, completion_only_loss=True,
                packing=False, padding_free=False, optim="adamw_torch_fused", dataloader_num_workers=0, eval_accumulation_steps=None,
                torch_empty_cache_steps=None)


def figures(trainer, output, start: float) -> dict:
    import torch

    tokens = next((e["num_tokens"] for e in reversed(trainer.state.log_history) if "num_tokens" in e), None)
    runtime = output.metrics["train_runtime"]
    return {"train_seconds": runtime, "samples_per_second": trainer.state.global_step * trainer.args.per_device_train_batch_size / runtime,
            "tokens_per_second": tokens / runtime if tokens else None, "tokens": tokens, "peak_bytes": torch.cuda.max_memory_allocated(),
            "final_loss": next(e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), "wall_seconds": time.perf_counter() - start}


def direct_unsloth(args, folder: Path) -> dict:
    """Unsloth as its documentation shows it: FastLanguageModel, get_peft_model, TRL's SFTTrainer."""
    start = time.perf_counter()
    from unsloth import FastLanguageModel  # first

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(args.model), max_seq_length=args.seq, dtype=torch.bfloat16, load_in_4bit=args.method == "qlora",
        load_in_16bit=args.method == "lora", use_exact_model_name=True, random_state=0,
        use_gradient_checkpointing={"off": False, "on": True, "unsloth": "unsloth"}[args.gc])
    model = FastLanguageModel.get_peft_model(
        model, r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=TARGETS, bias="none",
        use_gradient_checkpointing={"off": False, "on": True, "unsloth": "unsloth"}[args.gc], random_state=0, max_seq_length=args.seq)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows(args.data, args.records)),
                         args=SFTConfig(**sft_config(args, str(folder / "out"), args.gc != "off")))
    torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    return figures(trainer, output, start)


def direct_trl(args, folder: Path) -> dict:
    """TRL as its documentation shows it: SFTTrainer with a peft LoraConfig."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    kwargs = {"dtype": torch.bfloat16}
    if args.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(rows(args.data, args.records)),
                         args=SFTConfig(**sft_config(args, str(folder / "out"), args.gc != "off")),
                         peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                                                bias="none", task_type="CAUSAL_LM"))
    torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    return figures(trainer, output, start)


def via_llmkit(args, folder: Path) -> dict:
    import llmkit

    data = folder / "data.json"
    data.write_text(json.dumps(json.loads(args.data.read_text())[: args.records]))
    job = {"model": str(args.model), "data": str(data), "method": args.method, "lora": LORA, "output_dir": str(folder / "run"),
           "max_steps": args.steps, "batch_size": args.batch, "gradient_accumulation_steps": 1, "learning_rate": 2e-4,
           "lr_scheduler": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0, "max_seq_length": args.seq, "precision": "bf16",
           "gradient_checkpointing": args.gc != "off", "seed": 0, "checkpoint_steps": 10_000, "split": {"train": 1.0, "test": 0.0}}
    options = {"checkpointing": "unsloth" if args.gc == "unsloth" else "standard"} if args.backend == "unsloth" else {}
    start = time.perf_counter()
    result = llmkit.tune(args.backend, job, **options)
    samples = result.steps * args.batch
    train_seconds = result.train_seconds
    return {"train_seconds": train_seconds, "samples_per_second": samples / train_seconds, "tokens_per_second": result.tokens_per_second,
            "tokens": result.train_tokens, "peak_bytes": result.peak_memory_bytes, "final_loss": result.history[-1].loss if result.history else None,
            "wall_seconds": time.perf_counter() - start, "versions": result.versions}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-model")
    make.add_argument("--out", type=Path, required=True)
    run = sub.add_parser("run")
    run.add_argument("--backend", choices=["trl", "unsloth"], required=True)
    run.add_argument("--path", choices=["llmkit", "direct"], required=True)
    run.add_argument("--method", choices=["lora", "qlora"], default="lora")
    run.add_argument("--gc", choices=["off", "on", "unsloth"], default="off", help="gradient checkpointing (unsloth: its offloaded variant)")
    run.add_argument("--model", type=Path, required=True)
    run.add_argument("--data", type=Path, required=True)
    run.add_argument("--records", type=int, default=480)
    run.add_argument("--steps", type=int, default=60)
    run.add_argument("--batch", type=int, default=8)
    run.add_argument("--seq", type=int, default=512)
    args = parser.parse_args()
    if args.command == "make-model":
        make_model(args.out)
        return
    if args.backend == "trl" and args.gc == "unsloth":
        parser.error("--gc unsloth is Unsloth's")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        fn = via_llmkit if args.path == "llmkit" else {"trl": direct_trl, "unsloth": direct_unsloth}[args.backend]
        figures_ = fn(args, Path(tmp))
    import torch

    print("RESULT " + json.dumps({"backend": args.backend, "path": args.path, "method": args.method, "gc": args.gc, "steps": args.steps,
                                  "batch": args.batch, "seq": args.seq, "device": torch.cuda.get_device_name(), **figures_}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
