"""llmkit quantizer `llmcompressor`: compressed-tensors checkpoints for vLLM and SGLang, made by llm-compressor
(vllm-project/llm-compressor) in an environment of its own (`llmkit_llmcompressor.env`)."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_quantizers(register):
    register(
        BackendSpec(
            name="llmcompressor",
            target="llmkit_llmcompressor.quantizer:LLMCompressorQuantizer",
            distributions=("llmcompressor",),
            install_hint="python -m llmkit_llmcompressor.env (creates llm-compressor's own environment)",
            description="compressed-tensors checkpoints (FP8 dynamic, INT8 W8A8, INT4 W4A16) for vLLM and SGLang",
        )
    )
