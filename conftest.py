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
    """One real vLLM engine per test session (start-up is ~25 s on 2 CPU cores with enforce_eager)."""
    pytest.importorskip("vllm")
    with llmkit.load("vllm", llmkit.DEFAULT_MODEL, enforce_eager=True, max_model_len=2048, enable_lora=True, max_lora_rank=8) as engine:
        yield engine
