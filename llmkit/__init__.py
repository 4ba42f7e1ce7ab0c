"""llmkit: one interface over the engines people use to self-host open LLMs.

    import llmkit
    with llmkit.load("transformers", model="smollm2-135m-instruct") as engine:
        print(engine.chat([{"role": "user", "content": "What is the capital of France?"}]).text)

No backend library is imported until a backend is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.catalog import DEFAULT_MODEL
from llmkit.engine import Engine, EngineOptions
from llmkit.errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    ConfigError,
    EngineClosedError,
    EngineDiedError,
    EngineError,
    EngineStartupError,
    GenerationTimeoutError,
    InvalidRequestError,
    LLMKitError,
    ModelNotFoundError,
    PromptTooLongError,
    TuneError,
    UnsupportedFeatureError,
)
from llmkit.hookspecs import hookimpl
from llmkit.plugins import BackendSpec
from llmkit.types import (
    Capabilities,
    Choice,
    Completion,
    EngineStats,
    Grammar,
    JsonSchema,
    MemoryUsage,
    Message,
    Quantization,
    Regex,
    Request,
    SamplingParams,
    StreamChunk,
    Usage,
    greedy,
)

from llmkit.tuner import TuneJob, TuneProgress, TuneResult, Tuner

__version__ = "0.1.0"

__all__ = [
    "BackendNotFoundError", "BackendSpec", "BackendUnavailableError", "Capabilities", "Choice", "Completion",
    "ConfigError", "DEFAULT_MODEL", "Engine", "EngineClosedError", "EngineDiedError", "EngineError", "EngineStartupError",
    "GenerationTimeoutError", "EngineOptions", "EngineStats",
    "Grammar", "InvalidRequestError", "JsonSchema", "LLMKitError", "MemoryUsage", "Message", "ModelNotFoundError",
    "PromptTooLongError", "Quantization", "Regex", "Request", "SamplingParams", "StreamChunk", "TuneError",
    "UnsupportedFeatureError", "Usage", "backends", "greedy", "hookimpl", "load", "load_config",
    "TuneJob", "TuneProgress", "TuneResult", "Tuner", "quantize", "tune",
]


def backends() -> dict[str, BackendSpec]:
    """Installed engine backends by name (nothing is imported)."""
    from llmkit.plugins import engines

    return engines()


def load(backend: str, model: str = DEFAULT_MODEL, **engine_options: Any) -> Engine:
    """Load `model` on `backend`. `engine_options`: the portable options (`EngineOptions`) and the backend's
    own, validated by its Options before anything is loaded."""
    from llmkit.plugins import get_backend

    spec = get_backend(backend)
    engine_class = spec.load_class()
    try:
        return engine_class(model, **engine_options)
    except ImportError as exc:
        raise BackendUnavailableError(backend, f"{type(exc).__name__}: {exc}", spec.install_hint) from exc


def load_config(path: str | Path, **overrides: Any) -> Engine:
    """Load the engine a config file describes; keyword overrides replace its options."""
    from llmkit.config import read_config

    config = read_config(path)
    engine = load(config.backend, config.model, **{**config.engine_options(), **overrides})
    engine.default_params = config.sampling
    return engine


def tune(backend: str, job: TuneJob | dict | str | Path, on_progress=None, **tuner_options: Any) -> TuneResult:
    """Fine-tune with a registered tuner backend ("trl", "axolotl", "torchtune", "unsloth"): `job` is a
    TuneJob, its fields as a dict, or a YAML/TOML/JSON file of them. The result's artifact loads on any
    engine (a LoRA adapter folder as the model on transformers, per request on vLLM; a GGUF on llama.cpp).
    Run the same job into the same output_dir after an interruption and it resumes from its checkpoint."""
    from llmkit.tuner import get_tuner

    if isinstance(job, (str, Path)):
        from llmkit.config import read_mapping

        job = read_mapping(job)
    return get_tuner(backend, **tuner_options).finetune(job, on_progress)


def quantize(backend: str, model: str, method: str, output: str | Path, *, on_progress=None, **job: Any) -> Path:
    """Quantize `model` offline and return the file or folder written. `backend` is an engine (llamacpp:
    q8_0, q4_k_m...; vllm, sglang: fp8-dynamic, w8a8-int8, w4a16) or a quantizer by name (gguf,
    llmcompressor). `job`: the other `llmkit.quantizer.QuantizeJob` fields (calibration data,
    calibration_samples, max_seq_length, dtype). Load-time quantization is `load(..., quantization=...)`."""
    from llmkit.quantizer import QuantizeJob, find_quantizer

    quantizer = find_quantizer(backend, method)
    return quantizer.quantize(QuantizeJob(model=model, method=method, output=Path(output), **job), on_progress)
