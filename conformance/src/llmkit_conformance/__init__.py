"""llmkit's conformance suite: check any registered backend against the interface, measure it, and
recommend one. Adds `llmkit conformance run | tune | quantize | compare | matrix | parity` to the command line; the same
checks run under pytest through `llmkit_conformance.pytest_plugin`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import llmkit

DEFAULT_REPORTS = Path("conformance/reports")


@llmkit.hookimpl
def register_commands(app):
    import typer
    from rich.console import Console
    from rich.progress import Progress

    group = typer.Typer(help="Check backends against the llmkit interface and compare them.", no_args_is_help=True)
    console = Console()

    @group.command("run")
    def run_command(
        backend: str = typer.Option(..., "--backend", "-b"),
        model: str = typer.Option(llmkit.DEFAULT_MODEL, "--model", "-m"),
        option: Optional[list[str]] = typer.Option(None, "--engine-option", "-o", help="KEY=VALUE, repeatable."),
        checks: Optional[str] = typer.Option(None, help="Comma-separated checks (default: all)."),
        performance: bool = typer.Option(True, help="Also run the performance workload."),
        out: Path = typer.Option(DEFAULT_REPORTS, help="Folder for the JSON and Markdown reports."),
    ) -> None:
        """Run every check (and the performance workload) on one backend."""
        from llmkit.config import parse_options as _parse_options
        from llmkit_conformance.checks import CHECKS
        from llmkit_conformance.runner import run, summary, write

        names = checks.split(",") if checks else list(CHECKS)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{backend}: loading", total=len(names) + int(performance))

            started = []

            def on_progress(name: str) -> None:  # called as each step starts
                progress.update(task, description=f"{backend}: {name}", advance=1 if started else 0)
                started.append(name)

            report = run(backend, model, _parse_options(option), checks=names, performance=performance, on_progress=on_progress)
        json_path, md_path, html_path = write(report, out)
        console.print(md_path.read_text())
        console.print(f"reports: {json_path}, {md_path}, {html_path}")
        counts = summary(report)
        raise typer.Exit(1 if counts["failed"] or counts["error"] else 0)

    @group.command("tune")
    def tune_command(
        backend: str = typer.Option(..., "--backend", "-b", help="Tuner backend (trl, axolotl, torchtune, ...)."),
        model: str = typer.Option(llmkit.DEFAULT_MODEL, "--model", "-m"),
        checks: Optional[str] = typer.Option(None, help="Comma-separated tuner checks (default: all)."),
        out: Path = typer.Option(DEFAULT_REPORTS / "tuners", help="Folder for the JSON and Markdown reports."),
    ) -> None:
        """Run the tuner checks (loss falls, the artifact serves, resume, bad data named, refusals) on one tuner."""
        from llmkit_conformance.tuning import TUNER_CHECKS, run, write

        names = checks.split(",") if checks else list(TUNER_CHECKS)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"{backend}", total=len(names))
            report = run(backend, model, checks=names,
                         on_progress=lambda name: progress.update(task, description=f"{backend}: {name}", advance=1))
        json_path, md_path = write(report, out)
        console.print(md_path.read_text())
        console.print(f"reports: {json_path}, {md_path}")
        raise typer.Exit(1 if any(c["status"] != "passed" for c in report["checks"]) else 0)

    @group.command("quantize")
    def quantize_command(
        row: list[str] = typer.Option(..., "--row", "-r", help="BACKEND:METHOD (none, an offline method such as q8_0 or "
                                      "w8a8-int8, or load:METHOD); repeatable. A backend's first row is its baseline."),
        model: str = typer.Option(llmkit.DEFAULT_MODEL, "--model", "-m"),
        option: Optional[list[str]] = typer.Option(None, "--engine-option", "-o", help="BACKEND:KEY=VALUE, repeatable."),
        artifact: Optional[list[str]] = typer.Option(None, "--artifact", help="ROW=PATH: measure this quantized file or "
                                                     "folder instead of making it (e.g. vllm:w8a8-int8=./smollm2-w8a8)."),
        calibration: Optional[Path] = typer.Option(None, help="Calibration data for the calibrated offline methods."),
        samples: Optional[int] = typer.Option(None, help="Calibration records."),
        max_seq_length: Optional[int] = typer.Option(None, help="Calibration tokens per record."),
        workdir: Optional[Path] = typer.Option(None, help="Where quantized files are written (default: a temporary folder)."),
        out: Path = typer.Option(DEFAULT_REPORTS / "quantization", help="Folder for the JSON, Markdown and HTML reports."),
    ) -> None:
        """Quantize one model several ways and measure each on its engine: size, memory, plan, perplexity, greedy
        agreement with the engine's unquantized baseline, speed — one table, one run."""
        import tempfile

        from llmkit.config import parse_options as _parse_options
        from llmkit_conformance.quantization import Row, run, write

        rows = [Row.parse(text) for text in row]
        options: dict[str, dict] = {}
        for text in option or []:
            backend, _, setting = text.partition(":")
            options.setdefault(backend, {}).update(_parse_options([setting]))
        artifacts = {label: Path(path) for label, _, path in (text.rpartition("=") for text in artifact or [])}
        given = {"calibration": calibration, "calibration_samples": samples, "max_seq_length": max_seq_length}
        with tempfile.TemporaryDirectory(prefix="llmkit-quantization-") as scratch:
            report = run(model, rows, workdir=workdir or Path(scratch), options=options, artifacts=artifacts,
                         quantize_options={k: v for k, v in given.items() if v is not None},
                         on_progress=lambda message: console.print(f"[dim]{message}[/]"))
        json_path, md_path, html_path = write(report, out)
        console.print(md_path.read_text())
        console.print(f"reports: {json_path}, {md_path}, {html_path}")
        raise typer.Exit(1 if any("error" in r for r in report["rows"]) else 0)  # a refused row is a result

    @group.command("compare")
    def compare_command(
        reports: list[Path] = typer.Argument(..., help="Report JSON files."),
        metric: str = typer.Option("tpot_ms", help="Tie-breaker after correctness: tpot_ms, ttft_ms or throughput."),
        html: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML page with plots here."),
    ) -> None:
        """Rank backends: correctness first, then the chosen metric."""
        from llmkit_conformance.report import METRICS, compare

        if metric not in METRICS:
            raise typer.BadParameter(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}", param_hint="--metric")
        loaded = [json.loads(p.read_text()) for p in reports]
        print(compare(loaded, metric))
        if html is not None:
            from llmkit_conformance.html import render

            html.parent.mkdir(parents=True, exist_ok=True)
            html.write_text(render(loaded, metric))
            print(f"wrote {html}")

    @group.command("matrix")
    def matrix_command(
        reports: Path = typer.Option(DEFAULT_REPORTS, help="Folder of report JSON files."),
        out: Path = typer.Option(Path("docs/capability-matrix.md")),
        tuning_doc: Path = typer.Option(Path("docs/tuning.md"), help="Its tuner table is regenerated from REPORTS/tuners."),
    ) -> None:
        """Regenerate the capability matrix and the tuner table in docs/ from committed reports."""
        from llmkit_conformance.report import load_reports, matrix, unverified_backends
        from llmkit_conformance.tuning import capability_table, load_tuner_reports, replace_table

        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(matrix(load_reports(reports), unverified_backends()))
        print(f"wrote {out}")
        tuning_doc.write_text(replace_table(tuning_doc.read_text(), capability_table(load_tuner_reports(reports / "tuners"))))
        print(f"wrote the tuner table in {tuning_doc}")

    @group.command("parity")
    def parity_command(
        backend: list[str] = typer.Option(..., "--backend", "-b", help="NAME or NAME:key=value,key=value; two or more."),
        model: str = typer.Option(llmkit.DEFAULT_MODEL, "--model", "-m"),
        max_tokens: int = typer.Option(32),
        out: Optional[Path] = typer.Option(None, help="Write JSON here (and Markdown beside it)."),
    ) -> None:
        """Greedy token agreement between backends on the same weights, with logit margins."""
        from llmkit.config import parse_options as _parse_options
        from llmkit_conformance.parity import markdown, run

        specs = []
        for item in backend:
            name, _, opts = item.partition(":")
            specs.append((name, _parse_options(opts.split(",") if opts else [])))
        result = run(specs, model, max_tokens)
        text = markdown(result)
        print(text)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
            out.with_suffix(".md").write_text(text)

    app.add_typer(group, name="conformance")
