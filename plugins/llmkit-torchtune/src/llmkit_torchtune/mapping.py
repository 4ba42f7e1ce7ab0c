"""llmkit `TuneJob` → a torchtune 0.6.1 recipe config, as declared tables and pure functions (no torchtune
import): tests check every field without torchtune.

Every hyper-parameter is written into the generated config explicitly; torchtune's own defaults are
never relied on (torch's AdamW alone would add weight_decay=0.01). Checked against torchtune 0.6.1's
`recipes/lora_finetune_single_device.py`, `recipes/full_finetune_single_device.py`,
`torchtune/models/llama3_2/_component_builders.py` and `torchtune/training/checkpointing/_checkpointer.py`.

What torchtune cannot honour is refused (`UnsupportedFeatureError`) by `refusals` / `plan` before any
work: its recipes run whole epochs (each cut at `max_steps_per_epoch`), checkpoint only at the end of an
epoch, have no validation during training, refuse fp16, and put LoRA on the MLP's three projections
together or not at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UnsupportedFeatureError
from llmkit.kit.mapping import Mapping, Param, refuse_unless
from llmkit.tuner import DPOOptions, LoraConfig, TuneJob

BACKEND = "torchtune"
RECIPES = {"lora": "lora_finetune_single_device", "sft": "full_finetune_single_device"}
# Hugging Face module names (PEFT's target_modules) → torchtune's LoRA attention modules.
ATTENTION = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
MLP = ("gate_proj", "up_proj", "down_proj")  # torchtune's w1, w3, w2: LoRA on all three or none
SCHEDULERS = {
    "linear": "llmkit_tt_recipe.linear_schedule_with_warmup",
    "cosine": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
    "constant": "llmkit_tt_recipe.constant_schedule_with_warmup",  # with num_warmup_steps forced to 0
    "constant_with_warmup": "llmkit_tt_recipe.constant_schedule_with_warmup",
}
# AdamW's settings beside lr and weight_decay: Hugging Face Trainer's adamw_torch defaults, written out.
# fused, as transformers' default optimizer with torch >= 2.8 (what llmkit's TRL and axolotl mappings send)
ADAMW = {"_component_": "torch.optim.AdamW", "betas": [0.9, 0.999], "eps": 1e-8, "amsgrad": False, "fused": True}
NO_STEP_EVAL = ("torchtune 0.6.1's single-device recipes have no validation during training; llmkit measures "
                "validation loss before and after training only (eval_steps=None)")


def _refuse_fp16(precision: str) -> str | None:
    return ("torchtune's single-device recipes refuse fp16 (no gradient scaling); use bf16 or fp32"
            if precision == "fp16" else None)


def _refuse_targets(targets) -> str | None:
    if targets == "all-linear":
        return None
    unknown = sorted(set(targets) - set(ATTENTION) - set(MLP))
    if "lm_head" in unknown:
        return ("torchtune's Llama-3.2 builder refuses LoRA on the output projection (apply_lora_to_output): "
                "it is tied to the embeddings")
    if unknown:
        return f"unknown module names {unknown}; torchtune's Llama builder knows {sorted(ATTENTION) + list(MLP)}"
    mlp = [t for t in MLP if t in targets]
    if mlp and len(mlp) != len(MLP):
        return (f"torchtune puts LoRA on the MLP's three projections together (apply_lora_to_mlp); "
                f"the job names only {mlp}: name all of {list(MLP)} or none")
    if not set(targets) & set(ATTENTION) and not mlp:
        return "no module to adapt"
    return None


def lora_modules(targets) -> tuple[list[str], bool]:
    """(lora_attn_modules, apply_lora_to_mlp). PEFT's "all-linear" is every linear layer but the output."""
    if targets == "all-linear":
        return list(ATTENTION.values()), True
    return [ATTENTION[t] for t in ATTENTION if t in targets], all(t in targets for t in MLP)


def resolve_precision(precision: str, device: str) -> str:
    """auto → bf16 on a GPU (torchtune's own default there), fp32 on CPU."""
    if precision == "auto":
        return "bf16" if device == "cuda" else "fp32"
    return precision


def _precision(precision: str) -> str:
    if precision == "auto":
        raise ValueError("precision auto must be resolved (resolve_precision) before mapping")
    return {"fp32": "fp32", "bf16": "bf16"}[precision]


JOB = Mapping(TuneJob, [
    Param("model", None, note="checkpointer.checkpoint_dir (the Hugging Face folder) and the model builder's "
                              "dimensions, read from its config.json (model_config)"),
    Param("data", None, note="llmkit validates and splits it; torchtune reads data/train.jsonl "
                             "(dataset.data_files) and data/validation.jsonl (llmkit.validation)"),
    Param("data_format", None, note="alpaca only: chat records are refused (no chat template is applied)"),
    Param("method", "llmkit.recipe", RECIPES.get, "lora → lora_finetune_single_device, sft → full_finetune_single_device"),
    Param("output_dir", None, note="output_dir and checkpointer.output_dir = <output_dir>/checkpoints"),
    Param("lora", None, note="the LORA table (model.lora_*)"),
    Param("artifact", "save_adapter_weights_only", lambda a: a == "adapter",
          "adapter: torchtune saves the adapter only; merged: also the merged weights"),
    Param("epochs", None, note="plan(): epochs × max_steps_per_epoch; fractional epochs only below one epoch"),
    Param("max_steps", None, note="plan(): at most one epoch, or a whole number of epochs"),
    Param("batch_size", "batch_size", note="torchtune drops the last partial batch of each epoch (drop_last=True)"),
    Param("gradient_accumulation_steps", "gradient_accumulation_steps"),
    Param("learning_rate", "optimizer.lr"),
    Param("lr_scheduler", "lr_scheduler._component_", SCHEDULERS.get,
          "cosine is torchtune's; linear/constant are llmkit's LambdaLR (transformers' formulas) in the recipe module"),
    Param("warmup_ratio", None, note="plan(): lr_scheduler.num_warmup_steps = ceil(ratio × total steps) (transformers' rule)"),
    Param("weight_decay", "optimizer.weight_decay"),
    Param("max_grad_norm", "clip_grad_norm"),
    Param("max_seq_length", "tokenizer.max_seq_len", note="longer examples are cut at the end"),
    Param("gradient_checkpointing", "enable_activation_checkpointing"),
    Param("precision", "dtype", _precision, "auto → bf16 on a GPU, fp32 on CPU (build_config's device)", refuse=_refuse_fp16),
    Param("seed", "seed", note="also the data order: the recipe's sampler seed (torchtune fixes it at 0)"),
    Param("split", None, note="llmkit splits before torchtune runs"),
    Param("checkpoint_steps", None, note="plan(): torchtune checkpoints at the end of each epoch only"),
    Param("eval_steps", None, note="validation loss before and after training", refuse=refuse_unless(None, NO_STEP_EVAL)),
    Param("dpo", None, note="method dpo is not offered", refuse=refuse_unless(DPOOptions(), "method dpo is not offered by torchtune here")),
    Param("grpo", None, note="method grpo is not offered"),
], fixed={
    "shuffle": True, "compile": False, "optimizer_in_bwd": False,
    "enable_activation_offloading": False,
    "log_every_n_steps": 1, "log_peak_memory_stats": False,
})

LORA = Mapping(LoraConfig, [
    Param("r", "model.lora_rank"),
    Param("alpha", "model.lora_alpha"),
    Param("dropout", "model.lora_dropout"),
    Param("target_modules", None, note="model.lora_attn_modules and model.apply_lora_to_mlp (lora_modules())",
          refuse=_refuse_targets),
], fixed={"model.apply_lora_to_output": False, "model.use_dora": False, "model.quantize_base": False})


@dataclass(frozen=True)
class Plan:
    """How the job's length becomes torchtune's: `epochs` epochs of `max_steps_per_epoch` optimizer steps."""

    steps_per_epoch: int  # torchtune's: len(dataloader) // gradient_accumulation_steps (drop_last=True)
    epochs: int
    max_steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    checkpoint_every: int  # steps between torchtune's (end-of-epoch) checkpoints


def plan(job: TuneJob, n_train: int) -> Plan:
    per_epoch = n_train // job.batch_size // job.gradient_accumulation_steps
    if per_epoch == 0:
        raise UnsupportedFeatureError(BACKEND, "batch_size", (
            f"{n_train} training examples make no full optimizer step of batch_size {job.batch_size} × "
            f"gradient_accumulation_steps {job.gradient_accumulation_steps}; torchtune drops partial batches"))
    if job.max_steps is not None:
        total, asked = job.max_steps, f"max_steps={job.max_steps}"
    else:
        total, asked = math.ceil(job.epochs * per_epoch), f"epochs={job.epochs} ({math.ceil(job.epochs * per_epoch)} steps)"
    if total <= per_epoch:
        epochs, cut = 1, total
    elif total % per_epoch == 0:
        epochs, cut = total // per_epoch, per_epoch
    else:
        raise UnsupportedFeatureError(BACKEND, "max_steps" if job.max_steps is not None else "epochs", (
            f"{asked}: torchtune runs whole epochs (each cut at max_steps_per_epoch) and one epoch here is "
            f"{per_epoch} steps; ask for at most {per_epoch} steps or a multiple of {per_epoch}"))
    if job.checkpoint_steps < cut and total > job.checkpoint_steps and "checkpoint_steps" in job.model_fields_set:
        raise UnsupportedFeatureError(BACKEND, "checkpoint_steps", (
            f"checkpoint_steps={job.checkpoint_steps}: torchtune 0.6.1 checkpoints only at the end of each epoch, "
            f"every {cut} steps for this job; set checkpoint_steps to at least {cut}"))
    warmup = 0 if job.lr_scheduler == "constant" else math.ceil(job.warmup_ratio * total)
    return Plan(steps_per_epoch=per_epoch, epochs=epochs, max_steps_per_epoch=cut, total_steps=total,
                warmup_steps=warmup, checkpoint_every=cut)


def refusals(job: TuneJob) -> None:
    """Refuse, with `UnsupportedFeatureError`, what needs no data nor model to judge."""
    for name, reason in JOB.refusals(job):
        raise UnsupportedFeatureError(BACKEND, name, reason)
    if job.lora is not None:
        for name, reason in LORA.refusals(job.lora):
            raise UnsupportedFeatureError(BACKEND, f"lora.{name}", reason)
    if job.method == "sft" and job.artifact != "merged":
        raise UnsupportedFeatureError(BACKEND, f"artifact={job.artifact}", "method sft hands over merged weights")
    if job.artifact == "gguf":
        raise UnsupportedFeatureError(BACKEND, "artifact=gguf", "convert the merged folder with llmkit.quantize('llamacpp', ...)")


def model_config(folder: Path) -> dict[str, Any]:
    """The model builder's arguments from a Hugging Face config.json; refuses what torchtune's Llama-3.2
    builder (the Llama architecture with a scale_factor of 1, i.e. plain RoPE) cannot reproduce."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UnsupportedFeatureError(BACKEND, "model", f"{folder} holds no config.json (a local Hugging Face folder is needed)")
    cfg = json.loads(path.read_text())
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" or archs not in ([], ["LlamaForCausalLM"]):
        raise UnsupportedFeatureError(BACKEND, "model", f"{folder}: model_type {cfg.get('model_type')!r} {archs}; "
                                                        "this adapter maps Llama-architecture models only")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise UnsupportedFeatureError(BACKEND, "model", f"{folder}: {flag}=true; torchtune's Llama builder has no biases")
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedFeatureError(BACKEND, "model", f"{folder}: hidden_act {cfg['hidden_act']!r}; torchtune's Llama MLP is SiLU")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or rope.get("rope_type") or "default"
    if rope_type != "default":
        raise UnsupportedFeatureError(BACKEND, "model", f"{folder}: RoPE scaling {rope_type!r} is not mapped (plain RoPE only)")
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    if cfg.get("head_dim", hidden // heads) != hidden // heads:
        raise UnsupportedFeatureError(BACKEND, "model", f"{folder}: head_dim {cfg['head_dim']} ≠ hidden_size / heads")
    return {
        "vocab_size": cfg["vocab_size"],
        "num_layers": cfg["num_hidden_layers"],
        "num_heads": heads,
        "num_kv_heads": cfg.get("num_key_value_heads", heads),
        "embed_dim": hidden,
        "max_seq_len": cfg.get("max_position_embeddings", 2048),
        "intermediate_dim": cfg["intermediate_size"],
        "attn_dropout": float(cfg.get("attention_dropout", 0.0)),
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-5)),
        "rope_base": float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        "scale_factor": 1,  # Llama3ScaledRoPE with factor 1 leaves every frequency as it is: plain RoPE
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
    }


def checkpoint_files(folder: Path) -> list[str]:
    folder = Path(folder)
    files = sorted(p.name for p in folder.glob("*.safetensors")) or sorted(p.name for p in folder.glob("pytorch_model*.bin"))
    if not files:
        raise UnsupportedFeatureError(BACKEND, "model", f"{folder} holds no *.safetensors or pytorch_model*.bin weights")
    return files


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _dataset(path: Path) -> dict[str, Any]:
    return {"_component_": "torchtune.datasets.instruct_dataset", "source": "json", "data_files": str(path),
            "split": "train", "column_map": {"input": "prompt", "output": "completion"},
            "train_on_input": False, "new_system_prompt": None, "packed": False}


def build_config(job: TuneJob, *, model_folder: Path, model: dict[str, Any], n_train: int, n_validation: int,
                 checkpoints: Path, data_dir: Path, resume: bool = False, device: str = "cpu") -> tuple[dict[str, Any], Plan]:
    """The full recipe config (a dict for the YAML file) and the plan behind its length. `device`: "cpu" or
    "cuda" (`env.device()`: the environment's torch and the machine decide)."""
    refusals(job)
    job = job.model_copy(update={"precision": resolve_precision(job.precision, device)})
    if job.max_seq_length > model["max_seq_len"]:
        raise UnsupportedFeatureError(BACKEND, "max_seq_length", f"{job.max_seq_length} exceeds the model's "
                                                                  f"max_position_embeddings {model['max_seq_len']}")
    steps = plan(job, n_train)
    flat = JOB.to_native(job, BACKEND)
    lora = job.method == "lora"
    builder = "torchtune.models.llama3_2._component_builders." + ("lora_llama3_2" if lora else "llama3_2")
    config = _nest({k: v for k, v in flat.items() if "." in k})
    _merge(config, {k: v for k, v in flat.items() if "." not in k})
    config["model"] = {"_component_": builder, **model, **config.get("model", {})}
    if lora:
        attn, mlp = lora_modules(job.lora.target_modules)
        _merge(config, _nest(LORA.to_native(job.lora, BACKEND)))
        config["model"].update(lora_attn_modules=attn, apply_lora_to_mlp=mlp)
    else:
        config.pop("save_adapter_weights_only")
    config.update(
        device=device,
        output_dir=str(checkpoints),
        epochs=steps.epochs,
        max_steps_per_epoch=steps.max_steps_per_epoch,
        resume_from_checkpoint=resume,
        tokenizer={"_component_": "llmkit_tt_recipe.TextTokenizer", "path": str(model_folder), **config["tokenizer"]},
        checkpointer={"_component_": "torchtune.training.FullModelHFCheckpointer", "checkpoint_dir": str(model_folder),
                      "checkpoint_files": checkpoint_files(model_folder), "output_dir": str(checkpoints),
                      "model_type": "LLAMA3_2", "recipe_checkpoint": None, "adapter_checkpoint": None,
                      "safe_serialization": True},
        dataset=_dataset(data_dir / "train.jsonl"),
        optimizer={**ADAMW, **config["optimizer"]},
        lr_scheduler={**config["lr_scheduler"], "num_warmup_steps": steps.warmup_steps},
        loss={"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        metric_logger={"_component_": "torchtune.training.metric_logging.StdoutLogger"},
        profiler={"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
    )
    config["llmkit"].update(steps_per_epoch=steps.max_steps_per_epoch,
                            validation=_dataset(data_dir / "validation.jsonl") if n_validation else None)
    return config, steps
