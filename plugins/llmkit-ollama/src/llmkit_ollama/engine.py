"""Ollama over its REST API, through the official `ollama` client's `AsyncClient`.

Concurrency: the client runs on an event loop owned by the engine (`llmkit.kit.aio.LoopThread`). Each
request is one task on it that streams Ollama's NDJSON (`generate` too: the core assembles it from the
chunks) and pushes delta chunks into the request's `Generation`, so any number of threads and asyncio
tasks share one engine without a thread per call. Ollama's server decides its own batching
(OLLAMA_NUM_PARALLEL) and queues the rest; the portable `max_batch_size` caps how many requests this
engine has in flight at once (an asyncio.Semaphore on the loop). Cancelling a request (closing its stream,
a timeout, a cancelled asyncio task) cancels its task, which closes its HTTP response: the server sees
the client go away and stops generating. `close()` cancels what is left and closes the client.

Errors: nothing from httpx or ollama leaves the adapter. `ollama.ResponseError` 404 → ModelNotFoundError,
"exceeds the context length" → PromptTooLongError, 400 → InvalidRequestError, anything else (500, an
`{"error": ...}` line mid-stream) → EngineError; connection refused, DNS failures, timeouts, a server that
goes away mid-stream → EngineError naming the cause (EngineStartupError at load). A request that fails
so fails alone: the engine serves the next one as soon as the server is back.

What maps where is declared in `llmkit_ollama.mapping` (tested without a server): every sampling
option explicit (Ollama's defaults are not llmkit's); raw=true for prompts (llmkit's prompt is a
completion, no template); truncate=false and shift=false, so an over-long prompt or a full context is an
error, never silent truncation; JsonSchema → format=<schema>; Choice → format={"enum": choices}, the JSON
string that comes back unwrapped to the bare choice. Refused with UnsupportedFeatureError: n > 1,
ignore_eos, logprobs (Ollama returns token strings without token ids), prompt logprobs and max_tokens=0,
regex and grammar constraints, token-id prompts; at load: dtype, prefix_caching and memory_fraction
(set on the Ollama server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import random
import threading
from collections.abc import Callable
from typing import Any

from pydantic import Field

from llmkit.engine import Engine, EngineOptions
from llmkit.errors import (
    EngineClosedError,
    EngineError,
    EngineStartupError,
    InvalidRequestError,
    LLMKitError,
    ModelNotFoundError,
    PromptTooLongError,
)
from llmkit.kit.aio import LoopThread
from llmkit.kit.generation import Generation
from llmkit.planner import WEIGHT_BITS, dtype_name
from llmkit.types import Capabilities, Request, WeightsInfo
from llmkit_ollama.mapping import LIMITS, ChunkReader, add_counters, engine_metrics, requested_context, to_native


class OllamaOptions(EngineOptions):
    host: str | None = Field(None, description="Server URL; default $OLLAMA_HOST or http://localhost:11434.")
    num_ctx: int | None = Field(None, ge=16, description="Ollama's name for max_model_len (give one of the two); default "
                                "4096. Above the model's trained context Ollama lowers it, and so does context_length.")
    keep_alive: str | None = Field(None, description="How long Ollama keeps the model loaded, e.g. '5m'.")
    timeout: float = Field(600.0, gt=0, description="Seconds to connect, and to wait for each piece of a reply.")
    pull: bool = Field(False, description="Pull the model at load time if the server lacks it.")


class OllamaEngine(Engine):
    backend = "ollama"
    capabilities_ = Capabilities(
        backend="ollama",
        sampling=frozenset({"top_p", "top_k", "min_p", "stop", "seed", "repetition_penalty", "presence_penalty", "frequency_penalty"}),
        constraints=frozenset({"choice", "json_schema"}),
        devices=("cpu", "cuda", "metal"),
        limits=LIMITS,
    )
    Options = OllamaOptions

    def _start(self) -> None:
        import httpx
        import ollama

        self._ollama = ollama
        opts = self.options
        num_ctx = requested_context(opts)  # refuses what only the server can set
        self.host = opts.host or os.environ.get("OLLAMA_HOST") or "http://localhost:11434"
        self._totals: dict[str, int] = {}
        self._totals_lock = threading.Lock()
        self._seeds = random.Random(opts.seed) if opts.seed is not None else None
        self._seeds_lock = threading.Lock()
        self._slots = asyncio.Semaphore(opts.max_batch_size) if opts.max_batch_size is not None else None
        self._loop = LoopThread("ollama")
        try:
            # No connection cap of the client's own: max_batch_size is the one cap, and it is explicit.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self.client = self._loop.run(_make_client(ollama, self.host, opts.timeout, limits))
            info = self._show()
        except BaseException:
            self._shutdown()
            raise
        model_info = info.modelinfo or {}
        trained = next((v for k, v in model_info.items() if k.endswith(".context_length")), None)
        if trained and opts.max_model_len is not None and opts.max_model_len > trained:
            self._shutdown()
            raise InvalidRequestError(f"ollama: max_model_len={opts.max_model_len} exceeds {self.model!r}'s trained context "
                                      f"({trained}); Ollama would lower it silently", parameter="max_model_len", value=opts.max_model_len)
        self._num_ctx = num_ctx
        self._context = min(num_ctx, trained) if trained else num_ctx
        self._details = info.details

    def _show(self) -> Any:
        try:
            return self._loop.run(self.client.show(self.model))
        except self._ollama.ResponseError as exc:
            if exc.status_code != 404:
                raise EngineStartupError(str(self._error(exc))) from exc
            if not self.options.pull:
                raise ModelNotFoundError(f"ollama at {self.host} has no model {self.model!r} (load with pull=True to pull it)") from exc
        except Exception as exc:  # noqa: BLE001 - connection refused, DNS, timeouts
            raise EngineStartupError(str(self._error(exc))) from exc
        try:
            self.pull()
            return self._loop.run(self.client.show(self.model))
        except LLMKitError as exc:
            raise EngineStartupError(f"ollama: pulling {self.model!r} failed: {exc}") from exc
        except Exception as exc:  # noqa: BLE001
            raise EngineStartupError(str(self._error(exc))) from exc

    @property
    def context_length(self) -> int:
        return self._context

    def _close(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        """Cancel the request tasks (their generations are ended already), close the client, stop the loop."""
        loop = getattr(self, "_loop", None)
        if loop is None:
            return
        self._loop = None
        client = getattr(self, "client", None)

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if client is not None:
                await client.close()

        if loop.on_loop:  # dropped by the garbage collector on the loop itself: nothing may wait there
            loop.loop.create_task(shutdown()).add_done_callback(lambda _: loop.loop.stop())
            return
        try:
            loop.run(shutdown(), timeout=30)
        except Exception:  # noqa: BLE001 - best effort: the engine is going away
            pass
        finally:
            loop.stop()

    # ---- model management ------------------------------------------------------------------------

    def pull(self, on_progress: Callable[[Any], None] | None = None) -> None:
        """Pull the model, reporting Ollama's progress events (status, completed/total bytes) to
        `on_progress`, called on this thread."""
        events: queue.Queue = queue.Queue()
        done = object()

        async def run() -> None:
            try:
                async for event in await self.client.pull(self.model, stream=True):
                    events.put(event)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                events.put(exc)
            finally:
                events.put(done)

        self._check_loop()
        self._loop.spawn(run)
        while (event := events.get()) is not done:
            if isinstance(event, BaseException):
                raise self._error(event) from event
            if on_progress is not None:
                on_progress(event)

    def list_models(self) -> list[str]:
        self._check_loop()
        try:
            return [m.model for m in self._loop.run(self.client.list()).models]
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc) from exc

    def _check_loop(self) -> None:
        if self._loop is None:
            raise EngineClosedError(f"ollama engine for {self.model!r} is closed")

    # ---- requests --------------------------------------------------------------------------------

    def _tokenize(self, request: Request) -> list[int] | None:
        return None  # Ollama has no tokenize endpoint; truncate=false makes the server enforce the limit

    def _next_seed(self) -> int | None:
        if self._seeds is None:
            return None
        with self._seeds_lock:
            return self._seeds.randrange(2**31)

    def request_body(self, request: Request, params: Any) -> tuple[str, dict[str, Any]]:
        """(endpoint path, JSON body) this engine sends for one request."""
        seed = self._next_seed() if params.seed is None else None
        return to_native(self.model, request, params, num_ctx=self._num_ctx, keep_alive=self.options.keep_alive, seed=seed)

    def _submit(self, generation: Generation) -> None:
        path, body = self.request_body(generation.request, generation.params)
        response_type = self._ollama.ChatResponse if path == "/api/chat" else self._ollama.GenerateResponse
        loop = self._loop
        if loop is None:
            raise EngineClosedError(f"ollama engine for {self.model!r} is closed")
        try:
            future = loop.spawn(lambda: self._run(generation, path, body, response_type))
        except RuntimeError as exc:  # the loop closed under us: close() ran
            raise EngineClosedError(f"ollama engine for {self.model!r} is closed") from exc
        generation.on_cancel(lambda: loop.call_soon(_cancel_task, future))

    async def _run(self, generation: Generation, path: str, body: dict[str, Any], response_type: type) -> None:
        parts = None
        try:
            async with self._slots if self._slots is not None else contextlib.nullcontext():
                if generation.ended:  # cancelled or closed while waiting for a slot
                    return
                reader = ChunkReader(generation.params)
                parts = await self.client._request(response_type, "POST", path, json=body, stream=True)
                async for part in parts:  # the client's own request path: typed lines, NDJSON, its errors
                    if reader.done:
                        continue  # read to the end of the reply, so the connection is kept for the next request
                    for chunk in reader.chunks(part):
                        generation.push(chunk)
                    if part.done:
                        with self._totals_lock:
                            add_counters(self._totals, part)
            if reader.done:
                generation.end()
            else:
                generation.end(EngineError(f"ollama at {self.host}: the reply ended before its last line (done: true); "
                                           f"the server may have stopped"))
        except asyncio.CancelledError:
            generation.end()
            raise
        except Exception as exc:  # noqa: BLE001 - ends this request only; the engine serves the next
            generation.end(self._error(exc))
        finally:
            if parts is not None:
                with contextlib.suppress(BaseException):
                    await parts.aclose()  # closes the HTTP response if it is still open

    def _error(self, exc: BaseException) -> LLMKitError:
        """The llmkit error for anything the client or the connection raised."""
        return native_error(exc, self.host, self.options.timeout, self._context if hasattr(self, "_context") else None)

    # ---- engine state ----------------------------------------------------------------------------

    def _engine_metrics(self) -> dict[str, Any]:
        """Ollama's own counters (durations in nanoseconds), summed over requests, and rates from them."""
        with self._totals_lock:
            totals = dict(self._totals)
        return engine_metrics(totals)

    def _weights(self) -> WeightsInfo | None:
        details = self._details
        if details is None:
            return None
        level = details.quantization_level
        dtype = dtype_name(level.lower()) if level else None
        return WeightsInfo(format=details.format or "ollama", dtype=dtype, bits=WEIGHT_BITS.get(dtype), quantization=level,
                           source=f"ollama at {self.host}: {self.model}")


async def _make_client(ollama: Any, host: str, timeout: float, limits: Any) -> Any:
    return ollama.AsyncClient(host=host, timeout=timeout, limits=limits)


def _cancel_task(future: Any) -> None:
    task = getattr(future, "task", None)
    if task is not None:
        task.cancel()


def native_error(exc: BaseException, host: str, timeout: float | None = None, context: int | None = None) -> LLMKitError:
    """An upstream exception (ollama, httpx, the socket) as the llmkit error a caller can act on."""
    import httpx
    import ollama

    if isinstance(exc, LLMKitError):
        return exc
    if isinstance(exc, ollama.ResponseError):
        message = f"ollama: {exc.error}"
        if "exceeds the context length" in str(exc.error):
            error: LLMKitError = PromptTooLongError(None, context, detail=message)
        elif exc.status_code == 404:
            error = ModelNotFoundError(message)
        elif exc.status_code == 400:
            error = InvalidRequestError(message)
        else:
            status = f" (HTTP {exc.status_code})" if exc.status_code > 0 else ""
            error = EngineError(message + status)
    elif isinstance(exc, httpx.TimeoutException):
        error = EngineError(f"ollama at {host} did not answer within the timeout of {timeout:g} s "
                            f"({type(exc).__name__}: {exc})" if timeout else f"ollama at {host} timed out ({type(exc).__name__}: {exc})")
    elif isinstance(exc, (httpx.ConnectError, ConnectionRefusedError)) or (isinstance(exc, ConnectionError) and not isinstance(
            exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))):
        cause = exc.__context__ if exc.__context__ is not None and type(exc) is ConnectionError else exc
        error = EngineError(f"cannot reach ollama at {host}: {type(cause).__name__}: {cause}")
    elif isinstance(exc, (httpx.TransportError, OSError)):  # RemoteProtocolError, ReadError, a reset connection
        error = EngineError(f"ollama at {host}: the connection broke ({type(exc).__name__}: {exc}); the server may have stopped")
    elif isinstance(exc, (json.JSONDecodeError, ValueError)):
        error = EngineError(f"ollama at {host} sent a reply that is not Ollama's protocol: {type(exc).__name__}: {exc}")
    else:
        error = EngineError(f"ollama: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
