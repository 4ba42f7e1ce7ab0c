"""Runs inside llm-compressor's own environment (no llmkit there): `python compress.py job.json`.

The job (written by `llmkit_llmcompressor.quantizer`): the Hugging Face folder, the dtype to load it in,
the recipe as [{"modifier": name, **arguments}], calibration records ({"text"} or {"messages"}), the
longest calibration sequence and the output folder. Progress goes to stdout as JSON lines
{"stage", "message"}; llm-compressor's own log goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

START = time.perf_counter()


def emit(stage: str, message: str, **data) -> None:
    print(json.dumps({"stage": stage, "message": message, **data}), flush=True)


def modifiers(recipe: list[dict]) -> list:
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    known = {cls.__name__: cls for cls in (GPTQModifier, QuantizationModifier, SmoothQuantModifier)}
    return [known[step["modifier"]](**{k: v for k, v in step.items() if k != "modifier"}) for step in recipe]


def calibration_dataset(records: list[dict], tokenizer, max_seq_length: int):
    """Tokenized as upstream's examples do: the chat template where the record is a conversation, no
    special tokens added beyond the template's, cut at max_seq_length."""
    from datasets import Dataset

    texts = [r["text"] if "text" in r else tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    encoded = [tokenizer(t, padding=False, max_length=max_seq_length, truncation=True, add_special_tokens=False) for t in texts]
    return Dataset.from_list([{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in encoded])


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    emit("load", f"loading {job['model']} in {job['dtype']}")
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=getattr(torch, job["dtype"]))
    recipe = modifiers(job["recipe"])
    records = job["records"]
    if records:
        dataset = calibration_dataset(records, tokenizer, job["max_seq_length"])
        tokens = sum(len(ids) for ids in dataset["input_ids"])
        emit("calibrate", f"{len(records)} records, {tokens} tokens (at most {job['max_seq_length']} each)", tokens=tokens)
        oneshot(model=model, dataset=dataset, recipe=recipe, max_seq_length=job["max_seq_length"],
                num_calibration_samples=len(records), shuffle_calibration_samples=False)
    else:
        emit("quantize", "no calibration data (round to nearest)")
        oneshot(model=model, recipe=recipe)
    emit("save", f"writing {job['output']} (compressed-tensors)")
    model.save_pretrained(job["output"], save_compressed=True)
    tokenizer.save_pretrained(job["output"])
    import compressed_tensors
    import llmcompressor
    import transformers

    versions = {"llmcompressor": llmcompressor.__version__, "compressed-tensors": compressed_tensors.__version__,
                "transformers": transformers.__version__, "torch": torch.__version__}
    emit("done", f"done in {time.perf_counter() - START:.0f} s", seconds=time.perf_counter() - START, versions=versions)


if __name__ == "__main__":
    main(sys.argv[1])
