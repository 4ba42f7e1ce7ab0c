"""The `Tuner` interface: fine-tuning backends (TRL, Unsloth, Axolotl, torchtune) behind one job type.

An adapter subclasses `Tuner`, declares `backend` and the methods it supports, and writes `_finetune`,
which reports progress by calling `emit(TuneProgress(...))`. The base class validates the job first
(the data file exists and parses, the method is supported), so a bad job fails before any training.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from llmkit.errors import InvalidRequestError, UnsupportedFeatureError
from llmkit.types import LLMKitModel


class LoraConfig(LLMKitModel):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TuneJob(LLMKitModel):
    """One fine-tuning run. Every hyper-parameter is explicit: tuners disagree on defaults too."""

    model: str = Field(min_length=1, description="Catalog name, local folder or hub id of the base model.")
    data: Path = Field(description="JSON or JSONL records: Alpaca (instruction/input/output) or preference (chosen/rejected).")
    method: Literal["sft", "dpo"] = "sft"
    output_dir: Path
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description="None trains all weights.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Overrides epochs when set.")
    batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    max_seq_length: int = Field(512, ge=16)
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Held out for the eval loss.")
    seed: int = Field(0, ge=0)

    @field_validator("data")
    @classmethod
    def _data_exists(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist")
        return path

    @model_validator(mode="after")
    def _records_fit_method(self) -> "TuneJob":
        records = load_records(self.data)
        needed = {"sft": {"instruction", "output"}, "dpo": {"instruction", "chosen", "rejected"}}[self.method]
        missing = needed - set(records[0])
        if missing:
            raise ValueError(f"{self.method} needs records with {sorted(needed)}; {self.data} lacks {sorted(missing)}")
        return self


def load_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    try:
        records = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path} must hold a non-empty list of JSON objects")
    return records


class TuneProgress(LLMKitModel):
    step: int = Field(ge=0)
    total_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    elapsed_s: float = 0.0
    message: str = ""


class TuneResult(LLMKitModel):
    output_dir: Path = Field(description="A folder any llmkit engine can load (merged weights or base + adapter).")
    adapter_dir: Path | None = None
    steps: int
    train_loss: float | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    seconds: float
    history: list[TuneProgress] = Field(default_factory=list)


class Tuner(ABC):
    backend: ClassVar[str]
    methods: ClassVar[frozenset[str]] = frozenset({"sft"})

    def finetune(self, job: TuneJob | dict, on_progress: Callable[[TuneProgress], None] | None = None) -> TuneResult:
        if isinstance(job, dict):
            job = TuneJob(**job)
        if job.method not in self.methods:
            raise UnsupportedFeatureError(self.backend, f"method={job.method}")
        history: list[TuneProgress] = []
        start = time.perf_counter()

        def emit(event: TuneProgress) -> None:
            event.elapsed_s = time.perf_counter() - start
            history.append(event)
            if on_progress is not None:
                on_progress(event)

        result = self._finetune(job, emit)
        result.history = history
        return result

    @abstractmethod
    def _finetune(self, job: TuneJob, emit: Callable[[TuneProgress], None]) -> TuneResult: ...


def get_tuner(backend: str, **options: Any) -> Tuner:
    from llmkit.plugins import get_backend

    tuner_class = get_backend(backend, kind="tuner").load_class()
    try:
        return tuner_class(**options)
    except TypeError as exc:
        raise InvalidRequestError(f"{backend}: bad tuner option: {exc}", parameter="options") from None
