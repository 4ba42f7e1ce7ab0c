"""One workload definition for every backend, measured by llmkit on the client side.

Definitions match `vllm bench serve` (docs/conformance.md): TTFT = request start → first token; TPOT =
(e2e − TTFT)/(output tokens − 1) per request; ITL = gaps between consecutive streamed chunks; output
throughput = output tokens of c concurrent streams (asyncio tasks on one engine) / their wall time. Prompts carry a distinct numbered prefix so no
request hits the prefix cache unless the experiment means it to.
"""

from __future__ import annotations

import asyncio
import resource
import time
from typing import Any

import llmkit

FILLER = ("In the early days of computing, programs were written on punched cards and run in batches overnight; "
          "the results came back the next morning. ")


def prompt(i: int, repeats: int = 4) -> str:
    return f"Request {i}. " + FILLER * repeats + "Continue the story:"


def _tokens(engine: Any, text: str) -> int:
    """The engine's count, or about 4 characters a token where it cannot count (Ollama)."""
    count = engine.count_tokens(text)
    return count if count is not None else max(1, len(text) // 4)


def measure(engine: Any, *, requests: int = 12, output_tokens: int = 32, concurrency: tuple[int, ...] = (1, 4, 8, 16),
            long_prefix_tokens: int = 1024) -> dict[str, Any]:
    caps = engine.capabilities()
    params = llmkit.greedy(max_tokens=output_tokens, ignore_eos=caps.supports("ignore_eos"))
    engine.generate(prompt(-1), params)  # warm-up
    counter = iter(range(1, 1_000_000))

    engine.reset_stats()
    for _ in range(requests):
        for _chunk in engine.stream(prompt(next(counter)), params):
            pass
    stats = engine.stats(samples=True)
    latency = {
        "prompt_tokens": _tokens(engine, prompt(0)),
        "prompt_tokens_estimated": engine.count_tokens(prompt(0)) is None,
        "output_tokens": output_tokens,
        "ttft_ms": _ms(stats.ttft),
        "tpot_ms": _ms(stats.tpot),
        "itl_ms": _ms(stats.itl),
        "samples_ms": {name: [v * 1000 for v in getattr(stats, name).values] for name in ("ttft", "tpot", "itl")},
    }

    async def concurrent_streams(c: int) -> float:
        async def one(text: str) -> int:
            usage = None
            async for chunk in engine.astream(text, params):
                usage = chunk.usage or usage
            return usage.completion_tokens if usage is not None else 0

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*[one(prompt(next(counter))) for _ in range(c)]))
        return tokens / (time.perf_counter() - start)

    throughput = [{"concurrency": c, "output_tokens_per_s": asyncio.run(concurrent_streams(c))} for c in concurrency]

    # The seed's long-prefix experiment: the same long prefix twice, the second time (warm) it can
    # come from the prefix cache; a cold request uses a different prefix of the same length.
    repeats = max(1, long_prefix_tokens // _tokens(engine, FILLER))
    repeats = min(repeats, max(1, (engine.context_length - 64) // _tokens(engine, FILLER)))
    short = llmkit.greedy(max_tokens=1)

    def ttft(text: str) -> tuple[float, int | None]:
        engine.reset_stats()
        chunks = list(engine.stream(text, short))
        return engine.stats().ttft.mean * 1000, chunks[-1].usage.cached_tokens if chunks and chunks[-1].usage else None

    # A throwaway request of the same length first, so "cold" pays no one-time kernel selection for
    # the new shape (seen on CUDA: without it, an engine with no prefix cache looked 3x faster warm).
    ttft("Warm-up document. " + FILLER * repeats + "Question 0: summarise.")
    shared = "Shared document. " + FILLER * repeats
    cold_ms, _ = ttft(shared + "Question 1: summarise.")
    warm_ms, cached = ttft(shared + "Question 2: summarise.")
    prefix = {"prefix_tokens": _tokens(engine, shared), "cold_ttft_ms": cold_ms, "warm_ttft_ms": warm_ms,
              "warm_cached_tokens": cached, "speedup": cold_ms / warm_ms if warm_ms else None}

    return {
        "latency": latency,
        "throughput": throughput,
        "long_prefix": prefix,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "engine_metrics": {k: v for k, v in engine.stats().engine.items() if isinstance(v, (int, float, str)) or v is None},
    }


def _ms(summary) -> dict[str, float | None]:
    scale = lambda v: None if v is None else v * 1000  # noqa: E731
    return {"mean": scale(summary.mean), "p50": scale(summary.p50), "p90": scale(summary.p90), "p99": scale(summary.p99)}
