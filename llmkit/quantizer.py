"""Offline quantization: a `Quantizer` turns a Hugging Face model into a quantized artifact that engines load.

Quantizers are plugins (`register_quantizers`, a `BackendSpec` of kind "quantizer"), each producing one
format for the engines that read it:

    gguf        llmkit-llamacpp's: llama.cpp's converter + quantizer   → llama.cpp, Ollama
    llmcompressor  llmkit-llmcompressor's: llm-compressor's `oneshot`  → vLLM, SGLang (compressed-tensors)

`llmkit.quantize(backend, ...)` takes the quantizer's name or an engine's: for an engine, the quantizer
whose format it reads and which knows the method. A method nobody makes for that engine is refused
naming what would work. Load-time quantization (the engine quantizes while loading) is an engine option
instead: `llmkit.load(backend, model, quantization=...)`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from llmkit.errors import BackendNotFoundError, InvalidRequestError, LLMKitError, UnsupportedFeatureError
from llmkit.types import LLMKitModel


class QuantizeError(LLMKitError):
    """The quantizer ran and failed (its log is named in the message)."""


class QuantizeJob(LLMKitModel):
    """One offline quantization. Every field is sent to the quantizer or refused by it: none is dropped."""

    model: str = Field(min_length=1, description="A catalog name or a Hugging Face folder.")
    method: str = Field(min_length=1, description="As the quantizer names it: q8_0, q4_k_m, fp8-dynamic, w8a8-int8, w4a16...")
    output: Path = Field(description="The file (GGUF) or folder (checkpoint) to write; must not exist yet, or be empty.")
    calibration: Path | None = Field(
        None, description="Data for calibrated methods (GPTQ, SmoothQuant): instruction data in Alpaca, chat or preference "
        "format (llmkit.data); the first records of its training split (ch. 7's split: the first 85 %) are used.")
    calibration_samples: int = Field(64, ge=1, description="How many records calibrate.")
    max_seq_length: int = Field(512, ge=16, description="Calibration records are cut to this many tokens.")
    group_size: int | None = Field(None, ge=1, description="Weights per scale, for grouped methods (w4a16: 128 unless set).")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="The element type of what stays unquantized (embeddings, norms) and of the scales.")

    @model_validator(mode="after")
    def _output_free(self) -> "QuantizeJob":
        if self.output.exists() and (self.output.is_file() or any(self.output.iterdir())):
            raise InvalidRequestError(f"{self.output} exists: quantize into a new path (nothing is overwritten)",
                                      parameter="output", value=str(self.output))
        return self


class QuantizeProgress(LLMKitModel):
    stage: str
    message: str
    elapsed_s: float


class Quantizer(ABC):
    """A plugin's quantizer. Class attributes say what it makes; `_quantize` makes it."""

    name: ClassVar[str]
    format: ClassVar[str]
    engines: ClassVar[tuple[str, ...]]  # engines that load what it writes
    methods: ClassVar[dict[str, str]]  # method → what it is, one line
    calibrated: ClassVar[frozenset[str]] = frozenset()  # methods that need calibration data
    grouped: ClassVar[frozenset[str]] = frozenset()  # methods that take a group_size
    # Job fields the quantizer does not use at all (e.g. llama.cpp's quantizer has no dtype to choose); a job
    # that sets one is refused rather than have the value ignored.
    unused: ClassVar[frozenset[str]] = frozenset()

    def check(self, job: QuantizeJob) -> None:
        """Refuse, before any work, what this quantizer cannot do as asked."""
        if job.method not in self.methods:
            raise UnsupportedFeatureError(self.name, f"method={job.method!r}", f"{self.name} makes {', '.join(self.methods)}")
        if job.method in self.calibrated and job.calibration is None:
            raise InvalidRequestError(f"{self.name}: {job.method} is calibrated: give calibration data (e.g. the ch. 7 "
                                      "instruction-data.json)", parameter="calibration")
        calibration_fields = {"calibration", "calibration_samples", "max_seq_length"}
        unused = set(self.unused) | (calibration_fields if job.method not in self.calibrated else set())
        unused |= {"group_size"} if job.method not in self.grouped else set()
        given = sorted(unused & job.model_fields_set)
        if given:
            raise UnsupportedFeatureError(self.name, f"{given[0]} with method={job.method}",
                                          f"{job.method} does not use {', '.join(given)}: leave it unset")

    def quantize(self, job: QuantizeJob | dict, on_progress: Callable[[QuantizeProgress], None] | None = None) -> Path:
        job = job if isinstance(job, QuantizeJob) else QuantizeJob(**job)
        self.check(job)
        start = time.perf_counter()

        def emit(stage: str, message: str) -> None:
            if on_progress is not None:
                on_progress(QuantizeProgress(stage=stage, message=message, elapsed_s=time.perf_counter() - start))

        return self._quantize(job, emit)

    @abstractmethod
    def _quantize(self, job: QuantizeJob, emit: Callable[[str, str], None]) -> Path: ...


def quantizer_classes() -> dict[str, type[Quantizer]]:
    """Every registered quantizer's class, by name (their modules are light: the tools run elsewhere)."""
    from llmkit.plugins import quantizers

    return {name: spec.load_class() for name, spec in quantizers().items()}


def find_quantizer(backend: str, method: str) -> Quantizer:
    """The quantizer named `backend`, or the one that makes `method` for the engine `backend`; refusals
    name what would work."""
    classes = quantizer_classes()
    if backend in classes:
        return classes[backend]()
    from llmkit.plugins import engines

    for_engine = {name: cls for name, cls in classes.items() if backend in cls.engines}
    if not for_engine:
        if backend not in engines():
            raise BackendNotFoundError(backend, [*engines(), *classes])
        made = "; ".join(f"{name} ({cls.format}) for {', '.join(cls.engines)}" for name, cls in classes.items())
        raise UnsupportedFeatureError(backend, "offline quantization", f"no quantizer writes a format it loads (installed: {made or 'none'}); "
                                      f"see its load-time `quantization` option")
    maker = next((cls for cls in for_engine.values() if method in cls.methods), None)
    if maker is None:
        offered = "; ".join(f"{', '.join(cls.methods)} ({name})" for name, cls in for_engine.items())
        elsewhere = [f"{name} for {', '.join(cls.engines)}" for name, cls in classes.items() if method in cls.methods]
        raise UnsupportedFeatureError(backend, f"quantize method={method!r}", f"made for {backend}: {offered}"
                                      + (f"; {method} is made by {elsewhere[0]}" if elsewhere else ""))
    return maker()


def describe() -> list[dict[str, Any]]:
    """What each quantizer makes, for `llmkit quantize --list` and the docs."""
    return [{"quantizer": name, "format": cls.format, "engines": list(cls.engines), "method": method, "what": what,
             "calibrated": method in cls.calibrated} for name, cls in quantizer_classes().items() for method, what in cls.methods.items()]
