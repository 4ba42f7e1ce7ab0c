"""The TRL mapping, without training: every job field has a row, every hyper-parameter is explicit, and
what cannot run is refused before any work."""

import json

import pytest

import llmkit
from llmkit.tuner import TuneJob
from llmkit_trl.mapping import TRAINING, check_grpo_batch, dataset_rows, peft_arguments, resolve_precision, training_arguments
from llmkit.data import Example


@pytest.fixture
def alpaca(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(20)]))
    return path


def test_every_field_of_the_job_has_a_row():
    assert {row.name for row in TRAINING.rows} == set(TuneJob.model_fields)


def test_hyper_parameters_are_sent_explicitly(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path / "out", max_steps=7, batch_size=3,
                  gradient_accumulation_steps=2, learning_rate=1e-3, lr_scheduler="cosine", warmup_ratio=0.1,
                  max_seq_length=128, seed=5, checkpoint_steps=4, eval_steps=2)
    args = training_arguments(job, "cpu", "fp32")
    expected = {"max_steps": 7, "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2, "learning_rate": 1e-3,
                "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "max_length": 128, "seed": 5, "data_seed": 5,
                "save_steps": 4, "eval_steps": 2, "eval_strategy": "steps", "bf16": False, "fp16": False, "use_cpu": True,
                "gradient_checkpointing": False, "weight_decay": 0.0, "max_grad_norm": 1.0, "num_train_epochs": 1.0,
                "output_dir": str(tmp_path / "out" / "checkpoints"), "completion_only_loss": True}
    assert {k: args[k] for k in expected} == expected
    # TRL's own defaults that would otherwise apply silently (gradient checkpointing on, bf16 on) are overridden
    assert args["gradient_checkpointing"] is False and args["bf16"] is False
    no_eval = training_arguments(TuneJob(model="m", data=alpaca, output_dir=tmp_path / "o"), "cpu", "fp32")
    assert no_eval["eval_strategy"] == "no" and "eval_steps" not in no_eval and no_eval["max_steps"] == -1


def test_lora_arguments(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path, lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]})
    assert peft_arguments(job.lora) == {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"],
                                        "bias": "none", "task_type": "CAUSAL_LM"}


def test_precision(tmp_path, alpaca):
    job = lambda p: TuneJob(model="m", data=alpaca, output_dir=tmp_path, precision=p)  # noqa: E731
    assert resolve_precision(job("auto"), "cpu", False) == "fp32"
    assert resolve_precision(job("auto"), "cuda", True) == "bf16"
    assert resolve_precision(job("auto"), "cuda", False) == "fp32"
    with pytest.raises(llmkit.UnsupportedFeatureError, match="precision=bf16"):
        resolve_precision(job("bf16"), "cpu", False)


def test_grpo_group_must_divide_the_batch(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path, method="grpo", batch_size=6,
                  grpo={"rewards": ["exact_match"], "num_generations": 4})
    with pytest.raises(llmkit.InvalidRequestError, match="multiple of grpo.num_generations"):
        check_grpo_batch(job)
    args = training_arguments(job.model_copy(update={"batch_size": 8}), "cpu", "fp32")
    assert args["num_generations"] == 4 and args["max_completion_length"] == 64 and args["beta"] == 0.0


def test_dataset_rows():
    text = Example(0, "P", completion="C")
    chat = Example(1, ({"role": "user", "content": "hi"},), completion="hello")
    assert dataset_rows([text], "lora") == [{"prompt": "P", "completion": "C"}]
    assert dataset_rows([chat], "sft") == [{"prompt": [{"role": "user", "content": "hi"}],
                                            "completion": [{"role": "assistant", "content": "hello"}]}]
    assert dataset_rows([text], "grpo") == [{"prompt": "P", "reference": "C"}]
    assert dataset_rows([Example(2, "P", chosen="a", rejected="b")], "dpo") == [{"prompt": "P", "chosen": "a", "rejected": "b"}]


def test_refusals_come_before_any_work(tmp_path, alpaca):
    out = tmp_path / "out"
    with pytest.raises(llmkit.UnsupportedFeatureError, match="method=qlora") as info:
        llmkit.tune("trl", {"model": "m", "data": str(alpaca), "output_dir": str(out), "method": "qlora"}, device="cpu")
    assert info.value.backend == "trl"
    with pytest.raises(llmkit.UnsupportedFeatureError, match="precision=fp16"):
        llmkit.tune("trl", {"model": "m", "data": str(alpaca), "output_dir": str(out), "precision": "fp16"}, device="cpu")
    with pytest.raises(llmkit.InvalidRequestError, match="unknown reward"):
        llmkit.tune("trl", {"model": "m", "data": str(alpaca), "output_dir": str(out), "method": "grpo",
                            "grpo": {"rewards": ["no_such_reward"], "num_generations": 2}}, device="cpu")
    assert not out.exists()  # nothing was written


@pytest.mark.parametrize("method, fields", [
    ("lora", {}), ("sft", {}), ("dpo", {"lora": {"r": 4}}),
    ("grpo", {"lora": {"r": 4}, "batch_size": 4, "grpo": {"rewards": ["exact_match"], "num_generations": 2}}),
])
def test_trl_accepts_every_argument(tmp_path, alpaca, method, fields):
    """The arguments build TRL's own config classes (no unknown keyword, no value TRL rejects)."""
    import trl

    data = alpaca
    if method == "dpo":
        data = tmp_path / "pref.json"
        data.write_text(json.dumps([{"prompt": "p", "chosen": "a", "rejected": "b"}] * 4))
    job = TuneJob(model="m", data=data, output_dir=tmp_path / "out", method=method, max_steps=3, eval_steps=1, **fields)
    config_class = {"dpo": trl.DPOConfig, "grpo": trl.GRPOConfig}.get(method, trl.SFTConfig)
    config = config_class(**training_arguments(job, "cpu", "fp32"))
    assert config.learning_rate == job.learning_rate and config.max_steps == 3 and config.gradient_checkpointing is False
    assert config.bf16 is False and config.fp16 is False and config.per_device_train_batch_size == job.batch_size
    if method != "grpo":
        assert config.max_length == job.max_seq_length


def test_grpo_prompts_must_leave_room_for_the_completion(tmp_path, alpaca):
    from llmkit_trl.mapping import check_grpo_lengths

    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path, method="grpo", lora={"r": 4}, max_seq_length=64,
                  grpo={"rewards": ["exact_match"], "num_generations": 2, "max_completion_length": 32})
    examples = [Example(0, "short"), Example(7, "long")]
    with pytest.raises(llmkit.InvalidRequestError, match="record 7's prompt has 40 tokens"):
        check_grpo_lengths(examples, lambda e: 10 if e.prompt == "short" else 40, job)
