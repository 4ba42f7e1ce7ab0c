"""What the Unsloth tuner refuses before any work, on a machine without an NVIDIA GPU (CI)."""

import json

import pytest

import llmkit
from llmkit.errors import UnsupportedFeatureError

pytestmark = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="these are the refusals of a machine without a GPU")


@pytest.fixture
def job(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "hi"}] * 4))
    return {"model": llmkit.DEFAULT_MODEL, "data": str(data), "method": "lora", "output_dir": str(tmp_path / "run")}


def test_registered_as_a_tuner():
    from llmkit.plugins import tuners

    assert "unsloth" in tuners()


def test_without_a_gpu_it_refuses_by_name_before_any_work(job, tmp_path):
    with pytest.raises(UnsupportedFeatureError, match=r"unsloth.*device=cpu.*NVIDIA GPU") as error:
        llmkit.tune("unsloth", job)
    assert error.value.backend == "unsloth"
    assert not (tmp_path / "run").exists()  # nothing claimed, nothing written


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_undeclared_methods_are_refused_first(job, tmp_path, method):
    fields = {**job, "method": method, "data": job["data"]}
    with pytest.raises(UnsupportedFeatureError, match=rf"unsloth.*method={method}"):
        llmkit.tune("unsloth", fields)
    assert not (tmp_path / "run").exists()


def test_bad_tuner_option_is_an_llmkit_error(job):
    with pytest.raises(llmkit.errors.InvalidRequestError, match="checkpointing"):
        llmkit.tune("unsloth", job, checkpointing="offload")
