"""The quantization report: one model, several (method × engine) rows, measured in one run through the public
API only (`llmkit.quantize`, `llmkit.load`), written as JSON, Markdown and a self-contained HTML page.

A row is `BACKEND:METHOD`: `none` (the model as given), an offline method (made by `llmkit.quantize(BACKEND,
...)`, e.g. `llamacpp:q8_0`, `vllm:w8a8-int8`) or `load:METHOD` (the engine quantizes while loading,
`llmkit.load(BACKEND, model, quantization=METHOD)`). The first row of each backend is that engine's
baseline: the other rows of the backend are compared with it, so the comparison isolates the quantization
from the engine's arithmetic.

Per row: bytes on disk (the weight files), bytes in memory as the engine reports them, the planner's
prediction for that format beside it (`llmkit.planner`, quantization-aware), the peak resident set of the
process tree while the row ran (engine processes included), held-out perplexity (the conformance check
`quality_perplexity`: ch. 7 records 935-974), greedy agreement with the baseline on the parity prompts,
and decode speed: output tokens/s of one stream and of 8 concurrent streams.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import llmkit
from llmkit_conformance.checks import run_check
from llmkit_conformance.memory import process_tree_rss
from llmkit_conformance.parity import PROMPTS, compare_pair
from llmkit_conformance.report import format_bytes
from llmkit_conformance.runner import environment

SPEED_TOKENS = 64
STREAMS = 8
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


@dataclass(frozen=True)
class Row:
    backend: str
    method: str  # "none", an offline method, or "load:<method>"

    @classmethod
    def parse(cls, text: str) -> "Row":
        backend, sep, method = text.partition(":")
        if not sep or not backend or not method:
            raise llmkit.InvalidRequestError(f"row {text!r}: write BACKEND:METHOD (METHOD: none, an offline method such as "
                                             "q8_0 or w8a8-int8, or load:METHOD)", parameter="rows", value=text)
        return cls(backend, method)

    @property
    def applied(self) -> str:
        return "none" if self.method == "none" else "load" if self.method.startswith("load:") else "offline"

    @property
    def quantization(self) -> str | None:
        return None if self.method == "none" else self.method.removeprefix("load:")

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.method}"


def disk_bytes(path: Path) -> int:
    """The weight files of a model file or folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES)


class PeakRSS:
    """The process tree's resident set, sampled every `interval` seconds in a thread: engines run in child
    processes (vLLM's EngineCore), which the process's own ru_maxrss does not see."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.start, self.peak = interval, process_tree_rss(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, process_tree_rss())

    def __enter__(self) -> "PeakRSS":
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _plan_key(row: Row, weights: Any) -> str | None:
    """The planner's name for what this row's weights are (llmkit.planner WEIGHT_BYTES or LINEAR_BYTES)."""
    from llmkit.planner import LINEAR_BYTES, WEIGHT_BYTES, dtype_name

    method = row.quantization
    if row.applied == "load" and method == "fp8":
        return "fp8-load"
    if method in LINEAR_BYTES or method in WEIGHT_BYTES:
        return method
    if method == "f16":
        return "fp16"
    dtype = dtype_name(weights.dtype) if weights is not None and weights.dtype else None
    return dtype if dtype in WEIGHT_BYTES else None


def _speed(engine: Any) -> dict[str, float]:
    params = llmkit.greedy(max_tokens=SPEED_TOKENS, ignore_eos=engine.capabilities().supports("ignore_eos"))
    engine.generate(PROMPTS[0], params)  # warm-up
    start = time.perf_counter()
    single = engine.generate(PROMPTS[1], params)[0]
    one = len(single.token_ids) / (time.perf_counter() - start)

    async def streams() -> float:
        async def consume(prompt: str) -> int:
            usage = None
            async for chunk in engine.astream(prompt, params):
                usage = chunk.usage or usage
            return usage.completion_tokens if usage is not None else 0

        begin = time.perf_counter()
        total = sum(await asyncio.gather(*[consume(p) for p in PROMPTS[2:2 + STREAMS]]))
        return total / (time.perf_counter() - begin)

    return {"tokens_per_s_1": one, f"tokens_per_s_{STREAMS}": asyncio.run(streams())}


def measure_row(row: Row, model: str, source: Path | str, options: dict[str, Any], shape: Any, max_tokens: int) -> dict[str, Any]:
    """Load `source` on the row's engine and measure it (see the module docstring)."""
    from llmkit.planner import LINEAR_BYTES, compare_with_engine

    opts = dict(options)
    if row.applied == "load":
        opts["quantization"] = row.quantization
    result: dict[str, Any] = {}
    with PeakRSS() as rss:
        start = time.perf_counter()
        with llmkit.load(row.backend, str(source), **opts) as engine:
            result["load_s"] = time.perf_counter() - start
            weights = engine.weights()
            usage = engine.memory()
            read = Path(weights.source) if weights is not None and weights.source else Path(source)  # what the engine read
            result["disk_bytes"] = disk_bytes(read) if read.exists() else None
            result["weights"] = json.loads(weights.model_dump_json()) if weights is not None else None
            result["memory"] = json.loads(usage.model_dump_json()) if usage is not None else None
            key = _plan_key(row, weights)
            result["plan_key"] = key
            base = usage.weights_dtype if usage is not None and usage.weights_dtype in ("bf16", "fp16", "fp32") else "bf16"
            result["planned_weight_bytes"] = shape.weight_bytes(key, base) if key else None
            result["plan"] = compare_with_engine(shape, usage, key if key in LINEAR_BYTES else None) if usage else []
            perplexity = run_check("quality_perplexity", engine)
            result["perplexity"] = perplexity.data.get("perplexity")
            result["perplexity_status"] = perplexity.status if perplexity.status == "passed" else f"{perplexity.status}: {perplexity.detail}"
            out = engine.generate(PROMPTS, llmkit.greedy(max_tokens=max_tokens, logprobs=2))
            result["greedy"] = [{"token_ids": c.token_ids, "margins": [_margin(lp) for lp in c.logprobs or []]} for c in out]
            result.update(_speed(engine))
    result["peak_rss_bytes"] = rss.peak
    result["rss_before_bytes"] = rss.start
    return result


def _margin(lp: Any) -> float | None:
    values = sorted(lp.top.values(), reverse=True)
    return values[0] - values[1] if len(values) >= 2 else None


def run(model: str, rows: list[Row], *, workdir: Path, options: dict[str, dict[str, Any]] | None = None,
        artifacts: dict[str, Path] | None = None, quantize_options: dict[str, Any] | None = None, max_tokens: int = 32,
        on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every row, one after the other, in this process. `artifacts`: row label → an existing quantized file or
    folder to measure instead of making it (a GPTQ run on CPU takes long; its record says how it was made).
    `quantize_options`: QuantizeJob fields for the offline rows that use them (calibration data...)."""
    from llmkit.planner import load_shape
    from llmkit.quantizer import find_quantizer

    options, artifacts, quantize_options = options or {}, artifacts or {}, quantize_options or {}
    shape = load_shape(model)
    say = on_progress or (lambda message: None)
    results = []
    for row in rows:
        entry: dict[str, Any] = {"row": row.label, "backend": row.backend, "method": row.method, "applied": row.applied,
                                 "options": options.get(row.backend, {})}
        try:
            source: Path | str = model
            if row.applied == "offline":
                if row.label in artifacts:
                    source = artifacts[row.label]
                    entry["artifact"] = "given"
                else:
                    quantizer = find_quantizer(row.backend, row.quantization)
                    used = {k: v for k, v in quantize_options.items()
                            if k not in ("calibration", "calibration_samples", "max_seq_length") or row.quantization in quantizer.calibrated}
                    say(f"{row.label}: quantizing")
                    start = time.perf_counter()
                    suffix = ".gguf" if quantizer.format == "gguf" else ""
                    source = llmkit.quantize(row.backend, model, row.quantization, workdir / f"{row.backend}-{row.quantization}{suffix}",
                                             **used)
                    entry["quantize_s"] = time.perf_counter() - start
                record = Path(source) / "llmkit-quantization.json"
                entry["quantized_by"] = json.loads(record.read_text()) if record.is_file() else None
            say(f"{row.label}: measuring")
            entry.update(measure_row(row, model, source, options.get(row.backend, {}), shape, max_tokens))
            entry["source"] = str(source)
        except llmkit.UnsupportedFeatureError as exc:  # the engine says it cannot run this here, and why
            entry["refused"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a row that fails is reported, and the others still run
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=6)
        results.append(entry)
    _compare_with_baselines(results)
    environments = {backend: environment(backend) for backend in dict.fromkeys(r.backend for r in rows)}
    return {"kind": "quantization", "model": model, "rows": results, "environments": environments,
            "prompts": len(PROMPTS), "max_tokens": max_tokens, "speed_tokens": SPEED_TOKENS, "streams": STREAMS,
            "quantize_options": {k: str(v) for k, v in quantize_options.items()},
            "parameters": shape.parameters, "parameters_source": shape.parameters_source}


def _compare_with_baselines(results: list[dict[str, Any]]) -> None:
    baselines: dict[str, dict[str, Any]] = {}
    for entry in results:
        base = baselines.setdefault(entry["backend"], entry)
        entry["baseline"] = base["row"]
        if "greedy" not in entry or "greedy" not in base:
            continue
        agreement = compare_pair(base["greedy"], entry["greedy"])
        entry["identical_rate"] = agreement["identical_rate"]
        entry["mean_agreeing_prefix"] = agreement["mean_agreeing_prefix"]
        entry["divergences"] = agreement["divergences"]
        if entry.get("perplexity") and base.get("perplexity"):
            entry["perplexity_ratio"] = entry["perplexity"] / base["perplexity"]


# ---- writing ------------------------------------------------------------------------------------------

COLUMNS = ["row", "weights", "on disk", "in memory (engine)", "`llmkit plan`", "engine / plan", "peak RSS",
           "perplexity", "vs baseline", "greedy identical", "agreeing prefix", "tok/s (1)", f"tok/s ({STREAMS})"]


def _cells(entry: dict[str, Any]) -> list[str]:
    for outcome in ("refused", "error"):
        if outcome in entry:
            return [entry["row"], f"**{outcome}**: {entry[outcome][:200]}"] + [""] * (len(COLUMNS) - 2)
    memory = entry.get("memory") or {}
    weights = entry.get("weights") or {}
    engine_bytes, planned = memory.get("weights_bytes"), entry.get("planned_weight_bytes")
    is_base = entry["row"] == entry["baseline"]

    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    return [
        entry["row"] + (" (baseline)" if is_base else ""),
        f"{weights.get('quantization') or weights.get('dtype') or '?'}" + (f" ({entry['plan_key']})" if entry.get("plan_key") else ""),
        format_bytes(entry.get("disk_bytes")),
        format_bytes(engine_bytes),
        format_bytes(planned),
        f"{engine_bytes / planned:.3f}" if engine_bytes and planned else "-",
        format_bytes(entry.get("peak_rss_bytes")),
        num(entry.get("perplexity"), ".3f"),
        "-" if is_base else num(entry.get("perplexity_ratio"), ".3f") + "×",
        "-" if is_base else num(entry.get("identical_rate"), ".0%"),
        "-" if is_base else num(entry.get("mean_agreeing_prefix"), ".0%"),
        num(entry.get("tokens_per_s_1"), ".1f"),
        num(entry.get(f"tokens_per_s_{STREAMS}"), ".1f"),
    ]


def _where(report: dict[str, Any]) -> list[str]:
    lines = []
    for backend, env in report["environments"].items():
        lines.append(f"{backend}: {env['library']} {env['library_version']} · {env['device']} · {env['machine']} · "
                     f"Python {env['python']} · {env['date']}")
    return lines


def markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [
        f"# Quantization: `{report['model']}`",
        "",
        f"One run, one process, rows one after the other. {report['parameters']:,} parameters ({report['parameters_source']}). "
        f"Perplexity: held-out ch. 7 records 935-974 (responses only). Greedy: {report['prompts']} prompts × "
        f"{report['max_tokens']} tokens against the engine's baseline (its first row). Speed: {report['speed_tokens']} "
        f"tokens, one stream and {report['streams']} concurrent streams. Peak RSS: the process tree while the row ran "
        f"(engine processes included).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(entry)) + " |" for entry in rows]
    plans = [(e["row"], p) for e in rows for p in e.get("plan") or [] if not p["quantity"].startswith("weights")]
    if plans:
        lines += ["", "## Plan vs allocated: KV cache", "", "| row | quantity | `llmkit plan` | engine | engine / plan |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {row} | {p['quantity']} | {format_bytes(p['planned_bytes'])} | {format_bytes(p['engine_bytes'])} | "
                  f"{p['ratio']:.3f} |" for row, p in plans]
    made = [e for e in rows if e.get("quantized_by")]
    if made or report.get("quantize_options"):
        lines += ["", "## How the quantized files were made", ""]
        for e in made:
            q = e["quantized_by"]
            cal = q.get("calibration") or {}
            lines.append(f"- `{e['row']}`: {q['quantizer']} {json.dumps(q['recipe'])}; calibration: "
                         f"{cal.get('records', 'none')} of `{Path(cal['file']).name}` (sha256 {cal['sha256'][:12]}…), "
                         f"{q.get('calibration_tokens')} tokens; {q['seconds']:.0f} s; {q['versions']}" if cal else
                         f"- `{e['row']}`: {q['quantizer']} {json.dumps(q['recipe'])}; {q['seconds']:.0f} s; {q['versions']}")
        gguf = [e["row"] for e in rows if e["applied"] == "offline" and not e.get("quantized_by") and "source" in e]
        if gguf:
            lines.append(f"- {', '.join(f'`{r}`' for r in gguf)}: `llmkit.quantize` (llama.cpp's converter to f16, then "
                         "llama_model_quantize)")
    for outcome, title in (("refused", "Rows the engine refused"), ("error", "Rows that failed")):
        listed = [e for e in rows if outcome in e]
        if listed:
            lines += ["", f"## {title}", ""] + [f"- `{e['row']}`: {e[outcome]}" for e in listed]
    lines += ["", "## Where", ""] + [f"- {line}" for line in _where(report)]
    return "\n".join(lines) + "\n"


def render(report: dict[str, Any]) -> str:
    from llmkit_conformance.html import COLOURS, SCRIPT, STYLE, chart

    rows = [e for e in report["rows"] if "perplexity" in e]
    table = ("<table><tr>" + "".join(f"<th>{html.escape(c.strip('`'))}</th>" for c in COLUMNS) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(e)) + "</tr>" for e in report["rows"])
             + "</table>")
    mib = lambda b: b / 2**20  # noqa: E731
    figures = [
        chart("Held-out perplexity against weights on disk", [(e["row"], COLOURS[i % len(COLOURS)], [(mib(e["disk_bytes"]), e["perplexity"])])
              for i, e in enumerate(rows) if e.get("disk_bytes") and e.get("perplexity")], "weights on disk (MiB)", "perplexity"),
        chart(f"Output tokens/s: one stream (x = 1) and {STREAMS} streams (x = {STREAMS})",
              [(e["row"], COLOURS[i % len(COLOURS)], [(1, e["tokens_per_s_1"]), (STREAMS, e[f"tokens_per_s_{STREAMS}"])])
               for i, e in enumerate(rows) if e.get("tokens_per_s_1")], "concurrent streams", "output tokens/s"),
    ]
    title = f"llmkit quantization report: {report['model']}"
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='note'>{html.escape(markdown(report).splitlines()[2])}</p>", table,
            f"<div class='plots'>{''.join(f for f in figures if f)}</div>",
            "<h2>Where</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in _where(report)) + "</ul>"]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{''.join(body)}</body></html>\n")


def write(report: dict[str, Any], directory: Path) -> tuple[Path, Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    devices = {env["device"] for env in report["environments"].values()}
    stem = re.sub(r"[^A-Za-z0-9._=-]", "_", f"quantization-{Path(report['model']).name}-{'cpu' if devices == {'cpu'} else 'gpu'}")
    paths = directory / f"{stem}.json", directory / f"{stem}.md", directory / f"{stem}.html"
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(report))
    paths[2].write_text(render(report))
    return paths
