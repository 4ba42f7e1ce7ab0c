"""A real torchtune LoRA run of SmolLM2-135M on CPU (torchtune 0.6.1 in its own venv), interrupted after
its first epoch and resumed; the PEFT adapter it hands over is loaded with peft and checked against
torchtune's own numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmkit.errors import TuneError
from llmkit.tuner import TuneProgress, get_tuner

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "datasets" / "instruction-data.json"
STEPS_PER_EPOCH = 3

pytestmark = [pytest.mark.smollm2, pytest.mark.timeout(1200)]


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    if not DATA.exists():
        pytest.skip(f"{DATA} is absent (the ch. 7 instruction data, read from ../shared)")
    pytest.importorskip("peft")
    from llmkit_torchtune import env

    if not env.ready() and os.environ.get("LLMKIT_SKIP_TORCHTUNE_ENV"):
        pytest.skip(f"LLMKIT_SKIP_TORCHTUNE_ENV is set and torchtune's environment ({env.env_dir()}) is not made")
    # The shortest 10 of the first 200 records: 6 train, 4 validation (small batches keep CPU steps short).
    records = json.loads(DATA.read_text())[:200]
    records = sorted(records, key=lambda r: len(r["instruction"]) + len(r.get("input", "")) + len(r["output"]))[:10]
    folder = tmp_path_factory.mktemp("torchtune")
    (folder / "slice.json").write_text(json.dumps(records))
    return {
        "model": "smollm2-135m-instruct", "data": str(folder / "slice.json"), "output_dir": str(folder / "run"),
        "method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"},
        "split": {"train": 0.6, "test": 0.0}, "batch_size": 2, "epochs": 2, "learning_rate": 1e-3,
        "max_seq_length": 128, "checkpoint_steps": STEPS_PER_EPOCH, "seed": 0,
    }


@pytest.fixture(scope="module")
def runs(job):
    """(events of the interrupted run, events and result of the resumed one)."""
    first: list[TuneProgress] = []

    def stop_after_first_checkpoint(event: TuneProgress) -> None:
        first.append(event)
        if event.message.startswith("checkpoint saved"):
            raise Interrupt(f"stopped at step {event.step}")

    tuner = get_tuner("torchtune")
    with pytest.raises(TuneError, match="Interrupt"):
        tuner.finetune(job, on_progress=stop_after_first_checkpoint)
    # torchtune's process was ended with the run (it ran in a process group of its own)
    config = str(Path(job["output_dir"]) / "torchtune.yaml")
    assert not [p for p in Path("/proc").glob("[0-9]*") if config in _cmdline(p)]
    second: list[TuneProgress] = []
    result = tuner.finetune(job, on_progress=second.append)
    return first, second, result


def _cmdline(process: Path) -> str:
    try:
        return (process / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_interrupted_run_resumes(job, runs):
    first, second, result = runs
    checkpoints = Path(job["output_dir"]) / "checkpoints"
    assert [e.step for e in first if e.loss is not None] == [1, 2, 3]
    assert first[-1].message == f"checkpoint saved: {checkpoints / 'epoch_0'}"
    assert result.resumed_from_step == STEPS_PER_EPOCH
    assert [e.step for e in second if e.loss is not None] == [4, 5, 6]
    assert result.steps == 2 * STEPS_PER_EPOCH
    assert (checkpoints / "epoch_0" / "adapter_model.pt").exists() and (checkpoints / "epoch_1").is_dir()
    # The LR schedule continues where it stopped (linear decay to 0 over 6 steps, no warm-up).
    lrs = {e.step: e.learning_rate for e in first + second if e.learning_rate is not None}
    assert lrs[4] == pytest.approx(1e-3 * 2 / 6) and lrs[6] == pytest.approx(0.0)
    assert "resumed at step 3" in second[0].message


def test_loss_falls(runs):
    first, second, result = runs
    epoch1 = [e.loss for e in first if e.loss is not None and e.step <= STEPS_PER_EPOCH]
    epoch2 = [e.loss for e in second if e.loss is not None]
    assert sum(epoch2) / len(epoch2) < sum(epoch1) / len(epoch1)
    assert result.eval_loss_before is not None and result.eval_loss_after < result.eval_loss_before
    assert result.train_tokens and result.peak_memory_bytes and result.versions["torchtune"].startswith("0.6.1")
    assert result.precision == "fp32" and result.peak_memory_kind.endswith("(CPU)")  # auto, on this machine's CPU
    assert result.train_seconds and result.train_tokens / result.train_seconds == pytest.approx(result.tokens_per_second)


def test_adapter_loads_with_peft_and_changes_generation(job, runs):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = runs[2]
    adapter = result.path
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == result.base_model and Path(result.base_model, "config.json").exists()
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (8, 16, "CAUSAL_LM")
    tokenizer = AutoTokenizer.from_pretrained(result.base_model)
    model = AutoModelForCausalLM.from_pretrained(result.base_model, dtype=torch.float32).eval()
    records = [example.to_json() for example in result.split("validation")]
    prompt = tokenizer(records[0]["prompt"], return_tensors="pt")
    with torch.no_grad():
        base_ids = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    tuned = PeftModel.from_pretrained(model, str(adapter)).eval()
    # Every tensor of the file is loaded into the model, unchanged (30 layers × 7 modules × A, B).
    saved = load_file(adapter / "adapter_model.safetensors")
    parameters = dict(tuned.named_parameters())
    assert len(saved) == 30 * 7 * 2
    for key, tensor in saved.items():
        assert torch.equal(parameters[key.replace(".weight", ".default.weight")].detach(), tensor.float()), key
    with torch.no_grad():
        tuned_ids = tuned.generate(**prompt, max_new_tokens=20, do_sample=False)
    assert tuned_ids.tolist() != base_ids.tolist()
    # The same validation loss through transformers + PEFT as torchtune measured: conversion, tokenization
    # (prompt + completion + EOS, no template) and the prompt mask agree.
    total, count = 0.0, 0
    for record in records:
        p = tokenizer(record["prompt"]).input_ids
        c = tokenizer(record["completion"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = tuned(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1]
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(c), reduction="sum"))
        count += len(c)
    assert total / count == pytest.approx(result.eval_loss_after, rel=1e-4)
