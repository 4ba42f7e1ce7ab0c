"""`/metrics` in Prometheus' text format (version 0.0.4), written by hand: no client library needed.

From `engine.stats()`: TTFT, TPOT, ITL and end-to-end latency as summaries (p50/p90/p99, count, sum), tokens
and finished sequences as counters, output tokens/s, KV-cache use and prefix-cache hit rate where the engine
tells, and the engine's own numeric metrics. From the server: HTTP requests by route and status, refusals by
reason, client disconnects, and the requests it is serving, split into running (output has started) and
waiting (admitted, no output yet: queued in the engine or in prefill).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Any

PREFIX = "llmkit"


class ServerMetrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.http = Counter()  # (route, status) -> count
        self.refused = Counter()  # reason -> count
        self.disconnects = 0
        self.stream_errors = 0
        self.serving = 0  # generation requests admitted and not finished
        self.waiting = 0  # of those, the ones with no output yet

    def count_http(self, route: str, status: int) -> None:
        with self._lock:
            self.http[(route, status)] += 1

    def count_refused(self, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1

    def render(self, stats: Any | None, engine_state: str) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
            out.append(f"# HELP {PREFIX}_{name} {help_}")
            out.append(f"# TYPE {PREFIX}_{name} {kind}")
            for labels, value in samples:
                out.append(f"{PREFIX}_{name}{_labels(labels)} {_number(value)}")

        with self._lock:
            http, refused = dict(self.http), dict(self.refused)
            disconnects, stream_errors, serving, waiting = self.disconnects, self.stream_errors, self.serving, self.waiting
        metric("engine_up", "gauge", "1 while the engine serves requests, 0 once it is closed or dead.",
               [({"state": engine_state}, 1.0 if engine_state == "ok" else 0.0)])
        metric("num_requests_running", "gauge", "Generation requests being served whose output has started.",
               [({}, serving - waiting)])
        metric("num_requests_waiting", "gauge", "Generation requests admitted with no output yet (queued or in prefill).",
               [({}, waiting)])
        metric("http_requests_total", "counter", "HTTP requests answered, by route and status.",
               [({"route": r, "status": str(s)}, n) for (r, s), n in sorted(http.items())])
        metric("http_refused_total", "counter", "Requests refused before reaching the engine, by reason.",
               [({"reason": r}, n) for r, n in sorted(refused.items())])
        metric("client_disconnects_total", "counter", "Streams whose client went away before the end (request cancelled).",
               [({}, disconnects)])
        metric("stream_errors_total", "counter", "Streams ended by an engine error after they had started.", [({}, stream_errors)])
        if stats is None:
            return "\n".join(out) + "\n"
        for key, name, help_ in (("ttft", "time_to_first_token_seconds", "Request start to first output token."),
                                 ("tpot", "time_per_output_token_seconds", "(e2e - TTFT) / (output tokens - 1), per request."),
                                 ("itl", "inter_token_latency_seconds", "Gap between consecutive output chunks."),
                                 ("e2e", "e2e_request_latency_seconds", "Request start to last output token.")):
            summary = getattr(stats, key)
            samples = [({"quantile": q}, getattr(summary, p)) for q, p in (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))
                       if getattr(summary, p) is not None]
            out.append(f"# HELP {PREFIX}_{name} {help_}")
            out.append(f"# TYPE {PREFIX}_{name} summary")
            for labels, value in samples:
                out.append(f"{PREFIX}_{name}{_labels(labels)} {_number(value)}")
            out.append(f"{PREFIX}_{name}_sum {_number((summary.mean or 0.0) * summary.count)}")
            out.append(f"{PREFIX}_{name}_count {summary.count}")
        metric("prompt_tokens_total", "counter", "Prompt tokens processed.", [({}, stats.prompt_tokens)])
        metric("generation_tokens_total", "counter", "Output tokens generated.", [({}, stats.completion_tokens)])
        metric("sequences_finished_total", "counter", "Sequences finished (one per sample).", [({}, stats.requests)])
        metric("output_tokens_per_second", "gauge", "Output tokens over the time at least one request was in flight.",
               [({}, stats.output_tokens_per_s)] if stats.output_tokens_per_s is not None else [])
        metric("engine_requests_in_flight", "gauge", "Requests inside the engine.", [({}, stats.engine.get("in_flight", 0))])
        if stats.kv_cache_usage is not None:
            metric("kv_cache_usage_ratio", "gauge", "Fraction of the KV cache in use.", [({}, stats.kv_cache_usage)])
        if stats.prefix_cache_hit_rate is not None:
            metric("prefix_cache_hit_ratio", "gauge", "Cached / prompt tokens.", [({}, stats.prefix_cache_hit_rate)])
        native = [({"name": k}, float(v)) for k, v in sorted(stats.engine.items())
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "in_flight" and math.isfinite(v)]
        metric("engine_metric", "gauge", f"The {stats.backend} engine's own metrics, as it names them.", native)
        return "\n".join(out) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + "n").replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels.items())
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
