"""The reference engine: Hugging Face transformers with llmkit's own decode loop, CPU or CUDA.

One worker thread owns the model and runs iteration-level batching: between two decode steps it admits
the requests that arrived (prefills them, then merges their KV cache into the running batch), so
concurrent callers share forward passes; a finished or cancelled row leaves the batch at once. Each row
keeps its own sampling parameters, grammar matcher and seeded generator. Guided decoding masks the logits
with xgrammar at every step.

llmkit options → transformers:
    max_batch_size  rows decoded together (default 16)
    max_model_len   the context (default: the model's max_position_embeddings)
    dtype           from_pretrained(dtype=...); auto: float32 on CPU, bfloat16 on CUDA
    seed            the engine's generator of per-request seeds (requests without a seed of their own)
    prefix_caching  refused when True: this engine keeps no cache between requests
    memory_fraction torch.cuda.set_per_process_memory_fraction on CUDA; refused on CPU

A PEFT LoRA adapter folder given as the model (what `llmkit.tune` hands over) loads its base model, named
in adapter_config.json, with the adapter merged into the weights (needs peft).
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from llmkit.catalog import hf_folder
from llmkit.engine import Engine, EngineOptions
from llmkit.errors import EngineError, UnsupportedFeatureError, map_engine_errors
from llmkit.kit.chat import HFPromptEncoder
from llmkit.kit.decoding import DecodeState, prompt_logprobs, top_logprobs
from llmkit.kit.generation import Generation
from llmkit.kit.lora import adapter_base, is_adapter
from llmkit.kit.worker import EngineWorker
from llmkit.planner import dtype_name
from llmkit.types import Capabilities, MemoryUsage, Quantization, Request, SpecialTokens, WeightsInfo

# Load-time, weight-only, through torchao (0.18 read): int8 = Int8WeightOnlyConfig (per channel; CPU and CUDA);
# int4 = Int4WeightOnlyConfig with the tinygemm layout (tile_packed_to_4d, groups of 128 by default, bf16
# activations), whose kernels are CUDA's. torchao leaves a Linear whose width the group does not divide
# unquantized with only a log line (quant_api._int4_weight_only_quantize_tensor): refused here instead.
QUANTIZATION_METHODS = ("int8", "int4")
INT4_GROUP = 128
# Most logits (elements) one prompt-scoring step may hold: 2^28 is 1 GiB in float32. A long prompt whose
# positions are scored is prefilled in chunks of PROMPT_LOGITS_BUDGET // vocabulary positions.
PROMPT_LOGITS_BUDGET = 2**28


class TransformersOptions(EngineOptions):
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    quantization: Quantization | None = Field(None, description="Load-time weight-only quantization through torchao: 'int8' "
                                              "(CPU, CUDA) or 'int4' (CUDA; group_size 128 unless given).")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU.")
    attn_implementation: Literal["sdpa", "eager"] | None = None
    trust_remote_code: bool = False

    @field_validator("quantization", mode="before")
    @classmethod
    def _method_name(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value


def check_quantization(quant: Quantization, device: str) -> None:
    """Refuse, before loading, a method or setting torchao cannot run here, naming what would."""
    here = [m for m in QUANTIZATION_METHODS if m != "int4" or device == "cuda"]
    if quant.method not in here:
        why = "int4's torchao kernels (tinygemm) are CUDA's" if quant.method == "int4" else f"torchao methods here: {', '.join(here)}"
        raise UnsupportedFeatureError("transformers", f"quantization={quant.method!r} on {device}", f"{why}; runs here: {', '.join(here)}")
    if quant.bits is not None and quant.bits != {"int8": 8, "int4": 4}[quant.method]:
        raise UnsupportedFeatureError("transformers", f"quantization bits={quant.bits} for {quant.method}", f"{quant.method} is "
                                      f"{quant.method[3:]} bits")
    if quant.group_size is not None and quant.method != "int4":
        raise UnsupportedFeatureError("transformers", f"quantization group_size with {quant.method}", "int8 is per channel")
    if quant.applied != "load":
        raise UnsupportedFeatureError("transformers", "quantization applied='offline'", "quantize ahead of time with "
                                      "llmkit.quantize and load the result")


def checkpoint_quantization(config: Any) -> str | None:
    """The method a loaded checkpoint declares in its config (`quantization_config.quant_method`: a dict when read
    from config.json, a transformers QuantizationConfig once loaded, whose method is a str enum), else None."""
    declared = getattr(config, "quantization_config", None)
    method = declared.get("quant_method") if isinstance(declared, dict) else getattr(declared, "quant_method", None)
    return None if method is None else str(getattr(method, "value", method))


def quantize_weights(model: Any, quant: Quantization) -> None:
    """torchao's weight-only quantization of every Linear layer, in place."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    if quant.method == "int8":
        quantize_(model, Int8WeightOnlyConfig())
        return
    group = quant.group_size or INT4_GROUP
    widths = sorted({m.in_features for m in model.modules() if type(m).__name__ == "Linear" and m.in_features % group})
    if widths:
        raise UnsupportedFeatureError("transformers", f"quantization int4 group_size={group}", f"Linear input widths {widths} "
                                      "are not multiples of it (torchao would leave those layers unquantized)")
    quantize_(model, Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d"))


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor holds. A torchao quantized weight is a tensor subclass whose numel and element size are
    the float tensor it stands for: its bytes are those of the tensors inside it (`__tensor_flatten__`)."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


@dataclass
class _Row:
    """One sequence in the batch: llmkit's decode state plus what this engine adds."""

    generation: Generation
    state: DecodeState
    generator: Any
    prompt: Any  # tensor of prompt ids, for the repetition penalty
    matcher: Any = None
    bitmask: Any = None


class _Batch:
    """The rows being decoded and their shared, left-padded KV cache."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Any = None  # (rows, length) 1 = real token
        self.positions: Any = None  # (rows, 1) position of each row's next input token
        self.tokens: list[int] = []  # each row's last sampled token, the next step's input


class TransformersEngine(Engine):
    backend = "transformers"
    capabilities_ = Capabilities(
        backend="transformers",
        constraints=frozenset({"choice", "regex", "json_schema", "grammar"}),
        quantization=QUANTIZATION_METHODS,
        devices=("cpu", "cuda"),
    )
    Options = TransformersOptions

    # ---- loading ---------------------------------------------------------------------------------

    def _start(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        opts = self.options
        quant = opts.quantization
        if opts.prefix_caching:
            raise UnsupportedFeatureError(self.backend, "prefix_caching=True", "this engine keeps no KV cache between requests")
        if opts.threads:
            torch.set_num_threads(opts.threads)
        device = opts.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if quant is not None:
            check_quantization(quant, self.device.type)
        if opts.memory_fraction is not None:
            if self.device.type != "cuda":
                raise UnsupportedFeatureError(self.backend, "memory_fraction", "on CPU the engine allocates as it goes")
            torch.cuda.set_per_process_memory_fraction(opts.memory_fraction, self.device)
        dtype = opts.dtype or "auto"
        if dtype == "auto":
            dtype = "float32" if self.device.type == "cpu" else "bfloat16"
        self._torch = torch
        path = hf_folder(self.model)
        self._path = path
        # A LoRA adapter folder (what llmkit.tune hands over) loads as its base with the adapter merged in.
        adapter, base = (path, hf_folder(adapter_base(path))) if is_adapter(path) else (None, path)
        with map_engine_errors(self.backend, {OSError: EngineError}):
            has_tokenizer = adapter is not None and (Path(adapter) / "tokenizer_config.json").exists()
            tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base, trust_remote_code=opts.trust_remote_code)
            kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "trust_remote_code": opts.trust_remote_code}
            if opts.attn_implementation:
                kwargs["attn_implementation"] = opts.attn_implementation
            model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            self.hf_model = model.to(self.device).eval()
            if quant is not None:
                quantize_weights(self.hf_model, quant)
        config = self.hf_model.config
        self._vocab_size = self.hf_model.get_output_embeddings().weight.shape[0]
        self._context = opts.max_model_len or getattr(config, "max_position_embeddings", None) or 2048
        self.encoder = HFPromptEncoder(tokenizer, self.backend, self.model, self._vocab_size)
        self.tokenizer = tokenizer
        eos = self.hf_model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self._eos_ids = eos_ids
        pad = tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(eos_ids or {0})
        import inspect

        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.hf_model.forward).parameters else "past_key_values"
        self._max_batch = opts.max_batch_size or 16
        self._seeds = random.Random(opts.seed)
        self._seeds_lock = threading.Lock()
        self._grammars: Any = None
        self._grammars_lock = threading.Lock()
        self._worker = EngineWorker(self.backend, self._loop)

    @property
    def context_length(self) -> int:
        return self._context

    def _close(self) -> None:
        self._worker.stop()
        self.hf_model = None
        self._grammars = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

    def _special_tokens(self) -> SpecialTokens:
        return self.encoder.special_tokens(self._eos_ids)

    def _weights(self) -> WeightsInfo:
        from llmkit.planner import WEIGHT_BITS

        if self.options.quantization is not None:
            quantization = self.options.quantization.method
        else:  # a checkpoint that declares its own (compressed-tensors, GPTQ...), as vLLM's adapter reports it
            quantization = checkpoint_quantization(self.hf_model.config)
        dtype = quantization or dtype_name(next(self.hf_model.parameters()).dtype)
        return WeightsInfo(format="safetensors", dtype=dtype, bits=WEIGHT_BITS.get(dtype), kv_cache_dtype=dtype_name(self.hf_model.dtype),
                           quantization=quantization, source=str(self._path))

    def _memory(self) -> MemoryUsage:
        return self._worker.call(self._measure_memory)

    def _measure_memory(self) -> MemoryUsage:
        """Weights: the bytes of the loaded tensors. The KV cache is not preallocated (it grows with each
        sequence), so its cost per token is measured on a 16-token prompt."""
        from transformers import DynamicCache

        torch = self._torch
        model = self.hf_model
        weights = sum(tensor_bytes(t) for t in {id(t): t for t in [*model.parameters(), *model.buffers()]}.values())
        probe = 16
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=torch.full((1, probe), self._pad_id, device=self.device), use_cache=True, logits_to_keep=1,
                  **{self._cache_kwarg: cache})
        kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        kv_dtype = cache.layers[0].keys.dtype
        dtype = self.options.quantization.method if self.options.quantization is not None else dtype_name(model.dtype)
        return MemoryUsage(source="transformers: bytes of the loaded tensors; KV cache measured on a 16-token prompt",
                           weights_bytes=weights, weights_dtype=dtype, kv_bytes_per_token=kv / probe,
                           kv_dtype=dtype_name(kv_dtype))

    # ---- requests (caller threads) ---------------------------------------------------------------

    def _tokenize(self, request: Request) -> list[int]:
        return self.encoder.encode(request)

    def _grammar_compiler(self) -> Any:
        with self._grammars_lock:
            if self._grammars is None:
                from llmkit_transformers.guided import GrammarCompiler

                self._grammars = GrammarCompiler(self.tokenizer, self._vocab_size, sorted(self._eos_ids))
            return self._grammars

    def _submit(self, generation: Generation) -> None:
        """Compile the constraint here (errors reach the caller at the call) and queue the rows."""
        params = generation.params
        compiled = self._grammar_compiler().compile(params.constraint) if params.constraint is not None else None
        prompt = list(generation.request.prompt_token_ids)
        if params.seed is None:
            with self._seeds_lock:
                base_seed = self._seeds.getrandbits(63)
        rows = []
        for index in range(params.n):
            # Seeded rows depend only on (seed, sample index): the same prompt and seed give the same text
            # whatever else is in the batch.
            seed = hash((params.seed, index)) & (2**63 - 1) if params.seed is not None else hash((base_seed, index)) & (2**63 - 1)
            state = DecodeState(prompt, params, self.encoder.decode, self._context, index=index)
            matcher = self._grammars.matcher(compiled) if compiled is not None else None
            rows.append(_Row(generation, state, seed, None, matcher))
        generation.rows = rows
        self._worker.submit(generation)

    # ---- the worker thread -----------------------------------------------------------------------

    def _loop(self, worker: EngineWorker) -> None:
        torch = self._torch
        batch = _Batch()
        waiting: deque[Generation] = deque()
        with torch.inference_mode():
            while not worker.stopping:
                self._drop_cancelled(batch, worker)
                room = self._max_batch - len(batch.rows)
                idle = not batch.rows and not waiting
                waiting.extend(worker.admit(limit=self._max_batch if idle else max(room, 0), wait=idle))
                if worker.stopping:
                    break
                admitted: list[Generation] = []
                while waiting and (room >= waiting[0].params.n or (not batch.rows and not admitted)):
                    generation = waiting.popleft()
                    if generation.cancelled:
                        worker.finish(generation)
                        continue
                    admitted.append(generation)
                    room -= generation.params.n
                if admitted and batch.rows and not self._can_merge(batch):
                    waiting.extendleft(reversed(admitted))  # this model's cache cannot take rows mid-flight
                    admitted = []
                try:
                    if admitted:
                        self._admit(batch, admitted, worker)
                    if batch.rows:
                        self._step(batch, worker)
                except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the engine
                    failed = {row.generation for row in batch.rows} | set(admitted)
                    for generation in failed:
                        worker.finish(generation, EngineError(f"{self.backend}: {type(exc).__name__}: {exc}"))
                    batch = _Batch()

    def _can_merge(self, batch: _Batch) -> bool:
        return all(type(layer).__name__ == "DynamicLayer" for layer in batch.cache.layers)

    def _drop_cancelled(self, batch: _Batch, worker: EngineWorker) -> None:
        gone = {row.generation for row in batch.rows if row.generation.cancelled or row.generation.ended}
        if gone:
            self._keep(batch, [j for j, row in enumerate(batch.rows) if row.generation not in gone])
            for generation in gone:
                worker.finish(generation)

    def _admit(self, batch: _Batch, generations: list[Generation], worker: EngineWorker) -> None:
        """Prefill the new requests, sample their first tokens and merge their rows into the batch."""
        torch = self._torch
        plain = [g for g in generations if g.params.prompt_logprobs is None]
        parts = []
        if plain:
            parts.append(self._prefill(plain))
        parts += [self._prefill_scored(g) for g in generations if g.params.prompt_logprobs is not None]
        for cache, mask, logits, group in parts:
            # n samples of one prompt share its prefill: repeat each prompt's cache row n times
            repeats = torch.tensor([g.params.n for g in group], device=self.device)
            if int(repeats.max()) > 1:
                for layer in cache.layers:
                    layer.keys = layer.keys.repeat_interleave(repeats, dim=0)
                    layer.values = layer.values.repeat_interleave(repeats, dim=0)
                mask = mask.repeat_interleave(repeats, dim=0)
                logits = logits.repeat_interleave(repeats, dim=0)
            rows = [row for g in group for row in g.rows]
            for row in rows:
                row.generator = torch.Generator(device=self.device).manual_seed(row.generator)
                row.prompt = torch.tensor(row.state.prompt_ids, device=self.device)
            tokens = []
            for j, row in enumerate(rows):
                if row.state.params.scoring_only:
                    row.state.finish_scored()
                    tokens.append(0)
                else:
                    tokens.append(self._sample(row, logits[j]))
                self._emit(row)
            self._merge(batch, rows, cache, mask, tokens)
        self._retire(batch, worker)

    def _prefill(self, group: list[Generation]) -> tuple:
        """One forward over the group's prompts, left-padded; the last position's logits."""
        from transformers import DynamicCache

        torch = self._torch
        prompts = [g.request.prompt_token_ids for g in group]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt)
            mask[i, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache(config=self.hf_model.config)
        out = self.hf_model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
        return cache, mask, out.logits[:, -1, :].float(), group

    def _prefill_scored(self, generation: Generation) -> tuple:
        """Prefill one prompt whose positions are scored, in chunks that bound the logits held."""
        from transformers import DynamicCache

        torch = self._torch
        prompt = generation.request.prompt_token_ids
        chunk = max(1, PROMPT_LOGITS_BUDGET // self._vocab_size)
        cache = DynamicCache(config=self.hf_model.config)
        entries: list = [None]
        k = generation.params.prompt_logprobs
        last = None
        for start in range(0, len(prompt), chunk):
            piece = prompt[start:start + chunk]
            out = self.hf_model(input_ids=torch.tensor([piece], device=self.device),
                                attention_mask=torch.ones((1, start + len(piece)), dtype=torch.long, device=self.device),
                                position_ids=torch.arange(start, start + len(piece), device=self.device).unsqueeze(0),
                                use_cache=True, logits_to_keep=0, **{self._cache_kwarg: cache})
            logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
            following = prompt[start + 1:start + 1 + len(piece)]  # the last row predicts the first output token
            entries += prompt_logprobs(logprobs[:len(following)], following, k, self.encoder.token_text)
            last = out.logits[0, -1:, :].float()
            del out, logprobs
        for row in generation.rows:
            row.state.prompt_logprobs = entries
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=self.device)
        return cache, mask, last, [generation]

    def _merge(self, batch: _Batch, rows: list[_Row], cache: Any, mask: Any, tokens: list[int]) -> None:
        """Append rows (and their cache, left-padded to a common length) to the batch."""
        torch = self._torch
        positions = mask.sum(-1, keepdim=True)
        if batch.cache is None:
            batch.cache, batch.mask, batch.positions = cache, mask, positions
        else:
            old, new = batch.mask.shape[1], mask.shape[1]
            width = max(old, new)
            pad = torch.nn.functional.pad
            for mine, theirs in zip(batch.cache.layers, cache.layers):
                mine.keys = torch.cat([pad(mine.keys, (0, 0, width - old, 0)), pad(theirs.keys, (0, 0, width - new, 0))])
                mine.values = torch.cat([pad(mine.values, (0, 0, width - old, 0)), pad(theirs.values, (0, 0, width - new, 0))])
            batch.mask = torch.cat([pad(batch.mask, (width - old, 0)), pad(mask, (width - new, 0))])
            batch.positions = torch.cat([batch.positions, positions])
        batch.rows += rows
        batch.tokens += tokens

    def _step(self, batch: _Batch, worker: EngineWorker) -> None:
        """One decode step for every row."""
        torch = self._torch
        ids = torch.tensor(batch.tokens, device=self.device).unsqueeze(-1)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=-1)
        out = self.hf_model(input_ids=ids, attention_mask=batch.mask, position_ids=batch.positions, use_cache=True,
                            logits_to_keep=1, **{self._cache_kwarg: batch.cache})
        batch.positions = batch.positions + 1
        logits = out.logits[:, -1, :].float()
        for j, row in enumerate(batch.rows):
            if not row.state.finished:
                batch.tokens[j] = self._sample(row, logits[j])
                self._emit(row)
        self._retire(batch, worker)

    def _sample(self, row: _Row, logits: Any) -> int:
        """Sample `row`'s next token from its (vocab,) logits and append it to its state."""
        from llmkit_transformers.sampling import apply_penalties, sample

        torch = self._torch
        params = row.state.params
        raw = torch.log_softmax(logits, dim=-1) if params.logprobs is not None else None
        apply_penalties(logits, params, row.prompt, row.state.out_ids)
        if row.matcher is not None:
            if row.bitmask is None:
                row.bitmask = self._grammars.allocate_bitmask(1)
            row.matcher.fill_next_token_bitmask(row.bitmask, 0)
            self._grammars.apply(logits.unsqueeze(0), row.bitmask)
        elif params.ignore_eos and self._eos_ids:
            logits[sorted(self._eos_ids)] = float("-inf")
        token = sample(logits, params, row.generator)
        logprob = top_logprobs(raw, token, params.logprobs, self.encoder.token_text) if raw is not None else None
        ends, rejected = False, False
        if row.matcher is not None:
            rejected = not row.matcher.accept_token(token)
            ends = not rejected and row.matcher.is_terminated()
        else:
            ends = token in self._eos_ids and not params.ignore_eos
        row.state.append(token, logprob=logprob, ends=ends, rejected=rejected)
        return token

    @staticmethod
    def _emit(row: _Row) -> None:
        chunk = row.state.take_chunk()
        if chunk is not None:
            row.generation.push(chunk)

    def _retire(self, batch: _Batch, worker: EngineWorker) -> None:
        """Drop finished rows; end a generation when all its rows are done."""
        if all(not row.state.finished for row in batch.rows):
            return
        done = {row.generation for row in batch.rows if row.state.finished}
        self._keep(batch, [j for j, row in enumerate(batch.rows) if not row.state.finished])
        for generation in done:
            if all(row.state.finished for row in generation.rows):
                worker.finish(generation)

    def _keep(self, batch: _Batch, keep: list[int]) -> None:
        """Keep only the rows at `keep` (cache included), and cut left padding no row needs any more."""
        if not keep:
            batch.__init__()
            return
        torch = self._torch
        index = torch.tensor(keep, device=self.device)
        batch.cache.batch_select_indices(index)
        batch.mask, batch.positions = batch.mask[index], batch.positions[index]
        batch.rows = [batch.rows[j] for j in keep]
        batch.tokens = [batch.tokens[j] for j in keep]
        unused = int((batch.mask.cumsum(-1) == 0).sum(-1).min())
        if unused:
            batch.mask = batch.mask[:, unused:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]

