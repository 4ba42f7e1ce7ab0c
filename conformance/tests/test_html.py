"""The HTML report renders in a real browser: headless Chromium (Debian's package, installed by
scripts/setup.sh) loads the page, the page's own script counts the plots that laid out with their data,
and the test reads that count back from the DOM Chromium dumps."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llmkit_conformance.html import chart, render
from llmkit_conformance.report import load_reports

REPORTS = Path(__file__).resolve().parents[1] / "reports"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# No network here: without the background-networking flags Chromium keeps trying to reach Google.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it where apt-get can)")


def rendered_dom(page: str, tmp_path: Path) -> str:
    path = tmp_path / "report.html"
    path.write_text(page)
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def plots_rendered(dom: str) -> int:
    match = re.search(r'<body[^>]*data-plots-rendered="(\d+)"', dom)
    assert match, "the page's script did not run"
    return int(match.group(1))


@pytest.fixture(scope="module")
def reports():
    found = load_reports(REPORTS)
    assert len(found) >= 4
    return found


@needs_chromium
def test_one_report_renders_its_four_plots(reports, tmp_path):
    report = next(r for r in reports if r["performance"])
    dom = rendered_dom(render([report]), tmp_path)
    assert plots_rendered(dom) == 4
    assert "Time to first token" in dom and "Output throughput against concurrency" in dom


@needs_chromium
def test_comparison_page_renders_every_backend(reports, tmp_path):
    page = render(reports, "throughput")
    dom = rendered_dom(page, tmp_path)
    assert plots_rendered(dom) == 4
    assert "Recommended:" in dom
    for report in reports:  # one series per backend in the throughput plot, named in its legend
        assert f">{report['backend']} (" in dom


@needs_chromium
def test_a_plot_without_data_is_not_counted(tmp_path):
    """The negative control: the count comes from what the browser laid out, not from the markup."""
    empty = chart("no data", [("a", "#000", [(1.0, 1.0)])], "x", "y").replace('<g class="data">', '<g class="data" display="none">')
    page = f"<!DOCTYPE html><html><head>{_script()}</head><body>{empty}</body></html>"
    assert plots_rendered(rendered_dom(page, tmp_path)) == 0


def _script() -> str:
    from llmkit_conformance.html import SCRIPT

    return f"<script>{SCRIPT}</script>"


def test_page_is_self_contained(reports):
    page = render(reports)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # loads nothing from anywhere
    assert page.count('<svg class="plot"') == 4
