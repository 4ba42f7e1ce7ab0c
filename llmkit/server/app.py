"""The ASGI app: routes for both APIs, the chat page, health and metrics, and the guard in front of them
(host and origin checks, the API key, the body-size cap)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import re
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

import llmkit
from llmkit.server import ollama_api, openai_api
from llmkit.server.common import Served
from llmkit.server.errors import APIError, from_exception
from llmkit.server.settings import ServerSettings, is_loopback

ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/api/tags", "/api/show",
          "/api/generate", "/api/chat", "/api/version"}


def is_ollama(path: str) -> bool:
    return path.startswith("/api/")


def error_response(error: APIError, path: str) -> Response:
    body = error.ollama() if is_ollama(path) else error.openai()
    return Response(json.dumps(body).encode(), status_code=error.status, media_type="application/json", headers=error.headers)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return openai_api.dumps(content)


class EngineStream(StreamingResponse):
    """A streamed reply that notices a client going away even while it waits for the engine (queued, or
    between tokens): the stream is then cancelled, and closing it cancels the engine request."""

    def __init__(self, content: Any, media_type: str = "text/event-stream") -> None:
        super().__init__(content, media_type=media_type, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def run() -> None:
                    await self.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(run)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        except OSError:  # the connection broke while sending
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(engine: llmkit.Engine, settings: ServerSettings | None = None, *, close_engine: bool = False) -> FastAPI:
    """The server's ASGI app for `engine`. With `close_engine`, the engine is closed when the app shuts down
    (after uvicorn has drained the requests in flight)."""
    settings = settings or ServerSettings()
    served = Served(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if close_engine:
            await asyncio.to_thread(engine.close)

    # No /docs or /openapi.json: their pages fetch scripts from a CDN, and the API is OpenAI's and Ollama's.
    app = FastAPI(title="llmkit", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.served = served

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return error_response(APIError(exc.status_code, message), request.url.path)

    def endpoint(handler):
        async def wrapped(request: Request) -> Response:
            try:
                if request.method == "POST":
                    result = await until_disconnect(request, handler)
                else:
                    result = await handler(request)
            except ClientGone:
                return Response(status_code=499)  # nobody reads it
            except Exception as exc:  # noqa: BLE001 - every failure is an error reply in the API's format
                served.saw(exc)
                return error_response(from_exception(exc), request.url.path)
            return result if isinstance(result, Response) else JSON(result)

        return wrapped

    async def until_disconnect(request: Request, handler) -> Any:
        """Run a handler while watching the connection: a client that leaves before a non-streamed answer is
        ready cancels the handler, and with it the engine request (streams watch for themselves)."""
        await request.body()  # read first: the watcher must not take the body's messages
        work = asyncio.ensure_future(handler(request))
        watch = asyncio.ensure_future(_disconnected(request.receive))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            served.metrics.disconnects += 1
            raise ClientGone
        return work.result()

    async def body_of(request: Request) -> Any:
        raw = await request.body()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}") from None

    page, csp = chat_page()

    @app.get("/")
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health() -> Response:
        state = served.state()
        payload = {"status": state, "backend": engine.backend, "model": served.name}
        return JSON(payload, status_code=200 if state == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        stats = None
        if not engine.closed:
            with contextlib.suppress(llmkit.LLMKitError):
                stats = engine.stats()
        text = served.metrics.render(stats, served.state())
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    @endpoint
    async def v1_models(request: Request) -> Any:
        return openai_api.models(served)

    @app.post("/v1/completions")
    @endpoint
    async def v1_completions(request: Request) -> Any:
        return await openai_api.completions(served, await body_of(request), EngineStream)

    @app.post("/v1/chat/completions")
    @endpoint
    async def v1_chat(request: Request) -> Any:
        return await openai_api.chat_completions(served, await body_of(request), EngineStream)

    @app.get("/api/tags")
    @endpoint
    async def api_tags(request: Request) -> Any:
        return ollama_api.tags(served)

    @app.get("/api/version")
    async def api_version() -> Response:
        return JSON({"version": ollama_api.VERSION})

    @app.post("/api/show")
    @endpoint
    async def api_show(request: Request) -> Any:
        return ollama_api.show(served, await body_of(request))

    @app.post("/api/generate")
    @endpoint
    async def api_generate(request: Request) -> Any:
        return await ollama_api.generate(served, await body_of(request), EngineStream, chat=False)

    @app.post("/api/chat")
    @endpoint
    async def api_chat(request: Request) -> Any:
        return await ollama_api.generate(served, await body_of(request), EngineStream, chat=True)

    return Guard(app, settings, served)


class Guard:
    """In front of every route: the Host and Origin checks (a page on another site must not drive a server
    on loopback, DNS rebinding included), the API key (every route but /health), and the body-size cap
    (413, from Content-Length or as the body arrives). Counts every reply by route and status."""

    def __init__(self, app: FastAPI, settings: ServerSettings, served: Served) -> None:
        self.app = app
        self.settings = settings
        self.served = served
        self.state = app.state  # for tests and run(): app.state.served

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        metrics = self.served.metrics

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                metrics.count_http(route, message["status"])
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refuse(path, headers)
        if refusal is not None:
            metrics.count_refused({401: "auth", 403: "origin", 413: "body_size"}.get(refusal.status, str(refusal.status)))
            await error_response(refusal, path)(scope, receive, counted_send)
            return
        limit = self.settings.max_body_bytes
        received = 0

        async def capped_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    metrics.count_refused("body_size")
                    raise APIError(413, f"the request body exceeds this server's limit of {limit} bytes (max_body_bytes)")
            return message

        await self.app(scope, capped_receive, counted_send)

    def _refuse(self, path: str, headers: dict[str, str]) -> APIError | None:
        key = self.settings.api_key
        if key is None:  # loopback only (settings enforce it): refuse pages of other sites
            host = _hostname(headers.get("host", ""))
            if host is not None and not is_loopback(host):
                return APIError(403, f"Host {headers.get('host')!r} is not this server's loopback address (DNS rebinding?)")
            origin = headers.get("origin")
            if origin is not None and origin != "null" and not is_loopback(_hostname(urlsplit(origin).netloc) or ""):
                return APIError(403, f"requests from pages of {origin} are not allowed")
            if origin == "null":
                return APIError(403, "requests from opaque origins are not allowed")
        elif path != "/health" and not _authorized(headers.get("authorization", ""), key):
            scheme = 'Basic realm="llmkit", charset="UTF-8"' if path == "/" else 'Bearer realm="llmkit"'
            return APIError(401, "a valid API key is required (Authorization: Bearer <key>)", headers={"WWW-Authenticate": scheme})
        length = headers.get("content-length")
        if length is not None:
            try:
                too_large = int(length) > self.settings.max_body_bytes
            except ValueError:
                return APIError(400, "invalid Content-Length")
            if too_large:
                return APIError(413, f"the request body ({length} bytes) exceeds this server's limit of "
                                f"{self.settings.max_body_bytes} bytes (max_body_bytes)")
        return None


def _hostname(netloc: str) -> str | None:
    if not netloc:
        return None
    if netloc.startswith("["):
        return netloc[1:netloc.index("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def _authorized(header: str, key: str) -> bool:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.encode(), key.encode())
    if scheme.lower() == "basic":  # the chat page in a browser: any user name, the key as password
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), key.encode())
    return False


def chat_page() -> tuple[bytes, str]:
    """The page and its Content-Security-Policy: its one inline script and style allowed by hash, nothing
    else loaded from anywhere, requests to this server only."""
    page = resources.files("llmkit.server").joinpath("chat.html").read_bytes()
    text = page.decode()

    def digest(tag: str) -> str:
        match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        assert match, f"chat.html has no <{tag}>"
        return "'sha256-" + base64.b64encode(hashlib.sha256(match.group(1).encode()).digest()).decode() + "'"

    csp = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; connect-src 'self'; "
           "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, csp
