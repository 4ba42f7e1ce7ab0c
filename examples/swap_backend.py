"""Swapping the backend is a one-word change in the config file: the same `engine.yaml` is loaded with
`backend: transformers`, then with `backend: llamacpp`, and asked the same greedy question. The answers may
differ: transformers runs the model's own weights, llama.cpp the catalog's quantized GGUF of them.

    .venv/bin/python examples/swap_backend.py
"""

import tempfile
from pathlib import Path

import llmkit

CONFIG = """\
backend: transformers
model: smollm2-135m-instruct
options:              # portable: every backend reads these the same way
  max_batch_size: 4
  max_model_len: 2048
llamacpp:             # read only when backend is llamacpp
  n_threads: 2
transformers:         # read only when backend is transformers
  threads: 2
sampling:             # the engine's default SamplingParams
  temperature: 0
  max_tokens: 24
"""


def main() -> None:
    question = [{"role": "user", "content": "What is the capital of Japan?"}]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "engine.yaml"
        for backend in ("transformers", "llamacpp"):
            path.write_text(CONFIG.replace("backend: transformers", f"backend: {backend}"))
            with llmkit.load_config(path) as engine:
                reply = engine.chat(question)  # the config's sampling: greedy, 24 tokens
                print(f"{engine.backend:12} {reply.text.strip()!r} ({reply.usage.completion_tokens} tokens)")


if __name__ == "__main__":
    main()
