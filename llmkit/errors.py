"""llmkit's exceptions. Catch as broadly or as narrowly as you need:

    LLMKitError
    ├── InvalidRequestError          bad input from the caller; names `parameter` and `value`
    │   └── PromptTooLongError       the prompt does not fit the model's context
    ├── UnsupportedFeatureError      the backend cannot do what was asked; names `backend`, `feature`
    ├── BackendNotFoundError         no installed plugin registers that backend name
    ├── BackendUnavailableError      the plugin is installed but its engine library does not import
    ├── ModelNotFoundError           a catalog name or path that resolves to nothing
    ├── ConfigError                  a config file that cannot be read or validated
    ├── EngineError                  the engine failed while working
    │   ├── EngineStartupError
    │   ├── EngineClosedError        the engine was used after close()
    │   ├── EngineDiedError
    │   └── GenerationTimeoutError
    └── TuneError                    a fine-tuning job failed

Adapters convert their library's exceptions with `map_engine_errors`, which wraps anything it does
not recognise as `EngineError`, so nothing escapes the tree.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class LLMKitError(Exception):
    """Root of every error llmkit raises."""


class InvalidRequestError(LLMKitError, ValueError):
    """A request or parameter is invalid. `parameter` names the field, `value` what was given."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None):
        super().__init__(message)
        self.parameter = parameter
        self.value = value


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus the tokens asked for, where the engine needs room for them) exceeds the context."""

    def __init__(self, prompt_tokens: int | None, limit: int | None, *, max_tokens: int | None = None, detail: str = ""):
        if prompt_tokens is None or limit is None:  # the engine refused it and did not say by how much
            super().__init__(f"prompt too long for the model's context{': ' + detail if detail else ''}", parameter="prompt")
            self.prompt_tokens, self.limit = prompt_tokens, limit
            return
        need = f"{prompt_tokens} prompt tokens"
        if max_tokens is not None:
            need += f" + max_tokens={max_tokens}"
        super().__init__(
            f"prompt too long: {need} exceeds the model's context of {limit} tokens",
            parameter="prompt",
            value=prompt_tokens,
        )
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class UnsupportedFeatureError(LLMKitError):
    """The backend cannot honour a feature the request uses; nothing is dropped silently."""

    def __init__(self, backend: str, feature: str, detail: str = ""):
        message = f"backend {backend!r} does not support {feature}"
        if detail:
            message += f": {detail}"
        super().__init__(message)
        self.backend = backend
        self.feature = feature


class BackendNotFoundError(LLMKitError, KeyError):
    def __init__(self, name: str, installed: list[str]):
        import difflib

        close = difflib.get_close_matches(name, installed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(sorted(installed)) or "none"
        super().__init__(f"no backend named {name!r}.{hint} Installed backends: {listed}")
        self.name = name
        self.installed = installed

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class BackendUnavailableError(LLMKitError):
    def __init__(self, name: str, reason: str, install_hint: str | None = None):
        message = f"backend {name!r} is installed but cannot be used here: {reason}"
        if install_hint:
            message += f" (install with: {install_hint})"
        super().__init__(message)
        self.name = name
        self.reason = reason


class ModelNotFoundError(LLMKitError):
    pass


class ConfigError(LLMKitError):
    pass


class EngineError(LLMKitError):
    pass


class EngineStartupError(EngineError):
    pass


class EngineClosedError(EngineError):
    pass


class EngineDiedError(EngineError):
    pass


class GenerationTimeoutError(EngineError):
    pass


class TuneError(LLMKitError):
    pass


@contextlib.contextmanager
def map_engine_errors(backend: str, mapping: dict[type[BaseException], type[LLMKitError]] | None = None) -> Iterator[None]:
    """Re-raise a backend library's exceptions as llmkit errors, chaining the original.

    `mapping` sends specific native exception classes to specific llmkit classes; llmkit errors pass
    through unchanged; anything else becomes `EngineError`.
    """
    try:
        yield
    except LLMKitError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - everything else is wrapped, by design
        for native, ours in (mapping or {}).items():
            if isinstance(exc, native):
                raise ours(f"{backend}: {exc}") from exc
        raise EngineError(f"{backend}: {type(exc).__name__}: {exc}") from exc
