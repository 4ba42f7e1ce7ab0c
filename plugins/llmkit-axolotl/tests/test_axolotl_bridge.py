"""The bridge plugin's peak memory on a GPU, without axolotl or a GPU: axolotl resets torch's peak counters
whenever it logs, so the bridge must read them after every step and evaluation batch, before that log."""

from __future__ import annotations

import importlib
import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from llmkit_axolotl.tuner import BRIDGE_DIR


class CudaCounters:
    """torch.cuda's allocated-memory peak as axolotl sees it: `allocate` raises it, `log` (axolotl's
    get_gpu_memory_usage, called from its trainer's log) reads and resets it."""

    def __init__(self):
        self.current = self.peak = 0

    def allocate(self, size: int, then_free: bool = True):
        self.peak = max(self.peak, self.current + size)
        if not then_free:
            self.current += size

    def max_memory_allocated(self, device=None):
        return self.peak

    def log(self):
        self.peak = self.current


@pytest.fixture
def bridge(monkeypatch):
    base = types.ModuleType("axolotl.integrations.base")
    base.BasePlugin = type("BasePlugin", (), {})
    for name, module in {"axolotl": types.ModuleType("axolotl"), "axolotl.integrations": types.ModuleType("axolotl.integrations"),
                         "axolotl.integrations.base": base}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(BRIDGE_DIR))
    monkeypatch.delitem(sys.modules, "llmkit_axolotl_bridge", raising=False)
    return importlib.import_module("llmkit_axolotl_bridge")


def test_the_peak_is_the_largest_step_or_evaluation_batch_though_axolotl_resets_the_counters(bridge, monkeypatch, capsys):
    cuda = CudaCounters()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", cuda.max_memory_allocated)
    events = bridge._Events(SimpleNamespace(eval_dataset=[1]))
    state = SimpleNamespace(global_step=0, max_steps=3, epoch=0.0, is_world_process_zero=True)
    control = SimpleNamespace(should_evaluate=False)

    cuda.allocate(2_000, then_free=False)  # the weights and optimizer state
    for step, activations in enumerate([1_500, 3_500, 1_000], start=1):
        state.global_step = step
        cuda.allocate(activations)
        events.on_step_end(None, state, control)
        cuda.log()  # the trainer's log after each step (logging_steps 1)
    for batch in (500, 700):  # the final evaluation
        cuda.allocate(batch)
        events.on_prediction_step(None, state, control)
    cuda.log()
    events.on_train_end(None, state, control)

    end = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix(bridge.PREFIX))
    assert end["kind"] == "end"
    assert end["peak_cuda_bytes"] == 5_500  # step 2: weights + its activations; at train end the counters hold 2,000


class Regression(torch.nn.Module):
    """A model whose forward passes raise the fake peak: `train_bytes` while training, `eval_bytes` while evaluating."""

    def __init__(self, cuda: CudaCounters, train_bytes: int, eval_bytes: int):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
        self.cuda, self.train_bytes, self.eval_bytes = cuda, train_bytes, eval_bytes

    def forward(self, x, labels):
        self.cuda.allocate(self.train_bytes if self.training else self.eval_bytes)
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


@pytest.mark.parametrize("largest", ["training", "evaluation"])
def test_the_peak_under_a_real_trainer_whose_log_resets_the_counters(bridge, monkeypatch, capsys, tmp_path, largest):
    """transformers' own Trainer calls the hooks; its `log` resets the counters as axolotl's AxolotlTrainer.log
    does (get_gpu_memory_usage). The peak must survive whether a training step or an evaluation batch set it."""
    from transformers import Trainer, TrainingArguments

    cuda = CudaCounters()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", cuda.max_memory_allocated)

    class ResettingTrainer(Trainer):
        def log(self, logs, *args, **kwargs):
            cuda.log()
            super().log(logs, *args, **kwargs)

    rows = [{"x": torch.tensor([float(i), 1.0]), "labels": torch.tensor(float(i))} for i in range(8)]
    model = Regression(cuda, *((3_000, 5_000) if largest == "evaluation" else (5_000, 3_000)))
    cuda.allocate(1_000, then_free=False)
    arguments = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                                  logging_steps=1, eval_strategy="steps", eval_steps=2, save_strategy="no", report_to="none",
                                  use_cpu=True, disable_tqdm=True)
    trainer = ResettingTrainer(model=model, args=arguments, train_dataset=rows, eval_dataset=rows[:4])
    trainer.add_callback(bridge._Events(trainer))
    trainer.train()

    end = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix(bridge.PREFIX))
    assert end["peak_cuda_bytes"] == 6_000  # the 1,000 at rest + the largest forward, though every log reset them


def test_no_peak_without_a_gpu(bridge, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    events = bridge._Events(SimpleNamespace(eval_dataset=None))
    state = SimpleNamespace(global_step=1, max_steps=1, epoch=1.0, is_world_process_zero=True)
    events.on_step_end(None, state, SimpleNamespace(should_evaluate=False))
    events.on_train_end(None, state, None)
    end = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix(bridge.PREFIX))
    assert end["peak_cuda_bytes"] is None
