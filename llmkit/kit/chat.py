"""Prompt encoding with a Hugging Face tokenizer and its chat template, for every adapter over Hugging Face
models (transformers, vLLM, SGLang, TensorRT-LLM): the same ids for the same request on each.

A raw prompt is encoded with the tokenizer's own special tokens (BOS where the model wants one); a
conversation is rendered with the chat template (generation prompt added) and encoded without adding
special tokens again, as vLLM's chat path does. Fast tokenizers are not safe to call from several threads
at once ("Already borrowed"), so encoding holds a lock (never across engine work).
"""

from __future__ import annotations

import threading
from typing import Any

from llmkit.errors import InvalidRequestError, UnsupportedFeatureError
from llmkit.types import Request, SpecialTokens


class HFPromptEncoder:
    def __init__(self, tokenizer: Any, backend: str, model: str, vocab_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.model = model
        self.vocab_size = vocab_size or len(tokenizer)
        self._lock = threading.Lock()

    def encode(self, request: Request) -> list[int]:
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            if max(ids) >= self.vocab_size:
                raise InvalidRequestError(f"token id {max(ids)} is outside the vocabulary ({self.vocab_size})",
                                          parameter="prompt_token_ids", value=max(ids))
            return ids
        with self._lock:
            if request.messages is not None:
                return self._encode_chat([m.model_dump() for m in request.messages])
            return list(self.tokenizer(request.prompt).input_ids)

    def _encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UnsupportedFeatureError(self.backend, "chat", f"{self.model!r} has no chat template")
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja2 errors, and templates that raise on a conversation they refuse
            raise InvalidRequestError(f"{self.backend}: the chat template of {self.model!r} refused the conversation: "
                                      f"{type(exc).__name__}: {exc}", parameter="messages") from exc
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: list[int]) -> str:
        with self._lock:  # a decode beside an encode that resets truncation: "Already borrowed"
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        with self._lock:
            return self.tokenizer.decode([token])

    def special_tokens(self, eos_token_ids: list[int] | set[int] | None = None) -> SpecialTokens:
        tok = self.tokenizer
        eos = set(eos_token_ids or [])
        if tok.eos_token_id is not None:
            eos.add(tok.eos_token_id)
        with self._lock:
            probe = tok("a").input_ids
        bos = tok.bos_token_id
        return SpecialTokens(bos_token_id=bos, eos_token_ids=sorted(eos), pad_token_id=tok.pad_token_id,
                             adds_bos=bool(probe) and bos is not None and probe[0] == bos)


def token_ids_only(request: Request, vocab_size: int, backend: str) -> list[int]:
    """For an engine loaded without a tokenizer (vLLM/SGLang `skip_tokenizer_init`): token-id prompts only,
    inside the vocabulary."""
    if request.prompt_token_ids is None:
        raise InvalidRequestError(f"{backend}: loaded without a tokenizer (skip_tokenizer_init=True), it takes only "
                                  "prompt_token_ids", parameter="inputs")
    ids = list(request.prompt_token_ids)
    if max(ids) >= vocab_size:
        raise InvalidRequestError(f"token id {max(ids)} is outside the vocabulary ({vocab_size})", parameter="prompt_token_ids",
                                  value=max(ids))
    return ids
