"""Conformance checks for tuner backends, through the public API only (`llmkit.tune`, `llmkit.load`).

A small task the base model cannot know — a made-up code word for each of eight colours, four phrasings
each — is learnt with a LoRA adapter (r=8, 24 steps); the transformers engine then serves the artifact.

    loss_falls         the training loss of the last step is under half the first; progress events come
                       for every step, in order, with the total
    artifact_serves    the artifact loads on the transformers engine and answers ≥ 6 of 8 code words
                       exactly (greedy); the base model answers none
    resume             a run interrupted after its step-3 checkpoint, started again, resumes there and ends
                       at the requested step; the checkpoint falls mid-epoch, or — for a backend declaring
                       `checkpoint_at = "epoch_end"` — at an epoch's end, after a mid-epoch checkpoint was
                       refused naming checkpoint_steps
    bad_data_named     a record with a bad field is refused naming its position and the field, and
                       nothing is written
    undeclared_refused each method the backend does not declare is refused (UnsupportedFeatureError naming
                       the backend and the method) before anything is written

A check is `unsupported` only when the backend refused, naming itself and the feature, what it does not
declare (`CheckUnsupported`); an UnsupportedFeatureError escaping a check otherwise fails it.

Negative controls (conformance/tests/test_tuning_checks.py), each a real bug: the learning rate dropped
from the configuration (TRL's default 2e-5 then applies), the artifact written from an early checkpoint,
resume ignored (the run starts over), a tuner that trains without validating its data.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import llmkit
from llmkit.tasks import alpaca_prompt
from llmkit.tuner import METHOD_FORMATS, Tuner, get_tuner
from llmkit_conformance.checks import CheckFailed, CheckResult, CheckUnsupported, require

CODE_WORDS = {"red": "falcon", "blue": "pebble", "green": "lantern", "yellow": "harbor",
              "purple": "meadow", "orange": "cobalt", "black": "thistle", "white": "saffron"}
PHRASINGS = ["What is the code word for {}?", "Give the code word for {}.", "Code word for {}?", "Tell me the code word for {}."]
STEPS = 24
GREEDY = llmkit.SamplingParams(temperature=0, max_tokens=6)


def code_word_records() -> list[dict[str, str]]:
    return [{"instruction": p.format(colour), "input": "", "output": word} for p in PHRASINGS for colour, word in CODE_WORDS.items()]


def code_word_prompts() -> list[str]:
    return [alpaca_prompt({"instruction": PHRASINGS[0].format(colour), "input": ""}) for colour in CODE_WORDS]


def exact_answers(texts: list[str]) -> int:
    return sum(text.strip() == word for text, word in zip(texts, CODE_WORDS.values()))


class TunerUnderTest:
    """A backend, the base model, and a scratch folder; the learning run is shared by two checks."""

    def __init__(self, backend: str, model: str, workdir: Path, tuner: Tuner | None = None, **tuner_options: Any) -> None:
        self.backend, self.model, self.workdir = backend, model, workdir
        self.tuner = tuner or get_tuner(backend, **tuner_options)
        self._learnt: tuple[llmkit.TuneResult, list[llmkit.TuneProgress]] | None = None
        self.data = self.records_file("code-words.json", code_word_records())

    def records_file(self, name: str, records: list[dict[str, Any]]) -> Path:
        path = self.workdir / name
        path.write_text(json.dumps(records))
        return path

    def job(self, name: str, **fields: Any) -> dict[str, Any]:
        return {"model": self.model, "data": str(self.data), "output_dir": str(self.workdir / name), "method": "lora",
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "max_steps": STEPS, "batch_size": 8, "learning_rate": 3e-3,
                "max_seq_length": 128, "split": {"train": 1.0, "test": 0.0}, "checkpoint_steps": 100, "seed": 0, **fields}

    def learnt(self) -> tuple[llmkit.TuneResult, list[llmkit.TuneProgress]]:
        """The LoRA run on the code words; `unsupported` for a backend that declares no LoRA adapter and
        refuses the job naming the method or the artifact."""
        if "lora" not in self.tuner.methods or "adapter" not in self.tuner.artifacts:
            try:
                self.tuner.finetune(self.job("learn"))
            except llmkit.UnsupportedFeatureError as exc:
                require(exc.backend == self.backend and exc.feature in ("method=lora", "artifact=adapter"),
                        f"the LoRA job was refused naming {exc.backend!r} / {exc.feature!r}")
                raise CheckUnsupported(str(exc)) from None
            raise CheckFailed("the backend declares no LoRA adapter, yet ran the LoRA job")
        if self._learnt is None:
            events: list[llmkit.TuneProgress] = []
            result = self.tuner.finetune(self.job("learn"), events.append)
            self._learnt = (result, events)
        return self._learnt


TUNER_CHECKS: dict[str, Callable[[TunerUnderTest], dict | None]] = {}


def tuner_check(fn: Callable[[TunerUnderTest], dict | None]) -> Callable[[TunerUnderTest], dict | None]:
    TUNER_CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


@tuner_check
def check_loss_falls(t: TunerUnderTest) -> dict:
    result, events = t.learnt()
    steps = [e for e in events if e.loss is not None]
    require(len(steps) >= STEPS // 2, f"{len(steps)} progress events with a loss for {STEPS} steps", events=len(steps))
    numbers = [e.step for e in steps]
    require(numbers == sorted(numbers) and numbers[-1] == STEPS, f"steps reported out of order or short of {STEPS}: {numbers}")
    require(all(e.total_steps == STEPS for e in steps), "progress events without the total number of steps")
    first, last = steps[0].loss, steps[-1].loss
    require(last < first / 2, f"training loss {first:.3f} → {last:.3f}: not under half", first=first, last=last)
    require(result.steps == STEPS, f"result says {result.steps} steps, asked for {STEPS}")
    return {"first_loss": first, "last_loss": last, "seconds": result.seconds, "tokens_per_second": result.tokens_per_second}


@tuner_check
def check_artifact_serves(t: TunerUnderTest) -> dict:
    result, _ = t.learnt()
    require(result.artifact == "adapter" and (Path(result.path) / "adapter_config.json").exists(),
            f"no PEFT adapter at {result.path}")
    with llmkit.load("transformers", t.model) as base:
        before = exact_answers([c.text for c in base.generate(code_word_prompts(), GREEDY)])
    with llmkit.load("transformers", str(result.path)) as tuned:
        answers = [c.text for c in tuned.generate(code_word_prompts(), GREEDY)]
    after = exact_answers(answers)
    require(before == 0, f"the base model already answers {before} of 8: the task does not test the artifact")
    require(after >= 6, f"the served artifact answers {after} of 8 code words", answers=answers)
    return {"base_exact": before, "tuned_exact": after, "answers": answers}


class _Interrupt(Exception):
    """Raised from the progress callback: the run stops as if killed after a checkpoint."""


def _stop(event: llmkit.TuneProgress) -> None:
    raise _Interrupt()


def _refuses_mid_epoch_checkpoints(t: TunerUnderTest) -> str:
    """A backend that checkpoints only at epoch ends must refuse a checkpoint inside one (4 steps per epoch,
    checkpoint_steps=3) before writing anything, naming checkpoint_steps. (A run that starts is stopped at its
    first progress event: the check has failed by then.)"""
    job = t.job("mid-epoch-checkpoint", max_steps=8, checkpoint_steps=3)
    try:
        t.tuner.finetune(job, _stop)
    except (llmkit.TuneError, _Interrupt):
        pass
    except llmkit.UnsupportedFeatureError as exc:
        require(exc.backend == t.backend and exc.feature == "checkpoint_steps",
                f"a mid-epoch checkpoint was refused naming {exc.backend!r} / {exc.feature!r}, not checkpoint_steps")
        require(not Path(job["output_dir"]).exists(), f"{job['output_dir']} was written before the refusal")
        return str(exc)
    raise CheckFailed("the backend declares checkpoints at epoch ends only, yet accepted checkpoint_steps=3 in an epoch of 4 steps")


@tuner_check
def check_resume(t: TunerUnderTest) -> dict:
    refusal = None
    if t.tuner.checkpoint_at == "epoch_end":
        refusal = _refuses_mid_epoch_checkpoints(t)
        # 24 records in batches of 8: the step-3 checkpoint ends epoch 1 of 2.
        job = t.job("resume", max_steps=6, checkpoint_steps=3, data=str(t.records_file("code-words-24.json", code_word_records()[:24])))
    else:
        job = t.job("resume", max_steps=6, checkpoint_steps=3)  # 32 records: step 3 of an epoch of 4

    def stop_after_checkpoint(event: llmkit.TuneProgress) -> None:
        if event.step >= 4:
            raise _Interrupt()

    try:
        t.tuner.finetune(job, stop_after_checkpoint)
        raise CheckFailed("the progress callback's exception did not stop the run")
    except llmkit.TuneError as exc:
        require(isinstance(exc.__cause__, _Interrupt), f"the interrupted run failed otherwise: {exc}")
    except _Interrupt:
        pass
    require(not (Path(job["output_dir"]) / "result.json").exists(), "an interrupted run wrote result.json")
    events: list[llmkit.TuneProgress] = []
    result = t.tuner.finetune(job, events.append)
    first_step = min((e.step for e in events if e.loss is not None), default=None)
    require(result.resumed_from_step == 3, f"resumed from step {result.resumed_from_step}, the checkpoint was at 3")
    require(first_step == 4, f"the resumed run's first step was {first_step}, not 4")
    require(result.steps == 6, f"the resumed run ended at step {result.steps}, not 6")
    checkpoint = "at the end of epoch 1 of 2" if refusal else "mid-epoch (step 3 of 4)"
    return {"resumed_from_step": result.resumed_from_step, "steps": result.steps, "checkpoint": checkpoint,
            **({"mid_epoch_refused": refusal} if refusal else {})}


@tuner_check
def check_bad_data_named(t: TunerUnderTest) -> dict:
    records = code_word_records()
    records[5]["output"] = 5  # a number where text belongs
    bad = t.workdir / "bad.json"
    bad.write_text(json.dumps(records))
    out = t.workdir / "bad-run"
    try:
        t.tuner.finetune({**t.job("bad-run"), "data": str(bad)})
        raise CheckFailed("a record with a number for its output was accepted")
    except CheckFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure is the finding
        require(isinstance(exc, llmkit.InvalidRequestError), f"refused with {type(exc).__name__} instead of a data error: {exc}")
        require("record 5" in str(exc) and "output" in str(exc), f"the error does not name record 5 and its field: {exc}")
        message = str(exc)
    require(not out.exists(), f"{out} was written for a job refused for its data")
    return {"error": message}


@tuner_check
def check_undeclared_refused(t: TunerUnderTest) -> dict:
    undeclared = sorted(set(METHOD_FORMATS) - set(t.tuner.methods))
    for method in undeclared:
        out = t.workdir / f"undeclared-{method}"
        data = t.data
        if method == "dpo":
            data = t.workdir / "pref.json"
            data.write_text(json.dumps([{"prompt": "p", "chosen": "a", "rejected": "b"}] * 8))
        fields = {"grpo": {"rewards": ["exact_match"], "num_generations": 2}} if method == "grpo" else {}
        # sft trains every weight (no adapter); dpo and grpo take one here
        lora = {"lora": None} if method == "sft" else {} if method in ("lora", "qlora") else {"lora": {"r": 8}}
        try:
            t.tuner.finetune({**t.job(out.name), **lora, "method": method, "data": str(data), **fields})
            raise CheckFailed(f"method {method} is not declared, yet the job ran")
        except llmkit.UnsupportedFeatureError as exc:
            require(exc.backend == t.backend and exc.feature == f"method={method}",
                    f"the refusal of {method} names {exc.backend!r} / {exc.feature!r}")
        require(not out.exists(), f"{out} was written before the refusal")
    return {"declared": sorted(t.tuner.methods), "refused": undeclared}


def run_tuner_check(name: str, t: TunerUnderTest) -> CheckResult:
    start = time.perf_counter()
    try:
        result = CheckResult(name, "passed", data=TUNER_CHECKS[name](t) or {})
    except CheckUnsupported as exc:
        result = CheckResult(name, "unsupported", str(exc))
    except llmkit.UnsupportedFeatureError as exc:
        result = CheckResult(name, "failed", f"refused although the backend declares what this check uses: {exc}",
                             data={"feature": exc.feature})
    except CheckFailed as exc:
        result = CheckResult(name, "failed", str(exc), data=exc.data)
    except Exception as exc:  # noqa: BLE001 - a crashing check is reported, not raised
        result = CheckResult(name, "error", f"{type(exc).__name__}: {exc}", data={"traceback": traceback.format_exc(limit=4)})
    result.seconds = time.perf_counter() - start
    return result


def run(backend: str, model: str = "smollm2-135m-instruct", *, checks: list[str] | None = None, tuner: Tuner | None = None,
        on_progress: Callable[[str], None] | None = None, **tuner_options: Any) -> dict[str, Any]:
    """Run the tuner checks; the report has the engine reports' shape (`kind: tuner`)."""
    from llmkit_conformance.runner import environment

    names = checks or list(TUNER_CHECKS)
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="llmkit-tuner-checks-") as folder:
        t = TunerUnderTest(backend, model, Path(folder), tuner=tuner, **tuner_options)
        results = []
        for name in names:
            if on_progress:
                on_progress(name)
            results.append(asdict(run_tuner_check(name, t)))
        # The versions the tuner trained with (axolotl and torchtune run in environments of their own).
        versions = t._learnt[0].versions if t._learnt else {}
    env = {**environment(backend), "cpu": cpu_name(), "versions": versions,
           "load_average": {"start": load_at_start, "end": os.getloadavg()[0]}}
    env["library"] = tuner_library(backend)
    env["library_version"] = versions.get(env["library"])
    return {"report_version": 1, "kind": "tuner", "backend": backend, "model": model, "options": tuner_options,
            "declared": {"methods": sorted(t.tuner.methods), "artifacts": sorted(t.tuner.artifacts),
                         "checkpoint_at": t.tuner.checkpoint_at},
            "environment": env, "checks": results}


def tuner_library(backend: str) -> str:
    """The library a tuner backend drives: the first distribution its plugin names."""
    from llmkit.plugins import tuners

    spec = tuners().get(backend)
    return spec.distributions[0] if spec is not None and spec.distributions else backend


def cpu_name() -> str | None:
    """The processor's model name (Linux), for the report's "where it ran"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def markdown(report: dict[str, Any]) -> str:
    env, declared = report["environment"], report["declared"]
    counts = {status: sum(c["status"] == status for c in report["checks"]) for status in ("passed", "failed", "unsupported", "error")}
    versions = ", ".join(f"{name} {v}" for name, v in env.get("versions", {}).items()) or "not recorded"
    lines = [f"# Tuner conformance: {report['backend']} on {report['model']}", "",
             f"Ran on: {env['device']} ({env.get('cpu') or 'unknown CPU'}) · {env['machine']} · Python {env['python']} · "
             f"llmkit {env['llmkit']} · {env['date']}.", "",
             f"Trained with: {versions}.", "",
             *([f"Load average (1 min) at start / end: {env['load_average']['start']:.1f} / {env['load_average']['end']:.1f} "
                f"on {env['machine'].split(', ')[-1]}: the seconds below are not speed figures when it exceeds the cores.", ""]
               if env.get("load_average") else []),
             f"Declared: methods {', '.join(declared['methods'])}; artifacts {', '.join(declared['artifacts'])}; "
             f"checkpoints at {declared['checkpoint_at'].replace('_', ' ')}.", "",
             f"**{counts['passed']} passed, {counts['failed']} failed, {counts['unsupported']} unsupported, {counts['error']} errors** "
             f"in {sum(c['seconds'] for c in report['checks']):.0f} s.", "",
             "| check | status | seconds | detail |", "| --- | --- | --- | --- |"]
    for c in report["checks"]:
        shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in c["data"].items()
                 if k not in ("answers", "traceback", "error", "mid_epoch_refused")}
        detail = c["detail"] or ", ".join(f"{k}={v}" for k, v in shown.items())
        lines.append(f"| {c['name']} | {c['status']} | {c['seconds']:.1f} | {detail.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    device = "gpu" if report["environment"]["device"] != "cpu" else "cpu"
    stem = f"tuner-{report['backend']}-{Path(report['model']).name}-{device}"
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


TABLE_START = "<!-- tuner-capabilities: generated by `llmkit conformance matrix` from conformance/reports/tuners/; do not edit by hand -->"
TABLE_END = "<!-- /tuner-capabilities -->"
SYMBOL = {"passed": "✓", "failed": "✗", "unsupported": "—", "error": "!"}


def load_tuner_reports(folder: Path | str) -> list[dict[str, Any]]:
    return [r for r in (json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))) if r.get("kind") == "tuner"]


def capability_table(reports: list[dict[str, Any]]) -> str:
    """The tuner capability table of docs/tuning.md: what each backend declares and what its checks found,
    from committed reports only, between the markers that `replace_table` looks for."""
    reports = sorted(reports, key=lambda r: (r["backend"], r["environment"]["device"]))
    names = list(dict.fromkeys([*TUNER_CHECKS, *(c["name"] for r in reports for c in r["checks"])]))
    lines = [TABLE_START, "",
             "✓ passed · ✗ failed · — unsupported (undeclared, and refused with UnsupportedFeatureError) · ! the check "
             "crashed · blank: not run. Methods and artifacts are what the backend declares; a declared one may still be "
             "refused on a machine that cannot run it (qlora without CUDA).", "",
             "| backend | methods | artifacts | checkpoints | " + " | ".join(names) + " |",
             "|" + " --- |" * (len(names) + 4)]
    for r in reports:
        d = r["declared"]
        status = {c["name"]: c["status"] for c in r["checks"]}
        lines.append(f"| {r['backend']} ({'CPU' if r['environment']['device'] == 'cpu' else 'GPU'}) | {', '.join(d['methods'])} | "
                     f"{', '.join(d['artifacts'])} | {'every N steps' if d['checkpoint_at'] == 'steps' else 'epoch ends'} | "
                     + " | ".join(SYMBOL.get(status.get(n, ""), "") for n in names) + " |")
    lines += ["", "Where each row was verified:", ""]
    for r in reports:
        env = r["environment"]
        versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if k != "python")
        seconds = sum(c["seconds"] for c in r["checks"])
        load = env.get("load_average")
        lines.append(f"- **{r['backend']}** on `{r['model']}`: {env['device']} ({env.get('cpu') or 'unknown CPU'}), {env['machine']}, "
                     f"Python {env['python']}; {versions or 'versions not recorded'}; {env['date']}; checks took {seconds:.0f} s"
                     + (f" at load {load['start']:.1f}–{load['end']:.1f}." if load else "."))
    return "\n".join(lines + ["", TABLE_END])


def replace_table(document: str, table: str) -> str:
    """`document` with the text between the table's markers replaced by `table`."""
    start, end = document.find(TABLE_START), document.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError("the document has no tuner-capabilities markers")
    return document[:start] + table + document[end + len(TABLE_END):]
