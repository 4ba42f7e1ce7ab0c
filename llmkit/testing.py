"""Helpers for tests: a tiny random Llama with a real byte-level BPE tokenizer.

For fast unit tests only: the weights are random, so the text is gibberish, but every code path (chat
template, streaming, constraints, batching) runs for real. head_dim is 64 so that vLLM's CPU kernels
accept it. The tokenizer is trained on text that ships with Python, so nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _training_text() -> list[str]:
    """Docstrings and source of a few standard-library modules, plus the Zen of Python."""
    import codecs
    import importlib.util
    import inspect
    import json as json_module
    import string
    import textwrap

    # The Zen of Python is rot13-encoded in `this`; read it without importing (which prints it).
    texts = [codecs.decode(Path(importlib.util.find_spec("this").origin).read_text(), "rot13")]
    for module in (json_module, textwrap, string, inspect):
        texts.append(inspect.getsource(module))
    texts.append('{"name": "Ada", "age": 36, "tags": ["a", "b"], "ok": true, "x": null} Positive Negative 0123456789')
    return texts


def tiny_tokenizer(directory: str | Path, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer and save it (with a chat template) as a HF tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def tiny_model(directory: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 128, vocab_size: int = 512) -> Path:
    """Write a random-init Llama (head_dim 64) and its tokenizer to `directory`; return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(directory, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "llmkit-tiny.json").write_text(json.dumps({"seed": seed, "layers": layers, "hidden": hidden}))
    return directory
