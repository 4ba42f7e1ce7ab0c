"""Engine options and helpers shared by conftest.py and the engine tests (a module of its own: test
modules cannot import conftest reliably, the root has one too)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

# Deterministic inference makes per-request seeds work (SGLang ignores them otherwise) and greedy output
# independent of batching, which the concurrency tests compare against solo runs. fa3 is SGLang's
# deterministic, radix-cache-compatible backend on Hopper; bf16 as on the other GPU engines' reports.
SESSION_OPTIONS = dict(max_model_len=2048, dtype="bfloat16", memory_fraction=0.4, enable_deterministic_inference=True,
                       attention_backend="fa3")
# Engines started beside the session's: small, and quick to start (no CUDA graphs).
SMALL_OPTIONS = dict(max_model_len=1024, dtype="bfloat16", memory_fraction=0.12, disable_cuda_graph=True)


def require_sglang() -> None:
    """Skip where SGLang does not import, unless LLMKIT_REQUIRE_SGLANG=1 (benchmarks/gpu/run_sglang.sh):
    there a failing import fails the test with the real error."""
    if os.environ.get("LLMKIT_REQUIRE_SGLANG") == "1":
        import sglang  # noqa: F401
    else:
        pytest.importorskip("sglang")


@contextlib.contextmanager
def registered_plugin() -> Iterator[None]:
    """The llmkit_sglang plugin registered for a block, where nothing registered it (it is not installed
    as a distribution here: no entry point); left as it was afterwards."""
    import llmkit_sglang
    from llmkit.plugins import get_plugin_manager

    pm = get_plugin_manager()
    ours = not pm.is_registered(llmkit_sglang)
    if ours:
        pm.register(llmkit_sglang, name="llmkit_sglang")
    try:
        yield
    finally:
        if ours:
            pm.unregister(llmkit_sglang)
