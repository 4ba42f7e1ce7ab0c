"""Reports a person can read: one backend (Markdown), several side by side (compare), and the
capability matrix in docs/ — always generated from report files, never written by hand."""

from __future__ import annotations

from typing import Any

REPORT_VERSION_NOW = 2  # runner.REPORT_VERSION (not imported: the runner imports this module)
MARK = {"passed": "✓ passed", "failed": "✗ FAILED", "unsupported": "— unsupported", "error": "! error"}
METRICS = {
    "tpot_ms": (lambda p: p["latency"]["tpot_ms"]["p50"], "lower", "median TPOT (ms)"),
    "ttft_ms": (lambda p: p["latency"]["ttft_ms"]["p50"], "lower", "median TTFT (ms)"),
    "throughput": (lambda p: max(t["output_tokens_per_s"] for t in p["throughput"]), "higher", "best output tok/s"),
}


def load_reports(folder) -> list[dict[str, Any]]:
    """The conformance reports in a folder (other JSON there, such as parity results, is skipped)."""
    import json
    from pathlib import Path

    reports = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]
    return [r for r in reports if "checks" in r and "backend" in r]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def where(report: dict[str, Any]) -> str:
    env = report["environment"]
    text = f"{env['device']} · {env['machine']} · {env['library']} {env['library_version']} · {env['date']}"
    return text + (f" · {env['note']}" if env.get("note") else "")


def markdown(report: dict[str, Any]) -> str:
    from llmkit_conformance.runner import summary

    counts = summary(report)
    lines = [
        f"# Conformance: `{report['backend']}` on `{report['model']}`",
        "",
        f"Verified on: {where(report)}. Options: `{report['options'] or {}}`.",
        "",
        f"**{counts['passed']} passed, {counts['failed']} failed, {counts['unsupported']} unsupported, {counts['error']} errors.**",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
    ]
    for r in report["checks"]:
        detail = r["detail"] or ", ".join(f"{k}={_fmt(v, 2)}" for k, v in r["data"].items() if not isinstance(v, (list, dict)))
        lines.append(f"| {r['name']} | {MARK[r['status']]} | {detail.replace('|', '/')[:160]} |")
    perf = report.get("performance")
    if perf:
        lat = perf["latency"]
        lines += [
            "",
            f"## Performance (client-side; {lat['prompt_tokens']}-token prompts, {lat['output_tokens']} tokens out, greedy)",
            "",
            "| metric | mean | p50 | p90 | p99 |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, label in [("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms"), ("itl_ms", "ITL ms")]:
            v = lat[key]
            lines.append(f"| {label} | {_fmt(v['mean'])} | {_fmt(v['p50'])} | {_fmt(v['p90'])} | {_fmt(v['p99'])} |")
        lines += ["", "| concurrency | output tok/s |", "| --- | --- |"]
        lines += [f"| {t['concurrency']} | {_fmt(t['output_tokens_per_s'])} |" for t in perf["throughput"]]
        lp = perf["long_prefix"]
        lines += [
            "",
            f"Long shared prefix ({lp['prefix_tokens']} tokens): TTFT cold {_fmt(lp['cold_ttft_ms'])} ms, warm "
            f"{_fmt(lp['warm_ttft_ms'])} ms ({_fmt(lp['speedup'], 2)}×), {_fmt(lp['warm_cached_tokens'])} tokens from the cache. "
            f"Peak RSS of the measuring process: {_fmt(perf['peak_rss_mib'], 0)} MiB.",
        ]
    lines += _memory_lines(report.get("memory"))
    return "\n".join(lines) + "\n"


def format_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**10:,.2f} KiB" if value < 2**20 else f"{value / 2**20:,.2f} MiB"


def _memory_lines(memory: dict[str, Any] | None) -> list[str]:
    if not memory:
        return []
    lines = ["", "## Memory: plan vs allocated", ""]
    engine = memory.get("engine")
    if engine:
        lines.append(f"Engine figures: {engine['source']}.")
    if memory.get("plan"):
        lines += ["", "| quantity | `llmkit plan` | engine | engine / plan |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['quantity']} | {format_bytes(r['planned_bytes'])} | {format_bytes(r['engine_bytes'])} | {r['ratio']:.3f} |"
                  for r in memory["plan"]]
    if memory.get("note"):
        lines += ["", f"No comparison: {memory['note']}."]
    extra = []
    if memory.get("device"):
        d = memory["device"]
        extra.append(f"{d['device']}: {format_bytes(d['used_bytes'])} in use of {format_bytes(d['total_bytes'])}")
    if memory.get("process_tree_rss_bytes"):
        extra.append(f"resident set of the process tree after the run: {format_bytes(memory['process_tree_rss_bytes'])}")
    if extra:
        lines += ["", "Measured: " + "; ".join(extra) + "."]
    return lines


def ranking(reports: list[dict[str, Any]], metric: str = "tpot_ms") -> tuple[list[dict[str, Any]], str]:
    """Backends ranked by correctness first (fewest failures and errors, then most passes), then by
    `metric`, and a sentence saying why the first one wins."""
    from llmkit_conformance.runner import summary

    get, better, label = METRICS[metric]

    def key(report):
        c = summary(report)
        value = metric_of(report, metric)
        sign = 1 if better == "lower" else -1
        return (c["failed"] + c["error"], -c["passed"], sign * value if value is not None else float("inf"))

    ranked = sorted(reports, key=key)
    best, rest = ranked[0], ranked[1:]
    c = summary(best)
    reason = f"**Recommended: `{best['backend']}`** — {c['failed'] + c['error']} failures, {c['passed']} checks passed"
    if rest:
        runner_up = rest[0]
        rc = summary(runner_up)
        if (rc["failed"] + rc["error"], -rc["passed"]) != (c["failed"] + c["error"], -c["passed"]):
            reason += f"; `{runner_up['backend']}` has {rc['failed'] + rc['error']} failures and {rc['passed']} passes"
        else:
            reason += (f"; equally correct as `{runner_up['backend']}`, and better on {label}: "
                       f"{_fmt(metric_of(best, metric))} vs {_fmt(metric_of(runner_up, metric))}")
    return ranked, reason + "."


def metric_of(report: dict[str, Any], metric: str) -> float | None:
    perf = report.get("performance")
    return METRICS[metric][0](perf) if perf else None


def weights_label(weights: dict[str, Any] | None) -> str:
    if not weights:
        return "unknown weights"
    text = f"{weights.get('format')} {weights.get('quantization') or weights.get('dtype')}"
    return text + (f", KV {weights['kv_cache_dtype']}" if weights.get("kv_cache_dtype") else "")


def weights_warning(weights: dict[str, dict[str, Any] | None]) -> str | None:
    """A warning when the backends compared ran different numbers (the same catalog name is a Q4_1 GGUF on
    llama.cpp and a float32 copy on transformers): differences then mix backend and weights."""
    labels = {name: weights_label(w) for name, w in weights.items()}
    if len(set(labels.values())) <= 1:
        return None
    listed = "; ".join(f"{name}: {label}" for name, label in labels.items())
    return f"**Warning: these backends ran different weights** ({listed}): differences mix the backend with the weights."


def compare(reports: list[dict[str, Any]], metric: str = "tpot_ms") -> str:
    """The checks side by side, ranked (see `ranking`), with the chosen metric and held-out perplexity."""
    ranked, reason = ranking(reports, metric)
    label = METRICS[metric][2]
    names = list(dict.fromkeys(r["name"] for rep in reports for r in rep["checks"]))
    header = ["check"] + [f"{r['backend']}" for r in ranked]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name in names:
        row = [name]
        for rep in ranked:
            status = next((r["status"] for r in rep["checks"] if r["name"] == name), None)
            row.append(MARK[status] if status else "not run")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("| " + " | ".join([f"**{label}**"] + [_fmt(metric_of(r, metric)) for r in ranked]) + " |")
    lines.append("| " + " | ".join(["**held-out perplexity**"] + [_fmt(perplexity(r), 3) for r in ranked]) + " |")
    lines.append("| " + " | ".join(["**weights**"] + [weights_label(r.get("weights")) for r in ranked]) + " |")
    warning = weights_warning({r["backend"]: r.get("weights") for r in ranked})
    return "\n".join(lines) + "\n\n" + (warning + "\n\n" if warning else "") + reason + "\n"


def perplexity(report: dict[str, Any]) -> float | None:
    result = next((c for c in report["checks"] if c["name"] == "quality_perplexity"), None)
    return (result or {}).get("data", {}).get("perplexity")


def column(report: dict[str, Any]) -> str:
    """A matrix column's heading: backend, where, options, and what it ran against when that matters."""
    env = report["environment"]
    head = f"{report['backend']} ({'GPU' if env['device'] != 'cpu' else 'CPU'}"
    head += "".join(f", {k}={v}" for k, v in sorted(report["options"].items()) if k != "host")
    if env.get("note"):
        head += f"; {env['note']}"
    if report.get("report_version", 1) < REPORT_VERSION_NOW:
        head += f"; older suite ({len(report['checks'])} checks)"
    return head + ")"


def matrix(reports: list[dict[str, Any]], unverified: dict[str, str] | None = None) -> str:
    """docs/capability-matrix.md: backend × check × where verified, from committed reports. `unverified`:
    backends registered but never run (name → why, and the command that would verify them) get a column of
    their own, so the matrix never reads as if they had been checked."""
    from llmkit_conformance.checks import CHECKS

    reports = sorted(reports, key=lambda r: (r["backend"], r["environment"]["device"], sorted(r["options"].items())))
    unverified = {name: why for name, why in (unverified or {}).items() if name not in {r["backend"] for r in reports}}
    names = list(dict.fromkeys([*CHECKS, *(r["name"] for rep in reports for r in rep["checks"])]))
    cols = [column(r) for r in reports] + [f"{name} (not run)" for name in sorted(unverified)]
    symbol = {"passed": "✓", "failed": "✗", "unsupported": "—", "error": "!"}
    lines = [
        "# Capability matrix",
        "",
        "Generated by `llmkit conformance matrix` from the reports in `conformance/reports/`; do not edit by hand.",
        "✓ passed · ✗ failed · — unsupported (undeclared, and refused with UnsupportedFeatureError) · ! the check crashed · "
        "blank: not run.",
        "",
        "| check | " + " | ".join(cols) + " |",
        "|" + " --- |" * (len(cols) + 1),
    ]
    for name in names:
        cells = []
        for rep in reports:
            status = next((r["status"] for r in rep["checks"] if r["name"] == name), None)
            cells.append(symbol.get(status, ""))
        cells += [""] * len(unverified)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Where each column was verified", ""]
    for col, rep in zip(cols, reports):
        lines.append(f"- **{col}**, model `{rep['model']}`: {where(rep)}")
    for name in sorted(unverified):
        lines.append(f"- **{name} (not run)**: {unverified[name]}")
    return "\n".join(lines) + "\n"


def unverified_backends() -> dict[str, str]:
    """Registered backends that declare they have not been run anywhere, with their reasons."""
    from llmkit.plugins import engines

    return {name: spec.unverified for name, spec in engines().items() if spec.unverified}
