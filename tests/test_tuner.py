"""The Tuner interface without a training library: jobs validated before any work, the output folder never
overwritten, checkpoints found for resuming, library errors inside llmkit's error tree."""

import json
from pathlib import Path

import pytest

import llmkit
from llmkit.tuner import TuneJob, TuneProgress, TuneResult, Tuner, latest_checkpoint, prepare_run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def alpaca(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": f"Add 2 and {n}.", "input": "", "output": str(2 + n)} for n in range(20)]))
    return path


@pytest.fixture
def preference(tmp_path):
    path = tmp_path / "pref.json"
    path.write_text(json.dumps([{"instruction": "i", "chosen": "a", "rejected": "b"}] * 10))
    return path


def test_job_validation(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path / "out")
    assert job.method == "lora" and job.lora.r == 16 and job.artifact == "adapter"
    full = TuneJob(model="m", data=alpaca, output_dir=tmp_path / "out", method="sft")
    assert full.lora is None and full.artifact == "merged"
    with pytest.raises(llmkit.InvalidRequestError, match="method sft trains every weight"):
        TuneJob(model="m", data=alpaca, output_dir=tmp_path, method="sft", lora={"r": 4})
    with pytest.raises(llmkit.InvalidRequestError, match="artifact adapter needs LoRA"):
        TuneJob(model="m", data=alpaca, output_dir=tmp_path, method="sft", artifact="adapter")
    with pytest.raises(llmkit.InvalidRequestError, match="grpo needs grpo.rewards"):
        TuneJob(model="m", data=alpaca, output_dir=tmp_path, method="grpo")
    with pytest.raises(llmkit.InvalidRequestError) as info:
        TuneJob(model="m", data=alpaca, output_dir=tmp_path, learning_rate=0)
    assert info.value.parameter == "learning_rate"
    with pytest.raises(llmkit.InvalidRequestError, match="split train"):
        TuneJob(model="m", data=alpaca, output_dir=tmp_path, split={"train": 0.95, "test": 0.1})


def test_data_must_fit_the_method(tmp_path, alpaca, preference):
    with pytest.raises(llmkit.InvalidRequestError, match="dpo trains on preference records"):
        prepare_run(TuneJob(model="m", data=alpaca, method="dpo", lora={"r": 4}, output_dir=tmp_path / "a"), "x")
    with pytest.raises(llmkit.InvalidRequestError, match="file does not exist"):
        prepare_run(TuneJob(model="m", data=tmp_path / "missing.json", output_dir=tmp_path / "b"), "x")
    run = prepare_run(TuneJob(model="m", data=preference, method="dpo", output_dir=tmp_path / "c"), "x")
    assert run.format == "preference" and len(run.splits.train) == 8


@pytest.mark.skipif(not (SHARED / "instruction-data-with-preference.json").exists(), reason="shared datasets absent")
def test_the_shared_chapter7_sets_prepare(tmp_path):
    run = prepare_run(TuneJob(model="m", data=SHARED / "instruction-data.json", output_dir=tmp_path / "a"), "x")
    assert (len(run.splits.train), len(run.splits.test), len(run.splits.validation)) == (935, 110, 55)
    assert len((tmp_path / "a" / "data" / "train.jsonl").read_text().splitlines()) == 935
    prepare_run(TuneJob(model="m", data=SHARED / "instruction-data-with-preference.json", method="dpo", output_dir=tmp_path / "b"), "x")


def test_output_folder_is_never_overwritten(tmp_path, alpaca):
    out = tmp_path / "out"
    job = TuneJob(model="m", data=alpaca, output_dir=out, max_steps=10)
    run = prepare_run(job, "x")
    assert run.resume_from is None and json.loads((out / "job.json").read_text())["max_steps"] == 10
    # an interrupted run of the same job: its newest complete checkpoint is resumed (checkpoint_steps may differ)
    for step, complete in ((2, True), (4, True), (6, False)):
        (out / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        if complete:
            (out / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert prepare_run(job.model_copy(update={"checkpoint_steps": 7}), "x").resume_from.name == "checkpoint-4"
    with pytest.raises(llmkit.TuneError, match="checkpoints of a different job"):
        prepare_run(job.model_copy(update={"learning_rate": 1e-3}), "x")
    with pytest.raises(llmkit.TuneError, match="different job or backend"):
        prepare_run(job, "another-backend")
    (out / "result.json").write_text("{}")
    with pytest.raises(llmkit.TuneError, match="already holds a finished run"):
        prepare_run(job, "x")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(llmkit.TuneError, match="not empty and holds no llmkit run"):
        prepare_run(job.model_copy(update={"output_dir": stranger}), "x")
    assert (stranger / "notes.txt").read_text() == "mine"
    assert latest_checkpoint(tmp_path / "nowhere") is None


class CountingTuner(Tuner):
    """A test double of a backend, for the base class's bookkeeping only (the real tuners are tested in
    their plugins against their libraries)."""

    backend = "counting"
    methods = frozenset({"lora"})

    def _finetune(self, run, emit):
        for step in range(1, 4):
            emit(TuneProgress(step=step, total_steps=3, loss=1.0 / step))
        if run.job.max_steps == 99:
            raise RuntimeError("the library failed")
        return TuneResult(backend="counting", method="lora", base_model="m", artifact="adapter", path=run.artifact_path(),
                          output_dir=run.job.output_dir, steps=3)


def test_progress_events_results_and_errors(tmp_path, alpaca, preference):
    seen = []
    result = CountingTuner().finetune({"model": "m", "data": str(alpaca), "output_dir": str(tmp_path / "a")}, seen.append)
    assert [e.step for e in seen] == [1, 2, 3] and result.history == seen and all(e.elapsed_s >= 0 for e in seen)
    assert llmkit.tuner.read_result(tmp_path / "a").steps == 3
    with pytest.raises(llmkit.UnsupportedFeatureError, match="method=dpo") as info:
        CountingTuner().finetune(TuneJob(model="m", data=preference, method="dpo", output_dir=tmp_path / "b"))
    assert info.value.backend == "counting" and not (tmp_path / "b").exists()
    with pytest.raises(llmkit.TuneError, match="RuntimeError: the library failed") as info:
        CountingTuner().finetune({"model": "m", "data": str(alpaca), "output_dir": str(tmp_path / "c"), "max_steps": 99})
    assert isinstance(info.value.__cause__, RuntimeError)


def test_unknown_tuner_backend():
    with pytest.raises(llmkit.BackendNotFoundError):
        llmkit.tune("no-such-tuner", {})


def test_rewards_resolve_by_name():
    from llmkit.rewards import exact_match, resolve, token_f1

    assert resolve("exact_match") is exact_match
    assert resolve("llmkit.rewards:token_f1") is token_f1
    assert exact_match(["4 ", [{"role": "assistant", "content": "5"}]], reference=["4", "4"]) == [1.0, 0.0]
    assert token_f1(["the cat sat"], reference=["the cat"]) == [pytest.approx(0.8)]
    with pytest.raises(llmkit.InvalidRequestError, match="does not import"):
        resolve("no_such_module:f")


def test_same_path_other_records_is_another_job(tmp_path, alpaca):
    job = TuneJob(model="m", data=alpaca, output_dir=tmp_path / "out")
    prepare_run(job, "x")
    alpaca.write_text(json.dumps([{"instruction": "Other.", "input": "", "output": "x"}] * 20))
    with pytest.raises(llmkit.TuneError, match="different job"):
        prepare_run(job, "x")
