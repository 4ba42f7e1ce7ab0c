"""The TRL tuner: SFTTrainer (sft, lora, qlora), DPOTrainer (dpo), GRPOTrainer (grpo), with PEFT adapters.

The base model is loaded by llmkit (a catalog name becomes its Hugging Face folder) in the job's precision;
the configuration is `mapping.training_arguments(job)`, every field explicit. Progress comes from a
`TrainerCallback` (every optimizer step); checkpoints are Trainer checkpoints in `checkpoints/`, and an
interrupted run of the same job resumes from the newest one (weights, optimizer, scheduler, RNG, data
position). The validation split's loss is measured before and after training (SFT and DPO).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from llmkit.catalog import hf_folder
from llmkit.errors import UnsupportedFeatureError
from llmkit.tuner import TuneJob, TuneProgress, TuneResult, TuneRun, Tuner
from llmkit_trl.mapping import BACKEND, check_grpo_batch, check_grpo_lengths, dataset_rows, peft_arguments, resolve_precision, training_arguments


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UnsupportedFeatureError(BACKEND, "device=cuda", "no CUDA device here")
    return requested


class TRLTuner(Tuner):
    backend = BACKEND
    methods = frozenset({"sft", "lora", "qlora", "dpo", "grpo"})
    artifacts = frozenset({"adapter", "merged", "gguf"})
    version_packages = ("trl", "peft", "transformers", "torch", "datasets", "bitsandbytes")

    def __init__(self, device: str = "auto") -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise TypeError(f"device must be auto, cpu or cuda, not {device!r}")
        self.device = device

    def check(self, job: TuneJob) -> None:
        import torch

        device = _device(self.device)
        resolve_precision(job, device, device == "cuda" and torch.cuda.is_bf16_supported())
        if job.method == "qlora":
            if device != "cuda":
                raise UnsupportedFeatureError(BACKEND, "method=qlora", "4-bit base weights (bitsandbytes) need a CUDA GPU: use method=lora on CPU")
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise UnsupportedFeatureError(BACKEND, "method=qlora", "bitsandbytes is not installed: pip install 'llmkit-trl[qlora]'") from None
        if job.method == "grpo":
            from llmkit.rewards import resolve

            check_grpo_batch(job)
            for name in job.grpo.rewards:
                resolve(name)
        if job.artifact == "gguf":
            from llmkit.plugins import engines

            if "llamacpp" not in engines():
                raise UnsupportedFeatureError(BACKEND, "artifact=gguf", "the llamacpp plugin (llama.cpp's converter) is not installed")

    def _finetune(self, run: TuneRun, emit: Callable[[TuneProgress], None]) -> TuneResult:
        import torch
        from datasets import Dataset

        job = run.job
        device = _device(self.device)
        precision = resolve_precision(job, device, device == "cuda" and torch.cuda.is_bf16_supported())
        base = hf_folder(job.model)
        model, tokenizer, peft_config = self._load(job, base, precision)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        args = training_arguments(job, device, precision)
        if job.method == "grpo":
            def count_tokens(example) -> int:
                if example.conversational:
                    return len(tokenizer.apply_chat_template(list(example.prompt), add_generation_prompt=True, tokenize=True, return_dict=False))
                return len(tokenizer(example.prompt)["input_ids"])

            check_grpo_lengths(run.splits.train + run.splits.validation, count_tokens, job)
        train = Dataset.from_list(dataset_rows(run.splits.train, job.method))
        evaluate = job.method != "grpo" and len(run.splits.validation) > 0  # GRPO's evaluation generates: no loss
        validation = Dataset.from_list(dataset_rows(run.splits.validation, job.method)) if evaluate else None
        callback = _progress_callback(emit)
        trainer = self._trainer(job, model, tokenizer, args, train, validation, peft_config, callback)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        eval_before = trainer.evaluate()["eval_loss"] if evaluate and run.resume_from is None else None
        resumed = run.resume_from
        output = trainer.train(resume_from_checkpoint=str(resumed) if resumed else None)
        eval_after = trainer.evaluate()["eval_loss"] if evaluate else None
        if device == "cuda":
            peak, peak_kind = torch.cuda.max_memory_allocated(), "CUDA memory allocated by torch (peak)"
        else:
            peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS (includes what was loaded before)"

        path = self._write_artifact(run, trainer, tokenizer, base)
        tokens = _last_logged(trainer, "num_tokens")
        runtime = output.metrics.get("train_runtime") or None
        return TuneResult(
            backend=self.backend, method=job.method, base_model=base, artifact=job.artifact, path=path, output_dir=job.output_dir,
            steps=trainer.state.global_step, resumed_from_step=int(resumed.name.split("-")[-1]) if resumed else None,
            train_loss=output.training_loss, eval_loss_before=eval_before, eval_loss_after=eval_after,
            train_tokens=int(tokens) if tokens is not None else None,
            tokens_per_second=tokens / runtime if tokens is not None and runtime and not resumed else None,
            train_seconds=runtime if not resumed else None,
            peak_memory_bytes=peak, peak_memory_kind=peak_kind, precision=precision, versions=_versions(self.version_packages),
        )

    def _load(self, job: TuneJob, base: str, precision: str):
        """(model, tokenizer, peft_config): the base model in the job's precision, and the LoRA configuration the
        trainer wraps it with. Subclasses that build the PEFT model themselves return peft_config=None."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, **self._model_kwargs(job, precision))
        peft_config = None
        if job.lora is not None:
            from peft import LoraConfig

            peft_config = LoraConfig(**peft_arguments(job.lora))
        return model, tokenizer, peft_config

    @staticmethod
    def _model_kwargs(job: TuneJob, precision: str) -> dict[str, Any]:
        import torch

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
        kwargs: dict[str, Any] = {"dtype": dtype}
        if job.method == "qlora":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
        return kwargs

    @staticmethod
    def _trainer(job, model, tokenizer, args, train, validation, peft_config, callback):
        common = {"model": model, "processing_class": tokenizer, "train_dataset": train, "eval_dataset": validation,
                  "peft_config": peft_config, "callbacks": [callback]}
        from transformers import PrinterCallback

        if job.method == "dpo":
            from trl import DPOConfig, DPOTrainer

            trainer = DPOTrainer(args=DPOConfig(**args), **common)
        elif job.method == "grpo":
            from trl import GRPOConfig, GRPOTrainer

            from llmkit.rewards import resolve

            trainer = GRPOTrainer(args=GRPOConfig(**args), reward_funcs=[resolve(n) for n in job.grpo.rewards], **common)
        else:
            from trl import SFTConfig, SFTTrainer

            trainer = SFTTrainer(args=SFTConfig(**args), **common)
        trainer.remove_callback(PrinterCallback)  # it prints every log to stdout; progress goes to `emit`
        return trainer

    @staticmethod
    def _write_artifact(run: TuneRun, trainer, tokenizer, base: str) -> Path:
        """adapter/: the PEFT adapter (with the tokenizer); merged/: full weights; model.gguf: merged → GGUF."""
        job, out = run.job, run.job.output_dir
        model = trainer.model
        if job.artifact == "adapter":
            path = out / "adapter"
            model.save_pretrained(str(path))
            tokenizer.save_pretrained(str(path))
            _point_adapter_at(path, base)
            return path
        merged = out / "merged"
        if job.lora is not None:
            model = model.merge_and_unload()
        model.save_pretrained(str(merged))
        tokenizer.save_pretrained(str(merged))
        if job.artifact == "merged":
            return merged
        import llmkit

        return llmkit.quantize("llamacpp", str(merged), "f16", out / "model.gguf")


def _point_adapter_at(path: Path, base: str) -> None:
    """adapter_config.json names the base model folder it was trained on (what engines load it onto)."""
    import json

    config_path = path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base
    config_path.write_text(json.dumps(config, indent=2))


def _progress_callback(emit: Callable[[TuneProgress], None]):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One TuneProgress per log (logging_steps=1: every optimizer step), and one per evaluation."""

        def __init__(self) -> None:
            self.last: tuple[float, float] | None = None  # (time, num_tokens) at the previous log

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            if "train_runtime" in logs:  # the end-of-training summary, not a step
                return
            now, tokens = time.perf_counter(), logs.get("num_tokens")
            rate = None
            if tokens is not None and self.last is not None and now > self.last[0]:
                rate = (tokens - self.last[1]) / (now - self.last[0])
            if tokens is not None:
                self.last = (now, tokens)
            known = {"loss", "eval_loss", "learning_rate", "epoch", "num_tokens"}
            emit(TuneProgress(
                step=state.global_step, total_steps=state.max_steps or None, epoch=logs.get("epoch"),
                loss=logs.get("loss"), eval_loss=logs.get("eval_loss"), learning_rate=logs.get("learning_rate"),
                tokens_per_second=rate,
                metrics={k: float(v) for k, v in logs.items() if k not in known and isinstance(v, (int, float)) and v == v},
            ))

    return Progress()


def _last_logged(trainer, key: str) -> float | None:
    for entry in reversed(trainer.state.log_history):
        if key in entry:
            return entry[key]
    return None


def _versions(packages) -> dict[str, str]:
    found = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found
