"""The two sampling settings of the course, seeded so each run prints the same text.

- temperature 0.8 / top_p 0.95: varied, still on topic;
- temperature 0.1 / top_k 2: close to greedy.

    .venv/bin/python examples/sampling.py [backend]        # llamacpp by default
"""

import sys

import llmkit

SETTINGS = {
    "temperature 0.8, top_p 0.95": dict(temperature=0.8, top_p=0.95),
    "temperature 0.1, top_k 2": dict(temperature=0.1, top_k=2),
}


def main(backend: str = "llamacpp") -> None:
    prompt = [{"role": "user", "content": "Write one sentence about the sea."}]
    with llmkit.load(backend, llmkit.DEFAULT_MODEL) as engine:
        for name, params in SETTINGS.items():
            for seed in (1, 2):
                reply = engine.chat(prompt, llmkit.SamplingParams(**params, seed=seed, max_tokens=30))
                print(f"[{name}, seed {seed}] {reply.text.strip()!r}")
        print(f"{engine.stats().requests} requests")


if __name__ == "__main__":
    main(*sys.argv[1:2])
