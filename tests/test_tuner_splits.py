"""A run's splits read back through the public API (`TuneResult.split`, `llmkit.data.read_split`): the same
examples the run was cut into, for every record format."""

import json

import pytest

import llmkit
from llmkit.data import Example, read_split
from llmkit.tuner import TuneJob, TuneResult, prepare_run


def _finished(run) -> TuneResult:
    job = run.job
    return TuneResult(backend="x", method=job.method, base_model="m", artifact=job.artifact, path=job.output_dir / "adapter",
                      output_dir=job.output_dir, steps=1)


@pytest.mark.parametrize("records", [
    [{"instruction": f"Add 2 and {n}.", "input": "" if n % 2 else "now", "output": str(2 + n)} for n in range(20)],
    [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"{n}?"},
                   {"role": "assistant", "content": f"{n}."}]} for n in range(20)],
    [{"prompt": f"p{n}", "chosen": "a", "rejected": "b"} for n in range(20)],
], ids=["alpaca", "chat", "preference"])
def test_splits_read_back_as_written(tmp_path, records):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    method = "dpo" if "chosen" in records[0] else "lora"
    run = prepare_run(TuneJob(model="m", data=data, method=method, output_dir=tmp_path / "run",
                              split={"train": 0.7, "test": 0.2, "shuffle": True}), "x")
    result = _finished(run)
    for name in ("train", "validation", "test"):
        assert result.split(name) == getattr(run.splits, name) == read_split(run.data_dir, name)
    assert [len(result.split(n)) for n in ("train", "test", "validation")] == [14, 4, 2]
    assert all(isinstance(e, Example) for e in result.split("test"))


def test_unknown_or_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(llmkit.InvalidRequestError, match="unknown split 'dev'"):
        read_split(tmp_path, "dev")
    with pytest.raises(llmkit.InvalidRequestError, match="no such split file"):
        read_split(tmp_path, "test")
