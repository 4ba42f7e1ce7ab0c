"""The catalog's converted folder must describe its tokenizer as the GGUF does, whichever transformers
converted it: grammar engines (xgrammar, in vLLM and SGLang) read the tokenizer's decoder to decide how
token strings map to bytes.

The control is the folder transformers 5.12.1 (SGLang's kit) wrote on the GPU machine on 2026-11-28: a
SentencePiece-style decoder on a byte-level vocabulary and eos = <|im_start|>. xgrammar 0.2.1 (SGLang's pin) took
that vocabulary for byte-fallback and allowed no token for a choice starting with a space, so SGLang aborted the
request; xgrammar 0.2.8 (vLLM's, in this environment) reads the same folder as byte-level."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import llmkit
from llmkit import catalog

# What transformers 5.12.1's GGUF converter wrote for SmolLM2 (tokenizer.json "decoder", tokenizer_config.json).
DECODER_5_12 = {"type": "Sequence", "decoders": [
    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
CONFIG_5_12 = {"eos_token": "<|im_start|>", "eos_token_id": 1, "pad_token_id": None, "clean_up_tokenization_spaces": True}


@pytest.fixture(scope="module")
def converted() -> Path:
    return Path(catalog.hf_folder(llmkit.DEFAULT_MODEL))


@pytest.fixture
def as_5_12_wrote_it(converted, tmp_path) -> Path:
    folder = tmp_path / "smollm2-5.12"
    shutil.copytree(converted, folder)
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    spec["decoder"] = DECODER_5_12
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, **CONFIG_5_12}), encoding="utf-8")
    return folder


def first_token_choices(folder: Path, ebnf: str) -> tuple[str, list[str]]:
    """xgrammar's vocabulary type for the folder's tokenizer and the tokens it allows first under `ebnf`."""
    xgr = pytest.importorskip("xgrammar")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_grammar(ebnf))
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    allowed = xgr.testing.bitmask_to_bool_mask(bitmask, info.vocab_size)[0].nonzero().flatten().tolist()
    return info.vocab_type.name, tokenizer.convert_ids_to_tokens(allowed)


SENTIMENT = 'root ::= " " ( "Positive" | "Negative" )'


def test_the_converted_folder_says_what_the_gguf_says(converted):
    metadata = catalog.gguf_tokenizer_metadata(catalog.gguf_path(llmkit.DEFAULT_MODEL))
    assert metadata["model"] == "gpt2" and metadata["eos"] == 2
    assert json.loads((converted / "tokenizer.json").read_text(encoding="utf-8"))["decoder"]["type"] == "ByteLevel"
    config = json.loads((converted / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == "<|im_end|>" and not config.get("clean_up_tokenization_spaces")
    assert catalog.repair_tokenizer_files(converted, metadata) == []  # nothing left to repair


def xgrammar_reads_decoders() -> bool:
    """Whether this xgrammar classifies a vocabulary by the decoder's first step (0.2.1 does, 0.2.8 does not)."""
    from importlib.metadata import version

    return tuple(int(p) for p in version("xgrammar").split(".")[:3]) < (0, 2, 8)


def test_a_5_12_folder_is_repaired_and_grammars_can_start_with_a_space(as_5_12_wrote_it):
    pytest.importorskip("xgrammar")
    if xgrammar_reads_decoders():  # the control as SGLang's xgrammar saw it
        assert first_token_choices(as_5_12_wrote_it, SENTIMENT) == ("BYTE_FALLBACK", [])

    metadata = catalog.gguf_tokenizer_metadata(catalog.gguf_path(llmkit.DEFAULT_MODEL))
    changes = catalog.repair_tokenizer_files(as_5_12_wrote_it, metadata)
    assert changes[0] == "decoder -> ByteLevel" and any(c.startswith("eos_token ") for c in changes)
    assert catalog.repair_tokenizer_files(as_5_12_wrote_it, metadata) == []

    vocab_type, allowed = first_token_choices(as_5_12_wrote_it, SENTIMENT)
    assert vocab_type == "BYTE_LEVEL" and "ĠPositive" in allowed and "ĠNegative" in allowed
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(as_5_12_wrote_it)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    text = " Positive 晴れ ☀️, ok."
    assert tokenizer.decode(tokenizer.encode(text)) == text
