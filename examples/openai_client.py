"""Serve an engine over OpenAI's HTTP API with `llmkit serve` and call it with the official `openai` client:
a chat completion, a streamed one, and a guided choice (vLLM's `guided_choice` in `extra_body`).

The server runs as a subprocess on a free port (`--port 0`; it prints its URL once it accepts connections)
and is stopped with SIGTERM, which drains requests in flight. Needs the `server` extra and `openai`.

    .venv/bin/python examples/openai_client.py
"""

import re
import signal
import subprocess
import sys
from pathlib import Path

from openai import OpenAI

import llmkit

MODEL = llmkit.DEFAULT_MODEL


def start_server() -> tuple[subprocess.Popen, str]:
    script = Path(sys.executable).with_name("llmkit")  # the console script of this environment
    command = [str(script)] if script.exists() else [sys.executable, "-c", "from llmkit.cli import main; main()"]
    proc = subprocess.Popen([*command, "serve", "-b", "llamacpp", "-m", MODEL, "-o", "n_threads=2",
                             "--port", "0", "--log-level", "warning"], stdout=subprocess.PIPE, text=True)
    ready = proc.stdout.readline()  # "llmkit serve: ... on http://127.0.0.1:PORT ..."
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", ready)
    if not match:
        proc.kill()
        raise SystemExit(f"llmkit serve did not start (exit code {proc.wait()}): {ready!r}")
    return proc, match.group(1)


def main() -> None:
    proc, url = start_server()
    try:
        print(f"server: {url}")
        client = OpenAI(base_url=f"{url}/v1", api_key="unused")
        print("models:", [m.id for m in client.models.list().data])

        question = [{"role": "user", "content": "What is the capital of Japan?"}]
        reply = client.chat.completions.create(model=MODEL, messages=question, max_tokens=24, temperature=0)
        print("chat:", repr(reply.choices[0].message.content), reply.usage.completion_tokens, "tokens")

        print("stream: ", end="")
        for chunk in client.chat.completions.create(model=MODEL, messages=question, max_tokens=24, temperature=0,
                                                    stream=True):
            if chunk.choices:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
        print()

        greeting = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi!"}],
                                                  extra_body={"guided_choice": ["Hello!", "Goodbye!"]})
        print("guided choice:", repr(greeting.choices[0].message.content))
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful: drains, closes the engine, exits 0
        print("server exit code:", proc.wait(60))


if __name__ == "__main__":
    main()
