"""llmkit adapter for llama.cpp (through llama-cpp-python): GGUF models on the CPU, and the `gguf` quantizer."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_engines(register):
    register(
        BackendSpec(
            name="llamacpp",
            target="llmkit_llamacpp.engine:LlamaCppEngine",
            requires=("llama_cpp",),
            distributions=("llama-cpp-python",),
            install_hint="pip install llmkit-llamacpp (compiles llama.cpp; see scripts/setup.sh for CMAKE_ARGS)",
            description="llama.cpp (llama-cpp-python) on GGUF files; GBNF guided decoding",
        )
    )


@llmkit.hookimpl
def register_quantizers(register):
    register(BackendSpec(name="gguf", target="llmkit_llamacpp.gguf_tools:GGUFQuantizer", requires=("llama_cpp",),
                         distributions=("llama-cpp-python",), description="GGUF files for llama.cpp and Ollama"))
