"""What `llmkit serve` is allowed to do: where it listens, who may call it, and how much one caller may ask
for. Validated once, before the engine loads; imports nothing of the web stack."""

from __future__ import annotations

import ipaddress

from pydantic import Field, model_validator

from llmkit.types import LLMKitModel, StrictInt

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerSettings(LLMKitModel):
    """Limits and access. Every cap answers with a 4xx that names it; none is silent."""

    host: str = Field("127.0.0.1", description="Interface to bind; anything but loopback needs an api_key.")
    port: StrictInt = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one (printed at start).")
    api_key: str | None = Field(None, min_length=8, description="Required on every route but /health when set "
                                "(Authorization: Bearer KEY, or HTTP Basic with KEY as the password).")
    served_model_name: str | None = Field(None, min_length=1, description="The name clients send as `model`; "
                                          "default: the model argument the engine was loaded with.")
    max_body_bytes: StrictInt = Field(1 << 20, ge=1024, description="Largest request body (413 above it).")
    max_concurrent: StrictInt = Field(64, ge=1, description="Generation requests served at once (429 above it).")
    max_n: StrictInt = Field(16, ge=1, le=128, description="Most sequences one request may ask for: prompts × n (400).")
    max_tokens: StrictInt = Field(4096, ge=1, description="Largest max_tokens / num_predict a request may ask for (400); "
                                  "also the default where a request sets none and the model's context leaves more room.")
    max_prompt_tokens: StrictInt | None = Field(None, ge=1, description="Longest prompt in tokens (400); default: the "
                                                "model's context minus one. Not checkable on engines that cannot "
                                                "tokenize (Ollama): there the engine's own limit applies.")
    request_timeout: float | None = Field(600.0, gt=0, description="Seconds one request may run (504 past it); None: no limit.")
    shutdown_timeout: float = Field(30.0, ge=0, description="On SIGINT/SIGTERM, seconds to let in-flight requests finish "
                                    "before they are ended; the engine is closed after.")

    @model_validator(mode="after")
    def _key_off_loopback(self) -> "ServerSettings":
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"binding {self.host!r} exposes the model beyond this machine: set an API key "
                             "(--api-key or LLMKIT_API_KEY), or bind 127.0.0.1")
        return self
