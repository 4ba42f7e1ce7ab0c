"""Logits processing and sampling for a batch of rows sharing one SamplingParams, in the order vLLM
applies them (vllm/v1/sample/sampler.py): penalties on raw logits, then the grammar mask, then
temperature, then min_p / top_k / top_p, then sampling with each row's own generator."""

from __future__ import annotations

import torch

from llmkit.types import SamplingParams


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt_ids: list[torch.Tensor], output_ids: list[list[int]]) -> None:
    """In place. Repetition penalty over prompt and output tokens (HF/vLLM: divide positive logits,
    multiply negative ones); presence and frequency penalties over output tokens only (OpenAI)."""
    vocab = logits.shape[-1]
    if params.repetition_penalty != 1.0:
        for row, (prompt, output) in enumerate(zip(prompt_ids, output_ids)):
            seen = torch.unique(torch.cat([prompt, torch.tensor(output, dtype=torch.long, device=prompt.device)]))
            seen = seen[seen < vocab]
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if params.presence_penalty or params.frequency_penalty:
        for row, output in enumerate(output_ids):
            if not output:
                continue
            counts = torch.bincount(torch.tensor(output, device=logits.device), minlength=vocab)[:vocab].to(logits.dtype)
            logits[row] -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).to(logits.dtype)


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, min_p, top_k and top_p on (rows, vocab) float logits; masked entries are -inf."""
    logits = logits / params.temperature
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * params.min_p
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) >= params.top_p  # keep the token crossing top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row: argmax when greedy, else a draw from the filtered distribution."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits.float(), params), dim=-1)
    return torch.cat([torch.multinomial(probs[row], 1, generator=gen) for row, gen in enumerate(generators)])
