"""The `Engine` interface.

An adapter subclasses `Engine`, declares `backend`, `capabilities_` and an `Options` model, and writes
the engine calls only:

    _start()                      load the model (options are validated already)
    _generate(requests, params)   a batch, answered in order; `n` samples per request
    _stream(request, params)      an iterator of delta chunks for one request
    _tokenize(request)            prompt token ids (after the chat template); None if only the engine can tell
    context_length                the model's context window
    _close()                      free the engine

The base class owns everything that does no engine I/O, so every backend behaves the same: input
normalisation, validation (before the engine is touched), capability checks, client-side timing and
stats, the async twins, and the lifecycle (a call after `close()` is an `EngineClosedError`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Union

from pydantic import ValidationError

from llmkit.errors import (
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
    UnsupportedFeatureError,
)
from llmkit.stats import StatsRecorder
from llmkit.types import (
    Capabilities,
    Completion,
    EngineStats,
    LLMKitModel,
    MemoryUsage,
    Message,
    Quantization,
    Request,
    RequestMetrics,
    SamplingParams,
    StreamChunk,
    invalid_request_from,
)

MessageLike = Union[Message, dict]
Inputs = Union[str, Request, Sequence[str], Sequence[MessageLike], Sequence[Sequence[MessageLike]], Sequence[Request]]


class EngineOptions(LLMKitModel):
    """Base for each backend's load-time options. Unknown options are errors."""


def to_requests(inputs: Inputs) -> list[Request]:
    """Normalise what a user may pass (a prompt, prompts, a conversation, conversations) to Requests."""
    if isinstance(inputs, (str, Request)):
        inputs = [inputs]
    if isinstance(inputs, dict) or not isinstance(inputs, Sequence):
        raise InvalidRequestError(
            "expected a prompt string, a list of prompts, a conversation (list of messages) or a list of conversations",
            parameter="inputs",
            value=type(inputs).__name__,
        )
    items = list(inputs)
    if not items:
        raise InvalidRequestError("no inputs given", parameter="inputs", value=items)
    if all(isinstance(item, (Message, dict)) for item in items):  # one conversation
        return [Request(messages=[_message(m) for m in items])]
    requests = []
    for item in items:
        if isinstance(item, Request):
            requests.append(item)
        elif isinstance(item, str):
            requests.append(Request(prompt=item))
        elif isinstance(item, Sequence):
            requests.append(Request(messages=[_message(m) for m in item]))
        else:
            raise InvalidRequestError(f"cannot use {type(item).__name__} as an input", parameter="inputs", value=item)
    return requests


def check_token_ids(ids: list[int], vocab_size: int) -> list[int]:
    """Token-id prompts must lie inside the model's vocabulary (engines would crash or read garbage)."""
    if max(ids) >= vocab_size:
        raise InvalidRequestError(f"token id {max(ids)} is outside the vocabulary ({vocab_size})", parameter="prompt_token_ids", value=max(ids))
    return list(ids)


def _message(m: MessageLike) -> Message:
    return m if isinstance(m, Message) else Message(**m)


def to_params(params: SamplingParams | dict | None, overrides: dict[str, Any]) -> SamplingParams:
    if params is None:
        params = SamplingParams()
    elif isinstance(params, dict):
        params = SamplingParams(**params)
    if overrides:
        try:
            params = SamplingParams.model_validate({**params.model_dump(by_alias=True, exclude_unset=True), **overrides})
        except ValidationError as exc:
            raise invalid_request_from(exc, "SamplingParams") from None
    return params


class Engine(ABC):
    """One loaded model on one backend. Use as a context manager, or call `close()`."""

    backend: ClassVar[str]
    capabilities_: ClassVar[Capabilities]
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    default_params: SamplingParams | None = None  # used when a call passes no params (set by load_config)

    def __init__(self, model: str | Path, **options: Any) -> None:
        self.model = str(model)
        try:
            self.options = self.Options(**options)
        except InvalidRequestError as exc:
            raise InvalidRequestError(
                f"{self.backend}: bad engine option: {exc}", parameter=exc.parameter, value=exc.value
            ) from None
        self._closed = False
        self._stats = StatsRecorder()
        self._start()

    # ---- what adapters write ---------------------------------------------------------------------

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _generate(self, requests: list[Request], params: SamplingParams) -> list[Completion]: ...

    @abstractmethod
    def _stream(self, request: Request, params: SamplingParams) -> Iterator[StreamChunk]: ...

    @abstractmethod
    def _tokenize(self, request: Request) -> list[int] | None:
        """Prompt token ids, or None where only the engine can tell (it then enforces the limit). The core
        calls this once per request and hands the adapter a token-id request, so nothing is tokenized twice."""

    @property
    @abstractmethod
    def context_length(self) -> int: ...

    def _close(self) -> None:
        pass

    def _engine_metrics(self) -> dict[str, Any]:
        """Engine-native metrics for `stats()`; adapters override where the engine reports any."""
        return {}

    def _memory(self) -> MemoryUsage | None:
        """What the engine allocated for weights and KV cache, as it reports it; None where it does not."""
        return None

    @classmethod
    def quantize_model(cls, model: str, quantization: Quantization, output: Path) -> Path:
        """Write a quantized copy of `model` that this backend can load. Backends that can override this."""
        raise UnsupportedFeatureError(cls.backend, "quantize", "this backend does not produce quantized files")

    # ---- the public interface --------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return self.capabilities_

    def generate(self, inputs: Inputs, params: SamplingParams | dict | None = None, **overrides: Any) -> list[Completion]:
        """Complete each prompt or conversation. Returns `n` completions per input, input-major."""
        requests, params = self._prepare(inputs, params, overrides)
        start = time.perf_counter()
        completions = self._generate(requests, params)
        elapsed = time.perf_counter() - start
        for completion in completions:
            if completion.metrics.e2e is None:
                completion.metrics = RequestMetrics(source="client", e2e=elapsed)
        self._stats.record_batch(completions, elapsed)
        return completions

    def chat(self, messages: Sequence[MessageLike], params: SamplingParams | dict | None = None, **overrides: Any) -> Completion:
        """Answer one conversation (the model's chat template is applied)."""
        if not messages or isinstance(messages, str) or not all(isinstance(m, (Message, dict)) for m in messages):
            raise InvalidRequestError("chat takes one conversation: a list of messages", parameter="messages", value=messages)
        params = to_params(params if params is not None else self.default_params, overrides)
        if params.n != 1:
            raise InvalidRequestError("chat returns one completion; use generate() for n > 1", parameter="n", value=params.n)
        return self.generate([list(messages)], params)[0]

    def stream(self, inputs: str | Sequence[MessageLike] | Request, params: SamplingParams | dict | None = None, **overrides: Any) -> Iterator[StreamChunk]:
        """Stream one prompt or conversation as delta chunks. Validation happens at this call,
        before the first `next()`."""
        requests, params = self._prepare(inputs, params, overrides)
        if len(requests) != 1:
            raise InvalidRequestError("stream takes one prompt or conversation", parameter="inputs", value=len(requests))
        if params.n != 1:
            raise InvalidRequestError("stream returns one sequence; n must be 1", parameter="n", value=params.n)
        return self._timed_stream(self._stream(requests[0], params))

    def stats(self, samples: bool = False) -> EngineStats:
        """What the engine did since it was loaded or `reset_stats()`; `samples=True` adds every latency
        sample (for distributions) beside the percentiles."""
        self._check_open()
        return self._stats.summary(self.backend, self.model, self._engine_metrics(), samples)

    def memory(self) -> MemoryUsage | None:
        """Weights and KV-cache memory as the engine reports them (compare with `llmkit plan`)."""
        self._check_open()
        return self._memory()

    def reset_stats(self) -> None:
        self._stats = StatsRecorder()

    def tokenize(self, inputs: str | Sequence[MessageLike] | Request) -> list[int] | None:
        """The prompt's token ids as this engine sees them (chat template applied to a conversation), or
        None where only the engine's server can tell (Ollama)."""
        self._check_open()
        return self._tokenize(to_requests(inputs)[0])

    def count_tokens(self, inputs: str | Sequence[MessageLike] | Request) -> int | None:
        ids = self.tokenize(inputs)
        return None if ids is None else len(ids)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:  # interpreter exit or a forgotten engine: free it
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} backend={self.backend!r} model={self.model!r} {state}>"

    # ---- async twins: same names, same validation; the engine call runs off the event loop -------

    async def agenerate(self, inputs: Inputs, params: SamplingParams | dict | None = None, **overrides: Any) -> list[Completion]:
        return await asyncio.to_thread(self.generate, inputs, params, **overrides)

    async def achat(self, messages: Sequence[MessageLike], params: SamplingParams | dict | None = None, **overrides: Any) -> Completion:
        return await asyncio.to_thread(self.chat, messages, params, **overrides)

    async def astream(self, inputs: str | Sequence[MessageLike] | Request, params: SamplingParams | dict | None = None, **overrides: Any) -> AsyncIterator[StreamChunk]:
        """Async twin of `stream`. Breaking out of the loop cancels the generation."""
        chunks = self.stream(inputs, params, **overrides)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for chunk in chunks:
                    if cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                chunks.close()
                loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            await worker

    # ---- shared internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(f"{self.backend} engine for {self.model!r} is closed")

    def _prepare(self, inputs: Inputs, params: SamplingParams | dict | None, overrides: dict[str, Any]) -> tuple[list[Request], SamplingParams]:
        self._check_open()
        requests = to_requests(inputs)
        params = to_params(params if params is not None else self.default_params, overrides)
        caps = self.capabilities()
        for feature in params.features_used():
            if not caps.supports(feature):
                raise UnsupportedFeatureError(self.backend, feature, caps.limits.get(feature, ""))
        if any(r.messages is not None for r in requests) and not caps.chat:
            raise UnsupportedFeatureError(self.backend, "chat")
        if any(r.lora is not None for r in requests) and not caps.lora:
            raise UnsupportedFeatureError(self.backend, "lora", "per-request LoRA adapters (for vLLM: load with enable_lora=True)")
        limit = self.context_length
        tokenized = []
        for request in requests:
            ids = self._tokenize(request)
            if ids is None:
                tokenized.append(request)
                continue
            if len(ids) >= limit:
                raise PromptTooLongError(len(ids), limit)
            # The engine's own ids: no need to validate them again.
            tokenized.append(Request.model_construct(prompt_token_ids=ids, lora=request.lora))
        return tokenized, params

    def _timed_stream(self, chunks: Iterator[StreamChunk]) -> Iterator[StreamChunk]:
        """Measure TTFT and inter-token latency on the client side, the same way for every engine."""
        start = time.perf_counter()
        first: float | None = None
        last = start
        itl: list[float] = []
        usage = None
        finished = False
        try:
            for chunk in chunks:
                now = time.perf_counter()
                if chunk.token_ids or chunk.text:  # some engines (Ollama) stream text without token ids
                    if first is None:
                        first = now - start
                    else:
                        itl.append(now - last)
                    last = now
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.finish_reason is not None:
                    finished = True
                yield chunk
        finally:
            chunks.close()
            end = time.perf_counter()
            metrics = RequestMetrics(source="client", ttft=first, e2e=(last - start) if first is not None else None, itl=itl)
            self._stats.record_stream(metrics, usage, end - start, aborted=not finished)
