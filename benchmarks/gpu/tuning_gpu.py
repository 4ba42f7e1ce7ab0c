"""Fine-tuning on one GPU: TRL, Unsloth, Axolotl and torchtune, each through llmkit and called directly, one run
per process.

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

Axolotl and torchtune run in environments of their own (`LLMKIT_AXOLOTL_ENV`, `LLMKIT_TORCHTUNE_ENV`: on the
GPU machine, environments made from the carried wheels, which llmkit uses as they are). Called directly,
Axolotl is its CLI (`axolotl train config.yaml`) with a config written as its documentation shows one, on the
same rows (input/output segments: the Alpaca prompt unlabelled, the response and EOS labelled); its train time
is the trainer's `train_runtime` and its peak the last `memory/max_allocated (GiB)` it logs. torchtune called
directly is its stock `lora_finetune_single_device` recipe on the config llmkit generates (the model's Hugging
Face tokenizer needs llmkit's tokenizer component: torchtune's own tokenizers read Llama-3's tiktoken file),
without llmkit's recipe subclass; its train time runs from the end of the recipe's set-up (its profiler line)
to its last step line, as llmkit times it, and its peak is the `peak_memory_alloc` it logs. The direct
paths' peaks are the largest per-step peak their logs show; through llmkit, `TuneResult.peak_memory_bytes` (for
Axolotl the largest taken after each step: axolotl resets torch's counters whenever it logs).

Variants (`--packing`, `--padding-free auto`, `UNSLOTH_BLOCK_COMPILE=0` in the environment, `--steps 200`: see
run_unsloth.sh `variants`) look for what Unsloth needs to be fast; `--tag` names them in the RESULT line.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
# llmkit's jobs checkpoint every CHECKPOINT_STEPS (never, in 60 steps) and transformers then saves once at the last
# step, inside its train_runtime; the direct runs ask for the same, so both do that work.
CHECKPOINT_STEPS = 10_000
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
                max_grad_norm=1.0, max_length=args.seq, seed=0, data_seed=0, save_strategy="steps", save_steps=CHECKPOINT_STEPS,
                logging_steps=1, report_to="none",
                bf16=True, fp16=False, gradient_checkpointing=gradient_checkpointing, disable_tqdm=True, completion_only_loss=True,
                packing=args.packing, optim="adamw_torch_fused", dataloader_num_workers=0, eval_accumulation_steps=None,
                torch_empty_cache_steps=None,
                # "auto" leaves it unset: Unsloth then chooses padding-free batches by itself, TRL keeps its default;
                # packed rows take whatever the library does with them
                **({} if args.padding_free == "auto" or args.packing else {"padding_free": False}))


def steady_step_ms(times: dict[int, float], skip: int = 10) -> float | None:
    """The median time between consecutive steps' loss reports after the first `skip` steps (compilation,
    autotuning and the first batches' allocations fall in those): llmkit's cost per step, apart from its fixed
    costs at the start and end. `times`: step → seconds on any clock."""
    steps = sorted(s for s in times if s > skip)
    gaps = sorted(times[b] - times[a] for a, b in zip(steps, steps[1:]) if b == a + 1)
    return round(1000 * gaps[len(gaps) // 2], 2) if gaps else None


def step_figures(times: dict[int, float], train_seconds: float, steps: int) -> dict:
    """The median cost per step (`step_ms`), each step's loss report in seconds after the first one's
    (`step_times`), and the train time beyond `steps` median steps (`fixed_seconds`: before the first step and after
    the last, stalls, and the gap between the mean and the median step, since padded lengths vary)."""
    step_ms = steady_step_ms(times)
    first = times[min(times)] if times else 0.0
    return {"step_ms": step_ms, "step_times": [round(times[s] - first, 4) for s in sorted(times)],
            "fixed_seconds": round(train_seconds - steps * step_ms / 1000, 3) if step_ms else None}


def _step_clock():
    """A trainer callback taking the time each step's loss is logged (direct TRL and Unsloth)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: dict[int, float] = {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.times[state.global_step] = time.perf_counter()

    return StepClock()


def figures(trainer, output, start: float, clock=None) -> dict:
    import torch

    tokens = next((e["num_tokens"] for e in reversed(trainer.state.log_history) if "num_tokens" in e), None)
    runtime = output.metrics["train_runtime"]
    return {"train_seconds": runtime, "samples_per_second": trainer.state.global_step * trainer.args.per_device_train_batch_size / runtime,
            "tokens_per_second": tokens / runtime if tokens else None, "tokens": tokens, "peak_bytes": torch.cuda.max_memory_allocated(),
            "final_loss": next(e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), "wall_seconds": time.perf_counter() - start,
            # what the trainer ran with: TRL turns padding-free on for packed rows, Unsloth by itself when it is unset
            "padding_free_used": getattr(trainer, "padding_free", getattr(trainer.args, "padding_free", None)),
            "attention": getattr(getattr(trainer.model, "config", None), "_attn_implementation", None),
            **step_figures(clock.times if clock else {}, runtime, trainer.state.global_step)}


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
                         args=SFTConfig(**sft_config(args, str(folder / "out"), args.gc != "off")), callbacks=[clock := _step_clock()])
    torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    return figures(trainer, output, start, clock)


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
                                                bias="none", task_type="CAUSAL_LM"), callbacks=[clock := _step_clock()])
    torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    return figures(trainer, output, start, clock)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _tool_env(variable: str, module: str) -> Path:
    """The environment a tool runs in: $variable, else the one llmkit makes (`<module>.env_dir()`)."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    import importlib

    return importlib.import_module(module).env_dir()


def _stream(command: list[str], env: dict, cwd: Path, log: Path):
    """Run `command`, yielding (seconds since start, line) as its lines arrive; the whole output goes to `log`."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                   env=env, cwd=cwd)
        for line in process.stdout:
            out.write(line)
            yield time.perf_counter() - start, line.rstrip("\n")
        if process.wait():
            raise RuntimeError(f"{command[0]} exited with {process.returncode}: see {log}")


def direct_axolotl(args, folder: Path) -> dict:
    """Axolotl as its documentation shows it: a YAML config and `axolotl train`."""
    import yaml
    from transformers import AutoTokenizer

    start = time.perf_counter()
    env = _tool_env("LLMKIT_AXOLOTL_ENV", "llmkit_axolotl.env")
    eos = AutoTokenizer.from_pretrained(args.model).eos_token
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps({"segments": [{"label": False, "text": r["prompt"]},
                                                     {"label": True, "text": r["completion"] + eos}]}) + "\n"
                            for r in rows(args.data, args.records)))
    cuda = _cuda()
    config = {
        "base_model": str(args.model), "datasets": [{"path": str(data), "ds_type": "json", "type": "input_output"}],
        "dataset_prepared_path": str(folder / "prepared"), "val_set_size": 0.0, "output_dir": str(folder / "out"),
        "sequence_len": args.seq, "sample_packing": False, "excess_length_strategy": "truncate", "train_on_inputs": False,
        "adapter": "qlora" if args.method == "qlora" else "lora", "load_in_4bit": args.method == "qlora",
        "lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"], "lora_target_linear": True,
        "micro_batch_size": args.batch, "gradient_accumulation_steps": 1, "max_steps": args.steps, "num_epochs": 1,
        "optimizer": "adamw_torch_fused", "lr_scheduler": "linear", "learning_rate": 2e-4,
        "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "bf16": cuda, "tf32": False,
        "gradient_checkpointing": args.gc != "off", "seed": 0, "logging_steps": 1, "save_steps": CHECKPOINT_STEPS,
        "shuffle_merged_datasets": False,
        # as llmkit's mapping fixes them (the rest of its fixed keys are axolotl's defaults or off the training path)
        "pad_to_sequence_len": False, "group_by_length": False, "dataloader_num_workers": 0, "attn_implementation": "sdpa",
    }
    if not cuda:  # its LoRA Triton kernels switch themselves on and need CUDA
        config.update(lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False, lora_embedding_kernel=False)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    variables = {**os.environ, "PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(env),
                 "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "AXOLOTL_DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    variables.pop("PYTHONPATH", None)
    summary, peaks, losses, times = {}, [], [], {}
    for at, line in _stream([str(env / "bin" / "axolotl"), "train", str(folder / "config.yaml"), "--launcher", "python"],
                           variables, folder, folder / "axolotl.log"):
        found = re.search(r"\{'.*\}", line)
        if not found:
            continue
        try:
            logs = ast.literal_eval(found.group())
        except (ValueError, SyntaxError):
            continue
        if "loss" in logs:
            losses.append(float(logs["loss"]))
            times[len(losses)] = at  # logging_steps 1: the n-th loss line is step n
        if "memory/max_allocated (GiB)" in logs:
            peaks.append(float(logs["memory/max_allocated (GiB)"]))
        if "train_runtime" in logs:
            summary = logs
    runtime = float(summary["train_runtime"])
    return {"train_seconds": runtime, "samples_per_second": args.steps * args.batch / runtime, "tokens_per_second": None,
            "tokens": None, "peak_bytes": int(max(peaks) * 2**30) if peaks and max(peaks) > 0 else None,
            "final_loss": losses[-1] if losses else None, "wall_seconds": time.perf_counter() - start,
            **step_figures(times, runtime, args.steps)}


def direct_torchtune(args, folder: Path) -> dict:
    """torchtune's stock LoRA recipe (`tune run lora_finetune_single_device`) on the config llmkit writes."""
    import yaml
    from llmkit_torchtune import env as tt_env, mapping
    from llmkit_torchtune.tuner import RECIPE_DIR, parse_step_line

    import llmkit
    from llmkit.tuner import TuneJob

    start = time.perf_counter()
    env = _tool_env("LLMKIT_TORCHTUNE_ENV", "llmkit_torchtune.env")
    data = folder / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(args.data, args.records)))
    job = TuneJob(**_job(args, folder))
    device = tt_env.device(env)
    config, plan = mapping.build_config(job, model_folder=args.model, model=mapping.model_config(args.model),
                                        n_train=args.records, n_validation=0, checkpoints=folder / "checkpoints",
                                        data_dir=data, device=device)
    config["log_peak_memory_stats"] = True
    (folder / "torchtune.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    variables = {**os.environ, "PYTHONPATH": str(RECIPE_DIR), "PATH": f"{env / 'bin'}:{os.environ.get('PATH', '')}",
                 "VIRTUAL_ENV": str(env), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    set_up_at = last_step_at = None
    steps, tokens_per_s, peaks, losses, times = 0, [], [], [], {}
    for at, line in _stream([str(env / "bin" / "tune"), "run", "lora_finetune_single_device", "--config",
                             str(folder / "torchtune.yaml")], variables, RECIPE_DIR, folder / "torchtune.log"):
        if "Profiler config after instantiation" in line:
            set_up_at = at
        step = parse_step_line(line)
        if step is not None:
            steps, values = step
            last_step_at = times[steps] = at
            losses.append(values.get("loss"))
            tokens_per_s.append(values.get("tokens_per_second_per_gpu"))
            if values.get("peak_memory_alloc"):
                peaks.append(values["peak_memory_alloc"])
    assert steps == plan.total_steps == args.steps, (steps, plan.total_steps)
    runtime = last_step_at - set_up_at
    return {"train_seconds": runtime, "samples_per_second": steps * args.batch / runtime,
            "tokens_per_second": None, "tokens": None, "peak_bytes": int(max(peaks) * 2**30) if peaks else None,
            "final_loss": losses[-1], "wall_seconds": time.perf_counter() - start, "device": device, "llmkit": llmkit.__version__,
            **step_figures(times, runtime, steps)}


def _job(args, folder: Path) -> dict:
    data = folder / "data.json"
    data.write_text(json.dumps(json.loads(args.data.read_text())[: args.records]))
    return {"model": str(args.model), "data": str(data), "method": args.method, "lora": LORA, "output_dir": str(folder / "run"),
            "max_steps": args.steps, "batch_size": args.batch, "gradient_accumulation_steps": 1, "learning_rate": 2e-4,
            "lr_scheduler": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0, "max_seq_length": args.seq,
            "precision": "bf16" if _cuda() else "fp32", "gradient_checkpointing": args.gc != "off", "seed": 0,
            "checkpoint_steps": CHECKPOINT_STEPS, "split": {"train": 1.0, "test": 0.0}}


def via_llmkit(args, folder: Path) -> dict:
    import llmkit

    job = _job(args, folder)
    options = {"checkpointing": "unsloth" if args.gc == "unsloth" else "standard"} if args.backend == "unsloth" else {}
    start = time.perf_counter()
    result = llmkit.tune(args.backend, job, **options)
    samples = result.steps * args.batch
    train_seconds = result.train_seconds
    return {"train_seconds": train_seconds, "samples_per_second": samples / train_seconds, "tokens_per_second": result.tokens_per_second,
            "tokens": result.train_tokens, "peak_bytes": result.peak_memory_bytes, "final_loss": next((h.loss for h in reversed(result.history) if h.loss is not None), None),
            "wall_seconds": time.perf_counter() - start, "versions": result.versions,
            **step_figures({h.step: h.elapsed_s for h in result.history if h.loss is not None and h.step}, train_seconds,
                           result.steps - (result.resumed_from_step or 0))}


def keep_logs(folder: Path, keep: Path) -> None:
    import shutil

    keep.mkdir(parents=True, exist_ok=True)
    for log in folder.rglob("*.log"):
        shutil.copy(log, keep / "-".join(log.relative_to(folder).parts))


def main() -> None:
    # timeout's SIGTERM as an exit, so that llmkit's tuners stop the trainers they started in sessions of their own
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-model")
    make.add_argument("--out", type=Path, required=True)
    run = sub.add_parser("run")
    run.add_argument("--backend", choices=["trl", "unsloth", "axolotl", "torchtune"], required=True)
    run.add_argument("--path", choices=["llmkit", "direct"], required=True)
    run.add_argument("--method", choices=["lora", "qlora"], default="lora")
    run.add_argument("--gc", choices=["off", "on", "unsloth"], default="off", help="gradient checkpointing (unsloth: its offloaded variant)")
    run.add_argument("--model", type=Path, required=True)
    run.add_argument("--data", type=Path, required=True)
    run.add_argument("--records", type=int, default=480)
    run.add_argument("--steps", type=int, default=60)
    run.add_argument("--batch", type=int, default=8)
    run.add_argument("--seq", type=int, default=512)
    run.add_argument("--packing", action="store_true", help="pack rows up to --seq tokens (direct TRL and Unsloth only)")
    run.add_argument("--padding-free", choices=["off", "auto"], default="off",
                     help="auto: leave padding_free unset, as a user who does not pin it would (direct TRL and Unsloth only)")
    run.add_argument("--tag", default="", help="a name for this variant, copied into the RESULT line")
    run.add_argument("--keep", type=Path, help="copy the run's own logs (axolotl's, torchtune's: *.log under its folder) here")
    args = parser.parse_args()
    if args.command == "make-model":
        make_model(args.out)
        return
    if args.backend != "unsloth" and args.gc == "unsloth":
        parser.error("--gc unsloth is Unsloth's")
    if (args.packing or args.padding_free == "auto") and (args.path != "direct" or args.backend not in ("trl", "unsloth")):
        parser.error("--packing and --padding-free auto are variants of the direct TRL and Unsloth runs")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the UNSLOTH_* settings this run was started with (Unsloth adds its own to os.environ when imported)
    unsloth_env = {k: v for k, v in os.environ.items() if k.startswith("UNSLOTH_") and k != "UNSLOTH_DISABLE_STATISTICS"}
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        direct = {"trl": direct_trl, "unsloth": direct_unsloth, "axolotl": direct_axolotl, "torchtune": direct_torchtune}
        try:
            figures_ = (via_llmkit if args.path == "llmkit" else direct[args.backend])(args, Path(tmp))
        finally:
            if args.keep:
                try:
                    keep_logs(Path(tmp), args.keep)
                except OSError as exc:  # never in place of the run's own error
                    print(f"keeping the logs failed: {exc}", file=sys.stderr)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print("RESULT " + json.dumps({"backend": args.backend, "path": args.path, "method": args.method, "gc": args.gc, "steps": args.steps,
                                  "batch": args.batch, "seq": args.seq, "records": args.records, "packing": args.packing,
                                  "padding_free": args.padding_free, "tag": args.tag,
                                  "unsloth_env": unsloth_env,
                                  "device": device, **figures_}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
