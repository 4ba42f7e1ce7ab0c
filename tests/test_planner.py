"""The memory planner against published parameter counts and the GQA-corrected KV formula."""

import pytest

from llmkit.planner import Shape, plan

LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}
SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True}


def test_parameter_counts_match_the_published_ones():
    assert Shape.from_config(LLAMA3_8B).parameters == 8_030_261_248  # Meta-Llama-3-8B
    assert Shape.from_config(SMOLLM2_135M).parameters == 134_515_008  # SmolLM2-135M


def test_kv_cache_uses_kv_heads_not_attention_heads():
    llama = Shape.from_config(LLAMA3_8B)
    assert llama.kv_bytes_per_token("bf16") == 2 * 32 * 8 * 128 * 2 == 131_072  # 128 KiB per token
    assert Shape.from_config(SMOLLM2_135M).kv_bytes_per_token("bf16") == 2 * 30 * 3 * 64 * 2


def test_plan_rows():
    rows = plan(Shape.from_config(LLAMA3_8B), ["bf16", "q4_k_m"], [1, 8], [8192])
    bf16_b8 = next(r for r in rows if r["weights"] == "bf16" and r["batch"] == 8)
    assert round(bf16_b8["kv_gib"], 3) == 8.0 and 14.9 < bf16_b8["weight_gib"] < 15.0  # vLLM reports 14.96 GiB
    assert next(r for r in rows if r["weights"] == "q4_k_m")["weight_gib"] < 5


def test_plan_matches_what_the_reference_engine_allocates(tiny_engine):
    """The tiny random Llama on the transformers engine: its tensors and its KV cache per token are
    exactly what the plan says (head_dim 64, grouped-query attention)."""
    from llmkit.planner import compare_with_engine, load_shape

    usage = tiny_engine.memory()
    rows = {r["quantity"]: r for r in compare_with_engine(load_shape(tiny_engine.model), usage)}
    assert usage.weights_dtype == usage.kv_dtype == "fp32"
    assert rows["weights (fp32)"]["ratio"] == pytest.approx(1.0, abs=1e-3)  # buffers (rotary) are the only extra
    assert rows["KV cache per token (fp32)"]["ratio"] == 1.0


def test_engine_dtype_names_map_to_the_planner_tables():
    import torch

    from llmkit.planner import dtype_name

    assert [dtype_name(d) for d in (torch.float32, torch.bfloat16, "float16", "f16", "fp8_e4m3")] == ["fp32", "bf16", "fp16", "fp16", "fp8"]
    assert dtype_name("q8_0") == "q8_0"  # llama.cpp's quantized KV cache: not in KV_BYTES, so not compared
