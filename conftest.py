"""Fixtures shared by the core tests and every plugin's tests."""

from __future__ import annotations

import pytest

import llmkit

# `make test` runs two pytest-xdist workers (--dist loadgroup, pyproject.toml). The vLLM tests and the users of TRL's
# learning run (one test serves the learnt adapter on vLLM) go to one worker: the session's vLLM engines and the
# learning run are made once, and no two vLLM engines compete for the cores. Conformance and concurrency tests
# reach their engine through request.getfixturevalue, hence the engine("vllm") mark as well as fixture names.
ONE_WORKER_FIXTURES = {"vllm_engine", "vllm_lora_engine", "trl_under_test"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """xdist groups: the vLLM-and-TRL group above, and for any other test that uses a module- or class-scoped
    fixture its module (a module's server, quantized files or tuning run are made once, on one worker)."""
    for item in items:
        fixtures = item._fixtureinfo.name2fixturedefs
        engine = item.get_closest_marker("engine")
        if ONE_WORKER_FIXTURES & fixtures.keys() or (engine and engine.args == ("vllm",)):
            group = "vllm-and-trl-learning-run"
        elif any(defs[-1].scope in ("module", "class", "package") for defs in fixtures.values()):
            group = item.nodeid.split("::")[0]
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))
        if config.getoption("loadgroup", False) and hasattr(item, "_id"):  # in an xdist worker (--dist loadgroup)
            _suffix_node_id(item, group)
    if config.getoption("loadgroup", False):
        # xdist sends the groups first (most tests first), then single tests in this order: the real-model ones
        # first, so the run does not end on a long training run while the other worker waits (a 188 s tail).
        items.sort(key=lambda item: item.get_closest_marker("smollm2") is None)


def _suffix_node_id(item, group: str) -> None:
    """xdist's scheduler reads a test's group from its node id ("...@group"). xdist 3.8 writes it to Item._nodeid,
    which pytest 9.2 no longer reads (node ids are structured, Item._id): without this every test is scheduled
    alone, silently (pytest-dev/pytest-xdist#1386). Should xdist write it too, the id ends "@group@group": the
    scheduler takes the part after the last "@", the same group."""
    from _pytest.nodeid import NodeId

    item._id = NodeId.parse(f"{item.nodeid}@{group}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from llmkit.testing import tiny_model

    return str(tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    with llmkit.load("transformers", tiny_model_dir) as engine:
        yield engine


@pytest.fixture
def fresh_tiny_engine(tiny_model_dir):
    """A tiny engine of its own, for tests that close it."""
    engine = llmkit.load("transformers", tiny_model_dir)
    yield engine
    engine.close()


@pytest.fixture
def fresh_llamacpp_engine():
    pytest.importorskip("llama_cpp")
    engine = llmkit.load("llamacpp", llmkit.DEFAULT_MODEL)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def smollm2_engine():
    with llmkit.load("transformers", llmkit.DEFAULT_MODEL) as engine:
        yield engine


@pytest.fixture(scope="session")
def llamacpp_engine():
    pytest.importorskip("llama_cpp")
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL) as engine:
        yield engine


@pytest.fixture(scope="session")
def vllm_engine():
    """One real vLLM engine per test session (start-up is ~25 s on 2 CPU cores with enforce_eager). float32:
    its greedy output does not depend on the batch (bf16's does, at near-ties), so concurrent callers can be
    compared with their solo twins."""
    pytest.importorskip("vllm")
    with llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, max_model_len=2048, dtype="float32") as engine:
        yield engine


@pytest.fixture(scope="session")
def vllm_lora_engine():
    """vLLM with per-request LoRA. vLLM's GPU LoRA kernels take fp16/bf16 only (an H200 refused float32)."""
    pytest.importorskip("vllm")
    import torch

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    with llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, max_model_len=1024, enable_lora=True, max_lora_rank=8,
                     dtype=dtype, memory_fraction=0.2 if torch.cuda.is_available() else None) as engine:
        yield engine


@pytest.fixture(scope="session")
def trl_under_test(tmp_path_factory):
    """The TRL tuner under the tuner conformance checks; its learning run (LoRA on the code-word task) is
    made once and shared by the checks, their negative controls and the TRL plugin's hand-off tests."""
    pytest.importorskip("trl")
    from llmkit_conformance.tuning import TunerUnderTest

    return TunerUnderTest("trl", llmkit.DEFAULT_MODEL, tmp_path_factory.mktemp("tuner-checks"))
