"""Fixtures the server tests share (test_server.py, test_server_reliability.py, test_server_page.py): SmolLM2 on
llama.cpp, and `llmkit serve` over it in a thread. One of each per test module, so every module's server
metrics and engine counters start from zero."""

from __future__ import annotations

import pytest

import llmkit


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("llama_cpp")
    # One llama.cpp thread and one-token prompt batches: on 2 shared cores several times faster (DEVELOPERS.md).
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, n_threads=1, n_batch=1) as engine:
        yield engine


@pytest.fixture(scope="module")
def server(engine):
    pytest.importorskip("fastapi")
    from llmkit.server import ServerSettings, start_in_thread

    running = start_in_thread(engine, ServerSettings(port=0))
    yield running
    running.stop()
