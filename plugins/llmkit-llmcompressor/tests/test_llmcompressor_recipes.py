"""The llmcompressor quantizer without llm-compressor: recipes, refusals before any work, calibration records,
how `llmkit.quantize` picks a quantizer for an engine, and the checkpoint check."""

import json
from pathlib import Path

import pytest

import llmkit
from llmkit.quantizer import QuantizeJob, find_quantizer
from llmkit_llmcompressor.quantizer import LLMCompressorQuantizer, calibration_records
from llmkit_llmcompressor.recipes import RECIPES, check_group_size, verify_checkpoint

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "head_dim": 64, "intermediate_size": 1536}
ALPACA = [{"instruction": f"Say {i}.", "input": "" if i % 2 else "now", "output": f"{i}"} for i in range(20)]


@pytest.fixture
def alpaca(tmp_path) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ALPACA))
    return path


def test_recipes_are_upstreams():
    """As llm-compressor 0.14's examples write them (see recipes.py); lm_head is never quantized."""
    fp8 = RECIPES["fp8-dynamic"].modifiers("fp8-dynamic", None)
    assert fp8 == [{"modifier": "QuantizationModifier", "targets": ["Linear"], "scheme": "FP8_DYNAMIC", "ignore": ["lm_head"]}]
    smooth, gptq = RECIPES["w8a8-int8"].modifiers("w8a8-int8", None)
    assert smooth == {"modifier": "SmoothQuantModifier", "smoothing_strength": 0.8}
    assert (gptq["modifier"], gptq["scheme"], gptq["ignore"]) == ("GPTQModifier", "W8A8", ["lm_head"])
    (w4,) = RECIPES["w4a16"].modifiers("w4a16", None)
    assert (w4["scheme"], w4["ignore"]) == ("W4A16", ["lm_head"])
    (w4_64,) = RECIPES["w4a16"].modifiers("w4a16", 64)  # the preset's weights with another group
    assert w4_64["config_groups"]["group_0"]["weights"] == {"num_bits": 4, "type": "int", "symmetric": True,
                                                            "strategy": "group", "group_size": 64}
    assert {m for m, r in RECIPES.items() if r.calibrated} == {"w8a8-int8", "w4a16"}


def test_group_size_that_does_not_divide_the_layers_is_refused_naming_one_that_does():
    with pytest.raises(llmkit.UnsupportedFeatureError, match=r"\[576\] are not multiples of 128; group_size=64"):
        check_group_size(SMOLLM2, 128)
    check_group_size(SMOLLM2, 64)


def test_refusals_before_any_work(tmp_path, alpaca):
    quantizer = LLMCompressorQuantizer()

    def job(**fields):
        return QuantizeJob(model="m", output=tmp_path / "out", **fields)

    with pytest.raises(llmkit.InvalidRequestError, match="give calibration data") as info:
        quantizer.check(job(method="w8a8-int8"))
    assert info.value.parameter == "calibration"
    for fields, named in (({"calibration": alpaca}, "calibration"), ({"group_size": 64}, "group_size"),
                          ({"max_seq_length": 64}, "max_seq_length")):
        with pytest.raises(llmkit.UnsupportedFeatureError, match=f"{named} with method=fp8-dynamic"):  # not dropped
            quantizer.check(job(method="fp8-dynamic", **fields))
    with pytest.raises(llmkit.UnsupportedFeatureError, match="group_size with method=w8a8-int8"):
        quantizer.check(job(method="w8a8-int8", calibration=alpaca, group_size=64))
    with pytest.raises(llmkit.UnsupportedFeatureError, match="makes fp8-dynamic, w8a8-int8, w4a16"):
        quantizer.check(job(method="awq"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    with pytest.raises(llmkit.InvalidRequestError, match="nothing is overwritten"):
        QuantizeJob(model="m", method="fp8-dynamic", output=tmp_path / "taken")


def test_calibration_uses_the_first_records_of_the_training_split(tmp_path, alpaca):
    records, source = calibration_records(QuantizeJob(model="m", method="w8a8-int8", output=tmp_path / "o",
                                                      calibration=alpaca, calibration_samples=3))
    assert [r["text"].rsplit("\n", 1)[-1] for r in records] == ["0", "1", "2"]
    assert records[0]["text"].startswith("Below is an instruction") and "### Input:\nnow" in records[0]["text"]
    assert source["format"] == "alpaca" and len(source["sha256"]) == 64
    with pytest.raises(llmkit.InvalidRequestError, match="17 training records, fewer than calibration_samples=18"):
        calibration_records(QuantizeJob(model="m", method="w8a8-int8", output=tmp_path / "o", calibration=alpaca,
                                        calibration_samples=18))  # 85 % of 20: the held-out part is never used
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}] * 4))
    records, _ = calibration_records(QuantizeJob(model="m", method="w4a16", output=tmp_path / "o", calibration=chat,
                                                 calibration_samples=2))
    assert records[0] == {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def test_an_engine_name_finds_the_quantizer_that_makes_its_format():
    assert isinstance(find_quantizer("vllm", "w8a8-int8"), LLMCompressorQuantizer)
    assert isinstance(find_quantizer("sglang", "w4a16"), LLMCompressorQuantizer)
    assert find_quantizer("llamacpp", "q4_k_m").name == "gguf"
    with pytest.raises(llmkit.UnsupportedFeatureError, match=r"made for vllm: fp8-dynamic, w8a8-int8, w4a16 \(llmcompressor\); "
                                                             r"q8_0 is made by gguf for llamacpp, ollama"):
        find_quantizer("vllm", "q8_0")
    with pytest.raises(llmkit.UnsupportedFeatureError, match="transformers.*offline quantization.*load-time `quantization`"):
        find_quantizer("transformers", "int8")
    with pytest.raises(llmkit.BackendNotFoundError):
        find_quantizer("no-such-engine", "int8")


def test_the_checkpoint_check_refuses_what_the_method_does_not_promise(tmp_path, tiny_model_dir):
    """Negative controls: a quantizer that hands back its unquantized source, or writes the method's config
    over uncompressed weights (llm-compressor's save_pretrained with save_compressed=False keeps them bf16)."""
    with pytest.raises(ValueError, match="not compressed-tensors 'int-quantized'"):
        verify_checkpoint(Path(tiny_model_dir), "w8a8-int8")
    fake = tmp_path / "uncompressed"
    fake.mkdir()
    config = json.loads((Path(tiny_model_dir) / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "int-quantized", "ignore": ["lm_head"]}
    (fake / "config.json").write_text(json.dumps(config))
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(Path(tiny_model_dir) / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight_scale"] = torch.ones(tensors["model.layers.0.mlp.up_proj.weight"].shape[0], 1)
    save_file(tensors, fake / "model.safetensors")
    with pytest.raises(ValueError, match="1 of 1 quantized weights are not I8"):
        verify_checkpoint(fake, "w8a8-int8")
