"""Reports, comparison and the docs matrix are generated from report files, never by hand."""

from pathlib import Path

from llmkit_conformance.report import compare, load_reports, markdown, matrix

ROOT = Path(__file__).resolve().parents[2]


def _report(backend, statuses, tpot):
    return {
        "backend": backend, "model": "m", "options": {},
        "environment": {"device": "cpu", "machine": "test", "library": backend, "library_version": "1", "date": "2026-11-26"},
        "checks": [{"name": n, "status": s, "detail": "", "data": {}, "seconds": 0.0} for n, s in statuses.items()],
        "performance": {"latency": {"prompt_tokens": 10, "output_tokens": 4, "ttft_ms": _p(5), "tpot_ms": _p(tpot), "itl_ms": _p(tpot)},
                        "throughput": [{"concurrency": 1, "output_tokens_per_s": 1000 / tpot}],
                        "long_prefix": {"prefix_tokens": 100, "cold_ttft_ms": 10.0, "warm_ttft_ms": 5.0, "warm_cached_tokens": 90, "speedup": 2.0},
                        "peak_rss_mib": 100.0},
    }


def _p(v):
    return {"mean": v, "p50": v, "p90": v, "p99": v}


def test_compare_ranks_correctness_before_speed():
    fast_but_wrong = _report("fast", {"a": "passed", "b": "failed"}, tpot=1.0)
    slow_and_right = _report("slow", {"a": "passed", "b": "passed"}, tpot=9.0)
    text = compare([fast_but_wrong, slow_and_right])
    assert "Recommended: `slow`" in text and "`fast` has 1 failures" in text


def test_compare_breaks_ties_on_the_metric():
    a = _report("a", {"x": "passed"}, tpot=2.0)
    b = _report("b", {"x": "passed"}, tpot=1.0)
    assert "Recommended: `b`" in compare([a, b], "tpot_ms")
    assert "Recommended: `b`" in compare([a, b], "throughput")


def test_markdown_lists_every_check():
    text = markdown(_report("x", {"a": "passed", "b": "unsupported"}, tpot=3.0))
    assert "| a | ✓ passed |" in text and "| b | — unsupported |" in text and "TPOT ms" in text


def test_docs_matrix_is_generated_from_committed_reports():
    reports = load_reports(ROOT / "conformance" / "reports")
    assert reports, "no committed conformance reports"
    assert (ROOT / "docs" / "capability-matrix.md").read_text() == matrix(reports)
