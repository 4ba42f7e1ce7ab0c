"""A real axolotl 0.19 LoRA run on CPU: SmolLM2-135M on a slice of the ch. 7 instruction data, killed after its
first checkpoint and resumed; the eval loss falls, and the adapter loads with PEFT and changes generations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmkit_axolotl import env as axolotl_env

REPO = Path(__file__).resolve().parents[3]
DATA = REPO.parent / "shared" / "datasets" / "instruction-data.json"
MODEL = "smollm2-135m-instruct"

pytestmark = [
    pytest.mark.smollm2,
    pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA} absent (the shared ch. 7 dataset)"),
    pytest.mark.skipif(not axolotl_env.is_ready(), reason="axolotl's environment is not created "
                       "(scripts/setup.sh or `python -m llmkit_axolotl.env`, ≈7.5 min)"),
]


def _job(tmp_path: Path) -> dict:
    records = json.loads(DATA.read_text())[:40]
    data = tmp_path / "slice.json"
    data.write_text(json.dumps(records))
    # 32 train / 8 validation; 8 steps of 4 examples (one epoch), a checkpoint every 4 steps.
    return {"model": MODEL, "data": str(data), "method": "lora", "output_dir": str(tmp_path / "run"),
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": 8, "batch_size": 4, "learning_rate": 1e-3,
            "max_seq_length": 256, "precision": "fp32", "checkpoint_steps": 4, "seed": 0,
            "split": {"train": 0.8, "test": 0.0}}


def test_lora_run_killed_resumes_and_adapter_changes_generations(tmp_path):
    from llmkit.catalog import hf_folder

    try:
        base = hf_folder(MODEL)
    except Exception as exc:  # noqa: BLE001 - the catalog model's package is missing
        pytest.skip(f"{MODEL}: {exc}")
    job = _job(tmp_path)
    out = Path(job["output_dir"])
    start = time.perf_counter()
    # 1. A run in another process, killed (SIGKILL: no clean-up) once its first checkpoint is complete.
    script = ("import json, sys, llmkit; llmkit.tune('axolotl', json.loads(sys.argv[1]), "
              "lambda e: print('EVENT', e.model_dump_json(), flush=True))")
    first = subprocess.Popen([sys.executable, "-c", script, json.dumps(job)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    checkpoint = out / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # the checkpoint's last files
    os.killpg(first.pid, signal.SIGKILL)
    first_log = first.communicate()[0]
    assert checkpoint.exists(), first_log[-3000:]
    assert not (out / "result.json").exists()
    killed_at = time.perf_counter() - start
    first_events = [json.loads(line[6:]) for line in first_log.splitlines() if line.startswith("EVENT ")]
    assert [e["step"] for e in first_events if e["loss"] is not None][:4] == [1, 2, 3, 4]
    time.sleep(3)  # the axolotl child gets SIGTERM from the kernel when its parent dies (PR_SET_PDEATHSIG)

    # 2. The same job again: it resumes from checkpoint-4.
    import llmkit

    events = []
    result = llmkit.tune("axolotl", job, events.append)
    total = time.perf_counter() - start
    assert result.resumed_from_step == 4 and result.steps == 8
    train_steps = [e.step for e in events if e.loss is not None]
    assert train_steps == [5, 6, 7, 8], train_steps
    assert all(e.total_steps == 8 for e in events)
    # Evaluated once more, after the last step; not again at the checkpoint (step 0's loss is in its history).
    assert [e.step for e in events if e.eval_loss is not None] == [8]
    assert result.eval_loss_before is not None and result.eval_loss_after is not None
    assert result.eval_loss_after < result.eval_loss_before - 0.05, (result.eval_loss_before, result.eval_loss_after)
    first_losses = [e["loss"] for e in first_events if e["loss"] is not None][:4]
    last_losses = [e.loss for e in events if e.loss is not None]
    assert sum(last_losses) / 4 < sum(first_losses) / 4
    assert result.versions.get("axolotl") == "0.19.0"
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 300 * 2**20  # the model alone: 0.5 GB
    assert result.peak_memory_kind.startswith("peak RSS")  # no GPU here
    assert result.train_seconds and result.train_seconds > 0  # the trainer's train_runtime
    adapter = result.path
    assert adapter == out / "adapter" and {p.name for p in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    print(f"\naxolotl: killed after checkpoint-4 at {killed_at:.0f} s, resumed and finished at {total:.0f} s; "
          f"eval loss {result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f}; train loss steps 1-4 "
          f"{[round(x, 3) for x in first_losses]}, 5-8 {[round(x, 3) for x in last_losses]}")

    # 3. The adapter loads with PEFT in the main environment and changes greedy generations.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    model.eval()
    prompts = [example.prompt for example in result.split("validation")[:3]]
    changed = 0
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            tuned = model.generate(ids, max_new_tokens=16, do_sample=False)
            with model.disable_adapter():
                plain = model.generate(ids, max_new_tokens=16, do_sample=False)
        changed += not torch.equal(tuned, plain)
    assert changed >= 1
    saved = json.loads((out / "result.json").read_text())
    assert saved["backend"] == "axolotl" and saved["resumed_from_step"] == 4
