"""One thread that owns an in-process model (transformers, llama.cpp): callers hand it generations and
never touch the model themselves, so nothing in the model is shared between threads and no caller holds
a lock while another waits for output.

The adapter writes the loop (`run(worker)`): it takes new generations with `admit` between its steps
(iteration-level batching) or one at a time (FIFO), pushes chunks, and returns when `worker.stopping`.
The worker owns the bookkeeping: every generation it was given is ended exactly once — by the loop, or
with `EngineClosedError` when the engine closes, or with `EngineDiedError` if the loop crashes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from llmkit.errors import EngineClosedError, EngineDiedError, LLMKitError
from llmkit.kit.generation import Generation


class EngineWorker:
    def __init__(self, name: str, run: Callable[["EngineWorker"], None]) -> None:
        self.name = name
        self._run = run
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Generation] = deque()
        self._owned: set[Generation] = set()
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._stopping = False
        self.died: EngineDiedError | None = None
        self._thread = threading.Thread(target=self._main, name=f"llmkit-{name}", daemon=True)
        self._thread.start()

    # ---- callers (any thread) -------------------------------------------------------------------

    def submit(self, generation: Generation) -> None:
        with self._lock:
            if self.died is not None:
                raise self.died
            if self._stopping:
                raise EngineClosedError(f"{self.name} engine is closed")
            self._queue.append(generation)
            self._owned.add(generation)
            self._wake.notify()
        generation.on_cancel(self.notify)  # a waiting loop wakes to drop it

    def call(self, fn: Callable[[], object], timeout: float | None = 120.0) -> object:
        """Run `fn` on the worker thread between two steps and return its result (for reading engine state
        the loop owns: memory, counters). From the worker thread itself, runs at once."""
        if threading.current_thread() is self._thread:
            return fn()
        future: Future = Future()
        with self._lock:
            if self.died is not None:
                raise self.died
            if self._stopping:
                raise EngineClosedError(f"{self.name} engine is closed")
            self._calls.append((fn, future))
            self._wake.notify()
        return future.result(timeout)

    def notify(self) -> None:
        with self._lock:
            self._wake.notify()

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the loop to return, wait for it, then end what it left with `EngineClosedError`. After
        this returns the loop no longer touches the model, so the adapter may free it."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._end_owned(EngineClosedError(f"{self.name} engine was closed while the request was in flight"))

    # ---- the loop (the worker thread) -------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping

    def admit(self, limit: int, wait: bool) -> list[Generation]:
        """Up to `limit` queued generations, skipping cancelled ones (ended here). With `wait`, block
        until there is one or the engine stops (then return [])."""
        taken: list[Generation] = []
        dropped: list[Generation] = []
        self._run_calls()
        with self._lock:
            while True:
                while self._queue and len(taken) < limit:
                    generation = self._queue.popleft()
                    (dropped if generation.cancelled else taken).append(generation)
                if taken or not wait or self._stopping or self._calls:
                    break
                self._wake.wait()
        for generation in dropped:
            self.finish(generation)
        self._run_calls()
        return taken

    def _run_calls(self) -> None:
        while True:
            with self._lock:
                if not self._calls:
                    return
                fn, future = self._calls.popleft()
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def finish(self, generation: Generation, error: BaseException | None = None) -> None:
        """The loop is done with `generation` (ends it unless already ended)."""
        generation.end(error)
        with self._lock:
            self._owned.discard(generation)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _main(self) -> None:
        try:
            self._run(self)
        except BaseException as exc:  # noqa: BLE001 - the loop crashed: every request learns why
            died = EngineDiedError(f"{self.name} engine loop crashed: {type(exc).__name__}: {exc}")
            died.__cause__ = exc
            with self._lock:
                self.died = died
                self._stopping = True
            self._end_owned(died)

    def _end_owned(self, error: LLMKitError) -> None:
        with self._lock:
            owned, self._owned = list(self._owned), set()
            self._queue.clear()
            calls, self._calls = list(self._calls), deque()
        for generation in owned:
            generation.end(error)
        for _, future in calls:
            future.set_exception(error)
