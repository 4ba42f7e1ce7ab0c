"""The Unsloth tuner on a real GPU (benchmarks/gpu/run_unsloth.sh): a QLoRA run on SmolLM2 in a process that
has already imported transformers and served a model, and its adapter served by the transformers engine.
LoRA, resume, bad data and refusals are the tuner conformance checks (`llmkit conformance tune -b unsloth`).

On an H200 (2026-11-27) this run at learning rate 1e-3 answered 1 of 8 code words; the conformance LoRA run
answers 8 of 8 at 3e-3, the rate used here now (not yet run on a GPU at that rate)."""

import importlib.util
import os

import pytest

import llmkit
from llmkit_conformance.tuning import CODE_WORDS, GREEDY, code_word_prompts, code_word_records, exact_answers


def _require_unsloth() -> None:
    import torch

    if os.environ.get("LLMKIT_REQUIRE_UNSLOTH") == "1":
        assert torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None
    elif not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None:
        pytest.skip("Unsloth needs an NVIDIA GPU and the unsloth package")


def test_qlora_after_transformers_was_imported_and_its_adapter_serves(tmp_path):
    _require_unsloth()
    import json

    with llmkit.load("transformers", llmkit.DEFAULT_MODEL) as base:  # transformers imported and a model served first
        before = [o.text for o in base.generate(code_word_prompts(), GREEDY)]
    data = tmp_path / "codes.json"
    data.write_text(json.dumps(code_word_records()))
    job = {"model": llmkit.DEFAULT_MODEL, "data": str(data), "method": "qlora", "output_dir": str(tmp_path / "run"),
           "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": 24, "batch_size": 8, "learning_rate": 3e-3,
           "split": {"train": 1.0, "test": 0.0}, "seed": 0}
    result = llmkit.tune("unsloth", job)
    assert result.backend == "unsloth" and result.method == "qlora" and result.steps == 24
    assert "unsloth" in result.versions and result.peak_memory_kind.startswith("CUDA")
    assert (result.path / "adapter_config.json").exists()
    with llmkit.load("transformers", str(result.path)) as tuned:
        after = [o.text for o in tuned.generate(code_word_prompts(), GREEDY)]
    assert exact_answers(before) == 0
    assert exact_answers(after) >= len(CODE_WORDS) * 3 // 4, after
