"""llmkit adapter for Ollama, over its REST API with the official `ollama` client."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_engines(register):
    register(
        BackendSpec(
            name="ollama",
            target="llmkit_ollama.engine:OllamaEngine",
            requires=("ollama",),
            distributions=("ollama",),  # the client library; the server reports its own version
            install_hint="pip install llmkit-ollama (and an Ollama server: OLLAMA_HOST)",
            description="Ollama over REST (verified against its documented protocol; see the plugin README)",
        )
    )
