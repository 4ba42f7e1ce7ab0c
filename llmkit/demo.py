"""`llmkit demo`: the walk-through on SmolLM2, shipped inside a package, with no network.

Sampling at two settings, streaming, guided classification with a choice list, and the stats of each
step, on the fastest embedded engine installed.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.table import Table

import llmkit
from llmkit.errors import BackendNotFoundError, BackendUnavailableError
from llmkit.tasks import FEW_SHOT, LABELS, REVIEWS

# Engines that run in-process on a laptop CPU, fastest first as measured in benchmarks/.
EMBEDDED_PREFERENCE = ("llamacpp", "transformers")

def pick_backend() -> str:
    installed = llmkit.backends()
    for name in EMBEDDED_PREFERENCE:
        if name in installed and installed[name].availability()[0]:
            return name
    raise BackendUnavailableError("demo", f"none of the embedded engines {EMBEDDED_PREFERENCE} is installed and importable")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def run_demo(console: Console, backend: str | None = None, model: str = llmkit.DEFAULT_MODEL) -> list[dict]:
    backend = backend or pick_backend()
    if backend not in llmkit.backends():
        raise BackendNotFoundError(backend, list(llmkit.backends()))
    console.rule(f"[bold]llmkit demo[/] — {model} on [cyan]{backend}[/]")
    start = time.perf_counter()
    with console.status("loading the model (the first run converts the GGUF once and caches it)..."):
        engine = llmkit.load(backend, model)
    console.print(f"loaded in {time.perf_counter() - start:.1f} s")
    rows: list[dict] = []

    def step(name: str, fn) -> None:
        engine.reset_stats()
        fn()
        stats = engine.stats()
        rows.append({"step": name, "stats": stats})

    question = [{"role": "user", "content": "Write one sentence about the sea."}]
    with engine:
        for label, params in [
            ("temperature 0.8, top_p 0.95", llmkit.SamplingParams(temperature=0.8, top_p=0.95, max_tokens=48, n=2, seed=1)),
            ("temperature 0.1, top_k 2", llmkit.SamplingParams(temperature=0.1, top_k=2, max_tokens=48, n=2, seed=1)),
        ]:
            console.print(f"\n[bold]sampling, {label}[/] (two samples)")

            def sample_twice(params=params) -> None:
                for completion in engine.generate(question, params):
                    console.print(f"  • {completion.text.strip()}  [dim]({completion.finish_reason})[/]")

            step(label, sample_twice)

        console.print("\n[bold]streaming[/] (each piece printed as it arrives)")

        def stream() -> None:
            console.print("  ", end="")
            messages = [{"role": "user", "content": "Name three colours."}]
            for chunk in engine.stream(messages, llmkit.greedy(max_tokens=48)):
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
            print()

        step("streaming, greedy", stream)

        console.print("\n[bold]guided classification[/]: output constrained to the choice list Positive / Negative")

        def classify() -> None:
            prompts = [FEW_SHOT.format(review=review) for review, _ in REVIEWS]
            results = engine.generate(prompts, llmkit.greedy(max_tokens=4, constraint=LABELS))
            right = 0
            for (review, gold), completion in zip(REVIEWS, results):
                answer = completion.text.strip()
                right += answer == gold
                mark = "[green]✓[/]" if answer == gold else "[red]✗[/]"
                console.print(f"  {mark} {answer:<8} ← {review}")
            console.print(f"  {right} of {len(REVIEWS)} right")

        step("guided choice, batch 5", classify)

        table = Table("step", "reqs", "tokens", "TTFT ms", "TPOT ms", "tok/s", title=f"stats per step ({backend}; means)")
        for row in rows:
            s = row["stats"]
            tps = f"{s.output_tokens_per_s:.1f}" if s.output_tokens_per_s else "-"
            table.add_row(row["step"], str(s.requests), str(s.completion_tokens), _ms(s.ttft.mean), _ms(s.tpot.mean), tps)
        console.print()
        console.print(table)
    return rows
