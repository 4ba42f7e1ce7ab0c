"""Run the suite on one backend and write its report (JSON for machines, Markdown for people)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import llmkit
from llmkit_conformance.checks import CHECKS, DESTRUCTIVE, run_check

REPORT_VERSION = 2  # 2: weights, concurrency checks


def backend_distributions(backend: str) -> tuple[str, ...]:
    """The distributions that carry a backend's engine, as its plugin registered them
    (`BackendSpec.distributions`, the usual name first); () for a backend not installed here."""
    from llmkit.plugins import engines

    spec = engines().get(backend)
    return spec.distributions if spec is not None else ()


def environment(backend: str) -> dict[str, Any]:
    """The engine library (the first of the backend's distributions that is installed, else the usual
    name with no version) and the machine, for a report."""
    library, version = None, None
    for name in backend_distributions(backend):
        try:
            library, version = name, importlib.metadata.version(name)
            break
        except importlib.metadata.PackageNotFoundError:
            library = library or name
    device = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "llmkit": llmkit.__version__,
        "library": library,
        "library_version": version,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {__import__('os').cpu_count()} cores",
        "device": device,
        "date": datetime.date.today().isoformat(),
    }


def run(backend: str, model: str, options: dict[str, Any] | None = None, *, checks: list[str] | None = None,
        performance: bool = True, on_progress: Callable[[str], None] | None = None, note: str | None = None) -> dict[str, Any]:
    """`note` says how the run was set up where that matters to a reader (e.g. what server it talked to)."""
    names = checks or list(CHECKS)
    unknown = set(names) - set(CHECKS)
    if unknown:
        raise llmkit.InvalidRequestError(f"unknown checks {sorted(unknown)}; known: {sorted(CHECKS)}", parameter="checks")
    with llmkit.load(backend, model, **(options or {})) as engine:
        results = []
        for name in [n for n in names if n not in DESTRUCTIVE]:
            if on_progress:
                on_progress(name)
            results.append(asdict(run_check(name, engine)))
        perf = None
        if performance:
            if on_progress:
                on_progress("performance")
            from llmkit_conformance.performance import measure

            perf = measure(engine)
        from llmkit_conformance.memory import memory_report

        memory = memory_report(engine, model)
        capabilities = json.loads(engine.capabilities().model_dump_json())
        weights = engine.weights()
        for name in [n for n in names if n in DESTRUCTIVE]:  # these close the engine
            if on_progress:
                on_progress(name)
            results.append(asdict(run_check(name, engine)))
        results.sort(key=lambda r: names.index(r["name"]))
    return {
        "report_version": REPORT_VERSION,
        "backend": backend,
        "model": model,
        "options": options or {},
        "environment": {**environment(backend), **({"note": note} if note else {})},
        "capabilities": capabilities,
        "weights": json.loads(weights.model_dump_json()) if weights is not None else None,
        "checks": results,
        "performance": perf,
        "memory": memory,
    }


def summary(report: dict[str, Any]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "unsupported": 0, "error": 0}
    for result in report["checks"]:
        counts[result["status"]] += 1
    return counts


def write(report: dict[str, Any], directory: Path) -> tuple[Path, Path, Path]:
    """JSON, Markdown and a self-contained HTML page, under one stem naming backend, model, device and options."""
    from llmkit_conformance.html import render
    from llmkit_conformance.report import markdown

    directory.mkdir(parents=True, exist_ok=True)
    env = report["environment"]
    device = "gpu" if env["device"] != "cpu" else "cpu"
    stem = f"{report['backend']}-{Path(report['model']).name}-{device}"
    shown = {k: v for k, v in report["options"].items() if k != "host"}  # a host is an address, not a setting
    if shown:
        stem += "-" + "-".join(f"{k}={v}" for k, v in sorted(shown.items()))
    stem = re.sub(r"[^A-Za-z0-9._=-]", "_", stem)  # model tags like "smollm2:135m" are not portable file names
    json_path = directory / f"{stem}.json"
    md_path = directory / f"{stem}.md"
    html_path = directory / f"{stem}.html"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    html_path.write_text(render([report]))
    return json_path, md_path, html_path
