"""Ollama over its REST API, through the official `ollama` Python client.

Every option is sent explicitly: Ollama's own defaults (api/types.go `DefaultOptions`: temperature 0.8,
top_k 40, top_p 0.9, num_predict -1 = unlimited, repeat_last_n 64) are not llmkit's.

SamplingParams → Ollama request (checked against ollama/ollama api/types.go and ollama-python 0.6.3):
    temperature, top_p, top_k, min_p, seed (None → -1, random), stop    options.<same name>
    max_tokens → options.num_predict;  typical_p 1.0 (off);  repeat_last_n -1 (the whole context)
    repetition_penalty → options.repeat_penalty; presence/frequency_penalty → options.<same>
    constraint: JsonSchema → format=<schema>; Choice → format={"enum": choices}, and the JSON string
                that comes back is unwrapped to the bare choice
    refused with UnsupportedFeatureError: n > 1, ignore_eos, logprobs (Ollama returns token strings
    without token ids), regex and grammar constraints, prompt_token_ids.
Request fields: raw=true for prompts (llmkit's prompt is a completion, no template); truncate=false and
shift=false, so an over-long prompt or a full context is an error, never silent truncation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

from pydantic import Field

from llmkit.engine import Engine, EngineOptions
from llmkit.errors import (
    EngineError,
    EngineStartupError,
    InvalidRequestError,
    ModelNotFoundError,
    PromptTooLongError,
    UnsupportedFeatureError,
)
from llmkit.types import Capabilities, Choice, Completion, JsonSchema, Request, RequestMetrics, SamplingParams, StreamChunk, Usage

DONE_REASONS = {"stop": "stop", "length": "length"}


class OllamaOptions(EngineOptions):
    host: str | None = Field(None, description="Server URL; default $OLLAMA_HOST or http://localhost:11434.")
    num_ctx: int = Field(4096, ge=16, description="Context window Ollama allocates for the model.")
    keep_alive: str | None = Field(None, description="How long Ollama keeps the model loaded, e.g. '5m'.")
    timeout: float = Field(600.0, gt=0)
    pull: bool = Field(False, description="Pull the model at load time if the server lacks it.")


class OllamaEngine(Engine):
    backend = "ollama"
    capabilities_ = Capabilities(
        backend="ollama",
        sampling=frozenset({"top_p", "top_k", "min_p", "stop", "seed", "repetition_penalty", "presence_penalty", "frequency_penalty"}),
        constraints=frozenset({"choice", "json_schema"}),
        devices=("cpu", "cuda", "metal"),
    )
    Options = OllamaOptions

    def _start(self) -> None:
        import ollama

        self._ollama = ollama
        self.host = self.options.host or os.environ.get("OLLAMA_HOST") or "http://localhost:11434"
        self.client = ollama.Client(host=self.host, timeout=self.options.timeout)
        self._totals: dict[str, int] = {}
        try:
            info = self.client.show(self.model)
        except ollama.ResponseError as exc:
            if exc.status_code != 404:
                raise EngineStartupError(f"ollama at {self.host}: {exc.error}") from exc
            if not self.options.pull:
                raise ModelNotFoundError(f"ollama at {self.host} has no model {self.model!r} (load with pull=True to pull it)") from exc
            self.pull()
            info = self.client.show(self.model)
        except Exception as exc:  # connection refused, timeouts
            raise EngineStartupError(f"cannot reach ollama at {self.host}: {type(exc).__name__}: {exc}") from exc
        model_info = info.modelinfo or {}
        trained = next((v for k, v in model_info.items() if k.endswith(".context_length")), None)
        self._context = min(self.options.num_ctx, trained) if trained else self.options.num_ctx

    @property
    def context_length(self) -> int:
        return self._context

    def _close(self) -> None:
        self.client = None

    def pull(self, on_progress=None) -> None:
        """Pull the model, reporting Ollama's progress events (status, completed/total bytes)."""
        for event in self.client.pull(self.model, stream=True):
            if on_progress is not None:
                on_progress(event)

    def list_models(self) -> list[str]:
        return [m.model for m in self.client.list().models]

    def _tokenize(self, request: Request) -> list[int] | None:
        return None  # Ollama has no tokenize endpoint; truncate=false makes the server enforce the limit

    # ---- request building ------------------------------------------------------------------------

    def to_native(self, request: Request, params: SamplingParams, stream: bool) -> tuple[str, dict[str, Any]]:
        """(endpoint path, JSON body) for one request: every option explicit."""
        if request.prompt_token_ids is not None:
            raise UnsupportedFeatureError(self.backend, "prompt_token_ids", "Ollama takes text only")
        options = {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "min_p": params.min_p,
            "typical_p": 1.0,
            "seed": params.seed if params.seed is not None else -1,
            "num_predict": params.max_tokens,
            "stop": list(params.stop),
            "repeat_penalty": params.repetition_penalty,
            "repeat_last_n": -1,
            "presence_penalty": params.presence_penalty,
            "frequency_penalty": params.frequency_penalty,
            "num_ctx": self.options.num_ctx,
        }
        body: dict[str, Any] = {"model": self.model, "stream": stream, "options": options, "truncate": False, "shift": False}
        if self.options.keep_alive is not None:
            body["keep_alive"] = self.options.keep_alive
        if isinstance(params.constraint, JsonSchema):
            body["format"] = params.constraint.schema_
        elif isinstance(params.constraint, Choice):
            body["format"] = {"enum": list(params.constraint.choices)}
        if request.messages is not None:
            body["messages"] = [m.model_dump() for m in request.messages]
            return "/api/chat", body
        body["prompt"] = request.prompt
        body["raw"] = True
        return "/api/generate", body

    def _call(self, request: Request, params: SamplingParams, stream: bool) -> Any:
        path, body = self.to_native(request, params, stream)
        response_type = self._ollama.ChatResponse if path == "/api/chat" else self._ollama.GenerateResponse
        try:  # the client's own request path: typed responses, NDJSON streaming, its error handling
            return self.client._request(response_type, "POST", path, json=body, stream=stream)
        except self._ollama.ResponseError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Any) -> Exception:
        message = f"ollama: {exc.error}"
        if "exceeds the context length" in str(exc.error):
            return PromptTooLongError(None, self._context, detail=message)
        if exc.status_code == 404:
            return ModelNotFoundError(message)
        if exc.status_code == 400:
            return InvalidRequestError(message)
        return EngineError(message)

    # ---- generation ------------------------------------------------------------------------------

    def _generate(self, requests: list[Request], params: SamplingParams) -> list[Completion]:
        completions = []
        for prompt_index, request in enumerate(requests):
            start = time.perf_counter()
            response = self._call(request, params, stream=False)
            elapsed = time.perf_counter() - start
            text = _text(response)
            completions.append(
                Completion(
                    text=_unwrap_choice(text, params),
                    token_ids=[],
                    finish_reason=DONE_REASONS.get(response.done_reason or "", "error"),
                    usage=self._usage(response),
                    prompt_index=prompt_index,
                    metrics=RequestMetrics(source="client", e2e=elapsed),
                )
            )
        return completions

    def _stream(self, request: Request, params: SamplingParams) -> Iterator[StreamChunk]:
        parts = self._call(request, params, stream=True)
        return self._chunks(parts, params)

    def _chunks(self, parts: Iterator[Any], params: SamplingParams) -> Iterator[StreamChunk]:
        # A choice arrives as a JSON string; its pieces would show quotes and escapes, so it is sent
        # as one chunk, unwrapped, when Ollama is done (choices are short).
        buffer_choice = isinstance(params.constraint, Choice)
        held = []
        try:
            for part in parts:
                text = _text(part)
                if buffer_choice:
                    held.append(text)
                    if not part.done:
                        continue
                    text = _unwrap_choice("".join(held), params)
                chunk = StreamChunk(text=text)
                if part.done:
                    chunk.finish_reason = DONE_REASONS.get(part.done_reason or "", "error")
                    chunk.usage = self._usage(part)
                yield chunk
        except self._ollama.ResponseError as exc:  # an {"error": ...} line mid-stream
            raise self._error(exc) from exc
        finally:
            close = getattr(parts, "close", None)
            if close is not None:
                close()

    def _usage(self, response: Any) -> Usage:
        for key in ("prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration", "load_duration", "total_duration"):
            self._totals[key] = self._totals.get(key, 0) + int(getattr(response, key, None) or 0)
        return Usage(prompt_tokens=response.prompt_eval_count or 0, completion_tokens=response.eval_count or 0)

    def _engine_metrics(self) -> dict[str, Any]:
        """Ollama's own counters (durations in nanoseconds), summed over requests, and rates from them."""
        totals = dict(self._totals)
        if totals.get("eval_duration"):
            totals["eval_tokens_per_s"] = totals["eval_count"] / (totals["eval_duration"] / 1e9)
        if totals.get("prompt_eval_duration"):
            totals["prompt_eval_tokens_per_s"] = totals["prompt_eval_count"] / (totals["prompt_eval_duration"] / 1e9)
        return totals


def _text(response: Any) -> str:
    message = getattr(response, "message", None)
    if message is not None:
        return message.content or ""
    return response.response or ""


def _unwrap_choice(text: str, params: SamplingParams) -> str:
    if not isinstance(params.constraint, Choice):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text  # reported as is: the conformance check will say it is not one of the choices
    return value if isinstance(value, str) else text
