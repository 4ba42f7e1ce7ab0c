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
            unverified="not run yet: SGLang has CUDA wheels only, and the 2026-11-27 session's device time went to vLLM; "
            "mapping and stream reader tested on CPU. Verify with `bash benchmarks/gpu/run_sglang.sh conformance` "
            "or `llmkit conformance run -b sglang -o enable_deterministic_inference=true`",
        )
    )
