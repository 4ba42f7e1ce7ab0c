"""llmkit.quantize for llama.cpp: Hugging Face folder → f16 GGUF (llama.cpp's converter) → Q8_0 / Q4_K_M."""

import os
import time
from pathlib import Path

import pytest

import llmkit
from llmkit.kit import files
from llmkit_conformance.checks import run_check


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    out = tmp_path_factory.mktemp("gguf")
    return {m: llmkit.quantize("llamacpp", llmkit.DEFAULT_MODEL, m, out / f"smollm2-{m}.gguf") for m in ("q8_0", "q4_k_m")}


@pytest.mark.smollm2
def test_files_have_the_expected_sizes(quantized):
    q8, q4 = quantized["q8_0"].stat().st_size, quantized["q4_k_m"].stat().st_size
    assert 130e6 < q8 < 175e6  # 135M parameters at ~8.5 bits
    assert 70e6 < q4 < q8


@pytest.mark.smollm2
@pytest.mark.parametrize("method", ["q8_0", "q4_k_m"])
def test_quantized_model_is_not_damaged(quantized, method):
    with llmkit.load("llamacpp", str(quantized[method]), prefix_caching=False) as engine:
        assert run_check("quality_sentiment", engine).status == "passed"
        assert run_check("constraint_json_schema", engine).status == "passed"


@pytest.mark.smollm2
def test_refusals(tmp_path, tiny_model_dir):
    with pytest.raises(llmkit.UnsupportedFeatureError, match="q3_weird"):
        llmkit.quantize("llamacpp", llmkit.DEFAULT_MODEL, "q3_weird", tmp_path / "x.gguf")
    from llmkit.catalog import gguf_path

    with pytest.raises(llmkit.UnsupportedFeatureError, match="quantize from GGUF"):
        llmkit.quantize("llamacpp", str(gguf_path(llmkit.DEFAULT_MODEL)), "q8_0", tmp_path / "x.gguf")
    with pytest.raises(llmkit.UnsupportedFeatureError, match="tokenizer"):  # llama.cpp knows only registered tokenizers
        llmkit.quantize("llamacpp", tiny_model_dir, "q8_0", tmp_path / "tiny.gguf")
    with pytest.raises(llmkit.UnsupportedFeatureError, match="'transformers' does not support offline quantization"):
        llmkit.quantize("transformers", llmkit.DEFAULT_MODEL, "int8", tmp_path / "x")


@pytest.fixture
def f16_cache(tmp_path, monkeypatch):
    """`f16_gguf_for` with an empty cache and llama.cpp's converter replaced by a fake that records its
    calls and writes the folder's weights into the "GGUF"; the cache key and the digest are the real ones."""
    from llmkit_llamacpp import gguf_tools

    monkeypatch.setenv("LLMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(files, "RACY_SECONDS", 0)  # memoise at once (files written just now)
    files.forget()
    calls = []

    def fake_convert(folder, output, outtype="f16"):
        calls.append(Path(folder))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes((Path(folder) / "model.safetensors").read_bytes())
        return output

    monkeypatch.setattr(gguf_tools, "convert_hf_to_gguf", fake_convert)
    yield gguf_tools.f16_gguf_for, calls
    files.forget()


def test_a_folder_retrained_in_place_is_converted_again(f16_cache, tmp_path):
    f16_gguf_for, calls = f16_cache
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"A" * 1000)
    first = f16_gguf_for(str(folder))
    assert first.read_bytes() == b"A" * 1000
    assert f16_gguf_for(str(folder)) == first and len(calls) == 1  # unchanged: cached

    stat = weights.stat()
    probe = tmp_path / "tick"
    deadline = time.monotonic() + 5
    while probe.write_bytes(b"") == 0 and probe.stat().st_ctime_ns == stat.st_ctime_ns:  # a later timestamp
        assert time.monotonic() < deadline, "file timestamps did not advance in 5 s"
        time.sleep(0.01)
    with open(weights, "r+b") as handle:  # re-trained: same file names, same sizes, even the same mtime
        handle.write(b"B" * 1000)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = f16_gguf_for(str(folder))
    assert len(calls) == 2
    assert second.read_bytes() == b"B" * 1000  # not the stale f16 of the first weights
    assert second != first


def test_an_unchanged_folder_is_hashed_once_and_subfolders_are_not_read(f16_cache, tmp_path, monkeypatch):
    f16_gguf_for, calls = f16_cache
    folder = tmp_path / "run"
    (folder / "checkpoint-10").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"A" * 1000)
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"O" * 1000)
    hashed = []
    real = files._hash
    monkeypatch.setattr(files, "_hash", lambda path, recursive=True: hashed.append(path) or real(path, recursive))
    first = f16_gguf_for(str(folder))
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"P" * 1000)  # the converter does not read it
    assert f16_gguf_for(str(folder)) == first and f16_gguf_for(str(folder)) == first
    assert len(calls) == 1 and hashed == [folder.resolve()]


def test_a_missing_folder_is_refused(f16_cache, tmp_path):
    f16_gguf_for, calls = f16_cache
    with pytest.raises(llmkit.ModelNotFoundError, match="not a local folder"):
        f16_gguf_for(str(tmp_path / "no-such-folder"))
    assert calls == []
