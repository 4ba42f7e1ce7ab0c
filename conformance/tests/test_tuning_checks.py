"""The tuner checks on the TRL tuner (CPU, SmolLM2), and each check failed by its negative control: the bug
as it would really happen in a tuner adapter."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("trl")

from llmkit_conformance import tuning  # noqa: E402
from llmkit_conformance.tuning import TunerUnderTest, run_tuner_check  # noqa: E402
from llmkit_trl import mapping  # noqa: E402
from llmkit_trl.tuner import TRLTuner  # noqa: E402

pytestmark = [pytest.mark.smollm2, pytest.mark.timeout(1200)]
MODEL = "smollm2-135m-instruct"


# The checks that read the shared learning run (`TunerUnderTest.learnt`). Its fixture keeps its users on the vLLM
# worker (conftest.py); the other checks make their own runs, so they run on either worker.
LEARNING_RUN_CHECKS = ["loss_falls", "artifact_serves"]


@pytest.mark.parametrize("name", LEARNING_RUN_CHECKS)
def test_trl_passes(trl_under_test, name):
    result = run_tuner_check(name, trl_under_test)
    assert result.status == "passed", (result.detail, result.data)


@pytest.mark.parametrize("name", [name for name in tuning.TUNER_CHECKS if name not in LEARNING_RUN_CHECKS])
def test_trl_passes_without_the_learning_run(tmp_path, name):
    t = TunerUnderTest("trl", MODEL, tmp_path)
    result = run_tuner_check(name, t)
    assert result.status == "passed", (result.detail, result.data)
    assert t._learnt is None, f"{name} used the learning run: list it in LEARNING_RUN_CHECKS"


def test_report_is_written(tmp_path):
    report = tuning.run("trl", MODEL, checks=["bad_data_named", "undeclared_refused"])
    json_path, md_path = tuning.write(report, tmp_path)
    assert report["kind"] == "tuner" and [c["status"] for c in report["checks"]] == ["passed", "passed"]
    assert "| bad_data_named | passed |" in md_path.read_text() and json_path.name == "tuner-trl-smollm2-135m-instruct-cpu.json"


def test_dropped_learning_rate_fails_loss_falls(tmp_path, monkeypatch):
    """The adapter forgets to pass the learning rate: TRL's SFT default (2e-5) applies silently."""
    real = mapping.training_arguments

    def without_learning_rate(*args, **kwargs):
        native = real(*args, **kwargs)
        del native["learning_rate"]
        return native

    monkeypatch.setattr("llmkit_trl.tuner.training_arguments", without_learning_rate)
    result = run_tuner_check("loss_falls", TunerUnderTest("trl", MODEL, tmp_path))
    assert result.status == "failed" and "not under half" in result.detail, result.detail


def test_untrained_adapter_fails_artifact_serves(trl_under_test, tmp_path):
    """The hand-off folder holds the adapter as initialised (B = 0), e.g. saved when the trainer was built."""
    from safetensors.torch import load_file, save_file

    result, events = trl_under_test.learnt()
    stale = tmp_path / "adapter"
    shutil.copytree(result.path, stale)
    tensors = load_file(str(stale / "adapter_model.safetensors"))
    save_file({k: v.zero_() if "lora_B" in k else v for k, v in tensors.items()}, str(stale / "adapter_model.safetensors"))
    t = TunerUnderTest("trl", MODEL, tmp_path, tuner=trl_under_test.tuner)
    t._learnt = (result.model_copy(update={"path": stale}), events)
    outcome = run_tuner_check("artifact_serves", t)
    assert outcome.status == "failed" and "answers 0 of 8" in outcome.detail, outcome.detail


class StartsOver(TRLTuner):
    """Resume ignored: the adapter never passes the checkpoint it was given to the trainer."""

    def _finetune(self, run, emit):
        run.resume_from = None
        return super()._finetune(run, emit)


def test_ignored_checkpoint_fails_resume(tmp_path):
    result = run_tuner_check("resume", TunerUnderTest("trl", MODEL, tmp_path, tuner=StartsOver()))
    assert result.status == "failed" and "resumed from step None" in result.detail, result.detail


class TrainsUnvalidated(TRLTuner):
    """Validation skipped: the adapter reads the records itself and trains on what it finds."""

    def finetune(self, job, on_progress=None):
        import json

        from llmkit.data import Example, Splits
        from llmkit.tuner import TuneJob, TuneRun

        job = TuneJob(**job) if isinstance(job, dict) else job
        records = json.loads(job.data.read_text())
        examples = [Example(i, r["instruction"], completion=r["output"]) for i, r in enumerate(records)]
        job.output_dir.mkdir(parents=True)
        run = TuneRun(job=job, format="alpaca", splits=Splits(examples, [], []), resume_from=None)
        return self._finetune(run, on_progress or (lambda event: None))


def test_unvalidated_data_fails_bad_data_named(tmp_path):
    result = run_tuner_check("bad_data_named", TunerUnderTest("trl", MODEL, tmp_path, tuner=TrainsUnvalidated()))
    assert result.status == "failed", result.detail
