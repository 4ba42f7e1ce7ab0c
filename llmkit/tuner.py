"""The `Tuner` interface: fine-tuning backends (TRL, Unsloth, Axolotl, torchtune) behind one job type.

A `TuneJob` names every hyper-parameter; a tuner passes each one to its library explicitly (libraries
disagree on defaults, and some change them by themselves). `Tuner.finetune` does what every backend
shares, so an adapter writes only the training:

1. refuses a method or set-up the backend cannot run (`UnsupportedFeatureError`) before any work;
2. reads and validates the data (`llmkit.data`), splits it, writes the splits into the run's folder;
3. claims the output folder: a finished run there is never overwritten; checkpoints of the same job are
   resumed; checkpoints of another job are refused;
4. calls `_finetune(run, emit)`; the adapter reports `TuneProgress` through `emit` and returns a
   `TuneResult`; the result is written next to the artifact (`result.json`).

Folder layout (`job.output_dir`): `job.json`, `data/{train,validation,test}.jsonl`, `checkpoints/`,
`adapter/` (LoRA), `merged/` (full weights), `model.gguf`, `result.json`.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from llmkit.data import Example, Format, SplitName, Splits, load_examples, read_split, split
from llmkit.errors import InvalidRequestError, TuneError, UnsupportedFeatureError
from llmkit.types import LLMKitModel

Method = Literal["sft", "lora", "qlora", "dpo", "grpo"]
Artifact = Literal["adapter", "merged", "gguf"]
DATA_DIR = "data"  # a run's splits, under its output_dir
# What each method trains on (formats of llmkit.data).
METHOD_FORMATS: dict[str, tuple[Format, ...]] = {
    "sft": ("alpaca", "chat"), "lora": ("alpaca", "chat"), "qlora": ("alpaca", "chat"),
    "dpo": ("preference",), "grpo": ("alpaca", "chat"),
}


class LoraConfig(LLMKitModel):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class SplitConfig(LLMKitModel):
    """ch. 7's split by default: 85 % train, 10 % test, the rest validation, in file order."""

    train: float = Field(0.85, gt=0, le=1)
    test: float = Field(0.10, ge=0, lt=1)
    shuffle: bool = Field(False, description="Shuffle with the job's seed before splitting.")


class DPOOptions(LLMKitModel):
    beta: float = Field(0.1, gt=0)


class GRPOOptions(LLMKitModel):
    rewards: list[str] = Field(default_factory=list, min_length=1,
                               description="Reward functions: built-in names (llmkit.rewards) or 'module:function'.")
    num_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the group).")
    max_completion_length: int = Field(64, ge=1)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0, description="KL coefficient (TRL's default 0: no reference model).")


class TuneJob(LLMKitModel):
    """One fine-tuning run. Defaults are llmkit's, and every one is sent to the backend explicitly."""

    model: str = Field(min_length=1, description="Catalog name, local folder or hub id of the base model.")
    data: Path = Field(description="JSON or JSONL records: alpaca, chat or preference (llmkit.data).")
    data_format: Format | Literal["auto"] = "auto"
    method: Method = "lora"
    output_dir: Path
    lora: LoraConfig | None = Field(None, description="The adapter (lora, qlora; optional for dpo and grpo). "
                                                      "Defaults to LoraConfig() for lora and qlora.")
    artifact: Artifact | None = Field(None, description="What the run hands over: the LoRA adapter (default with "
                                                        "LoRA), merged weights (default without) or a GGUF for llama.cpp.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    batch_size: int = Field(8, ge=1, description="Examples per device per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_seq_length: int = Field(512, ge=16)
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory, slower.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on a GPU that has it, else fp32.")
    seed: int = Field(0, ge=0)
    split: SplitConfig = Field(default_factory=SplitConfig)
    checkpoint_steps: int = Field(50, ge=1, description="Save a resumable checkpoint every N optimizer steps.")
    eval_steps: int | None = Field(None, ge=1, description="Validation loss every N steps (always before and after).")
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    grpo: GRPOOptions | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "TuneJob":
        if self.method in ("lora", "qlora") and self.lora is None:
            self.lora = LoraConfig()
        if self.method == "sft" and self.lora is not None:
            raise ValueError("method sft trains every weight; for an adapter use method lora (or qlora)")
        if self.artifact is None:
            self.artifact = "adapter" if self.lora is not None else "merged"
        if self.artifact == "adapter" and self.lora is None:
            raise ValueError(f"artifact adapter needs LoRA; method {self.method} without lora trains every weight")
        if self.method == "grpo" and self.grpo is None:
            raise ValueError("method grpo needs grpo.rewards (e.g. grpo: {rewards: [exact_match]})")
        if self.method != "grpo" and self.grpo is not None:
            raise ValueError(f"grpo options given for method {self.method}")
        if self.split.train + self.split.test > 1:
            raise ValueError(f"split train + test = {self.split.train + self.split.test} > 1")
        return self

    def fingerprint(self) -> dict[str, Any]:
        """What decides a run's weights: everything but where it is written and how often it is saved, with
        the data file's content (the same path with other records is another job)."""
        from llmkit.kit.files import digest

        return {**self.model_dump(mode="json", exclude={"output_dir", "checkpoint_steps", "eval_steps"}), "data_sha256": digest(self.data)}


class TuneProgress(LLMKitModel):
    step: int = Field(ge=0)
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="Method-specific: DPO reward margin, GRPO reward...")
    elapsed_s: float = 0.0
    message: str = ""


class TuneResult(LLMKitModel):
    backend: str
    method: Method
    base_model: str = Field(description="What the artifact applies to (a LoRA adapter needs it).")
    artifact: Artifact
    path: Path = Field(description="The artifact: adapter folder, merged model folder or GGUF file.")
    output_dir: Path
    steps: int
    resumed_from_step: int | None = None
    train_loss: float | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    seconds: float = 0.0
    train_seconds: float | None = Field(None, description="The training loop's own time (loading, evaluation and saving excluded).")
    train_tokens: int | None = Field(None, description="Tokens of the training batches (padding excluded).")
    tokens_per_second: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = Field(None, description="What the peak measures: device allocations or process RSS.")
    precision: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    history: list[TuneProgress] = Field(default_factory=list)

    def save(self) -> None:
        (self.output_dir / "result.json").write_text(self.model_dump_json(indent=2))

    def split(self, name: SplitName) -> list[Example]:
        """The run's train, validation or test split, as the examples it was cut into (ch. 7 evaluates the
        tuned model on "test")."""
        return read_split(self.output_dir / DATA_DIR, name)


@dataclass
class TuneRun:
    """What `Tuner.finetune` prepared for the adapter."""

    job: TuneJob
    format: Format
    splits: Splits
    resume_from: Path | None  # the newest checkpoint of an interrupted run of this same job

    @property
    def checkpoints(self) -> Path:
        return self.job.output_dir / "checkpoints"

    @property
    def data_dir(self) -> Path:
        """The splits as JSONL files (`train.jsonl`, `validation.jsonl`, `test.jsonl`)."""
        return self.job.output_dir / DATA_DIR

    def artifact_path(self) -> Path:
        return self.job.output_dir / {"adapter": "adapter", "merged": "merged", "gguf": "model.gguf"}[self.job.artifact]


class Tuner(ABC):
    """A fine-tuning backend. Subclasses declare `backend`, `methods`, `artifacts` and `checkpoint_at`, may
    refuse set-ups in `check` (e.g. qlora without a GPU), and write `_finetune`."""

    backend: ClassVar[str]
    methods: ClassVar[frozenset[str]] = frozenset({"lora"})
    artifacts: ClassVar[frozenset[str]] = frozenset({"adapter", "merged"})
    # Where a resumable checkpoint can fall: "steps" — every `checkpoint_steps`, mid-epoch too; "epoch_end" —
    # only at the end of an epoch (a `checkpoint_steps` shorter than an epoch is refused).
    checkpoint_at: ClassVar[Literal["steps", "epoch_end"]] = "steps"

    def check(self, job: TuneJob) -> None:
        """Refuse what this backend cannot run on this machine, with `UnsupportedFeatureError`."""

    def finetune(self, job: TuneJob | dict, on_progress: Callable[[TuneProgress], None] | None = None) -> TuneResult:
        if isinstance(job, dict):
            job = TuneJob(**job)
        if job.method not in self.methods:
            raise UnsupportedFeatureError(self.backend, f"method={job.method}", f"supported: {sorted(self.methods)}")
        if job.artifact not in self.artifacts:
            raise UnsupportedFeatureError(self.backend, f"artifact={job.artifact}", f"supported: {sorted(self.artifacts)}")
        self.check(job)
        run = prepare_run(job, self.backend)
        history: list[TuneProgress] = []
        start = time.perf_counter()

        def emit(event: TuneProgress) -> None:
            event.elapsed_s = time.perf_counter() - start
            history.append(event)
            if on_progress is not None:
                on_progress(event)

        try:
            result = self._finetune(run, emit)
        except (TuneError, UnsupportedFeatureError, InvalidRequestError):
            raise
        except Exception as exc:  # noqa: BLE001 - the library's failure, inside the llmkit error tree
            raise TuneError(f"{self.backend}: {type(exc).__name__}: {exc}") from exc
        result.history = history
        result.seconds = result.seconds or time.perf_counter() - start
        result.save()
        return result

    @abstractmethod
    def _finetune(self, run: TuneRun, emit: Callable[[TuneProgress], None]) -> TuneResult: ...


def prepare_run(job: TuneJob, backend: str) -> TuneRun:
    """Validate the data, claim the output folder, find a checkpoint to resume from (only checkpoints of the
    same job on the same backend)."""
    fmt, examples = load_examples(job.data, job.data_format)
    if fmt not in METHOD_FORMATS[job.method]:
        raise InvalidRequestError(f"method {job.method} trains on {' or '.join(METHOD_FORMATS[job.method])} records; "
                                  f"{job.data} holds {fmt} records", parameter="data", value=str(job.data))
    splits = split(examples, train=job.split.train, test=job.split.test, shuffle_seed=job.seed if job.split.shuffle else None)
    out = job.output_dir
    if (out / "result.json").exists():
        raise TuneError(f"{out} already holds a finished run (result.json); nothing was overwritten: choose another output_dir")
    saved = out / "job.json"
    fingerprint = {"backend": backend, **job.fingerprint()}
    if saved.exists():
        if json.loads(saved.read_text()) != fingerprint:
            raise TuneError(f"{out} holds checkpoints of a different job or backend (job.json differs); nothing was overwritten: "
                            "choose another output_dir, or run the same job to resume it")
    elif out.exists() and any(out.iterdir()):
        raise TuneError(f"{out} is not empty and holds no llmkit run; nothing was overwritten: choose another output_dir")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(fingerprint, indent=2))
    run = TuneRun(job=job, format=fmt, splits=splits, resume_from=latest_checkpoint(out / "checkpoints"))
    splits.write(run.data_dir)
    return run


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete `checkpoint-N` (Hugging Face Trainer's naming): one with its trainer state."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def get_tuner(backend: str, **options: Any) -> Tuner:
    from llmkit.plugins import get_backend

    tuner_class = get_backend(backend, kind="tuner").load_class()
    try:
        return tuner_class(**options)
    except TypeError as exc:
        raise InvalidRequestError(f"{backend}: bad tuner option: {exc}", parameter="options") from None


def export(adapter_dir: Path | str, to: Literal["merged", "gguf"], out: Path | str) -> Path:
    """Hand a LoRA adapter to engines that take one model: merged weights (a Hugging Face folder), or a GGUF
    for llama.cpp and Ollama (merged, then llama.cpp's converter at f16; quantize it further with
    `llmkit.quantize`)."""
    from llmkit.kit.lora import merge_adapter

    out = Path(out)
    if to == "merged":
        return merge_adapter(adapter_dir, out)
    if to != "gguf":
        raise InvalidRequestError(f"export to {to!r}: merged or gguf", parameter="to", value=to)
    import tempfile

    import llmkit

    with tempfile.TemporaryDirectory(prefix="llmkit-merged-") as folder:
        return llmkit.quantize("llamacpp", str(merge_adapter(adapter_dir, folder)), "f16", out)


def read_result(output_dir: Path | str) -> TuneResult:
    """The result a finished run wrote (`result.json`)."""
    path = Path(output_dir) / "result.json"
    if not path.exists():
        raise TuneError(f"{output_dir} holds no finished run (no result.json)")
    return TuneResult.model_validate_json(path.read_text())

