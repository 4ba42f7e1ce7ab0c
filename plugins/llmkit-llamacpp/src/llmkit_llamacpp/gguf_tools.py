"""Producing GGUF files: convert a Hugging Face folder with llama.cpp's own converter, then quantize with
`llama_model_quantize` from the installed llama-cpp-python. `GGUFQuantizer` is the `gguf` quantizer
(`llmkit.quantize("llamacpp" | "ollama" | "gguf", ...)`).

The converter (`convert_hf_to_gguf.py`, its `conversion/` package and `gguf-py`) ships in the
llama-cpp-python sdist, not in the wheel; `scripts/setup.sh` extracts it from the sdist of the installed
version into `<venv>/share/llmkit/llama.cpp-convert`. `LLMKIT_LLAMACPP_CONVERTER` points elsewhere.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from llmkit.catalog import cache_dir, hf_folder
from llmkit.errors import BackendUnavailableError, EngineError, ModelNotFoundError, UnsupportedFeatureError
from llmkit.quantizer import QuantizeJob, Quantizer

# llmkit method name -> llama.cpp file type constant (LLAMA_FTYPE_MOSTLY_<NAME>); bits per weight as
# llama.cpp's quantize tool lists them for a 7B Llama.
METHOD_INFO = {
    "f16": "16-bit floats: llama.cpp's converter output, unquantized",
    "q8_0": "8-bit blocks of 32 with one f16 scale (8.5 bits per weight)",
    "q6_k": "6-bit k-quant (6.56 bits per weight)",
    "q5_k_m": "5-bit k-quant, some tensors at 6 bits (5.5 bits per weight)",
    "q4_k_m": "4-bit k-quant, attention V and FFN down at 6 bits (4.5-4.9 bits per weight)",
    "q4_0": "4-bit blocks of 32 with one f16 scale (4.5 bits per weight)",
}
METHODS = tuple(METHOD_INFO)


def converter_dir() -> Path:
    path = Path(os.environ.get("LLMKIT_LLAMACPP_CONVERTER") or Path(sys.prefix) / "share" / "llmkit" / "llama.cpp-convert")
    if not (path / "convert_hf_to_gguf.py").is_file():
        raise BackendUnavailableError(
            "llamacpp", f"llama.cpp's converter is not at {path}",
            "bash scripts/setup.sh (extracts it from the llama-cpp-python sdist), or set LLMKIT_LLAMACPP_CONVERTER",
        )
    return path


def convert_hf_to_gguf(folder: str | Path, output: Path, outtype: str = "f16") -> Path:
    """Run llama.cpp's converter on a Hugging Face folder (weights, config, tokenizer)."""
    converter = converter_dir()
    output.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(converter / "gguf-py"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(folder), "--outfile", str(output), "--outtype", outtype],
        env=env, capture_output=True, text=True,
    )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        if "pre-tokenizer was not recognized" in last[0]:
            raise UnsupportedFeatureError("llamacpp", "convert", f"llama.cpp does not know this model's tokenizer ({last[0]})")
        raise EngineError(f"llamacpp: convert_hf_to_gguf failed: {last[0]}")
    return output


def quantize_gguf(source: Path, output: Path, method: str) -> Path:
    """Quantize a GGUF file (ideally f16/f32) to `method` with llama.cpp's quantizer."""
    import llama_cpp

    if method not in METHODS:
        raise UnsupportedFeatureError("llamacpp", f"quantization={method!r}", f"supported: {', '.join(METHODS)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{method.upper()}")
    params.nthread = os.cpu_count() or 1
    output.parent.mkdir(parents=True, exist_ok=True)
    if llama_cpp.llama_model_quantize(str(source).encode(), str(output).encode(), ctypes.byref(params)) != 0:
        raise EngineError(f"llamacpp: llama_model_quantize({source} -> {method}) failed")
    return output


def f16_gguf_for(folder: str) -> Path:
    """A cached f16 GGUF of a Hugging Face folder, converted once per content of the folder: the key is
    the digest of the folder's own files (`llmkit.kit.files.digest`, memoised; sub-folders such as a
    training run's checkpoints are not read by the converter, so not hashed), so weights re-trained into
    the same folder are converted again."""
    from llmkit.kit.files import digest, fingerprint

    path = Path(folder)
    if not path.is_dir():
        raise ModelNotFoundError(f"{folder!r} is not a local folder: llama.cpp's converter needs the Hugging Face folder on disk")
    before = fingerprint(path, recursive=False)
    key = digest(path, recursive=False)[:16]
    target = cache_dir() / "gguf" / f"{path.resolve().name}-{key}-f16.gguf"
    if not target.is_file():
        partial = target.with_name(f"{target.stem}.{os.getpid()}.{threading.get_ident()}.partial")
        try:
            convert_hf_to_gguf(path, partial, "f16")
            if fingerprint(path, recursive=False) != before:
                raise EngineError(f"llamacpp: {folder} changed while it was being converted; quantize again")
            partial.replace(target)  # atomic; a concurrent converter's identical file may be replaced
        finally:
            partial.unlink(missing_ok=True)
    return target


class GGUFQuantizer(Quantizer):
    """Hugging Face folder (or catalog model, through its converted folder) → f16 GGUF (cached per content)
    → the method's GGUF file. A GGUF is not re-quantized: that would stack two quantization errors."""

    name = "gguf"
    format = "gguf"
    engines = ("llamacpp", "ollama")
    methods = METHOD_INFO
    unused = frozenset({"dtype"})  # the file's types are the method's

    def _quantize(self, job: QuantizeJob, emit: Callable[[str, str], None]) -> Path:
        import shutil

        if Path(job.model).suffix == ".gguf":
            raise UnsupportedFeatureError(self.name, "quantize from GGUF", "give the Hugging Face folder or a catalog name")
        emit("convert", "Hugging Face folder → f16 GGUF (llama.cpp's converter; cached)")
        f16 = f16_gguf_for(hf_folder(job.model))
        job.output.parent.mkdir(parents=True, exist_ok=True)
        if job.method == "f16":
            shutil.copyfile(f16, job.output)  # streamed, not read into memory
            return job.output
        emit("quantize", f"f16 → {job.method} (llama_model_quantize)")
        return quantize_gguf(f16, job.output, job.method)
