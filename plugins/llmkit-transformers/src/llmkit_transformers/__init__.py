"""llmkit's reference engine: Hugging Face transformers, CPU or CUDA."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_engines(register):
    register(
        BackendSpec(
            name="transformers",
            target="llmkit_transformers.engine:TransformersEngine",
            requires=("torch", "transformers", "xgrammar"),
            distributions=("transformers",),
            install_hint="pip install llmkit-transformers",
            description="Hugging Face transformers with llmkit's decode loop; xgrammar guided decoding",
        )
    )
