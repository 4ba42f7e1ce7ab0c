"""Helpers for tests: a tiny random Llama with a real byte-level BPE tokenizer.

For fast unit tests only: the weights are random, so the text is gibberish, but every code path (chat
template, streaming, constraints, batching) runs for real. head_dim is 64 so that vLLM's CPU kernels
accept it. The tokenizer is trained on text that ships with Python, so nothing is downloaded.
"""

from __future__ import annotations

import json
import time
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


# ---- the concurrency contract, as tests every engine's own test suite runs ---------------------------

CONCURRENCY_PROMPTS = [f"Item {i}: the {w} key opens door number {i * 5 + 1}, and then" for i, w in
                       enumerate("red green blue grey pink gold teal white black brown amber coral ivory jade lime navy".split())]


def concurrency_tests(engine_fixture: str, fresh_engine_fixture: str, *, max_tokens: int = 8):
    """A test class that holds an engine to llmkit's concurrency contract (llmkit/engine.py): many
    threads and asyncio tasks at once, each output equal to its solo greedy twin; a stream left unread
    does not block others; an abandoned stream frees its request; close() with streams in flight ends each
    with EngineClosedError. `engine_fixture` names a shared engine fixture whose greedy output does not
    depend on the batch (float32 on CPU); `fresh_engine_fixture` a function-scoped one the test may close.

        TestConcurrency = concurrency_tests("tiny_engine", "fresh_tiny_engine")
    """
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import pytest

    import llmkit

    def params(engine, n: int = max_tokens) -> "llmkit.SamplingParams":
        return llmkit.greedy(max_tokens=n, ignore_eos=engine.capabilities().supports("ignore_eos"))

    def solo(engine, prompts, n: int = max_tokens) -> dict[str, list[int]]:
        return {p: engine.generate(p, params(engine, n))[0].token_ids for p in prompts}

    @pytest.mark.timeout(600)
    class TestConcurrency:
        def test_threads_and_tasks_at_once_each_get_their_own_output(self, request):
            """16 streams and 16 generates at once: half of each from threads, half from asyncio tasks."""
            engine = request.getfixturevalue(engine_fixture)
            prompts = CONCURRENCY_PROMPTS
            twins = solo(engine, prompts)
            p = params(engine)

            def stream(prompt):
                return [t for c in engine.stream(prompt, p) for t in c.token_ids]

            def generate(prompt):
                return engine.generate(prompt, p)[0].token_ids

            async def tasks():
                async def astream(prompt):
                    return [t async for c in engine.astream(prompt, p) for t in c.token_ids]

                async def agenerate(prompt):
                    return (await engine.agenerate(prompt, p))[0].token_ids

                return await asyncio.wait_for(asyncio.gather(*[astream(x) for x in prompts[8:]], *[agenerate(x) for x in prompts[:8]]), 300)

            with ThreadPoolExecutor(17) as pool:
                futures = [pool.submit(stream, x) for x in prompts[:8]] + [pool.submit(generate, x) for x in prompts[8:]]
                from_tasks = pool.submit(lambda: asyncio.run(tasks()))
                outputs = [f.result(timeout=300) for f in futures]
                task_outputs = from_tasks.result(timeout=300)
            assert outputs == [twins[x] for x in prompts[:8] + prompts[8:]]
            assert task_outputs == [twins[x] for x in prompts[8:] + prompts[:8]]

        def test_a_stream_left_unread_does_not_block_others(self, request):
            engine = request.getfixturevalue(engine_fixture)
            prompts = CONCURRENCY_PROMPTS[:8]
            twins = solo(engine, prompts)
            long_twin = solo(engine, [CONCURRENCY_PROMPTS[8]], 40)[CONCURRENCY_PROMPTS[8]]
            unread = engine.stream(CONCURRENCY_PROMPTS[8], params(engine, 40))
            head = [t for c in (next(unread), next(unread)) for t in c.token_ids]
            with ThreadPoolExecutor(8) as pool:
                outputs = list(pool.map(lambda x: engine.generate(x, params(engine))[0].token_ids, prompts, timeout=300))
            assert outputs == [twins[x] for x in prompts]
            assert head + [t for c in unread for t in c.token_ids] == long_twin  # resumed: nothing lost

        def test_an_abandoned_stream_frees_its_request(self, request):
            engine = request.getfixturevalue(engine_fixture)
            twins = solo(engine, CONCURRENCY_PROMPTS[:2])
            for chunk in engine.stream(CONCURRENCY_PROMPTS[9], params(engine, 200)):
                break  # the stream object is dropped here: its request is cancelled
            deadline = time.monotonic() + 60
            while engine.stats().engine.get("in_flight", 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert engine.stats().engine.get("in_flight", 0) == 0
            assert [engine.generate(x, params(engine))[0].token_ids for x in CONCURRENCY_PROMPTS[:2]] == list(twins.values())

        def test_a_timeout_cancels_the_request_and_the_engine_serves_on(self, request):
            engine = request.getfixturevalue(engine_fixture)
            with pytest.raises(llmkit.GenerationTimeoutError):
                engine.generate(CONCURRENCY_PROMPTS[10], params(engine, 10_000 if engine.context_length > 10_100 else engine.context_length // 2),
                                timeout=0.05)
            twin = solo(engine, [CONCURRENCY_PROMPTS[0]])[CONCURRENCY_PROMPTS[0]]
            assert engine.generate(CONCURRENCY_PROMPTS[0], params(engine), timeout=300)[0].token_ids == twin

        def test_cancelling_an_asyncio_task_cancels_its_request(self, request):
            engine = request.getfixturevalue(engine_fixture)

            async def main():
                async def consume():
                    async for _ in engine.astream(CONCURRENCY_PROMPTS[11], params(engine, 200)):
                        await asyncio.sleep(0)

                task = asyncio.create_task(consume())
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

            asyncio.run(main())
            deadline = time.monotonic() + 60
            while engine.stats().engine.get("in_flight", 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert engine.stats().engine.get("in_flight", 0) == 0

        def test_close_with_streams_in_flight_ends_each_with_engine_closed(self, request):
            engine = request.getfixturevalue(fresh_engine_fixture)
            long = params(engine, min(400, engine.context_length // 2))
            streams = [engine.stream(x, long) for x in CONCURRENCY_PROMPTS[:4]]
            next(streams[0])  # running; the others run beside it, or wait their turn on a one-sequence engine
            endings = {}

            def consume(i):
                try:
                    for _ in streams[i]:
                        pass
                    endings[i] = "finished"
                except llmkit.LLMKitError as exc:
                    endings[i] = type(exc).__name__

            threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            closer = threading.Thread(target=engine.close)
            closer.start()
            closer.join(120)
            for t in threads:
                t.join(60)
            assert not closer.is_alive() and not any(t.is_alive() for t in threads)
            assert endings == {i: "EngineClosedError" for i in range(4)}
            with pytest.raises(llmkit.EngineClosedError):
                engine.generate("x")
            assert engine.context_length > 0  # still answers after close

    return TestConcurrency
