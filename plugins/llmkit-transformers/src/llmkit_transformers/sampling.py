"""Logits processing and sampling for one row, in the order vLLM applies them (vllm/v1/sample/sampler.py):
penalties on raw logits, then the grammar mask (by the caller), then temperature, then min_p / top_k /
top_p, then a draw with the row's own generator. Rows of one batch may have different parameters."""

from __future__ import annotations

import torch

from llmkit.types import SamplingParams


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt_ids: torch.Tensor, output_ids: list[int]) -> None:
    """In place on one row's (vocab,) logits. Repetition penalty over prompt and output tokens (HF/vLLM:
    divide positive logits, multiply negative ones); presence and frequency penalties over output tokens
    only (OpenAI)."""
    vocab = logits.shape[-1]
    if params.repetition_penalty != 1.0:
        seen = torch.unique(torch.cat([prompt_ids, torch.tensor(output_ids, dtype=torch.long, device=prompt_ids.device)]))
        seen = seen[seen < vocab]
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and output_ids:
        counts = torch.bincount(torch.tensor(output_ids, device=logits.device), minlength=vocab)[:vocab].to(logits.dtype)
        logits -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(logits.dtype)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, min_p, top_k and top_p on (..., vocab) float logits; masked entries are -inf."""
    logits = logits / params.temperature
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * params.min_p
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= params.top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """One token from one row's processed (vocab,) logits: argmax when greedy, else a seeded draw."""
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax(filter_logits(logits.float(), params), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
