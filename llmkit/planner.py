"""Memory planning from a model's config: weights plus KV cache, before anything is loaded.

KV cache per token = 2 (K and V) × layers × kv_heads × head_dim × bytes per element. With grouped-query
attention kv_heads < attention heads (SmolLM2: 3 of 9, Llama-3-8B: 8 of 32), which is why formulas that
use the attention head count overestimate the cache 3–4×.

Parameters are counted from the model's own definition (`count_parameters`: transformers on the meta
device, else the checkpoint's safetensors headers); a Llama-style formula is only the last resort, and
`Shape.parameters_source` says which was used. torch and transformers are imported only to count.

Where the KV formula is wrong: multi-head latent attention (DeepSeek-V2/V3: engines cache a compressed
latent, or decompressed K/V of other widths), sliding-window layers (Gemma 2/3, Mistral 7B v0.1: their
cache stops growing at the window) and hybrid models whose recurrent layers keep a fixed state instead
(Jamba, Qwen3-Next): for those it overestimates or mis-states the cache.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# Bytes per weight, including per-block scales for the GGUF formats (bits per weight / 8).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "q8_0": 8.5 / 8, "q6_k": 6.5625 / 8,
                "q5_k_m": 5.5 / 8, "q4_k_m": 4.5 / 8, "q4_1": 5.0 / 8, "q4_0": 4.5 / 8, "int4": 0.5}
WEIGHT_BITS = {name: size * 8 for name, size in WEIGHT_BYTES.items()}
# Quantization methods that quantize the decoder's Linear layers only, leaving the token embeddings, an untied
# head and the norms at the checkpoint's dtype: bytes per Linear weight, scales included.
#   llm-compressor (compressed-tensors; lm_head ignored as upstream's recipes do): fp8-dynamic and w8a8-int8
#   keep one scale per output channel (≈0), w4a16 one bf16 scale per group of 128 (+2/128 bytes);
#   vLLM's load-time fp8 keeps one scale per tensor.
LINEAR_BYTES = {"fp8-dynamic": 1.0, "w8a8-int8": 1.0, "w4a16": 0.5 + 2 / 128, "fp8-load": 1.0}
KV_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def dtype_name(dtype: Any) -> str:
    """An engine's name for an element type (torch.bfloat16, "float16", llama.cpp's "f16", vLLM's
    "fp8_e4m3") as the tables above name it; an unknown name comes back unchanged."""
    name = str(dtype).removeprefix("torch.")
    if name.startswith("fp8") or name.startswith("float8"):
        return "fp8"
    return {"float32": "fp32", "f32": "fp32", "bfloat16": "bf16", "float16": "fp16", "f16": "fp16"}.get(name, name)


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config: multimodal configs (Gemma 3, Llava, ...) nest it."""
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        text = config["text_config"]
        return {**text, "tie_word_embeddings": config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))}
    return config


def _first(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of these keys that the config sets (GPT-2 says n_layer where Llama says num_hidden_layers)."""
    for name in names:
        if config.get(name) is not None:
            return config[name]
    if default is not None:
        return default
    from llmkit.errors import ConfigError

    raise ConfigError(f"the model config has none of {', '.join(names)}: not a decoder llmkit can plan")


@dataclass(frozen=True)
class Shape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    counted_parameters: int | None = None  # from the model's own definition or its checkpoint; None: formula
    parameters_source: str = "Llama-style formula"

    @classmethod
    def from_config(cls, config: dict[str, Any], folder: str | Path | None = None, *, count: bool = True) -> "Shape":
        """The shape of a config.json's model. With `count`, its parameters are counted from the model's
        own definition (`count_parameters`: meta device, else the safetensors headers in `folder`); the
        Llama-style formula is the last resort, and `parameters_source` says which one was used."""
        text = _text_config(config)
        hidden = _first(text, "hidden_size", "n_embd", "d_model")
        heads = _first(text, "num_attention_heads", "n_head", "num_heads")
        kv_heads = 1 if text.get("multi_query") else _first(text, "num_key_value_heads", "num_kv_heads", default=heads)
        shape = cls(vocab=_first(text, "vocab_size", default=config.get("vocab_size")), hidden=hidden,
                    intermediate=_first(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
                    layers=_first(text, "num_hidden_layers", "n_layer", "num_layers"), heads=heads, kv_heads=kv_heads,
                    head_dim=text.get("head_dim") or hidden // heads, tied=bool(text.get("tie_word_embeddings", False)))
        if not count:
            return shape
        counted, source = count_parameters(config, folder)
        return replace(shape, counted_parameters=counted, parameters_source=source)

    @property
    def formula_parameters(self) -> int:
        """Llama-style decoder: embeddings (+ untied head), attention, gated MLP, two norms per layer. Wrong
        for anything else (a Mixtral counts one expert of eight; biases, other MLPs, MoE routers are missed)."""
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * per_layer + self.hidden

    @property
    def parameters(self) -> int:
        return self.counted_parameters if self.counted_parameters is not None else self.formula_parameters

    @property
    def parameters_estimated(self) -> bool:
        """True where the count is the Llama-style formula's, not the model's own."""
        return self.counted_parameters is None

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * KV_BYTES[kv_dtype]

    @property
    def unquantized_parameters(self) -> int:
        """What Linear-only quantization leaves alone: token embeddings, an untied output head, the norms
        (Llama-style: two per layer and a final one)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden * (2 * self.layers + 1)

    def weight_bytes(self, weights: str, base: str = "bf16") -> float:
        """Bytes of the weights in `weights`: an element type or GGUF type of WEIGHT_BYTES (every parameter
        at that size; GGUF sizes are nominal, llama.cpp keeps some tensors at higher precision), or a
        Linear-only quantization method of LINEAR_BYTES (the rest at `base`)."""
        if weights in LINEAR_BYTES:
            rest = self.unquantized_parameters
            return (self.parameters - rest) * LINEAR_BYTES[weights] + rest * WEIGHT_BYTES[base]
        if weights not in WEIGHT_BYTES:
            from llmkit.errors import InvalidRequestError

            raise InvalidRequestError(f"unknown weight format {weights!r}: one of {', '.join([*WEIGHT_BYTES, *LINEAR_BYTES])}",
                                      parameter="weights", value=weights)
        return self.parameters * WEIGHT_BYTES[weights]


def count_parameters(config: dict[str, Any], folder: str | Path | None = None) -> tuple[int | None, str]:
    """The model's parameter count and where it came from, trying in turn:

    1. the model's definition in transformers, instantiated on the meta device (no memory, no weights;
       tied embeddings counted once) — any architecture transformers knows;
    2. the tensors listed in the safetensors headers of `folder` (the checkpoint index, else every
       ``*.safetensors``), for an architecture transformers does not know or where it is not installed;
    3. nothing: (None, the reasons), and the caller falls back to the Llama-style formula.
    """
    reasons = []
    for method in (_count_on_meta_device, _count_from_safetensors):
        try:
            return method(config, folder)
        except Exception as exc:  # noqa: BLE001 - each failure is a reason to try the next way
            reasons.append(f"{method.__doc__.split(':')[0]}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return None, "Llama-style formula (an estimate; " + "; ".join(reasons) + ")"


def _count_on_meta_device(config: dict[str, Any], folder: str | Path | None) -> tuple[int, str]:
    """meta device: build the model from its config with transformers, allocating nothing"""
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map")}
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ValueError("the config names no model_type")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_config = AutoConfig.for_model(model_type, **fields)  # an unknown type raises: no remote code is run
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
    unique = {id(p): p for p in model.parameters()}  # shared (tied) tensors once
    total = sum(p.numel() for p in unique.values())
    output, input_ = model.get_output_embeddings(), model.get_input_embeddings()
    tie = getattr(getattr(hf_config, "get_text_config", lambda: hf_config)(), "tie_word_embeddings", False)
    if tie and output is not None and input_ is not None and output.weight is not input_.weight:
        total -= output.weight.numel()  # the config ties them; loading would share one tensor
    return total, f"counted on the meta device ({type(model).__name__}, transformers)"


def _count_from_safetensors(config: dict[str, Any], folder: str | Path | None) -> tuple[int, str]:
    """safetensors headers: the tensors the checkpoint holds"""
    if folder is None:
        raise ValueError("no model folder")
    if config.get("quantization_config"):
        raise ValueError("a quantized checkpoint stores packed tensors, not one element per parameter")
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    shapes: dict[str, list[int]] = {}
    for shard in shards:
        shapes.update(read_safetensors_shapes(shard))
    total = sum(math.prod(shape) for shape in shapes.values())
    tie = _text_config(config).get("tie_word_embeddings", False)
    heads = [name for name in shapes if name.endswith("lm_head.weight")]
    if tie and heads and any(name.endswith("embed_tokens.weight") or name.endswith("wte.weight") for name in shapes):
        total -= sum(math.prod(shapes[name]) for name in heads)  # saved twice, loaded as one tensor
    return total, f"read from the safetensors headers ({len(shards)} file{'s' if len(shards) != 1 else ''})"


def read_safetensors_header(path: str | Path) -> dict[str, dict[str, Any]]:
    """Tensor name → {"dtype", "shape", "data_offsets"} from a safetensors file's header (8 bytes of length,
    then JSON); reads no data."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{path}: implausible safetensors header length {length}")
        header = json.loads(handle.read(length))
    return {name: info for name, info in header.items() if name != "__metadata__"}


def read_safetensors_shapes(path: str | Path) -> dict[str, list[int]]:
    """Tensor name → shape from a safetensors file's header."""
    return {name: info["shape"] for name, info in read_safetensors_header(path).items()}


def load_shape(model: str) -> Shape:
    """A catalog name, a folder or a config.json path."""
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        from llmkit.catalog import hf_folder

        path = Path(hf_folder(model)) / "config.json"
    return Shape.from_config(json.loads(path.read_text()), folder=path.parent)


def plan(shape: Shape, weights: list[str], batches: list[int], contexts: list[int], kv_dtype: str = "bf16") -> list[dict[str, Any]]:
    rows = []
    for weight in weights:
        weight_bytes = shape.weight_bytes(weight)
        for batch in batches:
            for context in contexts:
                kv = shape.kv_bytes_per_token(kv_dtype) * batch * context
                rows.append({"weights": weight, "batch": batch, "context": context, "weight_gib": weight_bytes / 2**30,
                             "kv_gib": kv / 2**30, "total_gib": (weight_bytes + kv) / 2**30})
    return rows


def compare_with_engine(shape: Shape, usage: Any, quantization: str | None = None) -> list[dict[str, Any]]:
    """The plan beside what an engine reports it allocated (`Engine.memory()`), one row per quantity the
    engine tells; ratio = engine / plan. `quantization`: a LINEAR_BYTES method the weights were quantized
    with (the engine then reports the unquantized rest's dtype as weights_dtype)."""
    rows = []

    def row(quantity: str, planned: float, reported: float) -> None:
        rows.append({"quantity": quantity, "planned_bytes": planned, "engine_bytes": reported, "ratio": reported / planned})

    if usage.weights_bytes and quantization in LINEAR_BYTES and usage.weights_dtype in WEIGHT_BYTES:
        row(f"weights ({quantization}, rest {usage.weights_dtype})", shape.weight_bytes(quantization, usage.weights_dtype),
            usage.weights_bytes)
    elif usage.weights_bytes and usage.weights_dtype in WEIGHT_BYTES:
        row(f"weights ({usage.weights_dtype})", shape.weight_bytes(usage.weights_dtype), usage.weights_bytes)
    if usage.kv_bytes_per_token and usage.kv_dtype in KV_BYTES:
        per_token = shape.kv_bytes_per_token(usage.kv_dtype)
        row(f"KV cache per token ({usage.kv_dtype})", per_token, usage.kv_bytes_per_token)
        if usage.kv_cache_bytes and usage.kv_cache_tokens:
            row(f"KV cache for {usage.kv_cache_tokens:,} tokens", per_token * usage.kv_cache_tokens, usage.kv_cache_bytes)
    return rows
