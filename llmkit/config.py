"""Engine configuration files: swapping the backend is a one-word change.

    # engine.yaml
    backend: vllm              # or transformers, llamacpp, sglang, ollama, ...
    model: smollm2-135m-instruct
    options:                   # the backend's own load options, validated by its Options model
      enforce_eager: true
    sampling:                  # optional default SamplingParams for this engine
      temperature: 0.2
      max_tokens: 128

YAML, TOML and JSON files are accepted (by suffix).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field

from llmkit.catalog import DEFAULT_MODEL
from llmkit.errors import ConfigError, InvalidRequestError
from llmkit.types import LLMKitModel, SamplingParams


class EngineConfig(LLMKitModel):
    backend: str = Field(min_length=1)
    model: str = DEFAULT_MODEL
    options: dict[str, Any] = Field(default_factory=dict)
    sampling: SamplingParams | None = None


def read_config(path: str | Path) -> EngineConfig:
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
    try:
        return EngineConfig(**data)
    except InvalidRequestError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc
