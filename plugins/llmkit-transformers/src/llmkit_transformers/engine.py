"""The reference engine: Hugging Face transformers with llmkit's own decode loop.

One loop serves `generate` (a static batch, finished rows leave the batch) and `stream` (the same loop
with one row, yielding as each token is sampled). Guided decoding masks the logits with xgrammar at
every step. Runs on CPU and CUDA.
"""

from __future__ import annotations

import inspect
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from llmkit.catalog import hf_folder
from llmkit.decoding import DecodeState, prompt_logprobs, top_logprobs
from llmkit.engine import Engine, EngineOptions, check_token_ids
from llmkit.errors import EngineError, UnsupportedFeatureError, map_engine_errors
from llmkit.planner import dtype_name
from llmkit.types import Capabilities, Completion, MemoryUsage, Quantization, Request, SamplingParams, StreamChunk

QUANTIZATION_METHODS = ("int8",)  # weight-only, through torchao
# Most logits (elements) one prompt-scoring step may hold: 2^28 is 1 GiB in float32. Larger batches of
# prompt_logprobs requests are decoded in smaller groups.
PROMPT_LOGITS_BUDGET = 2**28


class TransformersOptions(EngineOptions):
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto': float32 on CPU, bfloat16 on CUDA."
    )
    quantization: Quantization | None = Field(None, description="Load-time quantization; 'int8' (torchao, weight-only).")
    max_batch_size: int = Field(16, ge=1, description="Rows decoded together; larger batches run in groups.")
    max_model_len: int | None = Field(None, ge=8, description="Context length; default: the model's.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU.")
    attn_implementation: Literal["sdpa", "eager"] | None = None
    trust_remote_code: bool = False

    @field_validator("quantization", mode="before")
    @classmethod
    def _method_name(cls, value: Any) -> Any:
        return {"method": value} if isinstance(value, str) else value


@dataclass
class _Row:
    """One sequence being decoded: llmkit's shared state plus what this engine adds."""

    state: DecodeState
    generator: Any
    matcher: Any = None


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
        if quant is not None and quant.method not in QUANTIZATION_METHODS:
            raise UnsupportedFeatureError(self.backend, f"quantization={quant.method!r}", f"supported: {QUANTIZATION_METHODS}")
        if opts.threads:
            torch.set_num_threads(opts.threads)
        device = opts.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = opts.dtype
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        self.device = torch.device(device)
        self._torch = torch
        path = hf_folder(self.model)
        with map_engine_errors(self.backend, {OSError: EngineError}):
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=opts.trust_remote_code)
            kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype), "trust_remote_code": opts.trust_remote_code}
            if opts.attn_implementation:
                kwargs["attn_implementation"] = opts.attn_implementation
            self.hf_model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(self.device).eval()
            if quant is not None:
                from torchao.quantization import Int8WeightOnlyConfig, quantize_

                quantize_(self.hf_model, Int8WeightOnlyConfig())
        config = self.hf_model.config
        self._vocab_size = self.hf_model.get_output_embeddings().weight.shape[0]
        self._context = opts.max_model_len or getattr(config, "max_position_embeddings", None) or 2048
        eos = self.hf_model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self._eos_ids = eos_ids
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else min(eos_ids or {0})
        params = inspect.signature(self.hf_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
        self._lock = threading.Lock()
        self._grammars: Any = None

    @property
    def context_length(self) -> int:
        return self._context

    def _close(self) -> None:
        self.hf_model = None
        self._grammars = None
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

    def _memory(self) -> MemoryUsage:
        """Weights: the bytes of the loaded tensors. The KV cache is not preallocated (it grows with each
        sequence), so its cost per token is measured on a 16-token prompt."""
        from transformers import DynamicCache

        torch = self._torch
        model = self.hf_model
        weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        probe = 16
        cache = DynamicCache(config=model.config)
        with self._lock, torch.inference_mode():
            model(input_ids=torch.full((1, probe), self._pad_id, device=self.device), use_cache=True, logits_to_keep=1,
                  **{self._cache_kwarg: cache})
        kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        kv_dtype = cache.layers[0].keys.dtype
        dtype = "int8" if self.options.quantization is not None else dtype_name(model.dtype)
        return MemoryUsage(source="transformers: bytes of the loaded tensors; KV cache measured on a 16-token prompt",
                           weights_bytes=weights, weights_dtype=dtype, kv_bytes_per_token=kv / probe,
                           kv_dtype=dtype_name(kv_dtype))

    # ---- tokens ----------------------------------------------------------------------------------

    def _encode(self, request: Request) -> list[int]:
        if request.prompt_token_ids is not None:
            return check_token_ids(request.prompt_token_ids, self._vocab_size)
        if request.messages is not None:
            if not self.tokenizer.chat_template:
                raise UnsupportedFeatureError(self.backend, "chat", f"{self.model!r} has no chat template")
            text = self.tokenizer.apply_chat_template(
                [m.model_dump() for m in request.messages], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self.tokenizer(request.prompt).input_ids

    def _tokenize(self, request: Request) -> list[int]:
        return self._encode(request)

    def _grammar_compiler(self) -> Any:
        if self._grammars is None:
            from llmkit_transformers.guided import GrammarCompiler

            self._grammars = GrammarCompiler(self.tokenizer, self._vocab_size, sorted(self._eos_ids))
        return self._grammars

    # ---- generation ------------------------------------------------------------------------------

    def _rows(self, requests: list[Request], params: SamplingParams) -> list[_Row]:
        torch = self._torch
        compiled = self._grammar_compiler().compile(params.constraint) if params.constraint is not None else None
        rows = []
        for prompt_index, request in enumerate(requests):
            ids = self._encode(request)
            for index in range(params.n):
                # Seeded rows depend only on (seed, sample index): the same prompt and seed give the
                # same text whatever else is in the batch.
                seed = hash((params.seed, index)) & (2**63 - 1) if params.seed is not None else random.getrandbits(63)
                state = DecodeState(ids, params, self._decode_text, self._context, prompt_index=prompt_index, index=index)
                rows.append(_Row(state, torch.Generator(device=self.device).manual_seed(seed),
                                 self._grammars.matcher(compiled) if compiled is not None else None))
        return rows

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate(self, requests: list[Request], params: SamplingParams) -> list[Completion]:
        rows = self._rows(requests, params)
        start = time.perf_counter()
        group = self.options.max_batch_size
        if params.prompt_logprobs is not None:  # the first step keeps rows × prompt length × vocabulary logits
            longest = max(len(r.state.prompt_ids) for r in rows)
            group = max(1, min(group, PROMPT_LOGITS_BUDGET // (longest * self._vocab_size)))
        with self._lock:
            for first in range(0, len(rows), group):
                for _ in self._decode(rows[first : first + group], params, start):
                    pass
        return [row.state.completion() for row in rows]

    def _stream(self, request: Request, params: SamplingParams) -> Iterator[StreamChunk]:
        rows = self._rows([request], params)  # compiles the constraint now: errors surface at the call
        return self._stream_rows(rows[0], params)

    def _stream_rows(self, row: _Row, params: SamplingParams) -> Iterator[StreamChunk]:
        with self._lock:
            for _ in self._decode([row], params, time.perf_counter()):
                chunk = row.state.take_chunk()
                if chunk is not None:
                    yield chunk

    def _decode(self, rows: list[_Row], params: SamplingParams, start: float) -> Iterator[None]:
        """Decode `rows` together until each finishes; yields after every step. Finished rows leave
        the batch (their KV cache rows are dropped)."""
        from transformers import DynamicCache

        from llmkit_transformers.sampling import apply_penalties, sample

        torch = self._torch
        device = self.device
        width = max(len(r.state.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding
            prompt = row.state.prompt_ids
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
            mask[i, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        prompt_tensors = [torch.tensor(r.state.prompt_ids, device=device) for r in rows]
        cache = DynamicCache(config=self.hf_model.config)
        active = list(range(len(rows)))
        bitmask = self._grammars.allocate_bitmask(len(rows)) if params.constraint is not None else None
        score_prompt = params.prompt_logprobs is not None  # the first forward then keeps every position's logits

        with torch.inference_mode(), map_engine_errors(self.backend):
            while active:
                out = self.hf_model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=0 if score_prompt else 1,
                    **{self._cache_kwarg: cache},
                )
                if score_prompt:
                    for i, row in enumerate(rows):
                        ids = row.state.prompt_ids
                        rows_logprobs = torch.log_softmax(out.logits[i, width - len(ids) : width - 1].float(), dim=-1)
                        row.state.prompt_logprobs = [None] + prompt_logprobs(rows_logprobs, ids[1:], params.prompt_logprobs, self._token_text)
                    score_prompt = False
                logits = out.logits[:, -1, :].float()
                live = [rows[i] for i in active]
                raw_logprobs = torch.log_softmax(logits, dim=-1) if params.logprobs is not None else None
                apply_penalties(logits, params, [prompt_tensors[i] for i in active], [r.state.out_ids for r in live])
                if bitmask is not None:
                    for j, row in enumerate(live):
                        row.matcher.fill_next_token_bitmask(bitmask, j)
                    self._grammars.apply(logits, bitmask[: len(live)])
                elif params.ignore_eos and self._eos_ids:
                    logits[:, sorted(self._eos_ids)] = float("-inf")
                tokens = sample(logits, params, [r.generator for r in live]).tolist()
                now = time.perf_counter() - start

                keep = []
                for j, (row, token) in enumerate(zip(live, tokens)):
                    logprob = None
                    if raw_logprobs is not None:
                        logprob = top_logprobs(raw_logprobs[j], token, params.logprobs, self._token_text)
                    ends, rejected = False, False
                    if row.matcher is not None:
                        rejected = not row.matcher.accept_token(token)
                        ends = not rejected and row.matcher.is_terminated()
                    else:
                        ends = token in self._eos_ids and not params.ignore_eos
                    row.state.append(token, now, logprob=logprob, ends=ends, rejected=rejected)
                    if not row.state.finished:
                        keep.append(j)
                yield
                if len(keep) < len(active):
                    if not keep:
                        break
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask, positions = mask[index], positions[index]
                    tokens = [tokens[j] for j in keep]
                    active = [active[j] for j in keep]
                input_ids = torch.tensor(tokens, device=device).unsqueeze(-1)
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
                positions = positions[:, -1:] + 1

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])
