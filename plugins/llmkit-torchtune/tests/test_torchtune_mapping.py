"""TuneJob → torchtune recipe config, without torchtune: every hyper-parameter lands in the config, the
plan of epochs/steps matches torchtune's arithmetic, and what torchtune cannot honour is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.errors import UnsupportedFeatureError
from llmkit.tuner import TuneJob
from llmkit_torchtune import mapping
from llmkit_torchtune.tuner import parse_llmkit_line, parse_step_line

SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "mlp_bias": False,
    "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
    "num_hidden_layers": 30, "num_key_value_heads": 3, "head_dim": 64, "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True, "vocab_size": 49152, "attention_dropout": 0.0,
}


@pytest.fixture
def model_folder(tmp_path) -> Path:
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def job(**fields) -> TuneJob:
    return TuneJob(**{"model": "m", "data": "d.json", "output_dir": "/tmp/out", **fields})


def build(folder: Path, n_train: int = 100, n_validation: int = 5, **fields):
    j = job(**fields)
    return mapping.build_config(j, model_folder=folder, model=mapping.model_config(folder), n_train=n_train,
                                n_validation=n_validation, checkpoints=Path("/tmp/out/checkpoints"),
                                data_dir=Path("/tmp/out/data"))


def test_tables_cover_every_field():
    # Mapping() refuses a table that misses a field: importing the module is the check; here, readably.
    assert {row.name for row in mapping.JOB.rows} == set(TuneJob.model_fields)
    assert {row["llmkit"] for row in mapping.LORA.describe()} >= {"r", "alpha", "dropout", "target_modules"}


def test_every_hyper_parameter_is_written(model_folder):
    config, plan = build(model_folder, n_train=103, batch_size=4, gradient_accumulation_steps=2, learning_rate=3e-4,
                         lr_scheduler="cosine", warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=0.5,
                         max_seq_length=300, precision="bf16", seed=7, epochs=2, checkpoint_steps=12,
                         gradient_checkpointing=True,
                         lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]})
    assert plan.steps_per_epoch == 103 // 4 // 2 == 12
    assert (config["epochs"], config["max_steps_per_epoch"]) == (2, 12)
    assert config["batch_size"] == 4 and config["gradient_accumulation_steps"] == 2
    assert config["optimizer"] == {"_component_": "torch.optim.AdamW", "lr": 3e-4, "weight_decay": 0.01,
                                   "betas": [0.9, 0.999], "eps": 1e-8, "amsgrad": False, "fused": True}
    assert config["lr_scheduler"] == {"_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
                                      "num_warmup_steps": 3}  # ceil(0.1 × 24)
    assert config["clip_grad_norm"] == 0.5
    assert config["tokenizer"]["max_seq_len"] == 300
    assert config["dtype"] == "bf16" and config["seed"] == 7 and config["device"] == "cpu"
    assert config["enable_activation_checkpointing"] is True
    model = config["model"]
    assert model["_component_"].endswith("lora_llama3_2")
    assert (model["lora_rank"], model["lora_alpha"], model["lora_dropout"]) == (4, 8, 0.1)
    assert model["lora_attn_modules"] == ["q_proj", "v_proj"] and model["apply_lora_to_mlp"] is False
    assert model["apply_lora_to_output"] is False
    assert (model["num_heads"], model["num_kv_heads"], model["embed_dim"], model["rope_base"]) == (9, 3, 576, 100000.0)
    assert model["scale_factor"] == 1 and model["tie_word_embeddings"] is True
    assert config["checkpointer"]["checkpoint_files"] == ["model.safetensors"]
    assert config["checkpointer"]["output_dir"] == "/tmp/out/checkpoints"
    assert config["dataset"]["data_files"] == "/tmp/out/data/train.jsonl" and config["dataset"]["train_on_input"] is False
    assert config["llmkit"]["validation"]["data_files"] == "/tmp/out/data/validation.jsonl"
    assert config["llmkit"] == {**config["llmkit"], "recipe": "lora_finetune_single_device", "steps_per_epoch": 12}
    assert config["save_adapter_weights_only"] is True


def test_defaults_are_sent_too(model_folder):
    config, _ = build(model_folder, n_train=16, batch_size=8)
    assert config["optimizer"]["weight_decay"] == 0.0  # torch's AdamW would use 0.01
    assert config["lr_scheduler"]["_component_"] == "llmkit_tt_recipe.linear_schedule_with_warmup"
    assert config["model"]["lora_attn_modules"] == ["q_proj", "k_proj", "v_proj", "output_proj"]
    assert config["model"]["apply_lora_to_mlp"] is True  # all-linear: every linear layer but the output
    assert config["dtype"] == "fp32"  # auto, in the CPU environment


def test_sft_uses_the_full_recipe(model_folder):
    config, _ = build(model_folder, n_train=16, batch_size=8, method="sft")
    assert config["llmkit"]["recipe"] == "full_finetune_single_device"
    assert config["model"]["_component_"].endswith("._component_builders.llama3_2")
    assert not any(key.startswith("lora") for key in config["model"]) and "save_adapter_weights_only" not in config


@pytest.mark.parametrize(("fields", "n_train", "expected"), [
    ({"max_steps": 5}, 100, (1, 5, 5)),
    ({"max_steps": 24}, 100, (2, 12, 24)),       # 12 steps an epoch (batch 8, 100 examples: 4 dropped)
    ({"epochs": 0.5}, 100, (1, 6, 6)),
    ({"epochs": 3}, 100, (3, 12, 36)),
])
def test_plan(fields, n_train, expected):
    plan = mapping.plan(job(**fields), n_train)
    assert (plan.epochs, plan.max_steps_per_epoch, plan.total_steps) == expected


@pytest.mark.parametrize(("fields", "feature"), [
    ({"max_steps": 13}, "max_steps"),
    ({"epochs": 1.5}, "epochs"),
    ({"checkpoint_steps": 5}, "checkpoint_steps"),
    ({"batch_size": 200}, "batch_size"),
])
def test_plan_refusals(fields, feature):
    with pytest.raises(UnsupportedFeatureError) as info:
        mapping.plan(job(**fields), 100)
    assert info.value.feature == feature and info.value.backend == "torchtune"


def test_default_checkpoint_interval_is_not_refused():
    # checkpoint_steps left at its default: torchtune's epoch-end checkpoints are used (and announced).
    assert mapping.plan(job(), 1000).checkpoint_every == 125


@pytest.mark.parametrize(("fields", "feature"), [
    ({"precision": "fp16"}, "precision"),
    ({"eval_steps": 10}, "eval_steps"),
    ({"lora": {"target_modules": ["q_proj", "gate_proj"]}}, "lora.target_modules"),
    ({"lora": {"target_modules": ["q_proj", "lm_head"]}}, "lora.target_modules"),
    ({"lora": {"target_modules": ["query"]}}, "lora.target_modules"),
    ({"method": "sft", "artifact": "gguf"}, "artifact=gguf"),
    ({"dpo": {"beta": 0.5}}, "dpo"),
])
def test_refusals(fields, feature):
    with pytest.raises(UnsupportedFeatureError) as info:
        mapping.refusals(job(**fields))
    assert info.value.feature == feature


def test_mlp_targets_together():
    assert mapping.lora_modules(["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]) == (["q_proj", "output_proj"], True)
    mapping.refusals(job(lora={"target_modules": ["k_proj", "gate_proj", "up_proj", "down_proj"]}))


@pytest.mark.parametrize(("change", "reason"), [
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "Llama-architecture"),
    ({"attention_bias": True}, "biases"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling"),
])
def test_model_refusals(tmp_path, change, reason):
    (tmp_path / "config.json").write_text(json.dumps({**SMOLLM2_CONFIG, **change}))
    with pytest.raises(UnsupportedFeatureError, match=reason):
        mapping.model_config(tmp_path)


def test_hub_ids_are_refused(tmp_path):
    with pytest.raises(UnsupportedFeatureError, match="local Hugging Face folder"):
        mapping.model_config(tmp_path / "HuggingFaceTB" / "SmolLM2-135M")


def test_max_seq_length_beyond_the_model(model_folder):
    with pytest.raises(UnsupportedFeatureError, match="max_position_embeddings"):
        build(model_folder, max_seq_length=9000)


def test_log_lines():
    assert parse_step_line("Step 3 | loss:2.125 lr:0.0002 tokens_per_second_per_gpu:310.5 grad_norm:tensor(0.7500) ") == (
        3, {"loss": 2.125, "lr": 0.0002, "tokens_per_second_per_gpu": 310.5, "grad_norm": 0.75})
    assert parse_step_line("Step 12 | loss:1.5e-01 lr:1e-05 ") == (12, {"loss": 0.15, "lr": 1e-05})
    assert parse_step_line("1|3|Loss: 2.1") is None
    # tqdm's bar (on stderr, merged) is not ended by a newline before the logger's line
    tqdm = "1|1|Loss: 0.769:  10%|█         | 1/10 [01:02<09:22, 62.54s/it]Step 1 | loss:0.769 lr:0.0009 "
    assert parse_step_line(tqdm) == (1, {"loss": 0.769, "lr": 0.0009})
    assert parse_llmkit_line('LLMKIT eval {"phase": "before", "loss": 2.5}') == ("eval", {"phase": "before", "loss": 2.5})
    assert parse_llmkit_line("INFO:torchtune.utils._logging:Model is initialized") is None


def test_on_a_gpu_the_recipe_runs_there_and_auto_is_bf16(model_folder):
    j = job()
    config, _ = mapping.build_config(j, model_folder=model_folder, model=mapping.model_config(model_folder), n_train=100,
                                     n_validation=5, checkpoints=Path("/tmp/out/checkpoints"), data_dir=Path("/tmp/out/data"),
                                     device="cuda")
    assert config["device"] == "cuda" and config["dtype"] == "bf16"  # torchtune's own default on a GPU
    config, _ = mapping.build_config(job(precision="fp32"), model_folder=model_folder, model=mapping.model_config(model_folder),
                                     n_train=100, n_validation=5, checkpoints=Path("/tmp/out/checkpoints"),
                                     data_dir=Path("/tmp/out/data"), device="cuda")
    assert config["dtype"] == "fp32"  # asked for: kept
