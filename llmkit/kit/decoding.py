"""Turning sampled tokens into llmkit's outputs, for adapters that drive their own decode loop
(transformers, llama.cpp): one implementation of incremental detokenization, stop strings, finish
reasons and delta chunks, so these behave the same on every such engine.

Logprobs are reported as computed (a log-softmax of the raw logits), never clamped: a positive value
would be a normalisation bug, and clamping would hide it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llmkit.types import FinishReason, SamplingParams, StreamChunk, TokenLogprob, Usage


@dataclass
class DecodeState:
    """One sequence being generated. The engine calls `append` for every sampled token."""

    prompt_ids: list[int]
    params: SamplingParams
    decode: Callable[[list[int]], str]  # token ids -> text, special tokens skipped
    context_length: int
    prompt_index: int = 0
    index: int = 0
    cached_tokens: int | None = None
    out_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # set by the engine when asked for
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    _prefix_offset: int = 0
    _read_offset: int = 0
    _emitted_text: int = 0
    _emitted_tokens: int = 0

    def __post_init__(self) -> None:
        if self.params.logprobs is not None and self.logprobs is None:
            self.logprobs = []

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def append(self, token: int, *, logprob: TokenLogprob | None = None, ends: bool = False, rejected: bool = False) -> None:
        """Add a sampled token. `ends`: the engine says this token ends the sequence (end-of-sequence
        token, or a grammar that is complete); `rejected`: the grammar refused it."""
        params = self.params
        self.out_ids.append(token)
        if logprob is not None and self.logprobs is not None:
            self.logprobs.append(logprob)
        old_len = len(self.text)
        self.text += self._detokenize()
        if rejected:
            self._finish("error", token)
        elif ends:
            self._finish("stop", token)
        elif params.stop:
            search_from = max(0, old_len - max(len(s) for s in params.stop) + 1)
            hits = [(self.text.find(s, search_from), s) for s in params.stop]
            hits = [(pos, s) for pos, s in hits if pos >= 0]
            if hits:
                pos, stop = min(hits)
                self.text = self.text[:pos]
                self._finish("stop", stop)
        if not self.finished and (
            len(self.out_ids) >= params.max_tokens or len(self.prompt_ids) + len(self.out_ids) >= self.context_length
        ):
            self._finish("length", None)

    def abort(self) -> None:
        if not self.finished:
            self._finish("abort", None)

    def finish_scored(self) -> None:
        """A scoring-only request (max_tokens=0): the prompt was scored, nothing is generated."""
        self._finish("length", None)

    def finish(self, reason: FinishReason, stop_reason: str | int | None = None) -> None:
        """An end the engine decided (its own stop, an abort): flushes any held-back character."""
        if not self.finished:
            self._finish(reason, stop_reason)

    def _finish(self, reason: FinishReason, stop_reason: str | int | None) -> None:
        self.finish_reason, self.stop_reason = reason, stop_reason
        if not isinstance(stop_reason, str):  # flush a character still waiting for its bytes
            self.text += self._detokenize(final=True)

    def _detokenize(self, final: bool = False) -> str:
        """The new text since the last call. An incomplete UTF-8 character decodes as U+FFFD; it is held
        back until its remaining bytes arrive (or the sequence ends)."""
        prefix_text = self.decode(self.out_ids[self._prefix_offset : self._read_offset])
        new_text = self.decode(self.out_ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.out_ids)
            return new_text[len(prefix_text) :]
        return ""

    def usage(self) -> Usage:
        return Usage(prompt_tokens=len(self.prompt_ids), completion_tokens=len(self.out_ids), cached_tokens=self.cached_tokens)

    def take_chunk(self) -> StreamChunk | None:
        """The delta since the last call, or None when there is nothing to send. While a stop string
        may be starting at the end of the text, that part is held back, so no piece of a stop string
        is ever streamed."""
        text_end = len(self.text)
        if not self.finished:
            text_end -= _held_back(self.text, self.params.stop)
        new_tokens = self.out_ids[self._emitted_tokens :]
        if not new_tokens and text_end <= self._emitted_text and not self.finished:
            return None
        chunk = StreamChunk.model_construct(
            text=self.text[self._emitted_text : text_end] if text_end > self._emitted_text else "",
            token_ids=new_tokens,
            index=self.index,
            logprobs=self.logprobs[self._emitted_tokens :] if self.logprobs is not None else None,
            prompt_logprobs=self.prompt_logprobs if self._emitted_tokens == 0 and not self._emitted_text else None,
        )
        self._emitted_text = max(self._emitted_text, text_end)
        self._emitted_tokens = len(self.out_ids)
        if self.finished:
            chunk.finish_reason, chunk.stop_reason, chunk.usage = self.finish_reason, self.stop_reason, self.usage()
        return chunk


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def top_logprobs(logprobs_row, token: int, k: int, token_text: Callable[[int], str]) -> TokenLogprob:
    """A TokenLogprob from one row of log-probabilities (a torch tensor or numpy array): the token's
    logprob, its rank (how many tokens are at least as likely, itself included, as vLLM counts: a token tied
    exactly with others ranks behind them) and the k most likely."""
    top: dict[int, float] = {}
    chosen = logprobs_row[token]
    try:  # torch
        rank = int((logprobs_row >= chosen).sum())
        if k:
            values, ids = logprobs_row.topk(k)
            top = {int(i): float(v) for i, v in zip(ids.tolist(), values.tolist())}
    except AttributeError:  # numpy
        import numpy as np

        rank = int(np.count_nonzero(logprobs_row >= chosen))
        if k:
            ids = np.argpartition(-logprobs_row, k - 1)[:k]
            ids = ids[np.argsort(-logprobs_row[ids])]
            top = {int(i): float(v) for i, v in zip(ids.tolist(), logprobs_row[ids].tolist())}
    return TokenLogprob.model_construct(token_id=token, token=token_text(token), logprob=float(chosen), rank=rank, top=top)


def prompt_logprobs(rows, next_tokens: list[int], k: int, token_text: Callable[[int], str]) -> list[TokenLogprob]:
    """Prompt logprob entries from log-probability rows, where `rows[i]` is the distribution that
    predicted `next_tokens[i]` (vLLM's list starts with None for the first prompt token; callers add it)."""
    return [top_logprobs(row, token, k, token_text) for row, token in zip(rows, next_tokens)]
