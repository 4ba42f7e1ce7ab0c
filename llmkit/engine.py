"""The `Engine` interface, and the concurrency contract every backend keeps.

Concurrency contract
--------------------
- One engine is shared by any number of threads and asyncio tasks at once. Concurrent requests are
  batched by the engine wherever it can batch (vLLM, SGLang, TensorRT-LLM: continuous batching; the
  transformers engine: new requests join the running batch between decode steps; llama.cpp: one sequence
  at a time, first come first served).
- No lock is held across a `yield`: a stream that is not read does not stop other callers (its output
  waits for it, bounded by its `max_tokens`).
- Outputs never reach the wrong caller: each request has its own channel (`llmkit.kit.generation`).
- Cancelling a stream (`close()`, `break` then dropping it, a `timeout`, a cancelled asyncio task) frees
  that request only.
- `close()` with requests in flight ends each with `EngineClosedError` (no crash, no hang), then frees
  the engine. An engine whose process dies ends every in-flight and later request with `EngineDiedError`.
- The async methods (`agenerate`, `achat`, `astream`) take no thread per call: they await the same
  channels the sync methods block on. The sync methods are that path plus a blocking wait.

Writing an adapter
------------------
Subclass `Engine`, declare `backend`, `capabilities_` and an `Options` model (its base fields are the
portable options), and write:

    _start()                 load the model (options are validated already)
    _submit(generation)      start generating `generation.request` with `generation.params`; push delta
                             chunks into it (from any thread) and end it; stop when it is cancelled
    _tokenize(request)       prompt token ids (chat template applied); None if only the engine can tell
    context_length           the model's context window (must work after close)
    _close()                 stop using the model and free it (in-flight generations are ended already)

and, where the engine tells, `_memory`, `_engine_metrics`, `_special_tokens`, `_weights`. The base class
owns everything else: input normalisation, validation before the engine is touched, capability and range
checks, timing and stats, timeouts, the async twins, the lifecycle, and the error tree (nothing but an
`LLMKitError` leaves a public method).
"""

from __future__ import annotations

import functools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

from pydantic import Field, ValidationError

from llmkit.errors import (
    EngineClosedError,
    EngineDiedError,
    EngineError,
    InvalidRequestError,
    LLMKitError,
    PromptTooLongError,
    UnsupportedFeatureError,
)
from llmkit.kit.generation import Generation
from llmkit.stats import StatsRecorder
from llmkit.types import (
    Capabilities,
    Completion,
    EngineStats,
    LLMKitModel,
    MemoryUsage,
    Message,
    Request,
    RequestMetrics,
    SamplingParams,
    SpecialTokens,
    StreamChunk,
    StrictInt,
    TokenLogprob,
    Usage,
    WeightsInfo,
    invalid_request_from,
)

MessageLike = Union[Message, dict]
Inputs = Union[str, Request, Sequence[str], Sequence[MessageLike], Sequence[Sequence[MessageLike]], Sequence[Request]]


class EngineOptions(LLMKitModel):
    """Load-time options. The fields declared here are portable: every backend understands them and they
    mean the same on each (None leaves the engine's own default). A backend that cannot honour a value
    refuses it at load with `UnsupportedFeatureError`. Each backend adds its own options in a subclass;
    in a config file those go in a section named after the backend."""

    max_batch_size: StrictInt | None = Field(
        None, ge=1, description="Most sequences decoded together (vLLM max_num_seqs); an upper bound. llama.cpp decodes one "
        "at a time, Ollama's server decides its own batching: there it caps the requests sent at once.",
    )
    max_model_len: StrictInt | None = Field(None, ge=16, description="Context length in tokens (prompt + output).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="Weights and activations; 'auto' or None: the engine's choice for the device."
    )
    seed: StrictInt | None = Field(
        None, ge=0, description="Engine-wide seed: requests without their own seed draw theirs from it, reproducibly."
    )
    prefix_caching: bool | None = Field(None, description="Reuse the KV cache of prompt prefixes shared across requests.")
    memory_fraction: float | None = Field(
        None, gt=0, le=1, description="Fraction of the accelerator's memory the engine may take (vLLM gpu_memory_utilization)."
    )

    PORTABLE: ClassVar[tuple[str, ...]] = ("max_batch_size", "max_model_len", "dtype", "seed", "prefix_caching", "memory_fraction")

    @classmethod
    def portable(cls) -> tuple[str, ...]:
        return EngineOptions.PORTABLE

    @classmethod
    def specific(cls) -> list[str]:
        """This backend's own option names."""
        return [name for name in cls.model_fields if name not in EngineOptions.PORTABLE]


def to_requests(inputs: Inputs) -> list[Request]:
    """Normalise what a user may pass (a prompt, prompts, a conversation, conversations, Requests)."""
    if isinstance(inputs, (str, Request)):
        inputs = [inputs]
    if isinstance(inputs, (dict, bytes)) or not isinstance(inputs, Sequence):
        raise InvalidRequestError(
            "expected a prompt string, a list of prompts, a conversation (list of messages) or a list of conversations",
            parameter="inputs", value=type(inputs).__name__,
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
        elif isinstance(item, Sequence) and not isinstance(item, (bytes, dict)):
            requests.append(Request(messages=[_message(m) for m in item]))
        else:
            raise InvalidRequestError(f"cannot use {type(item).__name__} as an input", parameter="inputs", value=repr(item)[:80])
    return requests


def _message(m: Any) -> Message:
    if isinstance(m, Message):
        return m
    if not isinstance(m, dict):
        raise InvalidRequestError(f"a message is a dict with role and content, not {type(m).__name__} ({m!r:.60})",
                                  parameter="messages", value=repr(m)[:80])
    return Message(**m)


def check_token_ids(ids: list[int], vocab_size: int) -> list[int]:
    """Token-id prompts must lie inside the model's vocabulary (engines would crash or read garbage)."""
    if max(ids) >= vocab_size:
        raise InvalidRequestError(f"token id {max(ids)} is outside the vocabulary ({vocab_size})", parameter="prompt_token_ids", value=max(ids))
    return list(ids)


def to_params(params: SamplingParams | dict | None, overrides: dict[str, Any]) -> SamplingParams:
    if params is None:
        params = SamplingParams()
    elif isinstance(params, dict):
        params = SamplingParams(**params)
    elif not isinstance(params, SamplingParams):
        raise InvalidRequestError(f"params must be SamplingParams, a dict or None, not {type(params).__name__}",
                                  parameter="params", value=repr(params)[:80])
    if overrides:
        try:
            params = SamplingParams.model_validate({**params.model_dump(by_alias=True, exclude_unset=True), **overrides})
        except ValidationError as exc:
            raise invalid_request_from(exc, "SamplingParams") from None
    return params


def _guarded(method):
    """Public methods raise llmkit errors only: anything else is a bug or an upstream exception the
    adapter did not map, and comes out as `EngineError` with the original chained."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except LLMKitError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"{self.backend}: {type(exc).__name__}: {exc}") from exc

    return wrapper


def _aguarded(method):
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except LLMKitError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"{self.backend}: {type(exc).__name__}: {exc}") from exc

    return wrapper


class Engine(ABC):
    """One loaded model on one backend. Use as a context manager, or call `close()`."""

    backend: ClassVar[str]
    capabilities_: ClassVar[Capabilities]
    Options: ClassVar[type[EngineOptions]] = EngineOptions
    default_params: SamplingParams | None = None  # used when a call passes no params (set by load_config)

    def __init__(self, model: str | Path, **options: Any) -> None:
        self.model = str(model)
        self._lock = threading.RLock()
        self._closed = False
        self._died: EngineDiedError | None = None
        self._live: set[Generation] = set()
        self._stats = StatsRecorder()
        self.options = self._validate_options(options)
        try:
            self._start()
        except LLMKitError:
            raise
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - an engine that fails to start says so in llmkit's terms
            from llmkit.errors import EngineStartupError

            raise EngineStartupError(f"{self.backend}: {type(exc).__name__}: {exc}") from exc

    def _validate_options(self, options: dict[str, Any]) -> EngineOptions:
        unknown = sorted(set(options) - set(self.Options.model_fields)) if self.Options.model_config.get("extra") != "allow" else []
        if "quantization" in unknown:  # the same name on every engine that quantizes while loading
            raise UnsupportedFeatureError(self.backend, f"quantization={options['quantization']!r}", self.capabilities_.limits.get(
                "quantization", "this backend does not quantize while loading: load a quantized file (llmkit.quantize)"))
        if unknown:
            raise InvalidRequestError(
                f"{self.backend}: unknown option(s) {unknown}. Portable options: {', '.join(EngineOptions.PORTABLE)}; "
                f"{self.backend}'s own: {', '.join(self.Options.specific()) or 'none'}. In a config file, another engine's "
                f"options go in a section named after it.", parameter=unknown[0], value=options[unknown[0]],
            )
        try:
            return self.Options(**options)
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{self.backend}: bad engine option: {exc}", parameter=exc.parameter, value=exc.value) from None

    # ---- what adapters write ---------------------------------------------------------------------

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _submit(self, generation: Generation) -> None:
        """Start working on `generation` without waiting for it; raise only for a request the engine
        refuses outright (it is then ended by the caller)."""

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

    def _special_tokens(self) -> SpecialTokens:
        return SpecialTokens()

    def _weights(self) -> WeightsInfo | None:
        return None

    # ---- the public interface --------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        return self.capabilities_

    @_guarded
    def generate(self, inputs: Inputs, params: SamplingParams | dict | None = None, *, timeout: float | None = None,
                 **overrides: Any) -> list[Completion]:
        """Complete each prompt or conversation. Returns `n` completions per input, input-major. The
        inputs run concurrently (batched where the engine batches). `timeout` (seconds) bounds the call:
        past it every unfinished request is cancelled and `GenerationTimeoutError` is raised."""
        generations = self._launch(inputs, params, overrides, timeout)
        try:
            return [c for i, g in enumerate(generations) for c in _collect(g, i, _drain(g))]
        finally:
            for generation in generations:
                generation.cancel()  # a no-op for finished ones; frees the rest on an error or timeout

    @_guarded
    def chat(self, messages: Sequence[MessageLike], params: SamplingParams | dict | None = None, *,
             timeout: float | None = None, **overrides: Any) -> Completion:
        """Answer one conversation (the model's chat template is applied)."""
        self._check_conversation(messages)
        params = to_params(params if params is not None else self.default_params, overrides)
        if params.n != 1:
            raise InvalidRequestError("chat returns one completion; use generate() for n > 1", parameter="n", value=params.n)
        return self.generate([list(messages)], params, timeout=timeout)[0]

    @_guarded
    def stream(self, inputs: str | Sequence[MessageLike] | Request, params: SamplingParams | dict | None = None, *,
               timeout: float | None = None, **overrides: Any) -> "ChunkStream":
        """Stream one prompt or conversation as delta chunks. The request is validated and started at this
        call; closing the stream (or dropping it) cancels it."""
        return ChunkStream(self._launch_one_stream(inputs, params, overrides, timeout), self.backend)

    async def agenerate(self, inputs: Inputs, params: SamplingParams | dict | None = None, *, timeout: float | None = None,
                        **overrides: Any) -> list[Completion]:
        """`generate` for asyncio: awaits the engine without a thread."""
        return await self._agenerate(inputs, params, timeout, overrides)

    async def achat(self, messages: Sequence[MessageLike], params: SamplingParams | dict | None = None, *,
                    timeout: float | None = None, **overrides: Any) -> Completion:
        self._check_conversation(messages)
        params = to_params(params if params is not None else self.default_params, overrides)
        if params.n != 1:
            raise InvalidRequestError("chat returns one completion; use agenerate() for n > 1", parameter="n", value=params.n)
        return (await self._agenerate([list(messages)], params, timeout, {}))[0]

    @_guarded
    def astream(self, inputs: str | Sequence[MessageLike] | Request, params: SamplingParams | dict | None = None, *,
                timeout: float | None = None, **overrides: Any) -> "AsyncChunkStream":
        """`stream` for asyncio (`async for chunk in engine.astream(...)`). Leaving the loop early and
        dropping the stream, `aclose()`, or cancelling the task cancels the request."""
        return AsyncChunkStream(self._launch_one_stream(inputs, params, overrides, timeout), self.backend)

    def stats(self, samples: bool = False) -> EngineStats:
        """What the engine did since it was loaded or `reset_stats()`; `samples=True` adds the latency
        samples (the most recent 10,000 of each) beside the percentiles."""
        if self._closed:
            raise EngineClosedError(f"{self.backend} engine for {self.model!r} is closed")
        return self._stats.summary(self.backend, self.model, self._engine_metrics(), samples)

    @_guarded
    def memory(self) -> MemoryUsage | None:
        """Weights and KV-cache memory as the engine reports them (compare with `llmkit plan`)."""
        self._check_open()
        return self._memory()

    @_guarded
    def special_tokens(self) -> SpecialTokens:
        """BOS / EOS / pad ids, e.g. to score a text from an empty context (prepend BOS)."""
        self._check_open()
        return self._special_tokens()

    @_guarded
    def weights(self) -> WeightsInfo | None:
        """Which weights are running: format, dtype or quantization, bits, KV-cache dtype."""
        return self._weights()

    def reset_stats(self) -> None:
        old, self._stats = self._stats, StatsRecorder()
        self._stats._in_flight = old._in_flight  # requests already running still end here
        if old._in_flight:
            self._stats._busy_since = time.perf_counter()

    @_guarded
    def tokenize(self, inputs: str | Sequence[MessageLike] | Request) -> list[int] | None:
        """The token ids of one prompt or conversation as this engine sees them (chat template applied),
        or None where only the engine's server can tell (Ollama). For several, call it for each."""
        self._check_open()
        requests = to_requests(inputs)
        if len(requests) != 1:
            raise InvalidRequestError(f"tokenize takes one prompt or conversation, got {len(requests)}: "
                                      "call it once per input", parameter="inputs", value=len(requests))
        return self._tokenize(requests[0])

    def count_tokens(self, inputs: str | Sequence[MessageLike] | Request) -> int | None:
        ids = self.tokenize(inputs)
        return None if ids is None else len(ids)

    def close(self) -> None:
        """End every request in flight with `EngineClosedError`, then free the engine. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._live)
        error = EngineClosedError(f"{self.backend} engine for {self.model!r} was closed while the request was in flight")
        for generation in live:
            generation.end(error)
        try:
            self._close()
        except LLMKitError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"{self.backend}: closing failed: {type(exc).__name__}: {exc}") from exc

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
        state = "closed" if self._closed else "dead" if self._died else "open"
        return f"<{type(self).__name__} backend={self.backend!r} model={self.model!r} {state}>"

    # ---- for adapters --------------------------------------------------------------------------

    def died(self, cause: BaseException | str) -> EngineDiedError:
        """The engine's process died: every in-flight and later request gets `EngineDiedError` (with the
        cause). Returns the error, for the adapter to end its own generations with."""
        with self._lock:
            if self._died is None:
                text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
                self._died = EngineDiedError(f"{self.backend} engine died: {text}")
                if isinstance(cause, BaseException):
                    self._died.__cause__ = cause
            live = list(self._live)
        for generation in live:
            generation.end(self._died)
        return self._died

    # ---- shared internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(f"{self.backend} engine for {self.model!r} is closed")
        if self._died is not None:
            raise self._died

    @staticmethod
    def _check_conversation(messages: Any) -> None:
        if not messages or isinstance(messages, (str, dict)) or not isinstance(messages, Sequence) or \
                not all(isinstance(m, (Message, dict)) for m in messages):
            raise InvalidRequestError("chat takes one conversation: a list of messages", parameter="messages",
                                      value=repr(messages)[:80])

    def _prepare(self, inputs: Inputs, params: SamplingParams | dict | None, overrides: dict[str, Any]) -> tuple[list[Request], SamplingParams]:
        self._check_open()
        requests = to_requests(inputs)
        params = to_params(params if params is not None else self.default_params, overrides)
        caps = self.capabilities()
        for feature in params.features_used():
            if not caps.supports(feature):
                raise UnsupportedFeatureError(self.backend, feature, caps.limits.get(feature, ""))
        for name, (low, high) in caps.ranges.items():
            value = getattr(params, name)
            if value is not None and not low <= value <= high:
                raise InvalidRequestError(f"{self.backend} accepts {name} in [{low}, {high}], got {value}", parameter=name, value=value)
        if params.scoring_only and not caps.supports("prompt_logprobs"):
            raise UnsupportedFeatureError(self.backend, "max_tokens=0 (prompt scoring)", caps.limits.get("prompt_logprobs", ""))
        if any(r.messages is not None for r in requests) and not caps.chat:
            raise UnsupportedFeatureError(self.backend, "chat")
        if any(r.lora is not None for r in requests) and not caps.lora:
            raise UnsupportedFeatureError(self.backend, "lora", caps.limits.get("lora", "per-request LoRA adapters"))
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
            tokenized.append(Request.model_construct(prompt_token_ids=ids, lora=request.lora, prompt=None, messages=None))
        return tokenized, params

    def _launch(self, inputs: Inputs, params: SamplingParams | dict | None, overrides: dict[str, Any],
                timeout: float | None) -> list[Generation]:
        requests, params = self._prepare(inputs, params, overrides)
        deadline = _deadline(timeout)
        generations: list[Generation] = []
        try:
            for request in requests:
                generations.append(self._start_generation(request, params, deadline))
        except BaseException:
            for generation in generations:
                generation.cancel()
            raise
        return generations

    def _launch_one_stream(self, inputs: Any, params: Any, overrides: dict[str, Any], timeout: float | None) -> Generation:
        requests, params = self._prepare(inputs, params, overrides)
        if len(requests) != 1:
            raise InvalidRequestError("stream takes one prompt or conversation", parameter="inputs", value=len(requests))
        if params.n != 1:
            raise InvalidRequestError("stream returns one sequence; n must be 1", parameter="n", value=params.n)
        return self._start_generation(requests[0], params, _deadline(timeout))

    def _start_generation(self, request: Request, params: SamplingParams, deadline: float | None) -> Generation:
        generation = Generation(request, params, on_end=self._ended, deadline=deadline)
        with self._lock:
            self._check_open()
            self._live.add(generation)
        self._stats.started()
        try:
            self._submit(generation)
        except BaseException as exc:
            generation.counted = False
            if self._closed and not isinstance(exc, LLMKitError):  # closed between the check above and the submission
                exc = EngineClosedError(f"{self.backend} engine for {self.model!r} was closed while the request was submitted")
            generation.end(exc if isinstance(exc, LLMKitError) else None)
            if isinstance(exc, LLMKitError):
                raise exc
            raise EngineError(f"{self.backend}: {type(exc).__name__}: {exc}") from exc
        return generation

    def _ended(self, generation: Generation) -> None:
        with self._lock:
            self._live.discard(generation)
        self._stats.stopped()
        if not getattr(generation, "counted", True):
            return
        params = generation.params
        for index in range(params.n):
            timing = generation.timing.get(index)
            usage = generation.usage.get(index)
            metrics = RequestMetrics(source="client", ttft=timing.first, e2e=timing.last, itl=timing.itl) if timing else RequestMetrics()
            self._stats.record(metrics, usage, count_prompt=index == 0,
                               aborted=generation.cancelled and not (timing and timing.finished))

    async def _agenerate(self, inputs: Inputs, params: Any, timeout: float | None, overrides: dict[str, Any]) -> list[Completion]:
        try:
            generations = self._launch(inputs, params, overrides, timeout)
        except LLMKitError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"{self.backend}: {type(exc).__name__}: {exc}") from exc
        try:
            completions = []
            for i, generation in enumerate(generations):
                chunks = []
                while (chunk := await generation.aget()) is not None:
                    chunks.append(chunk)
                completions += _collect(generation, i, chunks)
            return completions
        finally:
            for generation in generations:
                generation.cancel()


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if not timeout > 0:
        raise InvalidRequestError("timeout must be a positive number of seconds", parameter="timeout", value=timeout)
    return time.perf_counter() + timeout


def _drain(generation: Generation) -> list[StreamChunk]:
    chunks = []
    while (chunk := generation.get()) is not None:
        chunks.append(chunk)
    return chunks


def _collect(generation: Generation, prompt_index: int, chunks: list[StreamChunk]) -> list[Completion]:
    """The completions (one per sample index) that a generation's delta chunks add up to."""
    parts: dict[int, dict[str, Any]] = {}
    prompt_logprobs = None
    for chunk in chunks:
        part = parts.setdefault(chunk.index, {"text": [], "token_ids": [], "logprobs": None, "finish": None, "stop": None, "usage": None})
        part["text"].append(chunk.text)
        part["token_ids"] += chunk.token_ids
        if chunk.logprobs is not None:
            part["logprobs"] = (part["logprobs"] or []) + chunk.logprobs
        if chunk.prompt_logprobs is not None:
            prompt_logprobs = chunk.prompt_logprobs
        if chunk.finish_reason is not None:
            part["finish"], part["stop"], part["usage"] = chunk.finish_reason, chunk.stop_reason, chunk.usage
    completions = []
    for index in sorted(parts):
        part = parts[index]
        timing = generation.timing.get(index)
        usage = part["usage"] or Usage(prompt_tokens=len(generation.request.prompt_token_ids or []), completion_tokens=len(part["token_ids"]))
        completions.append(Completion.model_construct(
            text="".join(part["text"]),
            token_ids=part["token_ids"],
            finish_reason=part["finish"] or "abort",
            stop_reason=part["stop"],
            usage=usage,
            logprobs=part["logprobs"],
            prompt_logprobs=prompt_logprobs,
            prompt_index=prompt_index,
            index=index,
            metrics=RequestMetrics(source="client", ttft=timing.first, e2e=timing.last, itl=timing.itl) if timing else RequestMetrics(),
        ))
    return completions


class _Stream:
    """What both stream kinds share: one generation, cancelled when the stream is closed or dropped."""

    def __init__(self, generation: Generation, backend: str) -> None:
        self._generation = generation
        self._backend = backend

    @property
    def request_id(self) -> str:
        return self._generation.id

    def __del__(self) -> None:
        generation = getattr(self, "_generation", None)
        if generation is not None:
            generation.cancel()


class ChunkStream(_Stream, Iterator[StreamChunk]):
    """The chunks of one streamed request. Iterate it; `close()` (or dropping it) cancels the request."""

    def __iter__(self) -> "ChunkStream":
        return self

    def __next__(self) -> StreamChunk:
        chunk = _as_llmkit_error(self._generation.get, self._backend)
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._generation.cancel()

    def __enter__(self) -> "ChunkStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncChunkStream(_Stream, AsyncIterator[StreamChunk]):
    """The async twin of `ChunkStream`: `async for`, `aclose()`, `async with`."""

    def __aiter__(self) -> "AsyncChunkStream":
        return self

    async def __anext__(self) -> StreamChunk:
        try:
            chunk = await self._generation.aget()
        except LLMKitError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"{self._backend}: {type(exc).__name__}: {exc}") from exc
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._generation.cancel()

    async def __aenter__(self) -> "AsyncChunkStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._generation.cancel()


def _as_llmkit_error(call, backend: str):
    try:
        return call()
    except LLMKitError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"{backend}: {type(exc).__name__}: {exc}") from exc


__all__ = ["AsyncChunkStream", "ChunkStream", "Engine", "EngineOptions", "Inputs", "TokenLogprob", "check_token_ids",
           "to_params", "to_requests"]
