"""Per-engine bookkeeping of requests, tokens and latencies, summarised into `EngineStats`.

Definitions follow `vllm bench serve`: TTFT is request start to first output token; TPOT is
(e2e − TTFT) / (output tokens − 1) per request; ITL is the gap between consecutive output chunks;
throughput is output tokens over the wall time spent in calls.
"""

from __future__ import annotations

import threading
from typing import Any

from llmkit.types import Completion, EngineStats, LatencySummary, RequestMetrics, Usage


class StatsRecorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.aborted = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cached_known = False
        self.busy_seconds = 0.0
        self.ttft: list[float] = []
        self.tpot: list[float] = []
        self.itl: list[float] = []
        self.e2e: list[float] = []

    def _add(self, metrics: RequestMetrics, usage: Usage | None) -> None:
        self.requests += 1
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
            if usage.cached_tokens is not None:
                self.cached_known = True
                self.cached_tokens += usage.cached_tokens
        if metrics.ttft is not None:
            self.ttft.append(metrics.ttft)
        if metrics.e2e is not None:
            self.e2e.append(metrics.e2e)
        if usage is not None:
            tpot = metrics.tpot(usage.completion_tokens)
            if tpot is not None:
                self.tpot.append(tpot)
        self.itl.extend(metrics.itl)

    def record_batch(self, completions: list[Completion], elapsed: float) -> None:
        with self._lock:
            seen_prompts: set[int] = set()
            for completion in completions:
                usage = completion.usage
                if completion.prompt_index in seen_prompts:  # n > 1: count the prompt once
                    usage = Usage(prompt_tokens=0, completion_tokens=usage.completion_tokens)
                seen_prompts.add(completion.prompt_index)
                self._add(completion.metrics, usage)
            self.busy_seconds += elapsed

    def record_stream(self, metrics: RequestMetrics, usage: Usage | None, elapsed: float, aborted: bool) -> None:
        with self._lock:
            self._add(metrics, usage)
            self.aborted += int(aborted)
            self.busy_seconds += elapsed

    def summary(self, backend: str, model: str, engine_metrics: dict[str, Any], samples: bool = False) -> EngineStats:
        with self._lock:
            hit_rate = None
            if self.cached_known and self.prompt_tokens:
                hit_rate = min(1.0, self.cached_tokens / self.prompt_tokens)
            kv_usage = engine_metrics.get("kv_cache_usage")
            return EngineStats(
                backend=backend,
                model=model,
                requests=self.requests,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                cached_prompt_tokens=self.cached_tokens,
                busy_seconds=self.busy_seconds,
                ttft=LatencySummary.of(self.ttft, samples),
                tpot=LatencySummary.of(self.tpot, samples),
                itl=LatencySummary.of(self.itl, samples),
                e2e=LatencySummary.of(self.e2e, samples),
                output_tokens_per_s=(self.completion_tokens / self.busy_seconds) if self.busy_seconds > 0 else None,
                prefix_cache_hit_rate=hit_rate,
                kv_cache_usage=kv_usage,
                engine={**engine_metrics, "aborted_streams": self.aborted},
            )
