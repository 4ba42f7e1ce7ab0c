"""One error type for both APIs, and the llmkit error tree mapped onto HTTP.

    InvalidRequestError, PromptTooLongError     400  (names the parameter)
    UnsupportedFeatureError                     400  (names the backend and the feature)
    ModelNotFoundError                          404
    EngineClosedError, EngineDiedError          503
    GenerationTimeoutError                      504
    any other EngineError / unexpected error    500

Each API writes it in its own format: OpenAI (as vLLM's server does) `{"error": {"message", "type", "param",
"code"}}`, Ollama `{"error": "message"}`. Mid-stream, the same body becomes one SSE event or NDJSON line.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from llmkit.errors import (
    EngineClosedError,
    EngineDiedError,
    GenerationTimeoutError,
    InvalidRequestError,
    LLMKitError,
    ModelNotFoundError,
    UnsupportedFeatureError,
)

# OpenAI's error `type` for each status, as vLLM names them (vllm/entrypoints/serve/exception_handling).
OPENAI_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError",
                405: "MethodNotAllowed", 413: "RequestEntityTooLarge", 429: "RateLimitError", 500: "InternalServerError",
                503: "ServiceUnavailableError", 504: "GatewayTimeout"}


class APIError(Exception):
    """An error reply: HTTP status, a message for the caller, and the request parameter at fault."""

    def __init__(self, status: int, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers or {}

    def openai(self) -> dict[str, Any]:
        kind = OPENAI_TYPES.get(self.status) or HTTPStatus(self.status).phrase.replace(" ", "")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}

    def ollama(self) -> dict[str, Any]:
        return {"error": self.message}


def unsupported(param: str, detail: str = "") -> APIError:
    """A parameter this server cannot honour: refused by name, never dropped."""
    message = f"unsupported parameter {param!r}"
    return APIError(400, message + (f": {detail}" if detail else ""), param=param)


def from_exception(exc: BaseException, names: dict[str, str] | None = None) -> APIError:
    """The reply for an exception raised while serving. `names` maps llmkit parameter names to the API's own."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidRequestError):  # PromptTooLongError included
        param = exc.parameter
        return APIError(400, str(exc), param=(names or {}).get(param, param) if param else None)
    if isinstance(exc, UnsupportedFeatureError):
        return APIError(400, str(exc), param=exc.feature)
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc))
    if isinstance(exc, (EngineClosedError, EngineDiedError)):
        return APIError(503, str(exc))
    if isinstance(exc, GenerationTimeoutError):
        return APIError(504, str(exc))
    if isinstance(exc, LLMKitError):
        return APIError(500, f"{type(exc).__name__}: {exc}")
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}")
