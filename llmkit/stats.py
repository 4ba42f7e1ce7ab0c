"""Per-engine bookkeeping of requests, tokens and latencies, summarised into `EngineStats`.

Definitions follow `vllm bench serve`: TTFT is request start to first output token; TPOT is
(e2e − TTFT) / (output tokens − 1) per request; ITL is the gap between consecutive output chunks;
throughput is output tokens over the wall time during which at least one request was in flight (so
concurrent requests are not counted twice).

Memory is bounded whatever an engine serves: each latency keeps its last `RECENT` samples (exact
percentiles while there are no more than that, and the samples `stats(samples=True)` returns) and a
log-bucketed sketch of all of them, whose percentiles are within `SKETCH_ERROR` relative error.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

from llmkit.types import EngineStats, LatencySummary, RequestMetrics, Usage

RECENT = 10_000
SKETCH_ERROR = 0.005  # relative accuracy of percentiles from the sketch (DDSketch's guarantee)


class LatencySketch:
    """Samples in buckets of width proportional to their value (DDSketch, Masson et al. 2019): the
    q-quantile it returns is within SKETCH_ERROR × the true one. Bucket count grows with the log of the
    value range, not with the number of samples."""

    def __init__(self, relative_error: float = SKETCH_ERROR) -> None:
        self.gamma = (1 + relative_error) / (1 - relative_error)
        self._log_gamma = math.log(self.gamma)
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.recent.append(value)
        if value <= 0:
            self.zeros += 1
        else:
            key = math.ceil(math.log(value) / self._log_gamma)
            self.buckets[key] = self.buckets.get(key, 0) + 1

    def quantile(self, q: float) -> float:
        rank = q * (self.count - 1)
        seen = self.zeros
        if rank < seen:
            return 0.0
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen > rank:
                return 2 * self.gamma**key / (self.gamma + 1)  # the bucket's midpoint in relative terms
        return 2 * self.gamma ** max(self.buckets) / (self.gamma + 1)

    def summary(self, keep: bool) -> LatencySummary:
        if self.count <= len(self.recent):  # every sample is still here: exact
            return LatencySummary.of(list(self.recent), keep)
        return LatencySummary(count=self.count, mean=self.total / self.count, p50=self.quantile(0.5), p90=self.quantile(0.9),
                              p99=self.quantile(0.99), values=list(self.recent) if keep else None)


class StatsRecorder:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.requests = 0
        self.aborted = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.cached_known = False
        self.busy_seconds = 0.0
        self._in_flight = 0
        self._busy_since = 0.0
        self.ttft = LatencySketch()
        self.tpot = LatencySketch()
        self.itl = LatencySketch()
        self.e2e = LatencySketch()

    def started(self) -> None:
        """A request entered the engine (the busy clock runs while any is in flight)."""
        with self._lock:
            if self._in_flight == 0:
                self._busy_since = time.perf_counter()
            self._in_flight += 1

    def stopped(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self.busy_seconds += time.perf_counter() - self._busy_since

    def record(self, metrics: RequestMetrics, usage: Usage | None, *, count_prompt: bool = True, aborted: bool = False) -> None:
        """One finished sequence. `count_prompt=False` for the 2nd..nth sample of the same prompt."""
        with self._lock:
            self.requests += 1
            self.aborted += int(aborted)
            if usage is not None:
                if count_prompt:
                    self.prompt_tokens += usage.prompt_tokens
                    if usage.cached_tokens is not None:
                        self.cached_known = True
                        self.cached_tokens += usage.cached_tokens
                self.completion_tokens += usage.completion_tokens
            if metrics.ttft is not None:
                self.ttft.add(metrics.ttft)
            if metrics.e2e is not None:
                self.e2e.add(metrics.e2e)
            if usage is not None:
                tpot = metrics.tpot(usage.completion_tokens)
                if tpot is not None:
                    self.tpot.add(tpot)
            for gap in metrics.itl:
                self.itl.add(gap)

    def summary(self, backend: str, model: str, engine_metrics: dict[str, Any], samples: bool = False) -> EngineStats:
        with self._lock:
            busy = self.busy_seconds + (time.perf_counter() - self._busy_since if self._in_flight else 0.0)
            hit_rate = None
            if self.cached_known and self.prompt_tokens:
                hit_rate = min(1.0, self.cached_tokens / self.prompt_tokens)
            return EngineStats(
                backend=backend,
                model=model,
                requests=self.requests,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                cached_prompt_tokens=self.cached_tokens,
                busy_seconds=busy,
                ttft=self.ttft.summary(samples),
                tpot=self.tpot.summary(samples),
                itl=self.itl.summary(samples),
                e2e=self.e2e.summary(samples),
                output_tokens_per_s=(self.completion_tokens / busy) if busy > 0 else None,
                prefix_cache_hit_rate=hit_rate,
                kv_cache_usage=engine_metrics.get("kv_cache_usage"),
                engine={**engine_metrics, "aborted_streams": self.aborted, "in_flight": self._in_flight},
            )
