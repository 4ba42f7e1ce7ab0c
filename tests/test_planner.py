"""The memory planner against published parameter counts and the GQA-corrected KV formula."""

import json

import pytest

from llmkit.planner import Shape, plan

LLAMA3_8B = {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}
SMOLLM2_135M = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True}


def test_parameter_counts_match_the_published_ones():
    for config, published in ((LLAMA3_8B, 8_030_261_248), (SMOLLM2_135M, 134_515_008)):  # Meta-Llama-3-8B, SmolLM2-135M
        shape = Shape.from_config(config)
        assert shape.parameters == published and "meta device" in shape.parameters_source
        assert Shape.from_config(config, count=False).parameters == published  # the formula is right for Llama


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


# ---- parameters from the model's own definition --------------------------------------------------------

TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}
CONFIGS = {
    "llama-tied": {"model_type": "llama", **TINY, "num_key_value_heads": 4, "tie_word_embeddings": True},
    "mixtral-moe": {"model_type": "mixtral", **TINY, "num_key_value_heads": 2, "num_local_experts": 4,
                    "num_experts_per_tok": 2, "tie_word_embeddings": False},
    "qwen2-gqa": {"model_type": "qwen2", **TINY, "num_key_value_heads": 1, "tie_word_embeddings": False},  # q/k/v biases
    "gpt2": {"model_type": "gpt2", "vocab_size": 512, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128},
}


def real_count(config: dict) -> int:
    """The parameters of the model itself, built with real tensors on the CPU (tiny: milliseconds)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(config)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    return sum(p.numel() for p in model.parameters())


def write_config(folder, config: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameters_are_counted_from_the_model_definition(name, tmp_path):
    from llmkit.planner import load_shape

    config = CONFIGS[name]
    shape = load_shape(str(write_config(tmp_path / name, config)))
    assert shape.parameters == real_count(config)
    assert "meta device" in shape.parameters_source and not shape.parameters_estimated


def test_the_llama_formula_undercounts_a_mixture_of_experts(tmp_path):
    """Why the formula is only a last resort: it counts one expert's MLP and no router."""
    from llmkit.planner import load_shape

    shape = load_shape(str(write_config(tmp_path / "moe", CONFIGS["mixtral-moe"])))
    assert shape.formula_parameters < 0.75 * real_count(CONFIGS["mixtral-moe"]) == 0.75 * shape.parameters


def test_kv_cache_per_token_of_the_gqa_model_matches_transformers_cache(tmp_path):
    """KV per token from the planner vs. the bytes of a real DynamicCache after a 5-token prefill."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmkit.planner import load_shape

    config = dict(CONFIGS["qwen2-gqa"])
    shape = load_shape(str(write_config(tmp_path / "gqa", config)))
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
    with torch.no_grad():
        cache = model(torch.arange(5)[None], use_cache=True).past_key_values
    layers = cache.layers
    cached = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
    assert shape.kv_bytes_per_token("fp32") * 5 == cached


def test_safetensors_headers_count_an_architecture_transformers_does_not_know(tmp_path):
    """A checkpoint on disk, its config naming a model_type transformers lacks: the headers say."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llmkit.planner import load_shape

    fields = dict(CONFIGS["llama-tied"])
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    folder = tmp_path / "custom"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llmkit-test-unknown-arch"}))
    shape = load_shape(str(folder))
    assert shape.parameters_source.startswith("read from the safetensors headers")
    assert shape.parameters == sum(p.numel() for p in model.parameters())


def test_formula_fallback_is_said_by_the_shape_and_the_cli(tmp_path):
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.planner import load_shape

    folder = write_config(tmp_path / "unknown", {**CONFIGS["llama-tied"], "model_type": "llmkit-test-unknown-arch"})
    shape = load_shape(str(folder))
    assert shape.parameters_estimated and shape.parameters == shape.formula_parameters
    assert shape.parameters_source.startswith("Llama-style formula") and "no *.safetensors" in shape.parameters_source
    result = CliRunner().invoke(app, ["plan", "-m", str(folder), "--weights", "bf16", "--batch", "1", "--context", "128"])
    assert result.exit_code == 0, result.output
    assert "estimate" in result.output and "Llama-style formula" in " ".join(result.output.split())
    counted = CliRunner().invoke(app, ["plan", "-m", str(write_config(tmp_path / "moe", CONFIGS["mixtral-moe"])),
                                       "--weights", "bf16", "--batch", "1", "--context", "128"])
    assert counted.exit_code == 0, counted.output
    assert "meta device" in " ".join(counted.output.split()) and "estimate" not in counted.output


def test_planner_imports_and_counts_without_torch(tmp_path):
    """`llmkit.planner` needs neither torch nor transformers: without them a local checkpoint is counted
    from its safetensors headers, a bare config by the formula (and says so)."""
    import subprocess
    import sys

    from llmkit.testing import tiny_model

    folder = tiny_model(tmp_path / "tiny")
    code = (
        "import sys, json; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from llmkit.planner import load_shape\n"
        f"shape = load_shape({str(folder)!r})\n"
        "print(json.dumps([shape.parameters, shape.parameters_source]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    parameters, source = json.loads(out.strip().splitlines()[-1])
    assert source.startswith("read from the safetensors headers")
    from llmkit.planner import load_shape

    assert parameters == load_shape(str(folder)).parameters  # the meta-device count agrees


# ---- quantization-aware plans --------------------------------------------------------------------------


def test_linear_only_quantization_keeps_embeddings_and_norms_at_the_base_dtype():
    llama = Shape.from_config(LLAMA3_8B)
    rest = 128256 * 4096 * 2 + 4096 * (2 * 32 + 1)  # untied embeddings and head, norms
    assert llama.unquantized_parameters == rest
    fp8 = llama.weight_bytes("fp8-load") / 2**30
    # an H200 measured vLLM's load-time fp8 at 8.49 GiB of weights (bf16: 14.96): all-fp8 would plan 7.48
    assert 8.40 < fp8 < 8.49 and llama.weight_bytes("fp8") / 2**30 < 7.5
    assert llama.weight_bytes("w4a16") == (llama.parameters - rest) * (0.5 + 2 / 128) + rest * 2
    smol = Shape.from_config(SMOLLM2_135M)  # tied: the embeddings once
    assert smol.weight_bytes("w8a8-int8", "bf16") == (134_515_008 - 49152 * 576 - 576 * 61) + (49152 * 576 + 576 * 61) * 2


def test_plan_rows_take_quantization_methods_and_refuse_unknown_formats():
    rows = plan(Shape.from_config(LLAMA3_8B), ["bf16", "w8a8-int8", "q8_0"], [1], [2048])
    assert [r["weights"] for r in rows] == ["bf16", "w8a8-int8", "q8_0"]
    assert rows[1]["weight_gib"] < rows[0]["weight_gib"]
    from llmkit.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="unknown weight format 'int3'.*w8a8-int8"):
        plan(Shape.from_config(LLAMA3_8B), ["int3"], [1], [2048])
