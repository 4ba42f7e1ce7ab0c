"""The docs site builds with `mkdocs build --strict`: no broken link, no page left out of the nav."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["index", "concepts", "backends", "planner", "plugins", "server", "tuning", "conformance",
         "capability-matrix", "constraints"]


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
