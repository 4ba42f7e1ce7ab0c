"""A short real axolotl LoRA run handing over merged weights: axolotl trains the adapter, `axolotl merge-lora`
merges it, and the merged folder serves what base + adapter (PEFT, in the main environment) computes.

Not in the default suite (two axolotl processes: ≈2 min on two idle cores, 9 min at load 8): run it with
LLMKIT_SLOW_TUNER_TESTS=1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmkit_axolotl import env as axolotl_env

MODEL = "smollm2-135m-instruct"
pytestmark = [
    pytest.mark.smollm2,
    pytest.mark.skipif(os.environ.get("LLMKIT_SLOW_TUNER_TESTS") != "1", reason="slow: set LLMKIT_SLOW_TUNER_TESTS=1"),
    pytest.mark.skipif(not axolotl_env.is_ready(), reason="axolotl's environment is not created "
                       "(scripts/setup.sh or `python -m llmkit_axolotl.env`)"),
]


def test_lora_run_hands_over_axolotl_merged_weights(tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmkit
    from llmkit.tasks import alpaca_prompt

    records = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)} for a in range(2) for b in range(4)]
    data = tmp_path / "sums.json"
    data.write_text(json.dumps(records))
    job = {"model": MODEL, "data": str(data), "method": "lora", "artifact": "merged", "output_dir": str(tmp_path / "run"),
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": 2, "batch_size": 4, "learning_rate": 3e-3,
           "max_seq_length": 128, "precision": "fp32", "seed": 0, "split": {"train": 1.0, "test": 0.0}}
    result = llmkit.tune("axolotl", job)
    merged, adapter = result.path, Path(job["output_dir"]) / "checkpoints"  # axolotl's final adapter
    assert result.artifact == "merged" and merged == tmp_path / "run" / "merged" and result.steps == 2
    assert (merged / "config.json").is_file() and any(merged.glob("*.safetensors")) and (merged / "tokenizer.json").is_file()
    assert not any(merged.glob("adapter_*")), "the adapter was handed over instead of merged weights"

    prompt = alpaca_prompt({"instruction": "What is 1 plus 2?", "input": ""})
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    ids = tokenizer(prompt, return_tensors="pt").input_ids

    def logits(folder: Path) -> torch.Tensor:
        with torch.no_grad():
            return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)(ids).logits

    from peft import PeftModel

    base_model = AutoModelForCausalLM.from_pretrained(result.base_model, dtype=torch.float32)
    with torch.no_grad():
        base = base_model(ids).logits
        with_adapter = PeftModel.from_pretrained(base_model, str(adapter))(ids).logits
    from_merged = logits(merged)
    assert (with_adapter - base).abs().max() > 1e-3, "two steps at lr 3e-3 left the adapter at zero"
    assert torch.allclose(from_merged, with_adapter, atol=1e-4, rtol=0), (from_merged - with_adapter).abs().max()

    greedy = llmkit.SamplingParams(temperature=0, max_tokens=8)
    with llmkit.load("transformers", str(merged)) as engine:
        served = engine.generate([prompt], greedy)[0].text
    with llmkit.load("transformers", str(adapter)) as engine:  # base + adapter, merged by PEFT on load
        assert served == engine.generate([prompt], greedy)[0].text
