"""The torchtune tuner: `tune run` of torchtune's single-device recipes in torchtune's own environment.

The job becomes a generated recipe config (`mapping.build_config`, every hyper-parameter written out) at
`<output_dir>/torchtune.yaml`; `tune run llmkit_tt_recipe --config ...` runs it in a subprocess (see
`recipe/llmkit_tt_recipe.py`: torchtune's own recipe classes with llmkit's validation loss, seed and
resume fixes); its log lines become `TuneProgress` events; the PEFT-format adapter torchtune's Hugging
Face checkpointer writes is handed over at `run.artifact_path()`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llmkit.data import load_examples, split
from llmkit.errors import TuneError, UnsupportedFeatureError
from llmkit.tuner import Tuner, TuneJob, TuneProgress, TuneResult, TuneRun

from llmkit_torchtune import env as tt_env
from llmkit_torchtune import mapping

RECIPE_DIR = Path(__file__).resolve().parent / "recipe"
FINISHED = "llmkit-finished.json"  # in the checkpoints folder: torchtune's run completed
EVAL_BEFORE = "llmkit-eval-before.json"  # kept across a resume
STEP_LINE = re.compile(r"Step (\d+) \| (.*)$")  # tqdm's bar may precede it on the line
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf", re.IGNORECASE)


def parse_step_line(line: str) -> tuple[int, dict[str, float]] | None:
    """torchtune's StdoutLogger line `Step 3 | loss:2.1 lr:0.0002 tokens_per_second_per_gpu:310.5 grad_norm:0.7`
    (a tensor prints as `tensor(0.7)`) → (3, {name: value})."""
    found = STEP_LINE.search(line.strip())
    if not found:
        return None
    values = {}
    for item in found.group(2).split():
        name, _, raw = item.partition(":")
        number = NUMBER.search(raw)
        if name and number:
            values[name] = float(number.group())
    return int(found.group(1)), values


def parse_llmkit_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """The recipe module's own lines: `LLMKIT <kind> {json}`."""
    if not line.startswith("LLMKIT "):
        return None
    kind, _, payload = line[len("LLMKIT "):].partition(" ")
    try:
        return kind, json.loads(payload)
    except ValueError:
        return None


def _train_count(job: TuneJob) -> tuple[str, int, int]:
    fmt, examples = load_examples(job.data, job.data_format)
    parts = split(examples, train=job.split.train, test=job.split.test,
                  shuffle_seed=job.seed if job.split.shuffle else None)
    return fmt, len(parts.train), len(parts.validation)


def _base_folder(model: str) -> Path:
    from llmkit.catalog import hf_folder

    return Path(hf_folder(model)).resolve()


class TorchtuneTuner(Tuner):
    backend = "torchtune"
    methods = frozenset({"lora", "sft"})
    artifacts = frozenset({"adapter", "merged"})
    checkpoint_at = "epoch_end"  # torchtune 0.6.1's recipes save only at the end of an epoch

    def __init__(self, *, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s

    def check(self, job: TuneJob) -> None:
        mapping.refusals(job)
        fmt, n_train, _ = _train_count(job)
        if fmt != "alpaca":
            raise UnsupportedFeatureError(self.backend, f"data_format={fmt}", (
                "the torchtune adapter trains on prompt/completion text (alpaca records); chat records would need "
                "the model's chat template, which it does not apply"))
        model = mapping.model_config(_base_folder(job.model))
        if job.max_seq_length > model["max_seq_len"]:
            raise UnsupportedFeatureError(self.backend, "max_seq_length", f"{job.max_seq_length} exceeds the model's "
                                                                           f"max_position_embeddings {model['max_seq_len']}")
        mapping.plan(job, n_train)

    # ------------------------------------------------------------------ the run

    def _finetune(self, run: TuneRun, emit: Callable[[TuneProgress], None]) -> TuneResult:
        job = run.job
        if run.resume_from is not None:
            raise TuneError(f"{run.resume_from} is a Hugging Face Trainer checkpoint (another backend's); torchtune "
                            "resumes only its own (checkpoints/epoch_N + recipe_state): choose another output_dir")
        folder = _base_folder(job.model)
        model = mapping.model_config(folder)
        ckpts = run.checkpoints
        ckpts.mkdir(parents=True, exist_ok=True)
        state_file = ckpts / "recipe_state" / "recipe_state.pt"
        resume = state_file.exists() and any(self._epoch_complete(p, job) for p in ckpts.glob("epoch_*"))
        finished = json.loads((ckpts / FINISHED).read_text()) if (ckpts / FINISHED).exists() else None
        environment = None if finished else tt_env.ensure_env()
        # A finished run is only read back, with the device it ran on (runs finished before it was recorded: cpu).
        device = finished.get("device", "cpu") if finished else tt_env.device(environment)
        config, steps = mapping.build_config(
            job, model_folder=folder, model=model, n_train=len(run.splits.train),
            n_validation=len(run.splits.validation), checkpoints=ckpts, data_dir=run.data_dir, resume=resume,
            device=device)
        config_path = job.output_dir / "torchtune.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))

        outcome: dict[str, Any]
        if finished:
            outcome = finished
            emit(TuneProgress(step=outcome["step"], total_steps=steps.total_steps,
                              message="torchtune had finished this run before; handing over its last epoch"))
        else:
            outcome = {**self._run(environment, config_path, ckpts, steps, resume, emit), "device": device}
            (ckpts / FINISHED).write_text(json.dumps(outcome))
        if outcome["step"] != steps.total_steps:
            raise TuneError(f"torchtune stopped at step {outcome['step']}, planned {steps.total_steps}")

        last = ckpts / f"epoch_{steps.epochs - 1}"
        target = run.artifact_path()
        self._hand_over(last, target, job, folder)
        before = outcome.get("eval_before")
        peak, peak_kind = outcome.get("peak_rss_bytes"), "peak RSS of the torchtune subprocess (CPU)"
        if outcome.get("peak_cuda_bytes") is not None:
            peak, peak_kind = outcome["peak_cuda_bytes"], "torch.cuda.max_memory_allocated in the torchtune subprocess"
        return TuneResult(
            backend=self.backend, method=job.method, base_model=str(folder), artifact=job.artifact, path=target,
            output_dir=job.output_dir, steps=outcome["step"], resumed_from_step=outcome.get("resumed_from_step"),
            train_loss=outcome.get("train_loss"), eval_loss_before=before, eval_loss_after=outcome.get("eval_after"),
            train_tokens=outcome.get("train_tokens"), tokens_per_second=outcome.get("tokens_per_second"),
            peak_memory_bytes=peak, peak_memory_kind=peak_kind, precision=config["dtype"],
            train_seconds=outcome.get("train_seconds"),
            versions={**outcome.get("versions", {}), "llmkit-torchtune": _own_version()},
        )

    @staticmethod
    def _epoch_complete(folder: Path, job: TuneJob) -> bool:
        if job.method == "lora":
            return (folder / "adapter_model.pt").exists()
        return any(folder.glob("*.safetensors"))

    def _run(self, environment: Path, config_path: Path, ckpts: Path, steps: mapping.Plan, resume: bool,
             emit: Callable[[TuneProgress], None]) -> dict[str, Any]:
        command = [str(environment / "bin" / "tune"), "run", "llmkit_tt_recipe", "--config", str(config_path)]
        variables = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        variables.update(PYTHONPATH=str(RECIPE_DIR), PYTHONUNBUFFERED="1", VIRTUAL_ENV=str(environment),
                         PATH=f"{environment / 'bin'}:{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1",
                         HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        log_path = config_path.parent / "torchtune.log"
        tail: deque[str] = deque(maxlen=40)
        outcome: dict[str, Any] = {"step": 0}
        before_file = ckpts / EVAL_BEFORE
        if before_file.exists():
            outcome["eval_before"] = json.loads(before_file.read_text())["loss"]
        losses: list[float] = []
        started = time.perf_counter()
        train_start: float | None = None
        last_step_at: float | None = None
        with open(log_path, "a") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                       cwd=str(RECIPE_DIR), env=variables, start_new_session=True)
            try:
                for raw in process.stdout:
                    line = raw.rstrip("\n")
                    log.write(line + "\n")
                    if self.timeout_s is not None and time.perf_counter() - started > self.timeout_s:
                        raise TuneError(f"torchtune ran past timeout_s={self.timeout_s}")
                    step_line = parse_step_line(line)
                    if step_line is not None:
                        step, values = step_line
                        outcome["step"] = step
                        last_step_at = time.perf_counter()
                        if "loss" in values:
                            losses.append(values["loss"])
                        emit(TuneProgress(
                            step=step, total_steps=steps.total_steps, epoch=step / steps.steps_per_epoch,
                            loss=values.get("loss"), learning_rate=values.get("lr"),
                            tokens_per_second=values.get("tokens_per_second_per_gpu"),
                            metrics={k: v for k, v in values.items() if k not in ("loss", "lr", "tokens_per_second_per_gpu")}))
                        continue
                    ours = parse_llmkit_line(line)
                    if ours is None:
                        if line.strip():
                            tail.append(line)
                        continue
                    kind, data = ours
                    if kind == "plan":
                        train_start = time.perf_counter()
                        outcome["step"] = data["global_step"]
                        if resume:
                            outcome["resumed_from_step"] = data["global_step"]
                        emit(TuneProgress(step=data["global_step"], total_steps=steps.total_steps, message=(
                            f"torchtune: {data['epochs']} epoch(s) × {data['steps_per_epoch']} steps, "
                            f"{data['examples']} examples; checkpoints at each epoch's end (every "
                            f"{steps.checkpoint_every} steps)" + (f"; resumed at step {data['global_step']}" if resume else ""))))
                    elif kind == "eval":
                        if data["phase"] == "before":
                            train_start = time.perf_counter()  # training starts after this evaluation
                            outcome["eval_before"] = data["loss"]
                            before_file.write_text(json.dumps(data))
                        else:
                            outcome["eval_after"] = data["loss"]
                        emit(TuneProgress(step=data["step"], total_steps=steps.total_steps, eval_loss=data["loss"],
                                          message=f"validation loss {data['phase']} training ({data['tokens']} tokens)"))
                    elif kind == "saved":
                        emit(TuneProgress(step=data["step"], total_steps=steps.total_steps,
                                          epoch=data["step"] / steps.steps_per_epoch,
                                          message=f"checkpoint saved: {data['folder']}"))
                    elif kind == "done":
                        # training time: from the end of set-up to the last step (validation excluded)
                        seconds = (last_step_at or time.perf_counter()) - (train_start or started)
                        outcome.update(step=data["step"], train_tokens=data["train_tokens"],
                                       peak_rss_bytes=data["peak_rss_bytes"], peak_cuda_bytes=data.get("peak_cuda_bytes"),
                                       versions=data["versions"], train_seconds=seconds if seconds > 0 else None,
                                       tokens_per_second=data["train_tokens"] / seconds if seconds > 0 else None)
                code = process.wait()
            except BaseException:
                _stop(process)
                raise
        if code != 0:
            raise TuneError(f"tune run exited with status {code} (log: {log_path}):\n" + "\n".join(tail))
        if losses:
            outcome["train_loss"] = sum(losses) / len(losses)
        if "versions" not in outcome:
            raise TuneError(f"tune run ended without llmkit's closing line (log: {log_path}):\n" + "\n".join(tail))
        return outcome

    @staticmethod
    def _hand_over(epoch_dir: Path, target: Path, job: TuneJob, base: Path) -> None:
        """Copy torchtune's last epoch into the artifact folder: the PEFT adapter (its config completed:
        base_model_name_or_path = the local base folder, lora_dropout, task_type), or the merged model."""
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if job.artifact == "adapter":
            for name in ("adapter_model.safetensors", "adapter_config.json"):
                if not (epoch_dir / name).exists():
                    raise TuneError(f"torchtune wrote no {name} in {epoch_dir}")
                shutil.copy2(epoch_dir / name, staging / name)
            written = json.loads((staging / "adapter_config.json").read_text())
            written.update(base_model_name_or_path=str(base), task_type="CAUSAL_LM", lora_dropout=job.lora.dropout,
                           bias="none", fan_in_fan_out=False, inference_mode=True)
            (staging / "adapter_config.json").write_text(json.dumps(written, indent=2))
        else:
            skip = {"adapter_model.safetensors", "adapter_model.pt", "adapter_config.json", "llmkit-conversion.json"}
            for item in epoch_dir.iterdir():
                if item.is_file() and item.name not in skip:
                    shutil.copy2(item, staging / item.name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)


def _stop(process: subprocess.Popen) -> None:
    """End torchtune's process group (it was started in a session of its own)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmkit-torchtune")
    except PackageNotFoundError:
        return "unknown"

