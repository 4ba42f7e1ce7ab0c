"""TuneJob → axolotl config, without axolotl: every hyper-parameter is written explicitly, refusals come before
any work, the bridge plugin's log lines become TuneProgress events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import llmkit
from llmkit.data import Example
from llmkit.errors import UnsupportedFeatureError
from llmkit.tuner import TuneJob
from llmkit_axolotl.mapping import JOB, LORA_KERNELS, axolotl_records, build_config, resolve_precision, total_steps, warmup_steps
from llmkit_axolotl.tuner import AxolotlTuner, parse_event, to_progress


@pytest.fixture
def alpaca(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": "Add 2 and 2.", "input": "", "output": "4"}] * 10))
    return path


@pytest.fixture
def preference(tmp_path):
    path = tmp_path / "pref.json"
    path.write_text(json.dumps([{"instruction": "Say hi.", "chosen": "Hi!", "rejected": "No."}] * 10))
    return path


def _config(job: TuneJob, n_train: int = 100, **overrides):
    kwargs = dict(base_model="/models/base", precision="fp32", n_train=n_train, data_dir=Path("/run/axolotl/data"),
                  work_dir=Path("/run/axolotl"), checkpoints=Path("/run/checkpoints"), has_validation=True)
    kwargs.update(overrides)
    return build_config(job, **kwargs)


def test_every_job_field_has_a_row():
    assert {row.name for row in JOB.rows} == set(TuneJob.model_fields)
    described = JOB.describe()
    assert all(row["note"] or row["native"] != "(llmkit)" for row in described)


def test_every_hyper_parameter_is_written(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path / "o", lora={"r": 8, "alpha": 24, "dropout": 0.1,
                  "target_modules": ["q_proj", "v_proj"]}, epochs=2, batch_size=4, gradient_accumulation_steps=2,
                  learning_rate=3e-4, lr_scheduler="cosine", warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=0.5,
                  max_seq_length=128, seed=7, checkpoint_steps=5, eval_steps=3, gradient_checkpointing=True)
    config = _config(job, n_train=100)
    expected = {
        "base_model": "/models/base", "adapter": "lora", "lora_r": 8, "lora_alpha": 24, "lora_dropout": 0.1,
        "lora_target_linear": False, "lora_target_modules": ["q_proj", "v_proj"], "num_epochs": 2.0, "max_steps": None,
        "micro_batch_size": 4, "eval_batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 3e-4,
        "lr_scheduler": "cosine", "weight_decay": 0.01, "max_grad_norm": 0.5, "sequence_len": 128, "seed": 7,
        "save_steps": 5, "eval_steps": 3, "bf16": False, "fp16": False, "tf32": False, "gradient_checkpointing": True,
        "rl": None, "output_dir": "/run/checkpoints", "resume_from_checkpoint": None,
        # 100 examples / 4 = 25 batches, / 2 = 13 steps an epoch (the last one partial), 26 in all; 10 % → 3.
        "warmup_steps": 3,
        # axolotl's own defaults, neutralised
        "optimizer": "adamw_torch_fused", "train_on_inputs": False, "sample_packing": False, "val_set_size": 0.0,
        "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False, "lora_embedding_kernel": False,
        "excess_length_strategy": "truncate", "shuffle_merged_datasets": False, "logging_steps": 1,
        "auto_resume_from_checkpoints": False, "plugins": ["llmkit_axolotl_bridge.LLMKitBridgePlugin"],
    }
    assert {key: config[key] for key in expected} == expected
    assert "rl_beta" not in config
    assert config["datasets"] == [{"path": "/run/axolotl/data/train.jsonl", "ds_type": "json", "type": "input_output",
                                   "split": "train"}]
    assert config["test_datasets"][0]["path"] == "/run/axolotl/data/validation.jsonl"
    assert yaml.safe_load(yaml.safe_dump(config)) == config  # the YAML round-trips


def test_defaults_are_llmkits_not_axolotls(tmp_path, alpaca):
    config = _config(TuneJob(model="m", data=alpaca, output_dir=tmp_path / "o"))
    assert config["lr_scheduler"] == "linear" and config["warmup_steps"] == 0  # axolotl: cosine, 3 % warmup
    assert config["lora_r"] == 16 and config["lora_alpha"] == 32 and config["lora_dropout"] == 0.05
    assert config["lora_target_linear"] is True and config["lora_target_modules"] is None
    assert config["learning_rate"] == 2e-4 and config["micro_batch_size"] == 8 and config["sequence_len"] == 512


def test_lora_kernels_are_axolotls_choice_on_a_gpu(tmp_path, alpaca):
    """Off on CPU (they allocate on "cuda"); on a GPU axolotl decides, as it does when run directly."""
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path / "o")
    assert {key: _config(job)[key] for key in LORA_KERNELS} == dict.fromkeys(LORA_KERNELS, False)
    assert not set(LORA_KERNELS) & set(_config(job, precision="bf16", cuda=True))


def test_full_sft_and_dpo(tmp_path, alpaca, preference):
    sft = _config(TuneJob(model="m", data=alpaca, output_dir=tmp_path / "a", method="sft"))
    assert sft["adapter"] is None and sft["rl"] is None and sft["datasets"][0]["type"] == "input_output"
    dpo = _config(TuneJob(model="m", data=preference, output_dir=tmp_path / "b", method="dpo", lora={"r": 4},
                          dpo={"beta": 0.2}))
    assert dpo["rl"] == "dpo" and dpo["rl_beta"] == 0.2 and dpo["adapter"] == "lora" and dpo["lora_r"] == 4
    assert dpo["datasets"][0]["type"] == "passthrough"


def test_no_validation_split_means_no_eval(tmp_path, alpaca):
    config = _config(TuneJob(model="m", data=alpaca, output_dir=tmp_path / "o", eval_steps=5), has_validation=False)
    assert config["test_datasets"] is None and config["eval_strategy"] == "no" and config["eval_steps"] is None


def test_resume_and_precision(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path / "o", precision="bf16")
    config = _config(job, precision="bf16", resume_from=Path("/run/checkpoints/checkpoint-50"))
    assert config["resume_from_checkpoint"] == "/run/checkpoints/checkpoint-50"
    assert (config["bf16"], config["fp16"], config["tf32"]) == (True, False, False)
    assert resolve_precision(TuneJob(model="m", data=alpaca, output_dir=tmp_path), cuda=False, cuda_bf16=False) == "fp32"
    assert resolve_precision(TuneJob(model="m", data=alpaca, output_dir=tmp_path), cuda=True, cuda_bf16=True) == "bf16"
    with pytest.raises(UnsupportedFeatureError, match="fp16"):
        resolve_precision(TuneJob(model="m", data=alpaca, output_dir=tmp_path, precision="fp16"), cuda=False, cuda_bf16=False)
    with pytest.raises(UnsupportedFeatureError, match="bf16"):
        resolve_precision(job, cuda=False, cuda_bf16=False)


def test_steps_and_warmup_follow_transformers(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path, batch_size=8, gradient_accumulation_steps=4, epochs=1.5)
    assert total_steps(job, 100) == 6  # 13 batches → 4 steps an epoch → ceil(1.5 × 4)
    assert total_steps(job.model_copy(update={"max_steps": 17}), 100) == 17
    assert warmup_steps(job.model_copy(update={"warmup_ratio": 0.5}), 100) == 3
    with pytest.raises(UnsupportedFeatureError, match="1 warmup step"):
        warmup_steps(job.model_copy(update={"warmup_ratio": 0.1}), 100)  # ceil(0.6) = 1: axolotl would make it 2


def test_refused_before_any_work(tmp_path, alpaca, preference):
    tuner = AxolotlTuner(env=tmp_path / "no-env")
    out = tmp_path / "out"
    with pytest.raises(UnsupportedFeatureError, match="fp16"):
        tuner.finetune(TuneJob(model="m", data=alpaca, output_dir=out, precision="fp16"))
    with pytest.raises(UnsupportedFeatureError, match="artifact=gguf"):
        tuner.finetune(TuneJob(model="m", data=alpaca, output_dir=out, artifact="gguf"))
    with pytest.raises(UnsupportedFeatureError, match="data_format"):
        tuner.finetune(TuneJob(model="m", data=alpaca, output_dir=out, data_format="chat"))
    with pytest.raises(UnsupportedFeatureError, match="qlora"):
        tuner.finetune(TuneJob(model="m", data=alpaca, output_dir=out, method="qlora"))
    with pytest.raises(UnsupportedFeatureError, match="neither a catalog model"):
        tuner.finetune(TuneJob(model="org/not-here", data=alpaca, output_dir=out, precision="fp32"))
    assert not out.exists()  # nothing claimed, no environment created
    assert not (tmp_path / "no-env").exists()


def test_dataset_rows():
    sft = axolotl_records(Example(0, "### Instruction:\nAdd.\n\n### Response:\n", completion="4"), "lora", "<|im_end|>")
    assert sft == {"segments": [{"label": False, "text": "### Instruction:\nAdd.\n\n### Response:\n"},
                                {"label": True, "text": "4<|im_end|>"}]}
    dpo = axolotl_records(Example(0, "P", chosen="a", rejected="b"), "dpo", "<|im_end|>")
    assert dpo == {"prompt": "P", "chosen": "a", "rejected": "b"}


def test_log_lines_become_progress():
    line = ('\r 40%|####| 4/10 [00:04<00:06]LLMKIT_EVENT {"kind": "log", "step": 4, "max_steps": 10, "epoch": 0.4, '
            '"logs": {"loss": 1.25, "grad_norm": 0.9, "learning_rate": 0.0001, "epoch": 0.4}}')
    event = to_progress(parse_event(line))
    assert (event.step, event.total_steps, event.loss, event.learning_rate, event.epoch) == (4, 10, 1.25, 1e-4, 0.4)
    assert event.metrics == {"grad_norm": 0.9} and event.eval_loss is None
    evaluation = to_progress(parse_event('LLMKIT_EVENT {"kind": "log", "step": 0, "max_steps": 10, "epoch": 0, '
                                         '"logs": {"eval_loss": 2.5, "eval_runtime": 3.0}}'))
    assert evaluation.eval_loss == 2.5 and evaluation.loss is None and evaluation.message == "eval"
    assert parse_event("[2026-11-27 18:43:54] [INFO] [axolotl.train] Starting trainer...") is None
    assert parse_event("LLMKIT_EVENT {broken") is None
    assert to_progress({"kind": "save", "step": 4}) is None
    assert to_progress({"kind": "log", "step": 8, "logs": {"train_loss": 1.1, "train_runtime": 9.0}}) is None


def test_registered_as_a_tuner():
    from llmkit.plugins import tuners

    spec = tuners()["axolotl"]
    assert spec.kind == "tuner" and spec.load_class() is AxolotlTuner
    assert AxolotlTuner.methods == {"lora", "sft", "dpo"}
    assert isinstance(llmkit.tuner.get_tuner("axolotl"), AxolotlTuner)
