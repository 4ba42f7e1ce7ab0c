"""Fixtures shared by the core tests and every plugin's tests."""

from __future__ import annotations

import pytest

import llmkit


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
