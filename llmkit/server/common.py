"""What both APIs share: the served engine, admission (caps), prompt preparation, opening streams on the
engine's async API, and token texts for logprobs."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

import llmkit
from llmkit.errors import EngineClosedError, EngineDiedError, InvalidRequestError
from llmkit.server.errors import APIError, from_exception
from llmkit.server.metrics import ServerMetrics
from llmkit.server.settings import ServerSettings
from llmkit.types import Request, SamplingParams, StreamChunk, TokenLogprob, invalid_request_from


class Served:
    """One engine behind the server, with the server's limits and counters."""

    def __init__(self, engine: llmkit.Engine, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.name = settings.served_model_name or engine.model
        self.metrics = ServerMetrics()
        self.context = engine.context_length
        self.prompt_limit = min(settings.max_prompt_tokens or self.context - 1, self.context - 1)
        self.token_text = TokenText(engine)
        self.died: EngineDiedError | None = None  # seen by a request: the engine is gone for good
        self.started = time.time()

    # ---- state -------------------------------------------------------------------------------

    def state(self) -> str:
        if self.engine.closed:
            return "closed"
        if self.died is not None or getattr(self.engine, "_died", None) is not None:
            return "dead"
        return "ok"

    def check_serving(self) -> None:
        state = self.state()
        if state != "ok":
            raise APIError(503, f"the {self.engine.backend} engine for {self.name!r} is {state}; this server cannot "
                           "generate any more (restart it)")

    def saw(self, exc: BaseException) -> None:
        if isinstance(exc, EngineDiedError):
            self.died = exc

    def accepts_model(self, name: str | None) -> bool:
        """A request names the served model (Ollama's implicit `:latest` tag too); nothing else is ever loaded."""
        if name is None:
            return False
        return name in (self.name, f"{self.name}:latest") or (self.name.endswith(":latest") and name == self.name[:-7])

    def pseudo_digest(self) -> str:
        return hashlib.sha256(f"llmkit:{self.engine.backend}:{self.engine.model}".encode()).hexdigest()

    # ---- admission -----------------------------------------------------------------------------

    def admit(self) -> "Slot":
        """A slot for one generation request, or 429 when `max_concurrent` are being served."""
        self.check_serving()
        if self.metrics.serving >= self.settings.max_concurrent:
            self.metrics.count_refused("concurrency")
            raise APIError(429, f"this server generates for at most {self.settings.max_concurrent} requests at once "
                           "(max_concurrent); retry shortly", headers={"Retry-After": "1"})
        return Slot(self)

    def check_sequences(self, prompts: int, n: int, param: str = "n") -> None:
        if prompts * n > self.settings.max_n:
            self.metrics.count_refused("max_n")
            what = f"n={n}" if prompts == 1 else f"{prompts} prompts × n={n}"
            raise APIError(400, f"{what} asks for {prompts * n} sequences; this server allows at most {self.settings.max_n} "
                           "per request (max_n)", param=param)

    def check_max_tokens(self, value: int | None, param: str) -> None:
        if value is not None and value > self.settings.max_tokens:
            self.metrics.count_refused("max_tokens")
            raise APIError(400, f"{param}={value} exceeds this server's limit of {self.settings.max_tokens} (max_tokens)", param=param)

    # ---- prompts ---------------------------------------------------------------------------------

    def prepare(self, request: Request, param: str) -> tuple[Request, list[int] | None]:
        """Tokenize once (chat template applied), enforce the prompt cap, and hand the engine the ids so it
        does not tokenize again. Engines that cannot tokenize (Ollama) get the request as it is."""
        ids = self.engine.tokenize(request)
        if ids is None:
            return request, None
        if len(ids) > self.prompt_limit:
            self.metrics.count_refused("prompt_tokens")
            raise APIError(400, f"the prompt has {len(ids)} tokens; this server accepts at most {self.prompt_limit} "
                           f"(the model's context is {self.context})", param=param)
        return Request(prompt_token_ids=ids, lora=None), ids

    def default_max_tokens(self, prompt_tokens: list[int] | None, limit: int | None = None) -> int:
        """For a request that sets no limit: as much as the context leaves, capped by the server's max_tokens."""
        room = (limit or self.context) - len(prompt_tokens) if prompt_tokens is not None else self.settings.max_tokens
        return max(1, min(self.settings.max_tokens, room))

    def sampling(self, given: dict[str, Any], names: dict[str, str] | None = None) -> SamplingParams:
        """SamplingParams from what the request set, over the engine's defaults (a config file's `sampling:`),
        over llmkit's."""
        base = self.engine.default_params.model_dump(by_alias=True, exclude_unset=True) if self.engine.default_params else {}
        merged = {**base, **{k: v for k, v in given.items() if v is not None}}
        try:
            return SamplingParams(**merged)
        except InvalidRequestError as exc:
            param = exc.parameter.split(".")[0] if exc.parameter else None
            if param not in SamplingParams.model_fields:  # a check across fields names no single one
                param = None
            raise APIError(400, str(exc), param=(names or {}).get(param, param)) from None

    # ---- generation ------------------------------------------------------------------------------

    @property
    def timeout(self) -> float | None:
        return self.settings.request_timeout

    async def generate(self, requests: list[Request], params: SamplingParams) -> list[llmkit.Completion]:
        try:
            return await self.engine.agenerate(requests, params, timeout=self.timeout)
        except (EngineDiedError, EngineClosedError) as exc:
            self.saw(exc)
            raise

    def open_streams(self, requests: list[Request], params: SamplingParams) -> list["ChunkSource"]:
        """Start every request now (so a refusal is an HTTP error, not an event in a started stream)."""
        sources: list[ChunkSource] = []
        try:
            for p, request in enumerate(requests):
                if params.n == 1:
                    sources.append(ChunkSource(self.engine.astream(request, params, timeout=self.timeout), p * params.n))
                else:
                    # The public astream takes n == 1; the core's own launch gives one channel with every
                    # sample (chunks carry their index), as agenerate reads it.
                    for generation in self.engine._launch([request], params, {}, self.timeout):
                        sources.append(ChunkSource(_GenerationStream(generation), p * params.n))
        except BaseException:
            for source in sources:
                source.cancel()
            raise
        return sources


class Slot:
    """One admitted generation request: counted while served, waiting until its output starts."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.open = True
        self.waiting = True
        served.metrics.serving += 1
        served.metrics.waiting += 1

    def started(self) -> None:
        if self.waiting and self.open:
            self.waiting = False
            self.served.metrics.waiting -= 1

    def release(self) -> None:
        if self.open:
            self.started()
            self.open = False
            self.served.metrics.serving -= 1


class _GenerationStream:
    """A core generation read as AsyncChunkStream reads one (n > 1)."""

    def __init__(self, generation: Any) -> None:
        self._generation = generation

    def __aiter__(self) -> "_GenerationStream":
        return self

    async def __anext__(self) -> StreamChunk:
        chunk = await self._generation.aget()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._generation.cancel()


@dataclass
class ChunkSource:
    stream: Any  # AsyncChunkStream or _GenerationStream
    base: int  # choice index of its sample 0

    def cancel(self) -> None:
        generation = getattr(self.stream, "_generation", None)
        if generation is not None:
            generation.cancel()


async def merged(sources: list[ChunkSource]) -> AsyncIterator[tuple[int, StreamChunk]]:
    """(choice index, chunk) from every source as they come. Leaving early (the client went away) cancels
    every request. One source is read directly; several through one task each (tasks, not threads)."""
    try:
        if len(sources) == 1:
            source = sources[0]
            async for chunk in source.stream:
                yield source.base + chunk.index, chunk
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(source: ChunkSource) -> None:
            try:
                async for chunk in source.stream:
                    queue.put_nowait((source.base + chunk.index, chunk, None))
                queue.put_nowait((None, None, None))
            except Exception as exc:  # noqa: BLE001 - handed to the reader
                queue.put_nowait((None, None, exc))

        tasks = [asyncio.ensure_future(pump(source)) for source in sources]
        try:
            remaining = len(tasks)
            while remaining:
                index, chunk, error = await queue.get()
                if error is not None:
                    raise error
                if chunk is None:
                    remaining -= 1
                    continue
                yield index, chunk
        finally:
            for task in tasks:
                task.cancel()
    finally:
        for source in sources:
            source.cancel()


class TokenText:
    """Token id → text, for top-logprob alternatives (llmkit's `TokenLogprob.top` carries ids only). Uses the
    engine's own decoder where the adapter has one, and texts seen in sampled tokens; else vLLM's
    `token_id:N` notation."""

    def __init__(self, engine: llmkit.Engine) -> None:
        decode = getattr(engine, "_token_text", None)  # llama.cpp, TensorRT-LLM
        if decode is None:
            decode = getattr(getattr(engine, "encoder", None), "token_text", None)  # transformers
        self._decode = decode
        self._known: dict[int, str] = {}

    def learn(self, entries: list[TokenLogprob | None] | None) -> None:
        for entry in entries or []:
            if entry is not None and entry.token_id not in self._known:
                self._known[entry.token_id] = entry.token

    def __call__(self, token_id: int) -> str:
        text = self._known.get(token_id)
        if text is not None:
            return text
        if self._decode is not None:
            try:
                text = self._decode(token_id)
            except Exception:  # noqa: BLE001 - a decoder that cannot say: fall back to the id
                text = None
            if isinstance(text, str):
                self._known[token_id] = text
                return text
        return f"token_id:{token_id}"


def validated(model: type, body: Any, names: dict[str, str] | None = None):
    """A request body as `model`, or a 400 naming the first bad field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = invalid_request_from(exc, "request")
        param = error.parameter
        raise APIError(400, str(error).replace("request.", "", 1), param=(names or {}).get(param, param)) from None


def check_extras(extras: dict[str, Any], accepted: dict[str, tuple], where: str = "") -> None:
    """Fields beyond the model's own: each must be one llmkit's server accepts at a value that changes nothing;
    anything else is refused by name."""
    for key, value in extras.items():
        if key in accepted and any(value == neutral and type(value) is type(neutral) or (value is None and neutral is None)
                                   for neutral in accepted[key]):
            continue
        name = f"{where}{key}"
        if key in accepted:
            allowed = " or ".join(repr(v) for v in accepted[key])
            raise APIError(400, f"unsupported parameter {name!r}={value!r}: llmkit's server accepts only {allowed} "
                           "(anything else would be ignored, and nothing is ignored silently)", param=name)
        raise APIError(400, f"unsupported parameter {name!r}: llmkit's server does not know it (and ignores nothing silently)",
                       param=name)


async def guarded_stream(served: Served, slot: Slot, body, error_frame, end: bytes = b""):
    """Run a stream body: its frames, then `end`; an error after the stream started becomes one error frame
    (SSE event or NDJSON line) and ends it; leaving early (the client went away) cancels the engine request.
    The admission slot is held until then."""
    finished = False
    try:
        async for part in body:
            yield part
        finished = True
        if end:
            yield end
    except Exception as exc:  # noqa: BLE001 - the stream has started: the error goes in it
        finished = True
        served.saw(exc)
        served.metrics.stream_errors += 1
        yield error_frame(from_exception(exc))
    finally:
        await body.aclose()
        if not finished:
            served.metrics.disconnects += 1
        slot.release()
