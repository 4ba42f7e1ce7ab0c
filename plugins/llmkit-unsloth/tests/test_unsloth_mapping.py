"""The Unsloth mapping, without a GPU: against a snapshot of Unsloth 2026.10.9's signatures and of the training
defaults its patched TRL configs put in (tests/unsloth_signatures.json, tools/snapshot_signatures.py)."""

import dataclasses
import json
from pathlib import Path

import pytest

from llmkit.errors import UnsupportedFeatureError
from llmkit.tuner import TuneJob
from llmkit_trl.mapping import training_arguments
from llmkit_unsloth import mapping

SNAPSHOT = json.loads((Path(__file__).parent / "unsloth_signatures.json").read_text())


def job(**fields) -> TuneJob:
    return TuneJob(**{"model": "smollm2-135m-instruct", "data": "d.json", "output_dir": "out", **fields})


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_every_argument_sent_is_an_upstream_parameter(method):
    j = job(method=method)
    sent = mapping.model_arguments(j, "/models/base", "bf16", "unsloth")
    assert set(sent) <= set(SNAPSHOT["from_pretrained"]), set(sent) - set(SNAPSHOT["from_pretrained"])
    peft = mapping.peft_arguments(j, "unsloth")
    assert set(peft) <= set(SNAPSHOT["get_peft_model"]), set(peft) - set(SNAPSHOT["get_peft_model"])


def test_upstream_defaults_that_differ_from_the_job_are_overridden():
    # Unsloth loads 4-bit unless told, seeds LoRA with 3407, defaults alpha to 16 and max_seq_length to 2048.
    assert SNAPSHOT["from_pretrained"]["load_in_4bit"] == "True"
    j = job(method="lora", seed=7, max_seq_length=256, lora={"r": 8, "alpha": 16, "dropout": 0.0})
    model = mapping.model_arguments(j, "/models/base", "bf16", "unsloth")
    assert (model["load_in_4bit"], model["load_in_16bit"], model["random_state"], model["max_seq_length"]) == (False, True, 7, 256)
    assert model["use_exact_model_name"] is True and model["model_name"] == "/models/base"
    peft = mapping.peft_arguments(j, "unsloth")
    assert (peft["r"], peft["lora_alpha"], peft["lora_dropout"], peft["random_state"]) == (8, 16, 0.0, 7)
    qlora = mapping.model_arguments(job(method="qlora"), "/m", "bf16", "unsloth")
    assert (qlora["load_in_4bit"], qlora["load_in_16bit"]) == (True, False)


def test_gradient_checkpointing_modes():
    off, on = job(gradient_checkpointing=False), job(gradient_checkpointing=True)
    assert mapping.peft_arguments(off, "unsloth")["use_gradient_checkpointing"] is False
    assert mapping.peft_arguments(on, "unsloth")["use_gradient_checkpointing"] == "unsloth"
    assert mapping.peft_arguments(on, "standard")["use_gradient_checkpointing"] is True
    assert mapping.model_arguments(on, "/m", "bf16", "standard")["use_gradient_checkpointing"] is True


def test_precision():
    assert mapping.resolve_precision(job(precision="auto"), bf16_supported=True) == "bf16"
    assert mapping.resolve_precision(job(precision="auto"), bf16_supported=False) == "fp16"
    with pytest.raises(UnsupportedFeatureError, match="unsloth.*precision=fp32"):
        mapping.resolve_precision(job(precision="fp32"), bf16_supported=True)
    with pytest.raises(UnsupportedFeatureError, match="precision=bf16"):
        mapping.resolve_precision(job(precision="bf16"), bf16_supported=False)


# Unsloth's replacement values that equal TRL's own default, so sending nothing changes nothing; and the ones
# that do not concern an SFT run. Every other replaced field must be sent explicitly.
SAME_AS_TRL = {"logging_steps", "report_to", "include_tokens_per_second",
               "auto_find_batch_size", "dataloader_pin_memory", "bf16", "fp16"}


def test_training_arguments_pin_every_default_unsloth_replaces():
    from trl import SFTConfig

    fields = {f.name: f for f in dataclasses.fields(SFTConfig)}
    sent = training_arguments(job(method="lora"), "cuda", "bf16")
    for name, unsloth_value in SNAPSHOT["config_replacements"].items():
        if name not in fields:
            continue  # not an SFTConfig field (GRPO's, or Unsloth's own)
        if name in SAME_AS_TRL and name not in sent:
            default = fields[name].default
            assert repr(default) == unsloth_value or str(default) == unsloth_value.strip("'"), (name, default, unsloth_value)
            continue
        assert name in sent, f"Unsloth replaces {name} with {unsloth_value} when it is absent: llmkit must send it"
    assert sent["optim"] != "adamw_8bit" and sent["gradient_accumulation_steps"] == 1 and sent["padding_free"] is False
