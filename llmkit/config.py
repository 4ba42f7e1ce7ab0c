"""Engine configuration files: swapping the backend is a one-word change.

    # engine.yaml
    backend: vllm              # or transformers, llamacpp, ollama, ... (`llmkit backends`)
    model: smollm2-135m-instruct
    options:                   # portable options: every backend understands them, the same way
      max_batch_size: 8
      max_model_len: 2048
    vllm:                      # one backend's own options, read only when that backend is loaded
      enforce_eager: true
    llamacpp:
      n_threads: 2
    sampling:                  # optional default SamplingParams for this engine
      temperature: 0.2
      max_tokens: 128

`options` holds the portable options (`llmkit.EngineOptions`: max_batch_size, max_model_len, dtype, seed,
prefix_caching, memory_fraction); a backend that cannot honour one refuses it at load, naming it. Anything
engine-specific goes in the section named after its backend, so the same file loads on every backend
with only `backend:` changed, and nothing is dropped silently: an engine-specific option under
`options`, or a section whose name is no backend, is an error.

YAML, TOML and JSON files are accepted (by suffix).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from llmkit.catalog import DEFAULT_MODEL
from llmkit.errors import ConfigError, InvalidRequestError
from llmkit.types import LLMKitModel, SamplingParams


class EngineConfig(LLMKitModel):
    """A config file's content. Keys besides these are sections named after backends."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, populate_by_name=True)

    backend: str = Field(min_length=1)
    model: str = DEFAULT_MODEL
    options: dict[str, Any] = Field(default_factory=dict, description="Portable engine options.")
    sampling: SamplingParams | None = None

    @model_validator(mode="after")
    def _sections(self) -> "EngineConfig":
        from llmkit.engine import EngineOptions

        not_portable = sorted(set(self.options) - set(EngineOptions.PORTABLE))
        if not_portable:
            raise ValueError(f"options {not_portable} are not portable (portable: {', '.join(EngineOptions.PORTABLE)}); "
                             f"put a backend's own options in a section named after it, e.g. `{self.backend}:`")
        for name, section in self.sections().items():
            if not isinstance(section, dict):
                raise ValueError(f"section {name!r} must be a mapping of that backend's options")
        return self

    def sections(self) -> dict[str, Any]:
        """Backend name → that backend's own options."""
        return dict(self.model_extra or {})

    def engine_options(self) -> dict[str, Any]:
        """What `llmkit.load` gets for the configured backend: the portable options and its own section."""
        own = self.sections().get(self.backend, {})
        clash = sorted(set(own) & set(self.options))
        if clash:
            raise ConfigError(f"{clash} set both under `options` and under `{self.backend}`")
        return {**self.options, **own}


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML, TOML or JSON file whose top level is a mapping (engine configs, tuning jobs)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config {path}: unknown format {path.suffix!r} (use .yaml, .toml or .json)")
    except ConfigError:
        raise
    except Exception as exc:  # parse errors of three libraries
        raise ConfigError(f"config {path} is not valid {path.suffix[1:]}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    return data


def read_config(path: str | Path) -> EngineConfig:
    data = read_mapping(path)
    try:
        config = EngineConfig(**data)
    except InvalidRequestError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc
    unknown = sorted(set(config.sections()) - known_backend_names())
    if unknown:
        raise ConfigError(f"config {path}: {unknown} is neither a setting (backend, model, options, sampling) nor an "
                          f"installed backend's section (installed: {', '.join(sorted(known_backend_names()))})")
    return config


def known_backend_names() -> set[str]:
    """Names a section may have: the installed backends, and the ones llmkit has adapters for (a config
    shared between machines may name a backend this one lacks)."""
    from llmkit.plugins import engines

    return set(engines()) | {"transformers", "llamacpp", "vllm", "ollama", "sglang", "tensorrt-llm"}


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` strings (values parsed as JSON where they are JSON) → options, as the CLI's `-o`."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidRequestError(f"expected KEY=VALUE, got {pair!r}", parameter="option", value=pair)
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options
