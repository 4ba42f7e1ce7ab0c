"""`llmkit serve`: any llmkit engine behind OpenAI's and Ollama's HTTP APIs (FastAPI + uvicorn, the
`llmkit[server]` extra). Nothing here is imported by `import llmkit`.

    from llmkit.server import ServerSettings, start_in_thread
    with llmkit.load("llamacpp", "smollm2-135m-instruct") as engine:
        server = start_in_thread(engine, ServerSettings(port=0))
        ...  # openai.OpenAI(base_url=server.url + "/v1", api_key="none")
        server.stop()

Modules: `settings` (limits and access), `app` (routes and the guard), `openai_api`, `ollama_api`, `common`
(admission, prompts, streams), `errors` (the llmkit error tree as HTTP), `metrics` (Prometheus), `run`.
See docs/server.md.
"""

from __future__ import annotations

from typing import Any

from llmkit.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve", "start_in_thread"]


def __getattr__(name: str) -> Any:  # the web stack is imported on first use
    if name == "create_app":
        from llmkit.server.app import create_app

        return create_app
    if name in ("serve", "start_in_thread", "RunningServer"):
        from llmkit.server import run

        return getattr(run, name)
    raise AttributeError(name)
