"""LoRA adapters in PEFT's folder format (`adapter_config.json` + `adapter_model.safetensors`), the format
every llmkit tuner hands over and vLLM, SGLang and transformers read."""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import InvalidRequestError


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_config(path: str | Path) -> dict:
    try:
        return json.loads((Path(path) / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"{path}: unreadable adapter_config.json: {exc}", parameter="model", value=str(path)) from None


def adapter_base(path: str | Path) -> str:
    """The base model the adapter was trained on, as its config names it (a folder or hub id)."""
    base = adapter_config(path).get("base_model_name_or_path")
    if not base:
        raise InvalidRequestError(f"{path}: adapter_config.json names no base_model_name_or_path; load the base model "
                                  "and pass the adapter per request instead", parameter="model", value=str(path))
    return base


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Base + adapter → one Hugging Face folder with the adapter merged into the weights (and the
    adapter's tokenizer, or the base's), loadable by any engine. Needs peft and transformers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.catalog import hf_folder

    adapter_dir, out = Path(adapter_dir), Path(out_dir)
    base = hf_folder(adapter_base(adapter_dir))
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out))
    tokenizer_source = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else base
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(out))
    return out
