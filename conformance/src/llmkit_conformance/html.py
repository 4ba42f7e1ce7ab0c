"""A self-contained HTML page for one report or several side by side: the checks, the ranking, latency
distributions (empirical CDFs of TTFT, TPOT and ITL), throughput against concurrency, and memory plan
vs allocated. Plots are inline SVG drawn here; the page loads nothing from anywhere.

A small script, run by the browser on load, counts the plots that rendered with their data marks and
writes the count to `body[data-plots-rendered]`: the headless-Chromium test reads it back.
"""

from __future__ import annotations

import html
import math
from typing import Any

from llmkit_conformance.report import MARK, format_bytes, ranking, where

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
WIDTH, PLOT_HEIGHT, MARGIN = 460, 280, (12, 20, 45, 60)  # top, right, bottom, left; the legend goes below

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f4f4f4; } .passed { color: #1a7f37; } .failed, .error { color: #c62828; font-weight: bold; }
.unsupported { color: #777; } .plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; } svg text { font: 11px sans-serif; fill: #333; }
.note { color: #555; font-size: 13px; }
"""

SCRIPT = """
window.addEventListener('load', () => {
  let rendered = 0;
  for (const svg of document.querySelectorAll('svg.plot')) {
    const box = svg.getBoundingClientRect();
    const marks = svg.querySelectorAll('g.data path, g.data circle').length;
    const data = svg.querySelector('g.data').getBoundingClientRect();
    if (box.width > 0 && box.height > 0 && marks > 0 && data.width > 0 && data.height > 0) rendered++;
  }
  document.body.dataset.plotsRendered = rendered;
});
"""


def _label(report: dict[str, Any]) -> str:
    options = "".join(f", {k}={v}" for k, v in sorted(report["options"].items()) if k != "host")
    device = "GPU" if report["environment"]["device"] != "cpu" else "CPU"
    return f"{report['backend']} ({device}{options})"


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values from at most `lo` to at least `hi`."""
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / count))
    for factor in (1, 2, 5, 10):
        if (hi - lo) / (step * factor) <= count:
            step *= factor
            break
    ticks = [math.floor(lo / step) * step]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def chart(title: str, series: list[tuple[str, str, list[tuple[float, float]]]], x_label: str, y_label: str,
          step: bool = False) -> str:
    """An SVG line chart; `step` draws each series as an empirical CDF (a step function)."""
    points = [p for _, _, pts in series for p in pts]
    if not points:
        return ""
    top, right, bottom, left = MARGIN
    height = PLOT_HEIGHT + 16 * len(series)
    bottom += 16 * len(series)
    x_ticks = _ticks(min(0.0, min(x for x, _ in points)), max(x for x, _ in points))
    y_ticks = _ticks(0.0, max(y for _, y in points))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / ((x1 - x0) or 1) * (WIDTH - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / ((y1 - y0) or 1) * (height - top - bottom)

    parts = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{html.escape(title)}">']
    for x in x_ticks:
        parts.append(f'<line x1="{sx(x):.1f}" x2="{sx(x):.1f}" y1="{top}" y2="{height - bottom}" stroke="#eee"/>'
                     f'<text x="{sx(x):.1f}" y="{height - bottom + 14}" text-anchor="middle">{x:g}</text>')
    for y in y_ticks:
        parts.append(f'<line x1="{left}" x2="{WIDTH - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    parts.append(f'<text x="{(left + WIDTH - right) / 2}" y="{height - bottom + 30}" text-anchor="middle">{html.escape(x_label)}</text>'
                 f'<text transform="translate(14 {(top + height - bottom) / 2}) rotate(-90)" text-anchor="middle">'
                 f'{html.escape(y_label)}</text>')
    parts.append('<g class="data">')
    legend = []
    for i, (name, colour, pts) in enumerate(series):
        legend_y = height - bottom + 48 + 16 * i
        legend.append(f'<line x1="{left}" x2="{left + 18}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" stroke-width="3"/>'
                      f'<text x="{left + 24}" y="{legend_y}">{html.escape(name)}</text>')
        if not pts:
            continue
        pts = sorted(pts)
        if step:
            path = f"M{sx(pts[0][0]):.1f},{sy(0):.1f}"
            previous = 0.0
            for x, y in pts:
                path += f" L{sx(x):.1f},{sy(previous):.1f} L{sx(x):.1f},{sy(y):.1f}"
                previous = y
        else:
            path = "M" + " L".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"><title>{html.escape(name)}</title></path>')
    parts.append("</g>")
    parts += legend
    parts.append("</svg>")
    return f"<figure>{''.join(parts)}<figcaption>{html.escape(title)}</figcaption></figure>"


def _ecdf(values: list[float]) -> list[tuple[float, float]]:
    ordered = sorted(values)
    return [(v, (i + 1) / len(ordered)) for i, v in enumerate(ordered)]


def _samples(report: dict[str, Any], metric: str) -> list[float]:
    """Every sample where the report has them; older reports hold only percentiles (drawn as such)."""
    latency = (report.get("performance") or {}).get("latency") or {}
    values = (latency.get("samples_ms") or {}).get(metric)
    if values:
        return values
    summary = latency.get(f"{metric}_ms") or {}
    return [v for v in (summary.get("p50"), summary.get("p90"), summary.get("p99")) if v is not None]


def plots(reports: list[dict[str, Any]]) -> list[str]:
    coloured = [(_label(r), COLOURS[i % len(COLOURS)], r) for i, r in enumerate(reports)]
    figures = []
    for metric, title in (("ttft", "Time to first token"), ("tpot", "Time per output token"), ("itl", "Inter-token latency")):
        series = [(name, colour, _ecdf(_samples(r, metric))) for name, colour, r in coloured]
        figures.append(chart(f"{title}: distribution over requests (empirical CDF)", series, f"{metric.upper()} (ms)",
                             "fraction of samples ≤ x", step=True))
    throughput = [(name, colour, [(t["concurrency"], t["output_tokens_per_s"]) for t in (r.get("performance") or {}).get("throughput", [])])
                  for name, colour, r in coloured]
    figures.append(chart("Output throughput against concurrency (one batch of that many requests)", throughput,
                         "concurrent requests", "output tokens/s"))
    return [f for f in figures if f]


def _checks_table(reports: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(c["name"] for r in reports for c in r["checks"]))
    head = "".join(f"<th>{html.escape(_label(r))}</th>" for r in reports)
    rows = []
    for name in names:
        cells = []
        for r in reports:
            result = next((c for c in r["checks"] if c["name"] == name), None)
            if result is None:
                cells.append("<td>not run</td>")
                continue
            detail = result["detail"] or ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in result["data"].items() if not isinstance(v, (list, dict)))
            cells.append(f'<td class="{result["status"]}" title="{html.escape(detail)}">{MARK[result["status"]]}'
                         f'{"<br><small>" + html.escape(detail[:80]) + "</small>" if detail else ""}</td>')
        rows.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>check</th>{head}</tr>{''.join(rows)}</table>"


def _latency_table(reports: list[dict[str, Any]]) -> str:
    rows = []
    for r in reports:
        lat = (r.get("performance") or {}).get("latency")
        if not lat:
            continue
        cells = "".join(f"<td>{lat[m]['p50']:.2f} / {lat[m]['p90']:.2f} / {lat[m]['p99']:.2f}</td>" if lat[m]["p50"] is not None
                        else "<td>-</td>" for m in ("ttft_ms", "tpot_ms", "itl_ms"))
        rows.append(f"<tr><td>{html.escape(_label(r))}</td>{cells}</tr>")
    if not rows:
        return ""
    return ("<table><tr><th>backend</th><th>TTFT ms p50 / p90 / p99</th><th>TPOT ms p50 / p90 / p99</th>"
            f"<th>ITL ms p50 / p90 / p99</th></tr>{''.join(rows)}</table>")


def _memory_tables(reports: list[dict[str, Any]]) -> str:
    out = []
    for r in reports:
        memory = r.get("memory") or {}
        if not memory.get("plan"):
            continue
        rows = "".join(f"<tr><td>{html.escape(p['quantity'])}</td><td>{format_bytes(p['planned_bytes'])}</td>"
                       f"<td>{format_bytes(p['engine_bytes'])}</td><td>{p['ratio']:.3f}</td></tr>" for p in memory["plan"])
        source = html.escape((memory.get("engine") or {}).get("source", ""))
        out.append(f"<h3>{html.escape(_label(r))}</h3><p class='note'>{source}</p><table><tr><th>quantity</th>"
                   f"<th>llmkit plan</th><th>engine</th><th>engine / plan</th></tr>{rows}</table>")
    return "".join(out)


def render(reports: list[dict[str, Any]], metric: str = "tpot_ms") -> str:
    title = (f"llmkit conformance: {reports[0]['backend']} on {reports[0]['model']}" if len(reports) == 1
             else f"llmkit conformance: {len(reports)} backends compared")
    body = [f"<h1>{html.escape(title)}</h1>"]
    if len(reports) > 1:
        _, reason = ranking(reports, metric)
        body.append(f"<p>{html.escape(reason).replace('**', '')}</p>")
    body.append("<h2>Checks</h2>" + _checks_table(reports))
    figures = plots(reports)
    if figures:
        body.append(f"<h2>Performance</h2><p class='note'>Measured by llmkit on the client side; definitions as "
                    f"<code>vllm bench serve</code> (docs/conformance.md).</p>{_latency_table(reports)}"
                    f"<div class='plots'>{''.join(figures)}</div>")
    memory = _memory_tables(reports)
    if memory:
        body.append("<h2>Memory: plan vs allocated</h2>" + memory)
    body.append("<h2>Where</h2><ul>" + "".join(f"<li><b>{html.escape(_label(r))}</b>, model <code>{html.escape(r['model'])}</code>: "
                                               f"{html.escape(where(r))}</li>" for r in reports) + "</ul>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{''.join(body)}</body></html>\n")

