"""Memory planning from a model's config: weights plus KV cache, before anything is loaded.

KV cache per token = 2 (K and V) × layers × kv_heads × head_dim × bytes per element. With grouped-query
attention kv_heads < attention heads (SmolLM2: 3 of 9, Llama-3-8B: 8 of 32), which is why formulas that
use the attention head count overestimate the cache 3–4×.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bytes per weight, including per-block scales for the GGUF formats (bits per weight / 8).
WEIGHT_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "q8_0": 8.5 / 8, "q6_k": 6.5625 / 8,
                "q5_k_m": 5.5 / 8, "q4_k_m": 4.5 / 8, "q4_1": 5.0 / 8, "q4_0": 4.5 / 8, "int4": 0.5}
WEIGHT_BITS = {name: size * 8 for name, size in WEIGHT_BYTES.items()}
KV_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def dtype_name(dtype: Any) -> str:
    """An engine's name for an element type (torch.bfloat16, "float16", llama.cpp's "f16", vLLM's
    "fp8_e4m3") as the tables above name it; an unknown name comes back unchanged."""
    name = str(dtype).removeprefix("torch.")
    if name.startswith("fp8") or name.startswith("float8"):
        return "fp8"
    return {"float32": "fp32", "f32": "fp32", "bfloat16": "bf16", "float16": "fp16", "f16": "fp16"}.get(name, name)


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

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Shape":
        heads = config["num_attention_heads"]
        return cls(vocab=config["vocab_size"], hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                   layers=config["num_hidden_layers"], heads=heads, kv_heads=config.get("num_key_value_heads", heads),
                   head_dim=config.get("head_dim") or config["hidden_size"] // heads, tied=config.get("tie_word_embeddings", False))

    @property
    def parameters(self) -> int:
        """Llama-style decoder: embeddings (+ untied head), attention, gated MLP, two norms per layer."""
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * per_layer + self.hidden

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * KV_BYTES[kv_dtype]


def load_shape(model: str) -> Shape:
    """A catalog name, a folder or a config.json path."""
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        from llmkit.catalog import hf_folder

        path = Path(hf_folder(model)) / "config.json"
    return Shape.from_config(json.loads(path.read_text()))


def plan(shape: Shape, weights: list[str], batches: list[int], contexts: list[int], kv_dtype: str = "bf16") -> list[dict[str, Any]]:
    rows = []
    for weight in weights:
        weight_bytes = shape.parameters * WEIGHT_BYTES[weight]
        for batch in batches:
            for context in contexts:
                kv = shape.kv_bytes_per_token(kv_dtype) * batch * context
                rows.append({"weights": weight, "batch": batch, "context": context, "weight_gib": weight_bytes / 2**30,
                             "kv_gib": kv / 2**30, "total_gib": (weight_bytes + kv) / 2**30})
    return rows


def compare_with_engine(shape: Shape, usage: Any) -> list[dict[str, Any]]:
    """The plan beside what an engine reports it allocated (`Engine.memory()`), one row per quantity the
    engine tells; ratio = engine / plan."""
    rows = []

    def row(quantity: str, planned: float, reported: float) -> None:
        rows.append({"quantity": quantity, "planned_bytes": planned, "engine_bytes": reported, "ratio": reported / planned})

    if usage.weights_bytes and usage.weights_dtype in WEIGHT_BYTES:
        row(f"weights ({usage.weights_dtype})", shape.parameters * WEIGHT_BYTES[usage.weights_dtype], usage.weights_bytes)
    if usage.kv_bytes_per_token and usage.kv_dtype in KV_BYTES:
        per_token = shape.kv_bytes_per_token(usage.kv_dtype)
        row(f"KV cache per token ({usage.kv_dtype})", per_token, usage.kv_bytes_per_token)
        if usage.kv_cache_bytes and usage.kv_cache_tokens:
            row(f"KV cache for {usage.kv_cache_tokens:,} tokens", per_token * usage.kv_cache_tokens, usage.kv_cache_bytes)
    return rows
