"""An axolotl plugin that llmkit puts on PYTHONPATH of the axolotl run; it runs inside axolotl's environment
(it imports axolotl and transformers, never llmkit).

- Prints one `LLMKIT_EVENT {json}` line per trainer log (training loss, learning rate, eval loss...), per
  checkpoint saved and at the start, with the global step: llmkit reads these lines from the log.
- Evaluates before the first step (`eval_on_start`; axolotl sets it only with eval_steps; left off when
  resuming) and after the last one (transformers evaluates only on multiples of eval_steps), when there is a
  validation set.
- At the end, on a GPU, torch's peak allocated memory in this process. Axolotl resets torch's peak counters
  each time it logs (its trainer's `log` reads them through `get_gpu_memory_usage`), so the peak is taken after
  every step and every evaluation batch, before the log that resets it, and the largest is reported.
"""

import json
import math

from transformers import TrainerCallback

from axolotl.integrations.base import BasePlugin

PREFIX = "LLMKIT_EVENT "


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class _Events(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
        self.peak_cuda_bytes = None

    def _track_peak(self):
        import torch

        if torch.cuda.is_available():
            self.peak_cuda_bytes = max(self.peak_cuda_bytes or 0, torch.cuda.max_memory_allocated())

    def _emit(self, state, kind, **fields):
        if state.is_world_process_zero:
            record = {"kind": kind, "step": state.global_step, "max_steps": state.max_steps, "epoch": state.epoch, **fields}
            print(PREFIX + json.dumps(record), flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._emit(state, "begin", has_eval=self.trainer.eval_dataset is not None)

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {key: _number(value) for key, value in (logs or {}).items()}
        self._emit(state, "log", logs={key: value for key, value in numbers.items() if value is not None})

    def on_step_end(self, args, state, control, **kwargs):
        self._track_peak()  # before the trainer logs this step (axolotl's log resets the counters)
        if state.global_step >= state.max_steps and self.trainer.eval_dataset is not None:
            control.should_evaluate = True

    def on_save(self, args, state, control, **kwargs):
        self._emit(state, "save", checkpoint=f"checkpoint-{state.global_step}")

    def on_prediction_step(self, args, state, control, **kwargs):
        self._track_peak()  # an evaluation batch: its metrics are logged (and the counters reset) after the loop

    def on_train_end(self, args, state, control, **kwargs):
        # On a GPU, the run's peak of torch's allocated memory (what the other tuners report there).
        self._track_peak()
        self._emit(state, "end", peak_cuda_bytes=self.peak_cuda_bytes)


class LLMKitBridgePlugin(BasePlugin):
    def get_training_args(self, cfg):
        # A resumed run does not evaluate again at its checkpoint: its step-0 loss is in the checkpoint's history.
        return {"eval_on_start": bool(cfg.test_datasets) and not cfg.resume_from_checkpoint}

    def add_callbacks_post_trainer(self, cfg, trainer):
        return [_Events(trainer)]
