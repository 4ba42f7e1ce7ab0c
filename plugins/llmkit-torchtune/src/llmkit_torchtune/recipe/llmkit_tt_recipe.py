"""Runs INSIDE the torchtune virtual environment (`tune run llmkit_tt_recipe --config job.yaml`), never in
llmkit's own: it imports torchtune, not llmkit.

torchtune's own single-device recipes (`lora_finetune_single_device`, `full_finetune_single_device` of
torchtune 0.6.1, loaded from the installed `recipes/` folder) do the training; the subclasses below add
only what llmkit needs and the stock recipes lack:

- validation loss before and after training (`llmkit.validation`), with the recipe's own `_loss_step`;
- the job's seed for the data order too (the recipe's sampler is built with seed=0 whatever `seed` says);
- the LoRA recipe's merged save corrupts the live weights on CPU (see `save_checkpoint`);
- on resume, the LoRA recipe restores `global_step` only when `max_steps_per_epoch` is strictly below the
  epoch's length (`setup`), so its LR schedule restarted from step 0; here it is always restored;
- machine-readable `LLMKIT ...` lines (plan, eval, done) that the adapter parses beside torchtune's logs.

Also here: `TextTokenizer` (a torchtune ModelTokenizer over the model's own `tokenizer.json`, no chat
template: the prompt already carries llmkit's Alpaca template) and the LR schedules torchtune lacks.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

import torchtune
from torchtune import config, utils
from torchtune.modules.transforms import Transform
from torchtune.modules.transforms.tokenizers import ModelTokenizer

RECIPES = Path(torchtune.__file__).resolve().parent.parent / "recipes"


def _load_recipe(name: str):
    # torchtune's recipes/ folder is not an importable package (its __init__ raises on purpose).
    spec = importlib.util.spec_from_file_location(f"_torchtune_recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def say(kind: str, **fields: Any) -> None:
    """One line for the adapter: `LLMKIT <kind> {json}`."""
    print(f"LLMKIT {kind} {json.dumps(fields)}", flush=True)


# ---------------------------------------------------------------- tokenizer


class TextTokenizer(ModelTokenizer, Transform):
    """The model's Hugging Face tokenizer (`tokenizer.json`) as a torchtune ModelTokenizer, with no chat
    template: each message's text is encoded as it is (the first with the tokenizer's own special-token
    template, e.g. a BOS where the model has one), then EOS. Masked messages (the prompt) get no loss.
    Sequences longer than `max_seq_len` are cut at the end (as Hugging Face / TRL truncate)."""

    def __init__(self, path: str, max_seq_len: int | None = None):
        from tokenizers import Tokenizer

        folder = Path(path)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        settings = {}
        if (folder / "tokenizer_config.json").exists():
            settings = json.loads((folder / "tokenizer_config.json").read_text())
        model_config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}

        def token_id(name: str) -> int | None:
            token = settings.get(name)
            if isinstance(token, dict):
                token = token.get("content")
            return self._tokenizer.token_to_id(token) if isinstance(token, str) else None

        eos = token_id("eos_token")
        if eos is None:
            eos = model_config.get("eos_token_id")
            eos = eos[0] if isinstance(eos, list) else eos
        if eos is None:
            raise ValueError(f"{folder}: no eos_token in tokenizer_config.json nor eos_token_id in config.json")
        pad = token_id("pad_token")
        self.eos_id = int(eos)
        self.pad_id = int(pad if pad is not None else eos)
        bos = token_id("bos_token")
        self.bos_id = int(bos) if bos is not None else None
        self.max_seq_len = max_seq_len

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        ids = self._tokenizer.encode(text, add_special_tokens=add_bos).ids
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def tokenize_messages(self, messages, add_end_tokens: bool = True, **_: Any) -> tuple[list[int], list[bool]]:
        tokens: list[int] = []
        mask: list[bool] = []
        for position, message in enumerate(messages):
            ids = self._tokenizer.encode(message.text_content, add_special_tokens=position == 0).ids
            tokens += ids
            mask += [message.masked] * len(ids)
        if add_end_tokens:
            tokens.append(self.eos_id)
            mask.append(messages[-1].masked if messages else False)
        if self.max_seq_len is not None:
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        return tokens, mask

    def __call__(self, sample: dict, inference: bool = False) -> dict:
        messages = sample.pop("messages")
        tokens, mask = self.tokenize_messages(messages, add_end_tokens=not inference)
        sample["tokens"], sample["mask"] = tokens, mask
        return sample


# ---------------------------------------------------------------- LR schedules torchtune 0.6.1 lacks
# (cosine is torchtune's own get_cosine_schedule_with_warmup). Same formulas as transformers'
# get_linear_schedule_with_warmup / get_constant_schedule(_with_warmup).


def linear_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1) -> LambdaLR:
    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return LambdaLR(optimizer, factor, last_epoch)


def constant_schedule_with_warmup(optimizer, num_warmup_steps: int, num_training_steps: int, last_epoch: int = -1) -> LambdaLR:
    def factor(step: int) -> float:
        return step / max(1, num_warmup_steps) if step < num_warmup_steps else 1.0

    return LambdaLR(optimizer, factor, last_epoch)


# ---------------------------------------------------------------- the recipes


class LLMKitMixin:
    """Additions to a torchtune single-device recipe; see the module docstring."""

    def setup(self, cfg) -> None:
        self._llmkit = cfg.get("llmkit", {}) or {}
        self._llmkit_tokens = 0
        super().setup(cfg)
        expected = self._llmkit.get("steps_per_epoch")
        say("plan", steps_per_epoch=self._steps_per_epoch, total_steps=self.total_epochs * self._steps_per_epoch,
            epochs=self.total_epochs, epochs_run=self.epochs_run, global_step=self.global_step,
            batches=len(self._dataloader), examples=len(self._dataloader.dataset))
        if expected is not None and expected != self._steps_per_epoch:
            raise RuntimeError(f"llmkit planned {expected} optimizer steps per epoch, torchtune counts "
                               f"{self._steps_per_epoch}: refusing to train a schedule llmkit did not plan")
        self._val_loader = None
        validation = self._llmkit.get("validation")
        if validation:
            dataset = config.instantiate(validation, self._tokenizer)
            if len(dataset):
                from functools import partial

                from torchdata.stateful_dataloader import StatefulDataLoader
                from torchtune.data import padded_collate_sft

                self._val_loader = StatefulDataLoader(
                    dataset, batch_size=cfg.batch_size, shuffle=False, drop_last=False,
                    collate_fn=partial(padded_collate_sft, padding_idx=self._tokenizer.pad_id,
                                       ignore_idx=self._loss_fn.ignore_index))

    def _setup_data(self, *args, **kwargs):
        loader = super()._setup_data(*args, **kwargs)
        loader.sampler.seed = self.seed  # torchtune builds the sampler with seed=0
        return loader

    def _setup_lr_scheduler(self, cfg_lr_scheduler, num_training_steps, last_epoch, *args, **kwargs):
        if self._resume_from_checkpoint:
            self.global_step = self.epochs_run * self._steps_per_epoch
            last_epoch = self.global_step - 1
        return super()._setup_lr_scheduler(cfg_lr_scheduler, num_training_steps, last_epoch, *args, **kwargs)

    def _loss_step(self, batch):
        if self._model.training:
            real = (batch["tokens"] != self._tokenizer.pad_id) | (batch["labels"] != self._loss_fn.ignore_index)
            self._llmkit_tokens += int(real.sum())
        return super()._loss_step(batch)

    def save_checkpoint(self, epoch: int) -> None:
        # torchtune 0.6.1's LoRA recipe, saving merged weights, merges in place: `{k: v.cpu()}` is no copy on
        # CPU, so get_merged_lora_ckpt's `+=` adds the LoRA delta to the live base weights while the adapter
        # stays on (the model then applies it twice). Keep those weights and put them back after the save.
        merged = getattr(self, "_save_adapter_weights_only", True) is False
        state = self._model.state_dict() if merged else {}
        kept = {k: v.detach().clone() for k, v in state.items()
                if k.endswith(".weight") and k[: -len("weight")] + "lora_a.weight" in state}
        super().save_checkpoint(epoch=epoch)
        with torch.no_grad():
            for key, value in kept.items():
                state[key].copy_(value)
        say("saved", epoch=epoch, step=self.global_step, folder=str(Path(self._output_dir) / f"epoch_{epoch}"))

    @torch.no_grad()
    def evaluate(self) -> tuple[float, int] | None:
        """Mean loss per target token over the validation split (the training loss's normalisation)."""
        if self._val_loader is None:
            return None
        self._model.eval()
        total, count = 0.0, 0
        try:
            for batch in self._val_loader:
                utils.batch_to_device(batch, self._device)
                tokens = int((batch["labels"] != self._loss_fn.ignore_index).sum())
                if tokens == 0:
                    continue
                total += float(self._loss_step(batch)) * tokens
                count += tokens
        finally:
            self._model.train()
        return (total / count, count) if count else None

    def train(self) -> None:
        if self.global_step == 0:
            found = self.evaluate()
            if found is not None:
                say("eval", phase="before", step=0, loss=found[0], tokens=found[1])
        super().train()
        found = self.evaluate()
        if found is not None:
            say("eval", phase="after", step=self.global_step, loss=found[0], tokens=found[1])
        say("done", step=self.global_step, train_tokens=self._llmkit_tokens,
            peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            peak_cuda_bytes=torch.cuda.max_memory_allocated() if self._device.type == "cuda" else None,
            versions={"torchtune": torchtune.__version__, "torch": torch.__version__,
                      "torchao": _version("torchao")})


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


@config.parse
def recipe_main(cfg) -> None:
    name = cfg.llmkit.recipe
    module = _load_recipe(name)
    base = {"lora_finetune_single_device": "LoRAFinetuneRecipeSingleDevice",
            "full_finetune_single_device": "FullFinetuneRecipeSingleDevice"}[name]
    recipe_class = type(f"LLMKit{base}", (LLMKitMixin, getattr(module, base)), {})
    config.log_config(recipe_name=recipe_class.__name__, cfg=cfg)
    recipe = recipe_class(cfg=cfg)
    recipe.setup(cfg=cfg)
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    sys.exit(recipe_main())
