"""llmkit adapter for SGLang (`sglang.Engine`, CUDA). Nothing of SGLang is imported until the engine loads."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_engines(register):
    register(
        BackendSpec(
            name="sglang",
            target="llmkit_sglang.engine:SGLangEngine",
            requires=("sglang",),
            distributions=("sglang",),
            install_hint="pip install 'llmkit-sglang[gpu]' (CUDA wheels only; tested with sglang 0.5.17)",
            description="SGLang: continuous batching, RadixAttention prefix cache, xgrammar structured outputs, LoRA",
        )
    )
