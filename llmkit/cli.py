"""The ``llmkit`` command line: a thin shell over the public API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

import llmkit
from llmkit.errors import LLMKitError

app = typer.Typer(help="llmkit: one interface over self-hosted LLM engines.", no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

BACKEND = typer.Option("transformers", "--backend", "-b", help="Engine backend (see `llmkit backends`).")
MODEL = typer.Option(llmkit.DEFAULT_MODEL, "--model", "-m", help="Catalog name, local folder, GGUF file or hub id.")
CONFIG = typer.Option(None, "--config", "-c", help="Engine config file (YAML/TOML/JSON); replaces --backend/--model.")
OPTION = typer.Option(None, "--option", "-o", help="Engine option KEY=VALUE (JSON values allowed); repeatable.")
TEMPERATURE = typer.Option(None, "--temperature", "-t")
TOP_P = typer.Option(None, "--top-p")
TOP_K = typer.Option(None, "--top-k")
MAX_TOKENS = typer.Option(None, "--max-tokens", "-n")
SEED = typer.Option(None, "--seed")
STOP = typer.Option(None, "--stop", help="Stop string; repeatable.")
CHOICE = typer.Option(None, "--choice", help="Constrain output to one of these; repeatable.")
REGEX = typer.Option(None, "--regex", help="Constrain output to a regular expression.")
JSON_SCHEMA = typer.Option(None, "--json-schema", help="Constrain output to a JSON schema (file path).")
GRAMMAR = typer.Option(None, "--grammar", help="Constrain output to a GBNF grammar (file path).")
AS_JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def _parse_options(pairs: list[str] | None) -> dict[str, Any]:
    from llmkit.config import parse_options

    try:
        return parse_options(pairs)
    except LLMKitError as exc:
        raise typer.BadParameter(str(exc), param_hint="--option") from None


def _engine(backend: str, model: str, config: Optional[Path], options: list[str] | None) -> llmkit.Engine:
    extra = _parse_options(options)
    if config is not None:
        return llmkit.load_config(config, **extra)
    return llmkit.load(backend, model, **extra)


def _params(engine: llmkit.Engine, **flags: Any) -> llmkit.SamplingParams:
    base = engine.default_params.model_dump(by_alias=True, exclude_unset=True) if engine.default_params else {}
    constraint = None
    if flags["_choice"]:
        constraint = llmkit.Choice(choices=flags["_choice"])
    elif flags["regex"]:
        constraint = llmkit.Regex(pattern=flags["regex"])
    elif flags["json_schema"]:
        constraint = llmkit.JsonSchema(schema=Path(flags["json_schema"]).read_text())
    elif flags["grammar"]:
        constraint = llmkit.Grammar(grammar=Path(flags["grammar"]).read_text())
    given = sum(bool(flags[k]) for k in ("_choice", "regex", "json_schema", "grammar"))
    if given > 1:
        raise typer.BadParameter("give one constraint: --choice, --regex, --json-schema or --grammar")
    for key in ("temperature", "top_p", "top_k", "max_tokens", "seed"):
        if flags[key] is not None:
            base[key] = flags[key]
    if flags["stop"]:
        base["stop"] = flags["stop"]
    if constraint is not None:
        base["constraint"] = constraint
    return llmkit.SamplingParams(**base)


def _run(fn) -> None:
    try:
        fn()
    except LLMKitError as exc:
        from rich.markup import escape

        # soft_wrap: a message holds paths a user copies; escape: "messages[0]" is text, not markup
        err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None


def _sampling_flags(temperature, top_p, top_k, max_tokens, seed, stop, choice, regex, json_schema, grammar) -> dict:
    return dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed, stop=stop,
                _choice=choice, regex=regex, json_schema=json_schema, grammar=grammar)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The prompt (raw completion, no chat template)."),
    backend: str = BACKEND, model: str = MODEL, config: Optional[Path] = CONFIG, option: Optional[list[str]] = OPTION,
    temperature: Optional[float] = TEMPERATURE, top_p: Optional[float] = TOP_P, top_k: Optional[int] = TOP_K,
    max_tokens: Optional[int] = MAX_TOKENS, seed: Optional[int] = SEED, stop: Optional[list[str]] = STOP,
    choice: Optional[list[str]] = CHOICE, regex: Optional[str] = REGEX, json_schema: Optional[Path] = JSON_SCHEMA,
    grammar: Optional[Path] = GRAMMAR, as_json: bool = AS_JSON,
) -> None:
    """Complete a raw prompt."""

    def go() -> None:
        with _engine(backend, model, config, option) as engine:
            params = _params(engine, **_sampling_flags(temperature, top_p, top_k, max_tokens, seed, stop, choice, regex, json_schema, grammar))
            completion = engine.generate(prompt, params)[0]
            if as_json:
                print(completion.model_dump_json(indent=2))
            else:
                print(completion.text)

    _run(go)


@app.command()
def chat(
    message: Optional[str] = typer.Argument(None, help="One user message; omit for an interactive chat."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    backend: str = BACKEND, model: str = MODEL, config: Optional[Path] = CONFIG, option: Optional[list[str]] = OPTION,
    temperature: Optional[float] = TEMPERATURE, top_p: Optional[float] = TOP_P, top_k: Optional[int] = TOP_K,
    max_tokens: Optional[int] = MAX_TOKENS, seed: Optional[int] = SEED, stop: Optional[list[str]] = STOP,
    choice: Optional[list[str]] = CHOICE, regex: Optional[str] = REGEX, json_schema: Optional[Path] = JSON_SCHEMA,
    grammar: Optional[Path] = GRAMMAR,
) -> None:
    """Chat with a model (its chat template is applied); answers stream as they are generated."""

    def go() -> None:
        with _engine(backend, model, config, option) as engine:
            params = _params(engine, **_sampling_flags(temperature, top_p, top_k, max_tokens, seed, stop, choice, regex, json_schema, grammar))
            history: list[dict] = [{"role": "system", "content": system}] if system else []
            pending = [message] if message is not None else None
            while True:
                if pending is not None:
                    if not pending:
                        return
                    text = pending.pop()
                else:
                    try:
                        text = console.input("[bold cyan]you>[/] ")
                    except (EOFError, KeyboardInterrupt):
                        return
                    if text.strip() in ("", "/exit", "/quit"):
                        return
                history.append({"role": "user", "content": text})
                answer = []
                for chunk in engine.stream(history, params):
                    answer.append(chunk.text)
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
                print()
                history.append({"role": "assistant", "content": "".join(answer)})

    _run(go)


@app.command()
def stream(
    prompt: str = typer.Argument(..., help="The prompt (raw completion)."),
    backend: str = BACKEND, model: str = MODEL, config: Optional[Path] = CONFIG, option: Optional[list[str]] = OPTION,
    temperature: Optional[float] = TEMPERATURE, top_p: Optional[float] = TOP_P, top_k: Optional[int] = TOP_K,
    max_tokens: Optional[int] = MAX_TOKENS, seed: Optional[int] = SEED, stop: Optional[list[str]] = STOP,
    as_json: bool = typer.Option(False, "--json", help="Print each chunk as a JSON line."),
) -> None:
    """Stream a completion token by token."""

    def go() -> None:
        with _engine(backend, model, config, option) as engine:
            params = _params(engine, **_sampling_flags(temperature, top_p, top_k, max_tokens, seed, stop, None, None, None, None))
            for chunk in engine.stream(prompt, params):
                if as_json:
                    print(chunk.model_dump_json())
                else:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
            if not as_json:
                print()
            stats = engine.stats()
            err_console.print(f"[dim]TTFT {_ms(stats.ttft.mean)}, TPOT {_ms(stats.tpot.mean)}, {stats.completion_tokens} tokens[/]")

    _run(go)


@app.command()
def quantize(
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="The engine that will load it (llamacpp, ollama, vllm, sglang) "
                                "or a quantizer by name (gguf, llmcompressor)."),
    model: str = MODEL,
    method: Optional[str] = typer.Option(None, "--method", help="q8_0, q4_k_m, ... (gguf); fp8-dynamic, w8a8-int8, w4a16 "
                                         "(llmcompressor). --list shows them all."),
    out: Optional[Path] = typer.Option(None, "--out", help="The GGUF file or checkpoint folder to write (must not exist)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="Calibration data for w8a8-int8 / w4a16: "
                                               "Alpaca, chat or preference records (e.g. ch. 7's instruction-data.json)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Calibration records (default 64), from the training split."),
    max_seq_length: Optional[int] = typer.Option(None, "--max-seq-length", help="Calibration tokens per record (default 512)."),
    group_size: Optional[int] = typer.Option(None, "--group-size", help="Weights per scale for w4a16 (default 128)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="What stays unquantized (llmcompressor; default bfloat16)."),
    list_methods: bool = typer.Option(False, "--list", help="List the quantizers, their methods and the engines that load them."),
) -> None:
    """Quantize a model offline into a file or folder an engine loads (GGUF for llama.cpp and Ollama,
    compressed-tensors for vLLM and SGLang). Load-time quantization is an engine option instead."""
    from rich.markup import escape

    from llmkit.quantizer import describe

    def go() -> None:
        if list_methods:
            table = Table("quantizer", "format", "engines", "method", "calibrated", "what")
            for row in describe():
                table.add_row(row["quantizer"], row["format"], ", ".join(row["engines"]), row["method"],
                              "yes" if row["calibrated"] else "", row["what"])
            console.print(table)
            return
        missing = [name for name, value in (("backend", backend), ("method", method), ("out", out)) if value is None]
        if missing:
            raise llmkit.InvalidRequestError(f"give --{missing[0]} (or --list)", parameter=missing[0])
        given = {"calibration": calibration, "calibration_samples": samples, "max_seq_length": max_seq_length,
                 "group_size": group_size, "dtype": dtype}
        path = llmkit.quantize(backend, model, method, out, **{k: v for k, v in given.items() if v is not None},
                               on_progress=lambda p: err_console.print(f"[dim]{p.elapsed_s:6.0f} s[/] {p.stage}: {escape(p.message)}"))
        print(path)

    _run(go)


@app.command()
def tune(
    job_file: Path = typer.Argument(..., help="The TuneJob as YAML, TOML or JSON (see docs/tuning.md)."),
    backend: str = typer.Option("trl", "--backend", "-b", help="Tuner backend: trl, unsloth, axolotl, torchtune."),
    option: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a job field KEY=VALUE (JSON values); repeatable."),
    as_json: bool = AS_JSON,
) -> None:
    """Fine-tune a model: a progress bar while it trains, then where the artifact is and what it measured.
    Run the same job again after an interruption and it resumes from its last checkpoint."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llmkit.config import read_mapping
    from llmkit.tuner import TuneJob

    def go() -> None:
        job = TuneJob(**{**read_mapping(job_file), **_parse_options(option)})
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        with Progress(*columns, console=err_console, disable=as_json) as bar:
            task = bar.add_task(f"{backend} {job.method}", total=None, status="loading")

            def show(event: llmkit.TuneProgress) -> None:
                status = " ".join(f"{name} {value:.4g}" for name, value in
                                  (("loss", event.loss), ("eval", event.eval_loss), ("tok/s", event.tokens_per_second)) if value is not None)
                bar.update(task, completed=event.step, total=event.total_steps, status=status or event.message)

            result = llmkit.tune(backend, job, on_progress=show)
        if as_json:
            print(result.model_dump_json(indent=2, exclude={"history"}))
            return
        console.print(f"[bold]{result.artifact}[/]: {result.path}")
        rows = [("steps", result.steps), ("resumed from step", result.resumed_from_step), ("train loss", result.train_loss),
                ("held-out loss before", result.eval_loss_before), ("held-out loss after", result.eval_loss_after),
                ("seconds", round(result.seconds, 1)), ("tokens/s", result.tokens_per_second),
                ("peak memory", f"{result.peak_memory_bytes / 2**30:.2f} GiB ({result.peak_memory_kind})" if result.peak_memory_bytes else None)]
        for name, value in rows:
            if value is not None:
                console.print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")

    _run(go)


@app.command()
def plan(
    model: str = MODEL,
    weights: str = typer.Option("bf16,fp8,q4_k_m", help="Weight formats, comma-separated: element types (bf16, fp8, int8...), "
                                "GGUF types (q8_0, q4_k_m...) or Linear-only quantization methods (fp8-dynamic, w8a8-int8, "
                                "w4a16, fp8-load: vLLM's load-time fp8), whose embeddings and norms stay bf16."),
    batch: str = typer.Option("1,8,32", help="Concurrent sequences."),
    context: str = typer.Option("2048,8192", help="Tokens per sequence."),
    kv_dtype: str = typer.Option("bf16", help="KV-cache element type."),
) -> None:
    """Weights + KV-cache memory for a model across formats, batch sizes and context lengths."""
    from llmkit.planner import load_shape, plan as make_plan

    def go() -> None:
        shape = load_shape(model)
        table = Table("weights", "batch", "context", "weights GiB", "KV GiB", "total GiB",
                      title=f"{model}: {shape.parameters / 1e6:.1f}M parameters, KV {shape.kv_bytes_per_token(kv_dtype) / 1024:.1f} KiB/token "
                            f"({shape.layers} layers × {shape.kv_heads} KV heads × {shape.head_dim})",
                      caption=f"parameters: {shape.parameters_source}")
        if shape.parameters_estimated:
            err_console.print(f"[yellow]warning:[/] the parameter count is an estimate: {shape.parameters_source}")
        ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
        for row in make_plan(shape, weights.split(","), ints(batch), ints(context), kv_dtype):
            table.add_row(row["weights"], str(row["batch"]), str(row["context"]), f"{row['weight_gib']:.2f}",
                          f"{row['kv_gib']:.2f}", f"{row['total_gib']:.2f}")
        console.print(table)

    _run(go)


@app.command()
def backends(check: bool = typer.Option(True, help="Import each backend's libraries to see whether they work here.")) -> None:
    """List installed engine, tuner and quantizer backends and whether they can run here, and plugins that failed to load."""
    from rich.markup import escape

    from llmkit.plugins import engines, plugin_failures, quantizers, tuners

    table = Table("backend", "kind", "plugin", "available", "reason / description")
    for spec in [*engines().values(), *tuners().values(), *quantizers().values()]:
        ok, reason = spec.availability() if check else (None, "not checked")
        mark = "[green]yes[/]" if ok else ("[red]no[/]" if ok is False else "?")
        table.add_row(spec.name, spec.kind, spec.plugin, mark, escape(spec.description if ok else reason))
    console.print(table)
    failures = plugin_failures()
    if failures:
        broken = Table("plugin", "distribution", "failed at", "error",
                       title="[red]plugins that failed to load[/] (their backends are missing)")
        for failure in failures:
            broken.add_row(escape(failure.name), escape(failure.distribution or "?"), failure.stage, escape(failure.error))
        console.print(broken)


@app.command()
def plugins() -> None:
    """List loaded plugins: name, distribution, version, hooks."""
    from llmkit.plugins import plugin_info

    print(json.dumps(plugin_info(), indent=2))


@app.command()
def demo(
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="Default: the fastest embedded engine installed."),
    model: str = MODEL,
) -> None:
    """Walk through sampling, streaming, guided decoding and stats on SmolLM2, with no network."""
    from llmkit.demo import run_demo

    _run(lambda: run_demo(console, backend=backend, model=model))


@app.command()
def serve(
    backend: str = BACKEND, model: str = MODEL, config: Optional[Path] = CONFIG, option: Optional[list[str]] = OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback needs --api-key."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port (0: a free one, printed at start)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LLMKIT_API_KEY",
                                          help="Required on every route but /health (Authorization: Bearer KEY)."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="The `model` clients send; default: --model."),
    max_concurrent: int = typer.Option(64, "--max-concurrent", help="Generation requests at once (429 above)."),
    max_tokens: int = typer.Option(4096, "--max-tokens", help="Largest max_tokens / num_predict per request (400 above)."),
    max_n: int = typer.Option(16, "--max-n", help="Most sequences per request, prompts × n (400 above)."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", help="Longest prompt (default: the context)."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help="Largest request body (413 above)."),
    request_timeout: Optional[float] = typer.Option(600.0, "--request-timeout", help="Seconds per request (504 past it); 0: no limit."),
    shutdown_timeout: float = typer.Option(30.0, "--shutdown-timeout", help="On SIGINT/SIGTERM, seconds to finish requests in flight."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn's log level."),
) -> None:
    """Serve a model over OpenAI's (/v1/...) and Ollama's (/api/...) HTTP APIs, with a chat page at /."""
    import importlib.util

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        err_console.print(f"[bold red]error:[/] llmkit serve needs {' and '.join(missing)}: pip install 'llmkit\\[server]'")
        raise typer.Exit(2)
    from llmkit.server.settings import ServerSettings

    def go() -> None:
        settings = ServerSettings(host=host, port=port, api_key=api_key, served_model_name=served_model_name,
                                  max_concurrent=max_concurrent, max_tokens=max_tokens, max_n=max_n,
                                  max_prompt_tokens=max_prompt_tokens, max_body_bytes=max_body_bytes,
                                  request_timeout=request_timeout or None, shutdown_timeout=shutdown_timeout)
        from llmkit.server.run import bind, serve as run_server

        try:
            sock = bind(settings.host, settings.port)
        except OSError as exc:
            err_console.print(f"[bold red]error:[/] cannot listen on {settings.host}:{settings.port}: {exc}")
            raise typer.Exit(2) from None
        engine = _engine(backend, model, config, option)

        def ready(url: str) -> None:
            print(f"llmkit serve: {engine.backend} {engine.model!r} as {settings.served_model_name or engine.model!r} on {url} "
                  f"(OpenAI: {url}/v1, Ollama: {url}, chat: {url}/)", flush=True)

        run_server(engine, settings, sock=sock, log_level=log_level, on_ready=ready)
        err_console.print("[dim]llmkit serve: stopped; engine closed[/]")

    _run(go)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def main() -> None:
    from llmkit.plugins import get_plugin_manager

    get_plugin_manager().hook.register_commands(app=app)
    app()


if __name__ == "__main__":
    main()
