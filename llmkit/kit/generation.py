"""One request in flight: the channel between an engine and the caller waiting for its output.

The adapter's side (`push`, `end`, `on_cancel`) never blocks and may be called from any thread: an
engine's worker thread, or the event loop that drives an async engine. The caller's side reads chunks
either blocking (`get`, from any thread) or awaiting (`aget`, from any event loop), and may `cancel`.
Nothing is held across a `yield`: a chunk is appended under a short lock and the waiter is woken.

Timing is taken where chunks are pushed, so TTFT and inter-token latency measure the engine (through
llmkit) whatever pace the caller reads at; the same definitions as `vllm bench serve`.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import EngineError, GenerationTimeoutError, LLMKitError
from llmkit.types import Request, SamplingParams, StreamChunk

_ids = itertools.count()


@dataclass
class SequenceTiming:
    """Per sample (index) of one request: when its output tokens were pushed."""

    first: float | None = None  # seconds after submission
    last: float | None = None
    itl: list[float] = field(default_factory=list)
    finished: bool = False


class Generation:
    """A request the engine is working on. Created by `Engine` and handed to the adapter's `_submit`."""

    def __init__(self, request: Request, params: SamplingParams, *, on_end: Callable[["Generation"], None] | None = None,
                 deadline: float | None = None) -> None:
        self.id = f"llmkit-{next(_ids)}"
        self.request = request
        self.params = params
        self.submitted = time.perf_counter()
        self.deadline = deadline  # perf_counter() value, or None
        self.timing: dict[int, SequenceTiming] = {}
        self.usage: dict[int, Any] = {}  # index -> Usage of the final chunk
        self._lock = threading.RLock()  # RLock: a stream dropped (and cancelled) by the garbage collector may run anywhere
        self._ready = threading.Condition(self._lock)
        self._items: deque[StreamChunk] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._cancelled = False
        self._cancel_callbacks: list[Callable[[], None]] = []
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
        self._on_end = on_end
        self.counted = True  # False when the engine refused it at submission: not a request served

    # ---- the adapter's side ------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        """The caller went away (closed or abandoned the stream, timed out): stop and free the request."""
        return self._cancelled

    @property
    def ended(self) -> bool:
        return self._ended

    def push(self, chunk: StreamChunk) -> None:
        """Deliver one delta. Ignored after `end` (a cancelled or failed request may still produce)."""
        now = time.perf_counter() - self.submitted
        with self._lock:
            if self._ended:
                return
            timing = self.timing.get(chunk.index)
            if timing is None:
                timing = self.timing[chunk.index] = SequenceTiming()
            if chunk.token_ids or chunk.text:
                if timing.first is None:
                    timing.first = now
                else:
                    timing.itl.append(now - timing.last)
                timing.last = now
            if chunk.finish_reason is not None:
                timing.finished = True
                if chunk.usage is not None:
                    self.usage[chunk.index] = chunk.usage
            self._items.append(chunk)
            waiter = self._wake()
        _resolve(waiter)

    def end(self, error: BaseException | None = None) -> bool:
        """No more chunks; with `error`, the caller gets it after the chunks already pushed. Returns
        False if the generation had already ended (idempotent)."""
        if error is not None and not isinstance(error, LLMKitError):
            wrapped = EngineError(f"{type(error).__name__}: {error}")
            wrapped.__cause__ = error
            error = wrapped
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            self._error = error
            waiter = self._wake()
        _resolve(waiter)
        if self._on_end is not None:
            self._on_end(self)
        return True

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the cancelling thread) when the caller cancels; at once if it has."""
        with self._lock:
            if not self._cancelled:
                self._cancel_callbacks.append(callback)
                return
        callback()

    # ---- the caller's side ---------------------------------------------------------------------

    def cancel(self) -> None:
        """The caller no longer wants output: the generation ends now, and the engine frees the request
        (at its next step)."""
        with self._lock:
            if self._cancelled or self._ended:
                self._cancelled = True
                return
            self._cancelled = True
            callbacks, self._cancel_callbacks = self._cancel_callbacks, []
        self.end()
        for callback in callbacks:
            callback()

    def get(self) -> StreamChunk | None:
        """The next chunk, waiting as needed; None when the generation has ended. Raises the engine's
        error, or `GenerationTimeoutError` past the deadline (the request is then cancelled)."""
        with self._lock:
            while not self._items and not self._ended:
                remaining = None if self.deadline is None else self.deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    break
                self._ready.wait(remaining)
            item = self._take()
        if item is _TIMED_OUT:
            self._time_out()
        return item

    async def aget(self) -> StreamChunk | None:
        """`get` for an asyncio task: awaits without a thread."""
        while True:
            with self._lock:
                if self._items or self._ended:
                    return self._take()
                loop = asyncio.get_running_loop()
                future = loop.create_future()
                self._waiter = (loop, future)
            remaining = None if self.deadline is None else self.deadline - time.perf_counter()
            try:
                if remaining is None:
                    await future
                else:
                    await asyncio.wait_for(future, max(remaining, 0.0))
            except asyncio.TimeoutError:
                with self._lock:
                    self._waiter = None
                    if self._items or self._ended:
                        continue
                self._time_out()
            except asyncio.CancelledError:  # the task was cancelled: so is the request
                self.cancel()
                raise

    def _take(self) -> Any:
        if self._items:
            return self._items.popleft()
        if self._ended:
            if self._error is not None:
                raise self._error
            return None
        return _TIMED_OUT

    def _time_out(self) -> None:
        self.cancel()
        self.end(GenerationTimeoutError(f"request {self.id} did not finish within its timeout"))
        raise GenerationTimeoutError(f"the request did not finish within its timeout "
                                     f"({self.deadline - self.submitted:.3g} s); it was cancelled")

    def _wake(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Future] | None:
        """Under the lock: wake a blocked thread; return an awaiting task's future to resolve."""
        self._ready.notify_all()
        waiter, self._waiter = self._waiter, None
        return waiter

    def __repr__(self) -> str:
        state = "ended" if self._ended else "cancelled" if self._cancelled else "running"
        return f"<Generation {self.id} {state}>"


_TIMED_OUT = object()


def _resolve(waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None) -> None:
    """Wake an awaiting task. From its own loop's thread directly; from any other thread through the
    loop, batching the wake-ups that arrive before the loop runs (one per engine step, not per chunk)."""
    if waiter is None:
        return
    loop, future = waiter
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        if not future.done():
            future.set_result(None)
        return
    _LoopWaker.get(loop).add(future)


class _LoopWaker:
    """Per event loop: futures to resolve, flushed by one `call_soon_threadsafe` per batch."""

    _lock = threading.Lock()
    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker]" = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[asyncio.Future] = []

    @classmethod
    def get(cls, loop: asyncio.AbstractEventLoop) -> "_LoopWaker":
        with cls._lock:
            waker = cls._by_loop.get(loop)
            if waker is None:
                waker = cls._by_loop[loop] = cls(loop)
            return waker

    def add(self, future: asyncio.Future) -> None:
        with self._lock:
            first = not self.pending
            self.pending.append(future)
        if first:
            try:
                self.loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                with self._lock:
                    self.pending.clear()

    def _flush(self) -> None:
        with self._lock:
            futures, self.pending = self.pending, []
        for future in futures:
            if not future.done():
                future.set_result(None)


def fail_all(generations: list[Generation], error: BaseException) -> None:
    """End every generation with `error` (engine closed or dead)."""
    for generation in generations:
        generation.end(error)

