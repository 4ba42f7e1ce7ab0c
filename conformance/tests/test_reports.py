"""Reports, comparison and the docs matrix are generated from report files, never by hand."""

from pathlib import Path

from llmkit_conformance.report import compare, load_reports, markdown, matrix, unverified_backends

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
    assert (ROOT / "docs" / "capability-matrix.md").read_text() == matrix(reports, unverified_backends())


def test_the_matrix_says_in_its_columns_what_a_column_ran_against():
    served = _report("ollama", {"a": "passed"}, tpot=1.0)
    served["environment"]["note"] = "against llmkit's Ollama-protocol test server, not a live Ollama"
    text = matrix([served, _report("x", {"a": "passed"}, tpot=1.0)], {"never-run": "not run: no wheel"})
    header = next(line for line in text.splitlines() if line.startswith("| check |"))
    assert "not a live Ollama" in header and "never-run (not run)" in header
    assert "- **never-run (not run)**: not run: no wheel" in text


def test_compare_warns_when_backends_ran_different_weights():
    a, b = _report("llamacpp", {"x": "passed"}, tpot=1.0), _report("transformers", {"x": "passed"}, tpot=2.0)
    a["weights"] = {"format": "gguf", "dtype": "q4_1", "kv_cache_dtype": "fp16"}
    b["weights"] = {"format": "safetensors", "dtype": "fp32", "kv_cache_dtype": "fp32"}
    assert "ran different weights" in compare([a, b])
    b["weights"] = dict(a["weights"])
    assert "ran different weights" not in compare([a, b])
