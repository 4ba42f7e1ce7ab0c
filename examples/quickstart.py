"""Sampling, streaming, guided decoding and stats on the built-in SmolLM2, on any installed backend.

    .venv/bin/python examples/quickstart.py                 # llama.cpp if installed
    .venv/bin/python examples/quickstart.py transformers
"""

import sys

import llmkit

backend = sys.argv[1] if len(sys.argv) > 1 else "llamacpp"

with llmkit.load(backend, "smollm2-135m-instruct") as engine:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    print(engine.chat(question, llmkit.greedy(max_tokens=32)).text)

    for chunk in engine.stream("Once upon a time", temperature=0.8, top_p=0.95, max_tokens=40, seed=1):
        print(chunk.text, end="", flush=True)
    print()

    person = llmkit.JsonSchema(schema={
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "city": {"type": "string", "maxLength": 20}},
        "required": ["name", "city"],
    })
    print(engine.chat([{"role": "user", "content": "Invent a person as JSON."}], llmkit.greedy(max_tokens=48, constraint=person)).text)

    stats = engine.stats()
    print(f"{stats.requests} requests, TTFT p50 {stats.ttft.p50 * 1000:.0f} ms, TPOT p50 {stats.tpot.p50 * 1000:.1f} ms")
