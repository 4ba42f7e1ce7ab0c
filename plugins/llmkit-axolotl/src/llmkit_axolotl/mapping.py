"""llmkit `TuneJob` → an axolotl 0.19 YAML config, as a declared table and pure functions (no axolotl import),
so tests check every field without axolotl.

Every hyper-parameter is written explicitly: axolotl's own defaults differ from llmkit's and some switch
themselves on (checked in axolotl 0.19.0's `utils/schemas/*.py` and `core/builders/base.py`):
`lr_scheduler` defaults to cosine; `optimizer` to adamw_torch_fused; warmup to 3 % of the steps when
neither `warmup_steps` nor `warmup_ratio` is set; `save_total_limit` to 4; `shuffle_merged_datasets` to
true; over-long rows are dropped (`excess_length_strategy`); and with LoRA the `lora_*_kernel` Triton
kernels are enabled automatically, which allocate on "cuda" and fail on a CPU-only torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmkit.errors import UnsupportedFeatureError
from llmkit.kit.mapping import Mapping, Param
from llmkit.tuner import TuneJob

BACKEND = "axolotl"
BRIDGE_PLUGIN = "llmkit_axolotl_bridge.LLMKitBridgePlugin"
LORA_KERNELS = ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel", "lora_embedding_kernel")


def _lora(lora) -> dict[str, Any]:
    if lora is None:
        return {"adapter": None}
    targets = ({"lora_target_linear": True, "lora_target_modules": None} if lora.target_modules == "all-linear"
               else {"lora_target_linear": False, "lora_target_modules": list(lora.target_modules)})
    return {"adapter": "lora", "lora_r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, **targets,
            # axolotl switches these Triton kernels on by itself for LoRA; on a CPU torch they fail ("cuda").
            # build_config leaves them to axolotl when the run has a GPU.
            **{key: False for key in LORA_KERNELS}}


def _method(method: str) -> dict[str, Any]:
    return {"rl": "dpo"} if method == "dpo" else {"rl": None}


def _precision(precision: str) -> dict[str, Any]:
    if precision == "auto":
        raise ValueError("precision auto must be resolved (resolve_precision) before mapping")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "tf32": False}


def _refuse_chat(value: str) -> str | None:
    return ("chat records are not mapped to axolotl yet (its chat_template type applies the tokenizer's template; "
            "llmkit has not verified it matches the other backends)") if value == "chat" else None


# Rows whose native name starts with "+" give several axolotl keys at once (a dict merged into the config).
JOB = Mapping(TuneJob, [
    Param("model", "base_model", str, "a catalog name is first resolved to its local Hugging Face folder (llmkit.catalog.hf_folder)"),
    Param("data", None, note="llmkit validates and splits it; axolotl reads the run's splits (datasets / test_datasets)"),
    Param("data_format", None, note="alpaca → input_output segments (prompt unlabelled, completion + EOS labelled); "
                                    "preference → DPO passthrough (prompt, chosen, rejected)", refuse=_refuse_chat),
    Param("method", "+method", _method, "lora / sft: supervised (no rl); dpo: rl: dpo"),
    Param("output_dir", None, note="axolotl's output_dir is the run's checkpoints/ folder"),
    Param("lora", "+lora", _lora, "adapter: lora, lora_r/alpha/dropout, all-linear → lora_target_linear; LoRA kernels off on CPU, axolotl's choice on a GPU"),
    Param("artifact", None, note="llmkit copies axolotl's final adapter (or full model) to the run's artifact folder; "
                                  "merged with LoRA: `axolotl merge-lora` on the same config first"),
    Param("epochs", "num_epochs", float),
    Param("max_steps", "max_steps", note="None: num_epochs decides"),
    Param("batch_size", "micro_batch_size"),
    Param("gradient_accumulation_steps", "gradient_accumulation_steps"),
    Param("learning_rate", "learning_rate", float),
    Param("lr_scheduler", "lr_scheduler", note="transformers' scheduler names (axolotl's default is cosine)"),
    Param("warmup_ratio", None, note="written as warmup_steps = ceil(ratio × total steps), transformers' rule; "
                                     "axolotl would truncate instead (build_config)"),
    Param("weight_decay", "weight_decay", float),
    Param("max_grad_norm", "max_grad_norm", float),
    Param("max_seq_length", "sequence_len", note="longer rows are truncated (excess_length_strategy: truncate), as TRL does"),
    Param("gradient_checkpointing", "gradient_checkpointing", bool),
    Param("precision", "+precision", _precision, "bf16 / fp16 flags, tf32 off; auto is resolved first (resolve_precision)"),
    Param("seed", "seed"),
    Param("split", None, note="llmkit splits (train / validation / test files)"),
    Param("checkpoint_steps", "save_steps"),
    Param("eval_steps", "eval_steps", note="None: validation loss only before and after training (the bridge plugin)"),
    Param("dpo", "+dpo", lambda d: {"rl_beta": d.beta}, "rl_beta (written for method dpo only)"),
    Param("grpo", None, note="method grpo is not offered by this backend"),
], fixed={
    # Explicit where axolotl's default differs from transformers' / llmkit's, or changes by itself.
    # transformers' own default with torch >= 2.8 (what llmkit's TRL mapping sends), and axolotl's
    "optimizer": "adamw_torch_fused", "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
    "train_on_inputs": False, "sample_packing": False, "pad_to_sequence_len": False,
    "excess_length_strategy": "truncate", "group_by_length": False,
    "shuffle_merged_datasets": False, "shuffle_before_merging_datasets": False,
    "val_set_size": 0.0, "logging_steps": 1, "save_total_limit": 2, "save_safetensors": True,
    "load_in_8bit": False, "load_in_4bit": False, "strict": False, "trust_remote_code": False,
    "dataloader_num_workers": 0, "dataset_num_proc": 1, "use_wandb": False, "use_tensorboard": False,
    "use_mlflow": False, "use_trackio": False, "attn_implementation": "sdpa",
})


def total_steps(job: TuneJob, n_train: int) -> int:
    """Optimizer steps, as transformers' Trainer counts them: batches of `batch_size` (the last one partial),
    grouped by gradient accumulation (the last group partial), times epochs rounded up."""
    if job.max_steps is not None:
        return job.max_steps
    batches = math.ceil(n_train / job.batch_size)
    per_epoch = max(math.ceil(batches / job.gradient_accumulation_steps), 1)
    return math.ceil(job.epochs * per_epoch)


def warmup_steps(job: TuneJob, n_train: int) -> int:
    """transformers' rule for a ratio: ceil(ratio × total). axolotl truncates a ratio and raises a warmup of
    exactly 1 step to 2 (core/builders/base.py `_configure_warmup_and_logging`): 1 is refused."""
    steps = math.ceil(job.warmup_ratio * total_steps(job, n_train)) if job.warmup_ratio > 0 else 0
    if steps == 1:
        raise UnsupportedFeatureError(BACKEND, "warmup_ratio",
                                      f"warmup_ratio={job.warmup_ratio} gives 1 warmup step of {total_steps(job, n_train)}; "
                                      "axolotl 0.19 turns a warmup of 1 step into 2: use 0 or a ratio giving >= 2 steps")
    return steps


def resolve_precision(job: TuneJob, *, cuda: bool, cuda_bf16: bool) -> str:
    """auto → bf16 on a GPU that has it, else fp32 (TuneJob's rule). fp16 and bf16 need a GPU here: on a CPU
    transformers refuses fp16 and axolotl warns that bf16 training will fail."""
    precision = job.precision
    if precision == "auto":
        return "bf16" if cuda and cuda_bf16 else "fp32"
    if precision == "fp16" and not cuda:
        raise UnsupportedFeatureError(BACKEND, "precision", "precision=fp16 needs a CUDA GPU (transformers refuses fp16 on CPU)")
    if precision == "bf16" and not (cuda and cuda_bf16):
        raise UnsupportedFeatureError(BACKEND, "precision", "precision=bf16 needs a GPU with bf16 (axolotl 0.19 checks the GPU's "
                                                            "capability and training fails without it)")
    return precision


def refusals(job: TuneJob) -> list[tuple[str, str]]:
    return JOB.refusals(job)


def build_config(job: TuneJob, *, base_model: str, precision: str, n_train: int, data_dir: Path, work_dir: Path,
                 checkpoints: Path, has_validation: bool, resume_from: Path | None = None, cuda: bool = False) -> dict[str, Any]:
    """The axolotl config for `job`. `base_model`: the resolved local folder; `precision`: resolved (not auto);
    `data_dir`: where axolotl's dataset files are (`axolotl_datasets` wrote them); `work_dir`: axolotl's own
    files (prepared datasets); `cuda`: the run has a GPU (axolotl then picks its LoRA kernels itself, as it
    does when run directly)."""
    native = JOB.to_native(job.model_copy(update={"model": base_model, "precision": precision}), BACKEND)
    config: dict[str, Any] = {}
    for key, value in native.items():
        if key.startswith("+"):
            config.update(value)
        else:
            config[key] = value
    if job.method != "dpo":
        config.pop("rl_beta")
    if cuda:
        for key in LORA_KERNELS:
            config.pop(key, None)
    config["warmup_steps"] = warmup_steps(job, n_train)
    config["micro_batch_size"] = job.batch_size
    config["eval_batch_size"] = job.batch_size
    dataset_type = "passthrough" if job.method == "dpo" else "input_output"
    config["datasets"] = [{"path": str(data_dir / "train.jsonl"), "ds_type": "json", "type": dataset_type, "split": "train"}]
    config["test_datasets"] = ([{"path": str(data_dir / "validation.jsonl"), "ds_type": "json", "type": dataset_type,
                                 "split": "train"}] if has_validation else None)
    if not has_validation:
        config["eval_steps"] = None
        config["eval_strategy"] = "no"
    config["output_dir"] = str(checkpoints)
    config["dataset_prepared_path"] = str(work_dir / "prepared")
    config["resume_from_checkpoint"] = str(resume_from) if resume_from is not None else None
    config["auto_resume_from_checkpoints"] = False
    config["plugins"] = [BRIDGE_PLUGIN]
    return {key: config[key] for key in sorted(config)}


def axolotl_records(example, method: str, eos_token: str) -> dict[str, Any]:
    """One row of axolotl's dataset file. SFT: input_output segments, the prompt exactly as llmkit wrote it
    (the Alpaca template applied) and not trained on, the completion and the tokenizer's EOS trained on
    (axolotl 0.19's input_output strategy adds no special tokens itself). DPO: prompt, chosen, rejected for
    TRL's DPOTrainer, which appends the EOS itself."""
    if method == "dpo":
        return {"prompt": example.prompt, "chosen": example.chosen, "rejected": example.rejected}
    return {"segments": [{"label": False, "text": example.prompt}, {"label": True, "text": example.completion + eos_token}]}
