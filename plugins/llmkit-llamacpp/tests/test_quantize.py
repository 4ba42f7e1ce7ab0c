"""llmkit.quantize for llama.cpp: Hugging Face folder → f16 GGUF (llama.cpp's converter) → Q8_0 / Q4_K_M."""

import pytest

import llmkit
from llmkit_conformance.checks import run_check

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    out = tmp_path_factory.mktemp("gguf")
    return {m: llmkit.quantize("llamacpp", llmkit.DEFAULT_MODEL, m, out / f"smollm2-{m}.gguf") for m in ("q8_0", "q4_k_m")}


def test_files_have_the_expected_sizes(quantized):
    q8, q4 = quantized["q8_0"].stat().st_size, quantized["q4_k_m"].stat().st_size
    assert 130e6 < q8 < 175e6  # 135M parameters at ~8.5 bits
    assert 70e6 < q4 < q8


@pytest.mark.parametrize("method", ["q8_0", "q4_k_m"])
def test_quantized_model_is_not_damaged(quantized, method):
    with llmkit.load("llamacpp", str(quantized[method]), prefix_caching=False) as engine:
        assert run_check("quality_sentiment", engine).status == "passed"
        assert run_check("constraint_json_schema", engine).status == "passed"


def test_refusals(tmp_path, tiny_model_dir):
    with pytest.raises(llmkit.UnsupportedFeatureError, match="q3_weird"):
        llmkit.quantize("llamacpp", llmkit.DEFAULT_MODEL, "q3_weird", tmp_path / "x.gguf")
    from llmkit.catalog import gguf_path

    with pytest.raises(llmkit.UnsupportedFeatureError, match="quantize from GGUF"):
        llmkit.quantize("llamacpp", str(gguf_path(llmkit.DEFAULT_MODEL)), "q8_0", tmp_path / "x.gguf")
    with pytest.raises(llmkit.UnsupportedFeatureError, match="tokenizer"):  # llama.cpp knows only registered tokenizers
        llmkit.quantize("llamacpp", tiny_model_dir, "q8_0", tmp_path / "tiny.gguf")
    with pytest.raises(llmkit.UnsupportedFeatureError, match="'transformers' does not support quantize"):
        llmkit.quantize("transformers", llmkit.DEFAULT_MODEL, "int8", tmp_path / "x")
