"""The docs site builds with `mkdocs build --strict`: no broken link, no page left out of the nav. The backend
pages are generated from the conformance reports and the plugins' declarations, never edited by hand."""

from __future__ import annotations

import os
import copy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["index", "concepts", "backends", "planner", "plugins", "server", "tuning", "conformance",
         "capability-matrix", "constraints", "multi-node", "backends/vllm", "backends/sglang"]


@pytest.mark.timeout(300)
def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (the dev extra has mkdocs and mkdocs-material)")
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    missing = [page for page in PAGES if not (site / ("" if page == "index" else page) / "index.html").is_file()]
    assert not missing, missing


def _generated():
    pytest.importorskip("llmkit_conformance")
    from llmkit_conformance.backend_pages import pages
    from llmkit_conformance.report import load_reports

    reports = load_reports(ROOT / "conformance" / "reports")
    return reports, pages(reports, ROOT)


def test_backend_pages_are_what_the_reports_and_plugins_generate():
    _, expected = _generated()
    committed = {p.name: p.read_text() for p in (ROOT / "docs" / "backends").glob("*.md")}
    assert sorted(committed) == sorted(expected)
    differ = [name for name in expected if committed[name] != expected[name]]
    assert not differ, f"docs/backends/{differ} differ from what the reports give: run .venv/bin/python -m llmkit_conformance.backend_pages"


def test_every_backend_page_is_in_the_nav_and_on_the_overview():
    import yaml

    _, expected = _generated()

    def paths(items):
        for item in items:
            for value in (item.values() if isinstance(item, dict) else [item]):
                yield from paths(value) if isinstance(value, list) else [value]

    nav = set(paths(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]))
    overview = (ROOT / "docs" / "backends.md").read_text()
    for name in expected:
        assert f"backends/{name}" in nav and f"(backends/{name})" in overview, name


def test_a_backend_without_a_report_says_so_until_one_is_committed():
    reports, pages_now = _generated()
    from llmkit_conformance.backend_pages import pages

    assert "**Not verified: no conformance report**" in pages_now["tensorrt-llm.md"]
    assert "Not verified" not in pages_now["sglang.md"] and "NVIDIA H100" in pages_now["sglang.md"]  # its GPU report
    report = copy.deepcopy(next(r for r in reports if r["backend"] == "vllm" and r["environment"]["device"] != "cpu"))
    report["backend"] = "tensorrt-llm"
    page = pages([*reports, report], ROOT)["tensorrt-llm.md"]
    assert "Not verified" not in page and "| quality_facts | ✓ passed |" in page and "NVIDIA H200" in page
