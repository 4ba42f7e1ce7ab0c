"""Prefix caching on llama.cpp: two requests share a long prefix (a system prompt); with the cache on, the
second one reuses the prefix's KV cache and its time to first token drops. Numbers only: on a 135M model and
a busy machine the difference may be small.

    .venv/bin/python examples/prefix_caching.py
"""

import llmkit

SYSTEM = ("You are a helpful assistant for a bookshop. " * 15).strip()
QUESTIONS = ["Do you sell maps?", "Are you open on Sundays?"]


def run(prefix_caching: bool) -> None:
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, prefix_caching=prefix_caching, n_threads=2) as engine:
        for i, question in enumerate(QUESTIONS, 1):
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
            reply = engine.chat(messages, llmkit.greedy(max_tokens=8))
            print(f"prefix_caching={prefix_caching!s:5} request {i}: TTFT {reply.metrics.ttft * 1000:7.1f} ms, "
                  f"{reply.usage.prompt_tokens} prompt tokens, {reply.usage.cached_tokens or 0} from the cache")
        stats = engine.stats()
        print(f"prefix_caching={prefix_caching!s:5} engine: {stats.cached_prompt_tokens} cached prompt tokens in "
              f"{stats.requests} requests")


def main() -> None:
    run(prefix_caching=False)
    run(prefix_caching=True)


if __name__ == "__main__":
    main()
