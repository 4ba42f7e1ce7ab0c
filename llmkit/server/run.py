"""Running the app: `serve` (what `llmkit serve` calls: uvicorn in the foreground, graceful shutdown on
SIGINT/SIGTERM, the engine closed after the last request) and `start_in_thread` (tests, notebooks)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Generator

import uvicorn

import llmkit
from llmkit.server.app import create_app
from llmkit.server.settings import ServerSettings


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the engine loads (a taken port fails at once)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self._on_ready is not None and not self.should_exit:
            self._on_ready()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """As uvicorn's, but a signal that asked for a graceful shutdown is not raised again once it is done:
        the drained server exits normally (status 0) instead of dying by SIGTERM or raising KeyboardInterrupt."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in uvicorn.server.HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _config(app, settings: ServerSettings, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=settings.shutdown_timeout,
                          access_log=log_level == "debug", server_header=False, proxy_headers=False)


def serve(engine: llmkit.Engine, settings: ServerSettings, *, sock: socket.socket | None = None, log_level: str = "info",
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve `engine` until SIGINT/SIGTERM: uvicorn stops accepting, lets requests in flight finish (up to
    `settings.shutdown_timeout`), then the engine is closed. Blocks; closes the engine in any case."""
    sock = sock or bind(settings.host, settings.port)
    url = url_of(sock)
    try:
        app = create_app(engine, settings, close_engine=True)
        server = _Server(_config(app, settings, log_level), (lambda: on_ready(url)) if on_ready else None)
        server.run(sockets=[sock])
    finally:
        engine.close()
        sock.close()


class RunningServer:
    """A server on a thread of its own (uvicorn's event loop there). `stop()` shuts it down gracefully."""

    def __init__(self, engine: llmkit.Engine, settings: ServerSettings, *, close_engine: bool = False,
                 log_level: str = "warning") -> None:
        self.settings = settings
        self.sock = bind(settings.host, settings.port)
        self.url = url_of(self.sock)
        self.app = create_app(engine, settings, close_engine=close_engine)
        self.served = self.app.state.served
        self._ready = threading.Event()
        self.server = _Server(_config(self.app, settings, log_level), self._ready.set)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="llmkit-server", daemon=True)

    def start(self, timeout: float = 30.0) -> "RunningServer":
        self.thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the server did not start within {timeout} s")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "RunningServer":
        return self if self.thread.ident is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(engine: llmkit.Engine, settings: ServerSettings | None = None, **kwargs) -> RunningServer:
    """Serve `engine` from a background thread; returns once it accepts connections (`.url`)."""
    return RunningServer(engine, settings or ServerSettings(port=0), **kwargs).start()
