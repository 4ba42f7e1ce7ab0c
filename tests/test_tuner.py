"""The Tuner interface: jobs are validated before training; progress events reach the caller."""

import json
from pathlib import Path

import pytest

import llmkit
from llmkit.tuner import TuneJob, TuneProgress, TuneResult, Tuner

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def alpaca(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": "Add 2 and 2.", "input": "", "output": "4"}] * 4))
    return path


def test_job_validation(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path / "out")
    assert job.lora.r == 16 and job.method == "sft"
    with pytest.raises(llmkit.InvalidRequestError, match="does not exist"):
        TuneJob(model="m", data=tmp_path / "missing.json", output_dir=tmp_path)
    with pytest.raises(llmkit.InvalidRequestError, match="dpo needs records"):
        TuneJob(model="m", data=alpaca, method="dpo", output_dir=tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(llmkit.InvalidRequestError, match="not valid JSON"):
        TuneJob(model="m", data=bad, output_dir=tmp_path)
    with pytest.raises(llmkit.InvalidRequestError) as info:
        TuneJob(model="m", data=alpaca, output_dir=tmp_path, learning_rate=0)
    assert info.value.parameter == "learning_rate"


@pytest.mark.skipif(not (SHARED / "instruction-data-with-preference.json").exists(), reason="shared datasets absent")
def test_the_shared_chapter7_sets_validate(tmp_path):
    assert TuneJob(model="m", data=SHARED / "instruction-data.json", output_dir=tmp_path).method == "sft"
    TuneJob(model="m", data=SHARED / "instruction-data-with-preference.json", method="dpo", output_dir=tmp_path)


def test_progress_events_and_unsupported_method(tmp_path, alpaca):
    class CountingTuner(Tuner):
        """A test double for the base class's bookkeeping only; real tuners come with the tuner issue."""

        backend = "counting"

        def _finetune(self, job, emit):
            for step in range(1, 4):
                emit(TuneProgress(step=step, total_steps=3, loss=1.0 / step))
            return TuneResult(output_dir=job.output_dir, steps=3, train_loss=1 / 3, seconds=0.0)

    seen = []
    result = CountingTuner().finetune({"model": "m", "data": str(alpaca), "output_dir": str(tmp_path)}, seen.append)
    assert [e.step for e in seen] == [1, 2, 3] and result.history == seen
    assert all(e.elapsed_s >= 0 for e in seen)
    with pytest.raises(llmkit.UnsupportedFeatureError, match="method=dpo"):
        pref = tmp_path / "pref.json"
        pref.write_text(json.dumps([{"instruction": "i", "chosen": "a", "rejected": "b"}]))
        CountingTuner().finetune(TuneJob(model="m", data=pref, method="dpo", output_dir=tmp_path))


def test_unknown_tuner_backend():
    with pytest.raises(llmkit.BackendNotFoundError):
        llmkit.tune("no-such-tuner", {})
