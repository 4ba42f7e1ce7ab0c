"""TuneJob → Unsloth (2026.10.9): the keyword arguments of `FastLanguageModel.from_pretrained` and
`FastLanguageModel.get_peft_model`, as pure functions tested without a GPU against a snapshot of the upstream
signatures (tests/unsloth_signatures.json, made by tools/snapshot_signatures.py from the wheel's source).

The trainer is TRL's SFTTrainer, which `import unsloth` patches: its configuration is llmkit-trl's
`training_arguments`, every field explicit. That matters more here than anywhere: where a field is absent,
Unsloth's patched configs put in their own values (unsloth/models/rl.py: optim adamw_8bit,
gradient_accumulation_steps 2, weight_decay 0.001, learning_rate 5e-5, seed 3407, warmup 0.1, padding-free
batching on).
"""

from __future__ import annotations

from typing import Any, Literal

from llmkit.errors import UnsupportedFeatureError
from llmkit.kit.mapping import Mapping, Param
from llmkit.tuner import TuneJob
from llmkit_trl.mapping import TRAINING

BACKEND = "unsloth"
Checkpointing = Literal["unsloth", "standard"]

# What each TuneJob field becomes on Unsloth's side; the training loop's fields are llmkit-trl's table.
_OWN = [
    Param("model", "model_name", note="the local Hugging Face folder llmkit resolves (use_exact_model_name: no hub lookup)"),
    Param("method", None, note="lora → load_in_16bit, qlora → load_in_4bit (bitsandbytes NF4); sft, dpo, grpo: not offered here"),
    Param("max_seq_length", "max_seq_length"),
    Param("precision", "dtype", note="bf16 or fp16 (Unsloth's kernels); fp32 is refused"),
    Param("seed", "random_state", note="also get_peft_model's random_state (LoRA init)"),
    Param("lora", None, note="get_peft_model: r, lora_alpha, lora_dropout, target_modules, bias='none'"),
    Param("gradient_checkpointing", "use_gradient_checkpointing",
          note="True → 'unsloth' (Unsloth's offloaded checkpointing; tuner option checkpointing='standard' → True)"),
]
MODEL = Mapping(TuneJob, _OWN + [
    Param(row.name, None, note=f"the trainer's: {row.native or row.note} (llmkit-trl's table)")
    for row in TRAINING.rows if row.name not in {own.name for own in _OWN}
])


def resolve_precision(job: TuneJob, bf16_supported: bool) -> str:
    if job.precision == "auto":
        return "bf16" if bf16_supported else "fp16"
    if job.precision == "fp32":
        raise UnsupportedFeatureError(BACKEND, "precision=fp32", "Unsloth trains in bf16 or fp16 (precision auto picks one)")
    if job.precision == "bf16" and not bf16_supported:
        raise UnsupportedFeatureError(BACKEND, "precision=bf16", "this GPU has no bf16: use fp16 or auto")
    return job.precision


def checkpointing_value(job: TuneJob, mode: Checkpointing) -> bool | str:
    if not job.gradient_checkpointing:
        return False
    return "unsloth" if mode == "unsloth" else True


def model_arguments(job: TuneJob, base: str, precision: str, checkpointing: Checkpointing) -> dict[str, Any]:
    """`FastLanguageModel.from_pretrained` keyword arguments (dtype as a name: the caller makes it a torch dtype)."""
    return {
        "model_name": base,
        "max_seq_length": job.max_seq_length,
        "dtype": {"bf16": "bfloat16", "fp16": "float16"}[precision],
        "load_in_4bit": job.method == "qlora",
        "load_in_8bit": False,
        "load_in_16bit": job.method == "lora",
        "full_finetuning": False,
        "use_gradient_checkpointing": checkpointing_value(job, checkpointing),
        "random_state": job.seed,
        "use_exact_model_name": True,
        "trust_remote_code": False,
    }


def peft_arguments(job: TuneJob, checkpointing: Checkpointing) -> dict[str, Any]:
    """`FastLanguageModel.get_peft_model` keyword arguments (besides the model)."""
    lora = job.lora
    return {
        "r": lora.r,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.target_modules,
        "bias": "none",
        "use_gradient_checkpointing": checkpointing_value(job, checkpointing),
        "random_state": job.seed,
        "use_rslora": False,
        "max_seq_length": job.max_seq_length,
    }
