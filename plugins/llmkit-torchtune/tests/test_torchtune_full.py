"""Full fine-tuning (method sft) through torchtune's full_finetune_single_device recipe: two real steps of
SmolLM2-135M on CPU; the merged folder loads with transformers and scores the validation split as
torchtune did."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llmkit.tuner import get_tuner

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "datasets" / "instruction-data.json"

pytestmark = [pytest.mark.smollm2, pytest.mark.timeout(900)]


def test_full_finetune_hands_over_a_loadable_model(tmp_path):
    if not DATA.exists():
        pytest.skip(f"{DATA} is absent (the ch. 7 instruction data, read from ../shared)")
    from llmkit_torchtune import env

    if not env.ready() and os.environ.get("LLMKIT_SKIP_TORCHTUNE_ENV"):
        pytest.skip(f"LLMKIT_SKIP_TORCHTUNE_ENV is set and torchtune's environment ({env.env_dir()}) is not made")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    records = json.loads(DATA.read_text())[:100]
    records = sorted(records, key=lambda r: len(r["instruction"]) + len(r.get("input", "")) + len(r["output"]))[:6]
    (tmp_path / "slice.json").write_text(json.dumps(records))
    events = []
    result = get_tuner("torchtune").finetune({
        "model": "smollm2-135m-instruct", "data": str(tmp_path / "slice.json"), "output_dir": str(tmp_path / "run"),
        "method": "sft", "split": {"train": 0.67, "test": 0.0}, "batch_size": 2, "max_steps": 2,
        "learning_rate": 1e-5, "max_seq_length": 128,
    }, on_progress=events.append)
    assert result.artifact == "merged" and result.steps == 2
    assert [e.step for e in events if e.loss is not None] == [1, 2]
    assert any(e.message.startswith("checkpoint saved") for e in events)
    assert result.eval_loss_before is not None and result.eval_loss_after is not None
    assert not any(result.path.glob("adapter_*"))
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    model = AutoModelForCausalLM.from_pretrained(result.path, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for record in (example.to_json() for example in result.split("validation")):
        p = tokenizer(record["prompt"]).input_ids
        c = tokenizer(record["completion"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1]
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(c), reduction="sum"))
        count += len(c)
    assert total / count == pytest.approx(result.eval_loss_after, rel=1e-4)
