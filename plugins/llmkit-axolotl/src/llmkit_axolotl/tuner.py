"""The axolotl tuner: a generated YAML config run by axolotl's CLI in axolotl's own virtual environment.

`axolotl train config.yaml --launcher python` runs in a subprocess with that environment's `bin` first on
PATH (axolotl's default launcher is `accelerate launch`, a second process; with one CPU process the
python launcher does the same work). The bridge plugin (axolotl_side/llmkit_axolotl_bridge.py) prints one
`LLMKIT_EVENT {json}` line per trainer log; those lines become `TuneProgress` events. The whole log is
kept in `<output_dir>/axolotl/train.log`. Merged weights from a LoRA run come from `axolotl merge-lora
config.yaml`, as an axolotl user makes them (axolotl's shard-by-shard merge into `checkpoints/merged`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from llmkit.errors import TuneError, UnsupportedFeatureError
from llmkit.tuner import TuneJob, TuneProgress, TuneResult, Tuner, TuneRun

from llmkit_axolotl import env as axolotl_env
from llmkit_axolotl.mapping import BACKEND, axolotl_records, build_config, refusals, resolve_precision

BRIDGE_DIR = Path(__file__).parent / "axolotl_side"
EVENT_PREFIX = "LLMKIT_EVENT "
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Keys of axolotl's training logs that are not TuneProgress fields of their own.
_SKIP = {"loss", "learning_rate", "epoch", "eval_loss", "step", "train_loss"}


def parse_event(line: str) -> dict[str, Any] | None:
    """The bridge plugin's record on a log line, or None for any other line (axolotl's own logging, tqdm)."""
    at = line.find(EVENT_PREFIX)
    if at < 0:
        return None
    try:
        record = json.loads(line[at + len(EVENT_PREFIX):])
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def to_progress(record: dict[str, Any]) -> TuneProgress | None:
    """A training or evaluation log as a TuneProgress (None for other records and the end-of-run summary)."""
    if record.get("kind") != "log":
        return None
    logs = record.get("logs") or {}
    if "loss" not in logs and "eval_loss" not in logs:
        return None
    metrics = {key: float(value) for key, value in logs.items() if key not in _SKIP}
    return TuneProgress(step=int(record["step"]), total_steps=record.get("max_steps"), epoch=record.get("epoch"),
                        loss=logs.get("loss"), eval_loss=logs.get("eval_loss"), learning_rate=logs.get("learning_rate"),
                        metrics=metrics, message="eval" if "eval_loss" in logs else "train")


class AxolotlTuner(Tuner):
    backend = "axolotl"
    methods = frozenset({"lora", "sft", "dpo"})
    artifacts = frozenset({"adapter", "merged"})

    def __init__(self, env: str | Path | None = None, quiet: bool = False) -> None:
        """`env`: axolotl's virtual environment (default: `llmkit_axolotl.env.env_dir()`, created on first use);
        `quiet`: do not echo axolotl's log lines to stderr."""
        self.env = Path(env) if env is not None else None
        self.quiet = quiet
        self.peak_rss: int | None = None

    # -- refusals before any work -------------------------------------------------------------------------
    def check(self, job: TuneJob) -> None:
        for field, reason in refusals(job):
            raise UnsupportedFeatureError(BACKEND, field, reason)
        self._precision(job)
        from llmkit.catalog import lookup

        if lookup(job.model) is None and not Path(job.model).is_dir() and Path(job.model).suffix != ".gguf":
            raise UnsupportedFeatureError(BACKEND, "model", f"{job.model!r} is neither a catalog model nor a local Hugging "
                                          "Face folder (axolotl runs offline here: HF_HUB_OFFLINE=1)")

    @staticmethod
    def _precision(job: TuneJob) -> str:
        if job.precision == "fp32":
            return "fp32"
        import torch

        cuda = _cuda()
        return resolve_precision(job, cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported())

    # -- the run --------------------------------------------------------------------------------------------
    def _finetune(self, run: TuneRun, emit: Callable[[TuneProgress], None]) -> TuneResult:
        job = run.job
        if run.format == "chat":
            raise UnsupportedFeatureError(BACKEND, "data_format=chat", "chat records are not mapped to axolotl yet")
        from llmkit.catalog import hf_folder

        base_model = str(Path(hf_folder(job.model)).resolve())
        precision = self._precision(job)
        work = job.output_dir / "axolotl"
        data_dir = work / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        eos = eos_token(base_model)
        for name, examples in (("train", run.splits.train), ("validation", run.splits.validation)):
            with open(data_dir / f"{name}.jsonl", "w") as out:
                for example in examples:
                    out.write(json.dumps(axolotl_records(example, job.method, eos), ensure_ascii=False) + "\n")
        resume = run.resume_from
        config = build_config(job, base_model=base_model, precision=precision, n_train=len(run.splits.train),
                              data_dir=data_dir, work_dir=work, checkpoints=run.checkpoints,
                              has_validation=bool(run.splits.validation), resume_from=resume, cuda=_cuda())
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=True))

        environment = axolotl_env.ensure_env(log=lambda line: print(line, file=sys.stderr, flush=True), env=self.env)
        self.peak_rss = None
        records = self._run_axolotl(environment, ["train", str(config_path), "--launcher", "python"], work / "train.log", emit)
        if job.artifact == "merged" and job.lora is not None:
            emit(TuneProgress(step=max((int(r["step"]) for r in records if "step" in r), default=0),
                              message="merging the adapter into the base weights (axolotl merge-lora)"))
            self._run_axolotl(environment, ["merge-lora", str(config_path)], work / "merge.log", emit)

        evals = [r["logs"]["eval_loss"] for r in records if r.get("kind") == "log" and "eval_loss" in r.get("logs", {})]
        eval_steps = [r["step"] for r in records if r.get("kind") == "log" and "eval_loss" in r.get("logs", {})]
        begin = next((r for r in records if r.get("kind") == "begin"), {})
        summary = next((r["logs"] for r in records if r.get("kind") == "log" and "train_loss" in r.get("logs", {})), {})
        steps = max((int(r["step"]) for r in records if "step" in r), default=0)
        resumed_step = int(begin.get("step", 0)) if resume is not None else None
        eval_before = evals[0] if evals and eval_steps[0] == 0 else None
        if resume is not None:
            eval_before = _first_eval_in_state(resume)
        eval_after = evals[-1] if evals and eval_steps[-1] == steps else None

        end = next((r for r in records if r.get("kind") == "end"), {})
        # transformers' train_runtime includes the evaluations run inside train(): taken out, as TuneResult defines it
        eval_seconds = sum(r["logs"].get("eval_runtime", 0.0) for r in records if r.get("kind") == "log")
        train_seconds = summary["train_runtime"] - eval_seconds if "train_runtime" in summary else None
        peak_cuda = end.get("peak_cuda_bytes")
        artifact = run.artifact_path()
        self._hand_over(run, artifact)
        return TuneResult(
            backend=self.backend, method=job.method, base_model=base_model, artifact=job.artifact, path=artifact,
            output_dir=job.output_dir, steps=steps, resumed_from_step=resumed_step, train_loss=summary.get("train_loss"),
            eval_loss_before=eval_before, eval_loss_after=eval_after, precision=precision,
            train_seconds=train_seconds,
            peak_memory_bytes=peak_cuda if peak_cuda is not None else self.peak_rss,
            peak_memory_kind=("torch.cuda.max_memory_allocated in the axolotl process" if peak_cuda is not None
                              else "peak RSS of the axolotl process (wait4 ru_maxrss)"),
            versions=self._versions(environment),
        )

    def _run_axolotl(self, environment: Path, arguments: list[str], log_path: Path,
                     emit: Callable[[TuneProgress], None]) -> list[dict[str, Any]]:
        """`axolotl <arguments>` in its environment, in the log's folder; the bridge's records, in order."""
        child_env = dict(os.environ)
        child_env["PATH"] = f"{environment / 'bin'}{os.pathsep}{child_env.get('PATH', '')}"
        child_env["VIRTUAL_ENV"] = str(environment)
        child_env["PYTHONPATH"] = str(BRIDGE_DIR)  # the bridge plugin only: nothing of the main environment
        child_env.pop("PYTHONHOME", None)
        child_env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                          "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "WANDB_MODE": "disabled",
                          "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
        command = [str(environment / "bin" / "axolotl"), *arguments]
        records: list[dict[str, Any]] = []
        tail: list[str] = []
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(command)}\n")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                       env=child_env, cwd=log_path.parent, preexec_fn=_die_with_parent)
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    log.write(line)
                    log.flush()
                    for part in line.rstrip("\n").split("\r"):
                        record = parse_event(part)
                        if record is None:
                            if part.strip():
                                tail = (tail + [part])[-40:]
                                if not self.quiet and "[axolotl" in part:
                                    print(part, file=sys.stderr, flush=True)
                            continue
                        records.append(record)
                        event = to_progress(record)
                        if event is not None:
                            emit(event)
                # wait4: this child's own resource usage (with its waited-for children); maxrss in KiB on Linux.
                _, status, usage = os.wait4(process.pid, 0)
                code = process.returncode = os.waitstatus_to_exitcode(status)
                self.peak_rss = max(self.peak_rss or 0, usage.ru_maxrss * 1024)
            except BaseException:
                _stop(process)
                raise
        if code != 0:
            raise TuneError(f"axolotl exited with {code} (log: {log_path}):\n" + "\n".join(tail[-25:]))
        return records

    @staticmethod
    def _hand_over(run: TuneRun, artifact: Path) -> None:
        """axolotl saves the final adapter (LoRA) or model (full) at the top of its output_dir, and merge-lora
        the merged model in its `merged/` folder."""
        source = run.checkpoints / "merged" if run.job.artifact == "merged" and run.job.lora is not None else run.checkpoints
        if artifact.exists():
            shutil.rmtree(artifact)
        artifact.mkdir(parents=True)
        if run.job.artifact == "adapter":
            missing = [name for name in ADAPTER_FILES if not (source / name).is_file()]
            if missing:
                raise TuneError(f"axolotl finished but {source} lacks {missing}")
            for name in ADAPTER_FILES:
                shutil.copy2(source / name, artifact / name)
        else:
            for path in source.iterdir():
                if path.is_file() and not path.name.startswith(("debug", "README")):
                    shutil.copy2(path, artifact / path.name)
            if not any(artifact.glob("*.safetensors")):
                raise TuneError(f"axolotl finished but {source} holds no model weights")

    @staticmethod
    def _versions(environment: Path) -> dict[str, str]:
        script = ("import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in "
                  "('axolotl', 'torch', 'transformers', 'peft', 'trl', 'accelerate', 'datasets')}))")
        try:
            out = subprocess.run([str(environment / "bin" / "python"), "-c", script], capture_output=True, text=True,
                                 check=True, timeout=60).stdout
            return json.loads(out.strip().splitlines()[-1])
        except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, OSError):
            return {"axolotl": axolotl_env.AXOLOTL_VERSION}


def _cuda() -> bool:
    """Whether the run has a GPU (as this process's torch sees it: precision and the LoRA kernels follow)."""
    import torch

    return torch.cuda.is_available()


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM when the process that started it dies, so a killed
    llmkit leaves no axolotl training behind (a killed run resumes from its checkpoints)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _first_eval_in_state(checkpoint: Path) -> float | None:
    """The eval loss before training, from the interrupted run's history (trainer_state.json)."""
    try:
        history = json.loads((checkpoint / "trainer_state.json").read_text()).get("log_history", [])
    except (OSError, json.JSONDecodeError):
        return None
    return next((h["eval_loss"] for h in history if "eval_loss" in h and h.get("step") == 0), None)


def eos_token(folder: str) -> str:
    """The tokenizer's EOS text, from tokenizer_config.json (or, failing that, the tokenizer itself)."""
    path = Path(folder) / "tokenizer_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("eos_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    from transformers import AutoTokenizer

    token = AutoTokenizer.from_pretrained(folder).eos_token
    if not token:
        raise UnsupportedFeatureError(BACKEND, "model", f"the tokenizer of {folder} has no EOS token to end completions with")
    return token


__all__ = ["AxolotlTuner", "parse_event", "to_progress"]
