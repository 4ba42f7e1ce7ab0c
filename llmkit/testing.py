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


def random_lora(model_dir: str | Path, out_dir: str | Path, *, r: int = 8, alpha: int = 16, seed: int = 0,
                targets: tuple[str, ...] = ("q_proj", "v_proj"), scale: float = 0.05) -> Path:
    """Write a PEFT-format LoRA adapter with random A and B for the Llama in `model_dir`.

    PEFT initialises B to zero (an adapter that changes nothing); here both are random, so applying the
    adapter visibly changes the output, which is what a test of per-request adapters needs.
    """
    import torch
    from safetensors.torch import save_file

    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    out_features = {"q_proj": config["num_attention_heads"] * head_dim, "k_proj": config["num_key_value_heads"] * head_dim,
                    "v_proj": config["num_key_value_heads"] * head_dim, "o_proj": hidden}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for target in targets:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            fan_in = hidden if target != "o_proj" else config["num_attention_heads"] * head_dim
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, fan_in, generator=generator) * scale
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features[target], r, generator=generator) * scale
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(targets), "base_model_name_or_path": str(model_dir), "fan_in_fan_out": False,
        "modules_to_save": None, "use_rslora": False, "use_dora": False, "inference_mode": True,
    }, indent=2))
    return out
