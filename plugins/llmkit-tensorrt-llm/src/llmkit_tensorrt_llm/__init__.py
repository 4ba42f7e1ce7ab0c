"""llmkit adapter for TensorRT-LLM (`tensorrt_llm.LLM`, PyTorch backend). Not verified on hardware: see
the package README."""

import llmkit
from llmkit.plugins import BackendSpec


@llmkit.hookimpl
def register_engines(register):
    register(
        BackendSpec(
            name="tensorrt-llm",
            target="llmkit_tensorrt_llm.engine:TensorRTLLMEngine",
            requires=("tensorrt_llm",),
            distributions=("tensorrt-llm",),
            install_hint="pip install 'llmkit-tensorrt-llm[gpu]' with NVIDIA's package index as an extra index (CUDA 13, torch 2.11)",
            description="TensorRT-LLM (PyTorch backend): in-flight batching, streaming, xgrammar guided decoding, "
            "KV block reuse; not verified on hardware",
            unverified="not run on any machine: the registry has only placeholder sdists of tensorrt-llm, which fetch the "
            "wheel from NVIDIA's index, unreachable here and from the lent GPUs; mapping tested against a snapshot of "
            "its source. Verify with `llmkit conformance run -b tensorrt-llm -m smollm2-135m-instruct -o dtype=bfloat16`",
        )
    )
