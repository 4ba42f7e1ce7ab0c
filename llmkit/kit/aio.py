"""An event loop on a thread of its own, for engines that are async at heart (vLLM's AsyncLLM, SGLang,
TensorRT-LLM, an async HTTP client).

Such engines bind to the loop they are created on. Callers come from many threads and many loops, so the
engine gets a loop nobody else owns: adapters create the engine on it (`run`), and start one task per
request on it (`spawn`), which pushes chunks into the request's `Generation`. Caller threads and caller
loops are woken through the Generation, never by running code on the engine's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"llmkit-{name}-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    @property
    def on_loop(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coroutine` on the loop and wait for its result (from any other thread)."""
        if self.on_loop:
            raise RuntimeError("LoopThread.run called from its own loop: await the coroutine instead")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def spawn(self, make: Callable[[], Awaitable[Any]]) -> Future:
        """Start `make()` as a task on the loop, without waiting; returns a future for its result. A task
        that raises has its exception kept on the future (the adapter's task ends its Generation itself)."""
        future: Future = Future()

        def start() -> None:
            task = self.loop.create_task(make())
            future.task = task  # type: ignore[attr-defined]

            def done(t: asyncio.Task) -> None:
                if t.cancelled():
                    future.cancel()
                elif t.exception() is not None:
                    future.set_exception(t.exception())
                else:
                    future.set_result(t.result())

            task.add_done_callback(done)

        self.loop.call_soon_threadsafe(start)
        return future

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Schedule a plain callback on the loop (thread-safe)."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # loop closed
            pass

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what is left on the loop, stop it and join the thread. From the loop's own thread (an engine
        dropped there), only schedules that: the thread cannot wait for itself."""
        if self.loop.is_closed():
            return
        if self.on_loop:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout)
        except Exception:  # noqa: BLE001 - best effort: the loop is going away
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
