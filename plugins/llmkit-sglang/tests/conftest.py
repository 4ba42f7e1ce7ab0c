"""The SGLang engine the engine tests share (SGLang is CUDA only: they skip where it does not import)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import llmkit

try:
    import llmkit_sglang  # noqa: F401
except ImportError:  # the distribution is not installed (scripts/setup.sh does not install it yet): the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sglang_options import SESSION_OPTIONS, require_sglang  # noqa: E402


@pytest.fixture(scope="session")
def sglang_engine():
    """One SGLang engine on SmolLM2 for the session."""
    require_sglang()
    with llmkit.load("sglang", llmkit.DEFAULT_MODEL, **SESSION_OPTIONS) as engine:
        yield engine
