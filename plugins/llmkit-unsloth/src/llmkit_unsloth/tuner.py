"""The Unsloth tuner: LoRA and QLoRA with Unsloth's patched model, trained by TRL's SFTTrainer, on NVIDIA GPUs.

Unsloth must be imported before trl and transformers (it patches them), and it keeps state per trainer: one
training per process. So `UnslothTuner` runs each job in a fresh interpreter (`python -m llmkit_unsloth.child`,
the same environment), whatever the calling process imported before. The child is llmkit-trl's tuner with
Unsloth's model loading (`UnslothTraining`): the same data rows, training arguments (every field explicit),
progress callback, evaluation, resume and artifacts. It prints one `LLMKIT_EVENT {json}` line per progress
event and a closing `LLMKIT_RESULT {json}`; the whole log is kept in `<output_dir>/unsloth/train.log`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from llmkit.errors import BackendUnavailableError, TuneError, UnsupportedFeatureError
from llmkit.tuner import TuneJob, TuneProgress, TuneResult, TuneRun, Tuner
from llmkit_trl.tuner import TRLTuner
from llmkit_unsloth import mapping
from llmkit_unsloth.mapping import BACKEND

EVENT, RESULT, FAILURE = "LLMKIT_EVENT ", "LLMKIT_RESULT ", "LLMKIT_ERROR "


def _gpu() -> tuple[bool, bool]:
    """(an NVIDIA GPU is visible, it has bf16)."""
    import torch

    if not torch.cuda.is_available():
        return False, False
    return True, torch.cuda.is_bf16_supported()


class UnslothTuner(Tuner):
    backend = BACKEND
    methods = frozenset({"lora", "qlora"})
    artifacts = frozenset({"adapter", "merged", "gguf"})

    def __init__(self, checkpointing: mapping.Checkpointing = "unsloth", timeout_s: float | None = None) -> None:
        """checkpointing: with `gradient_checkpointing` on, Unsloth's own offloaded variant ("unsloth", its
        default) or PyTorch's ("standard")."""
        if checkpointing not in ("unsloth", "standard"):
            raise TypeError(f"checkpointing must be 'unsloth' or 'standard', not {checkpointing!r}")
        self.checkpointing = checkpointing
        self.timeout_s = timeout_s

    def check(self, job: TuneJob) -> None:
        gpu, bf16 = _gpu()
        if not gpu:
            raise UnsupportedFeatureError(BACKEND, "device=cpu", "Unsloth trains on NVIDIA GPUs only; on CPU use the trl tuner")
        if importlib.util.find_spec("unsloth") is None:
            raise BackendUnavailableError(BACKEND, "the unsloth package is not installed",
                                          "pip install 'llmkit-unsloth[gpu]' (in an environment of its own: Unsloth pins trl <= 1.15)")
        mapping.resolve_precision(job, bf16)
        if job.artifact == "gguf":
            from llmkit.plugins import engines

            if "llamacpp" not in engines():
                raise UnsupportedFeatureError(BACKEND, "artifact=gguf", "the llamacpp plugin (llama.cpp's converter) is not installed")

    def _finetune(self, run: TuneRun, emit: Callable[[TuneProgress], None]) -> TuneResult:
        folder = run.job.output_dir / "unsloth"
        folder.mkdir(parents=True, exist_ok=True)
        call = folder / "call.json"
        call.write_text(json.dumps({"job": run.job.model_dump(mode="json"), "checkpointing": self.checkpointing}, indent=2))
        log_path = folder / "train.log"
        command = [sys.executable, "-m", "llmkit_unsloth.child", str(call)]
        variables = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "UNSLOTH_DISABLE_STATISTICS": "1", "TOKENIZERS_PARALLELISM": "false"}
        tail: deque[str] = deque(maxlen=40)
        result: TuneResult | None = None
        failure: dict | None = None
        started = time.perf_counter()
        with open(log_path, "a") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                       env=variables, start_new_session=True)
            try:
                for raw in process.stdout:
                    line = raw.rstrip("\n")
                    log.write(line + "\n")
                    if self.timeout_s is not None and time.perf_counter() - started > self.timeout_s:
                        raise TuneError(f"{BACKEND}: the run passed timeout_s={self.timeout_s} (log: {log_path})")
                    if line.startswith(EVENT):
                        emit(TuneProgress.model_validate_json(line[len(EVENT):]))
                    elif line.startswith(RESULT):
                        result = TuneResult.model_validate_json(line[len(RESULT):])
                    elif line.startswith(FAILURE):
                        failure = json.loads(line[len(FAILURE):])
                    elif line.strip():
                        tail.append(line)
                code = process.wait()
            except BaseException:
                _stop(process)
                raise
        if failure is not None:
            raise TuneError(f"{BACKEND}: {failure['type']}: {failure['message']} (log: {log_path})")
        if code != 0 or result is None:
            raise TuneError(f"{BACKEND}: the training process exited with status {code} (log: {log_path}):\n" + "\n".join(tail))
        return result


def _stop(process: subprocess.Popen) -> None:
    """End the child's whole process group (dataloader workers, compile workers)."""
    import signal

    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass


class UnslothTraining(TRLTuner):
    """In the child process: llmkit-trl's training with the model from `FastLanguageModel`."""

    backend = BACKEND
    version_packages = ("unsloth", "unsloth_zoo", "trl", "peft", "transformers", "torch", "datasets", "bitsandbytes")

    def __init__(self, checkpointing: mapping.Checkpointing) -> None:
        super().__init__(device="cuda")
        self.checkpointing = checkpointing

    def _load(self, job: TuneJob, base: str, precision: str):
        import torch
        from unsloth import FastLanguageModel

        kwargs = mapping.model_arguments(job, base, precision, self.checkpointing)
        kwargs["dtype"] = getattr(torch, kwargs["dtype"])
        model, tokenizer = FastLanguageModel.from_pretrained(**kwargs)
        model = FastLanguageModel.get_peft_model(model, **mapping.peft_arguments(job, self.checkpointing))
        return model, tokenizer, None  # the model is already the PEFT model
