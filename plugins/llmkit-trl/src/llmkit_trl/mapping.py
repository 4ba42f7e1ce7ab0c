"""TuneJob → TRL (1.16) trainer configuration, as a declared table with pure functions (tested without
training). Every hyper-parameter is sent explicitly: TRL's own defaults differ from transformers' (e.g.
`gradient_checkpointing=True`, `bf16=True` unless fp16, `max_length=1024`, SFT learning rate 2e-5).
Upstream: trl/trainer/{base,sft,dpo,grpo}_config.py, transformers/training_args.py (5.x: warmup_steps
takes a ratio when below 1).
"""

from __future__ import annotations

from typing import Any

from llmkit.errors import InvalidRequestError, UnsupportedFeatureError
from llmkit.kit.mapping import Mapping, Param
from llmkit.tuner import LoraConfig, TuneJob

BACKEND = "trl"

TRAINING = Mapping(TuneJob, [
    Param("model", None, note="loaded by llmkit (catalog name → Hugging Face folder) and passed as a model object"),
    Param("data", None, note="read and validated by llmkit.data"),
    Param("data_format", None, note="llmkit.data: alpaca → prompt/completion text, chat → conversational"),
    Param("split", None, note="llmkit.data.split; train and validation sets passed as datasets"),
    Param("method", None, note="the trainer: SFTTrainer (sft, lora, qlora), DPOTrainer, GRPOTrainer"),
    Param("output_dir", "output_dir", lambda p: str(p / "checkpoints"), note="checkpoints; artifacts beside them"),
    Param("lora", None, note="peft.LoraConfig (peft_arguments)"),
    Param("artifact", None, note="written by llmkit after training (adapter, merged, GGUF)"),
    Param("epochs", "num_train_epochs"),
    Param("max_steps", "max_steps", lambda v: -1 if v is None else v, note="-1: epochs decide"),
    Param("batch_size", "per_device_train_batch_size"),
    Param("gradient_accumulation_steps", "gradient_accumulation_steps"),
    Param("learning_rate", "learning_rate"),
    Param("lr_scheduler", "lr_scheduler_type"),
    Param("warmup_ratio", "warmup_steps", note="transformers 5: a value below 1 is a ratio of the total steps"),
    Param("weight_decay", "weight_decay"),
    Param("max_grad_norm", "max_grad_norm"),
    Param("max_seq_length", "max_length", note="SFT, DPO; GRPO has no such field: llmkit checks that every prompt "
                                                "plus grpo.max_completion_length fits (check_grpo_lengths)"),
    Param("precision", None, note="bf16 / fp16 flags and the weights' dtype, per device (precision_arguments)"),
    Param("gradient_checkpointing", "gradient_checkpointing"),
    Param("seed", "seed"),
    Param("checkpoint_steps", "save_steps"),
    Param("eval_steps", "eval_steps", note="with eval_strategy='steps' when set"),
    Param("dpo", None, note="DPOConfig.beta (method_arguments)"),
    Param("grpo", None, note="GRPOConfig: num_generations, max_completion_length, temperature, beta (method_arguments)"),
], fixed={
    "save_strategy": "steps",
    "save_total_limit": 2,  # the two newest checkpoints: enough to resume when the newest was cut off mid-write
    "logging_steps": 1,
    "logging_first_step": True,
    "report_to": "none",
    "disable_tqdm": True,  # llmkit reports progress
    "dataloader_num_workers": 0,
    # transformers' own defaults, written out because Unsloth's patched configs replace them when absent
    # (unsloth/models/rl.py: adamw_8bit, eval_accumulation_steps=2, torch_empty_cache_steps=250).
    "optim": "adamw_torch_fused",  # transformers' default with torch >= 2.8
    "eval_accumulation_steps": None,
    "torch_empty_cache_steps": None,
    "logging_nan_inf_filter": True,
    "include_num_input_tokens_seen": "no",
})


def resolve_precision(job: TuneJob, device: str, bf16_supported: bool) -> str:
    """auto: bf16 on a GPU that has it, else fp32. fp16 and bf16 mixed precision need a GPU here."""
    if job.precision == "auto":
        return "bf16" if device == "cuda" and bf16_supported else "fp32"
    if device != "cuda" and job.precision in ("bf16", "fp16"):
        raise UnsupportedFeatureError(BACKEND, f"precision={job.precision}",
                                      "mixed precision on CPU is not run by this tuner: use precision fp32 (or auto)")
    if job.precision == "bf16" and not bf16_supported:
        raise UnsupportedFeatureError(BACKEND, "precision=bf16", "this GPU has no bf16: use fp16 or fp32")
    return job.precision


def precision_arguments(precision: str, device: str) -> dict[str, Any]:
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": device == "cpu"}


def method_arguments(job: TuneJob) -> dict[str, Any]:
    if job.method == "dpo":
        return {"beta": job.dpo.beta}
    if job.method == "grpo":
        g = job.grpo
        return {"num_generations": g.num_generations, "max_completion_length": g.max_completion_length,
                "temperature": g.temperature, "beta": g.beta, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    # SFT: the loss is on the response, as in ch. 7's masked variant; one padded record per row (Unsloth would
    # turn padding-free batching on by itself when it is not given).
    return {"completion_only_loss": True, "packing": False, "padding_free": False}


def training_arguments(job: TuneJob, device: str, precision: str) -> dict[str, Any]:
    """The keyword arguments of SFTConfig / DPOConfig / GRPOConfig for this job."""
    args = TRAINING.to_native(job, BACKEND)
    args["per_device_eval_batch_size"] = job.batch_size
    args["eval_strategy"] = "steps" if job.eval_steps else "no"
    if job.eval_steps is None:
        del args["eval_steps"]
    args["data_seed"] = job.seed
    if job.method == "grpo":
        del args["max_length"]
    return {**args, **precision_arguments(precision, device), **method_arguments(job)}


def peft_arguments(lora: LoraConfig) -> dict[str, Any]:
    """peft.LoraConfig keyword arguments."""
    return {"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": lora.target_modules,
            "bias": "none", "task_type": "CAUSAL_LM"}


def check_grpo_batch(job: TuneJob) -> None:
    """TRL samples `num_generations` completions per prompt within one generation batch of
    batch_size × gradient_accumulation_steps completions: the group must divide it."""
    batch = job.batch_size * job.gradient_accumulation_steps
    if job.method == "grpo" and batch % job.grpo.num_generations:
        raise InvalidRequestError(f"grpo: batch_size × gradient_accumulation_steps ({batch}) must be a multiple of "
                                  f"grpo.num_generations ({job.grpo.num_generations})", parameter="batch_size", value=job.batch_size)


def check_grpo_lengths(examples, count_tokens, job: TuneJob) -> None:
    """GRPO generates `max_completion_length` tokens after each prompt: the two must fit `max_seq_length`."""
    room = job.max_seq_length - job.grpo.max_completion_length
    for example in examples:
        n = count_tokens(example)
        if n > room:
            raise InvalidRequestError(f"grpo: record {example.index}'s prompt has {n} tokens; with max_completion_length "
                                      f"{job.grpo.max_completion_length} it does not fit max_seq_length {job.max_seq_length}",
                                      parameter="max_seq_length", value=job.max_seq_length)


def dataset_rows(examples, method: str) -> list[dict[str, Any]]:
    """llmkit.data Examples → TRL's dataset formats (prompt-completion, preference, prompt-only + reference)."""
    rows = []
    for e in examples:
        prompt = list(e.prompt) if e.conversational else e.prompt
        if method == "dpo":
            if e.conversational:
                rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": e.chosen}],
                             "rejected": [{"role": "assistant", "content": e.rejected}]})
            else:
                rows.append({"prompt": prompt, "chosen": e.chosen, "rejected": e.rejected})
        elif method == "grpo":
            rows.append({"prompt": prompt, "reference": e.completion})
        else:
            completion = [{"role": "assistant", "content": e.completion}] if e.conversational else e.completion
            rows.append({"prompt": prompt, "completion": completion})
    return rows
