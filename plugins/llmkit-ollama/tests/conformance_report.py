"""Write the Ollama adapter's conformance report, run against the protocol server of ollama_protocol.py.

    .venv/bin/python plugins/llmkit-ollama/tests/conformance_report.py
"""

import sys
from pathlib import Path

import llmkit
from llmkit_conformance.runner import run, write

sys.path.insert(0, str(Path(__file__).parent))
from ollama_protocol import OllamaProtocolServer  # noqa: E402

NOTE = ("against llmkit's Ollama-protocol test server (plugins/llmkit-ollama/tests/ollama_protocol.py) backed by "
        "llama.cpp on SmolLM2, not a live Ollama")

if __name__ == "__main__":
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, prefix_caching=False) as backing:
        with OllamaProtocolServer(backing, "smollm2:135m") as server:
            report = run("ollama", "smollm2:135m", {"host": server.url, "num_ctx": 2048}, note=NOTE)
    for path in write(report, Path(__file__).resolve().parents[3] / "conformance" / "reports"):
        print(path)
