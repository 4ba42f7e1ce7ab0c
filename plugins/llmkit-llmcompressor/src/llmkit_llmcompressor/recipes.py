"""What each method is, as llm-compressor recipes: the modifiers and their arguments, declared here and
built by the script that runs in llm-compressor's environment (`side/compress.py`). Pure data, tested
without llm-compressor.

Read against llmcompressor 0.14.0.1 (its wheel) and the upstream examples of that release:
`examples/quantization_w8a8_fp8/llama3_example.py` (QuantizationModifier, scheme FP8_DYNAMIC, no data),
`examples/quantization_w8a8_int8/llama3_example.py` (SmoothQuantModifier(smoothing_strength=0.8) then
GPTQModifier, scheme W8A8), `examples/quantization_w4a16/llama3_example.py` (GPTQModifier, scheme W4A16).
Every recipe leaves `lm_head` unquantized, as upstream's do. The preset schemes are compressed-tensors'
(`compressed_tensors.quantization.quant_scheme.PRESET_SCHEMES`): W8A8 = int8 weights per output channel
(symmetric, static) + int8 activations per token (dynamic); W4A16 = int4 weights in groups of 128
(symmetric), activations unquantized; FP8_DYNAMIC = FP8 E4M3 weights per channel + FP8 activations per
token (dynamic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UnsupportedFeatureError
from llmkit.planner import read_safetensors_header

IGNORE = ["lm_head"]
W4A16_GROUP = 128  # compressed-tensors' W4A16 preset
# GPTQModifier.batched_quantization: same-shape modules of a layer (q/o, k/v, gate/up projections) are
# quantized in one pass; the result is the same module by module. Its default "auto" sizes batches from free
# CUDA memory and is 1 on CPU (gptq/helpers.py max_batch_size), where GPTQ's per-column loop dominates.
GPTQ_BATCH = 8


@dataclass(frozen=True)
class Recipe:
    description: str
    calibrated: bool
    weight_dtype: str  # as llmkit.planner names it
    activations: str

    def modifiers(self, method: str, group_size: int | None) -> list[dict[str, Any]]:
        """The recipe as [{"modifier": class name, **its arguments}], for the side script."""
        if method == "fp8-dynamic":
            return [{"modifier": "QuantizationModifier", "targets": ["Linear"], "scheme": "FP8_DYNAMIC", "ignore": IGNORE}]
        if method == "w8a8-int8":
            return [{"modifier": "SmoothQuantModifier", "smoothing_strength": 0.8},
                    {"modifier": "GPTQModifier", "targets": ["Linear"], "scheme": "W8A8", "ignore": IGNORE,
                     "batched_quantization": GPTQ_BATCH}]
        if method == "w4a16":
            if group_size in (None, W4A16_GROUP):
                return [{"modifier": "GPTQModifier", "targets": ["Linear"], "scheme": "W4A16", "ignore": IGNORE,
                         "batched_quantization": GPTQ_BATCH}]
            # The preset with another group size, spelled out as a config group (the preset's other fields).
            weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size}
            return [{"modifier": "GPTQModifier", "ignore": IGNORE, "batched_quantization": GPTQ_BATCH,
                     "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}]
        raise UnsupportedFeatureError("llmcompressor", f"method={method!r}", f"llmcompressor makes {', '.join(RECIPES)}")


RECIPES = {
    "fp8-dynamic": Recipe("FP8 E4M3 weights per channel, FP8 activations per token (dynamic); no calibration data",
                          calibrated=False, weight_dtype="fp8", activations="fp8 dynamic"),
    "w8a8-int8": Recipe("INT8 weights per channel (SmoothQuant 0.8, then GPTQ), INT8 activations per token (dynamic)",
                        calibrated=True, weight_dtype="int8", activations="int8 dynamic"),
    "w4a16": Recipe(f"INT4 weights in groups of {W4A16_GROUP} (GPTQ; group_size to change it), 16-bit activations",
                    calibrated=True, weight_dtype="int4", activations="16-bit"),
}
GROUPED = frozenset({"w4a16"})  # methods that take a group_size


def linear_widths(config: dict[str, Any]) -> set[int]:
    """Input widths of a Llama-style decoder's Linear layers (attention in, o_proj in, MLP in, down_proj in)."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    return {hidden, heads * head_dim, config["intermediate_size"]}


def check_group_size(config: dict[str, Any], group_size: int) -> None:
    """compressed-tensors refuses a group that does not divide a layer's input width (at save and in forward);
    say so before calibrating, naming a group size that works."""
    try:
        widths = linear_widths(config)
    except KeyError:
        return  # not Llama-style: llm-compressor's own check (group_size_validation) names the layers
    bad = sorted(w for w in widths if w >= group_size and w % group_size)
    if bad:
        fits = [g for g in (128, 64, 32, 16) if all(w % g == 0 for w in widths)]
        raise UnsupportedFeatureError("llmcompressor", f"group_size={group_size}",
                                      f"the model's Linear input widths {bad} are not multiples of {group_size}"
                                      + (f"; group_size={fits[0]} divides them all" if fits else ""))


# What a compressed-tensors checkpoint of each method holds: config.json's quantization_config format and the
# safetensors dtype of a quantized Linear weight (W4A16 packs eight 4-bit values per int32 `weight_packed`).
CHECKPOINT = {"fp8-dynamic": ("float-quantized", "weight", "F8_E4M3"), "w8a8-int8": ("int-quantized", "weight", "I8"),
              "w4a16": ("pack-quantized", "weight_packed", "I32")}


def verify_checkpoint(folder: Path, method: str) -> dict[str, int]:
    """Check that `folder` holds what `method` promises (a quantizer that saved uncompressed weights, or
    returned its source, would hand over a model that runs at full size): config.json declares the
    method's compressed-tensors format with lm_head ignored, and every Linear weight that has a scale is
    stored in the method's dtype. Returns the tensor counts; raises ValueError naming the first problem."""
    config = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    fmt, suffix, dtype = CHECKPOINT[method]
    if config.get("quant_method") != "compressed-tensors" or config.get("format") != fmt:
        raise ValueError(f"{folder}/config.json declares {config.get('quant_method')!r} format {config.get('format')!r}, "
                         f"not compressed-tensors {fmt!r}")
    if "lm_head" not in (config.get("ignore") or []):
        raise ValueError(f"{folder}/config.json quantizes lm_head")
    tensors: dict[str, str] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update({name: info["dtype"] for name, info in read_safetensors_header(shard).items()})
    scaled = [name.removesuffix(".weight_scale") for name in tensors if name.endswith(".weight_scale")]
    if not scaled:
        raise ValueError(f"{folder} holds no quantized weights (no *.weight_scale tensor)")
    wrong = [f"{base}.{suffix}: {tensors.get(f'{base}.{suffix}')}" for base in scaled if tensors.get(f"{base}.{suffix}") != dtype]
    if wrong:
        raise ValueError(f"{folder}: {len(wrong)} of {len(scaled)} quantized weights are not {dtype} ({wrong[0]})")
    return {"quantized": len(scaled), "tensors": len(tensors)}

