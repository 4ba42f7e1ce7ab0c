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
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from llmkit.catalog import hf_folder
from llmkit.engine import Engine, EngineOptions
from llmkit.errors import EngineError, UnsupportedFeatureError, map_engine_errors
from llmkit.types import (
    Capabilities,
    Completion,
    FinishReason,
    Quantization,
    Request,
    RequestMetrics,
    SamplingParams,
    StreamChunk,
    TokenLogprob,
    Usage,
)

QUANTIZATION_METHODS = ("int8",)  # weight-only, through torchao


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
    """One sequence being decoded."""

    prompt_index: int
    index: int
    prompt_ids: list[int]
    generator: Any
    matcher: Any = None
    out_ids: list[int] = field(default_factory=list)
    text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    ttft: float | None = None
    e2e: float | None = None


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

    # ---- tokens ----------------------------------------------------------------------------------

    def _encode(self, request: Request) -> list[int]:
        if request.messages is not None:
            if not self.tokenizer.chat_template:
                raise UnsupportedFeatureError(self.backend, "chat", f"{self.model!r} has no chat template")
            text = self.tokenizer.apply_chat_template(
                [m.model_dump() for m in request.messages], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self.tokenizer(request.prompt).input_ids

    def _count_tokens(self, request: Request) -> int:
        return len(self._encode(request))

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
                generator = torch.Generator(device=self.device).manual_seed(seed)
                matcher = self._grammars.matcher(compiled) if compiled is not None else None
                rows.append(_Row(prompt_index, index, ids, generator, matcher, prefix_offset=0, read_offset=0,
                                 logprobs=[] if params.logprobs is not None else None))
        return rows

    def _generate(self, requests: list[Request], params: SamplingParams) -> list[Completion]:
        rows = self._rows(requests, params)
        start = time.perf_counter()
        with self._lock:
            for first in range(0, len(rows), self.options.max_batch_size):
                for _ in self._decode(rows[first : first + self.options.max_batch_size], params, start):
                    pass
        return [self._completion(row) for row in rows]

    def _stream(self, request: Request, params: SamplingParams) -> Iterator[StreamChunk]:
        rows = self._rows([request], params)  # compiles the constraint now: errors surface at the call
        return self._stream_rows(rows[0], params)

    def _stream_rows(self, row: _Row, params: SamplingParams) -> Iterator[StreamChunk]:
        emitted_text = 0
        emitted_tokens = 0
        longest_stop = max((len(s) for s in params.stop), default=0)
        with self._lock:
            for _ in self._decode([row], params, time.perf_counter()):
                text_end = len(row.text)
                if row.finish_reason is None and longest_stop:
                    text_end -= _held_back(row.text, params.stop)  # a stop string may be starting
                new_tokens = row.out_ids[emitted_tokens:]
                if not new_tokens and text_end <= emitted_text and row.finish_reason is None:
                    continue
                chunk = StreamChunk(
                    text=row.text[emitted_text:text_end] if text_end > emitted_text else "",
                    token_ids=new_tokens,
                    logprobs=row.logprobs[emitted_tokens:] if row.logprobs is not None else None,
                )
                emitted_text = max(emitted_text, text_end)
                emitted_tokens = len(row.out_ids)
                if row.finish_reason is not None:
                    chunk.finish_reason = row.finish_reason
                    chunk.stop_reason = row.stop_reason
                    chunk.usage = Usage(prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.out_ids))
                yield chunk

    def _completion(self, row: _Row) -> Completion:
        return Completion(
            text=row.text,
            token_ids=row.out_ids,
            finish_reason=row.finish_reason or "abort",
            stop_reason=row.stop_reason,
            usage=Usage(prompt_tokens=len(row.prompt_ids), completion_tokens=len(row.out_ids)),
            logprobs=row.logprobs,
            prompt_index=row.prompt_index,
            index=row.index,
            metrics=RequestMetrics(source="engine", ttft=row.ttft, e2e=row.e2e),
        )

    def _decode(self, rows: list[_Row], params: SamplingParams, start: float) -> Iterator[None]:
        """Decode `rows` together until each finishes; yields after every step. Finished rows leave
        the batch (their KV cache rows are dropped)."""
        from transformers import DynamicCache

        from llmkit_transformers.sampling import apply_penalties, sample

        torch = self._torch
        device = self.device
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        prompt_tensors = [torch.tensor(r.prompt_ids, device=device) for r in rows]
        cache = DynamicCache(config=self.hf_model.config)
        active = list(range(len(rows)))
        bitmask = self._grammars.allocate_bitmask(len(rows)) if params.constraint is not None else None

        with torch.inference_mode(), map_engine_errors(self.backend):
            while active:
                out = self.hf_model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_kwarg: cache},
                )
                logits = out.logits[:, -1, :].float()
                live = [rows[i] for i in active]
                raw_logprobs = torch.log_softmax(logits, dim=-1) if params.logprobs is not None else None
                apply_penalties(logits, params, [prompt_tensors[i] for i in active], [r.out_ids for r in live])
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
                    self._append(row, token, params, raw_logprobs[j] if raw_logprobs is not None else None, now)
                    if row.finish_reason is None:
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

    def _append(self, row: _Row, token: int, params: SamplingParams, logprobs: Any, now: float) -> None:
        """Add one sampled token to a row: text, logprobs, and whether the row is done."""
        row.out_ids.append(token)
        if row.ttft is None:
            row.ttft = now
        if logprobs is not None:
            top = {}
            if params.logprobs:
                values, ids = logprobs.topk(params.logprobs)
                top = {int(i): min(0.0, float(v)) for i, v in zip(ids, values)}
            row.logprobs.append(
                TokenLogprob(token_id=token, token=self.tokenizer.decode([token]), logprob=min(0.0, float(logprobs[token])), top=top)
            )
        old_len = len(row.text)
        row.text += self._detokenize(row)
        if row.matcher is not None:
            if not row.matcher.accept_token(token):
                row.finish_reason, row.stop_reason = "error", token
            elif row.matcher.is_terminated():
                row.finish_reason, row.stop_reason = "stop", token
        elif token in self._eos_ids and not params.ignore_eos:
            row.finish_reason, row.stop_reason = "stop", token
        if params.stop and row.finish_reason is None:
            search_from = max(0, old_len - max(len(s) for s in params.stop) + 1)
            hits = [(row.text.find(s, search_from), s) for s in params.stop]
            hits = [(pos, s) for pos, s in hits if pos >= 0]
            if hits:
                pos, stop = min(hits)
                row.text = row.text[:pos]
                row.finish_reason, row.stop_reason = "stop", stop
        if row.finish_reason is None and (
            len(row.out_ids) >= params.max_tokens or len(row.prompt_ids) + len(row.out_ids) >= self._context
        ):
            row.finish_reason = "length"
        if row.finish_reason is not None:
            row.e2e = now
            if not isinstance(row.stop_reason, str):  # flush a character still waiting for bytes
                row.text += self._detokenize(row, final=True)

    def _detokenize(self, row: _Row, final: bool = False) -> str:
        """Incremental detokenization: the new text since the last call, holding back an incomplete
        UTF-8 character (decoded as U+FFFD) until its remaining bytes arrive, or until `final`."""
        decode = self.tokenizer.decode
        prefix_text = decode(row.out_ids[row.prefix_offset : row.read_offset], skip_special_tokens=True)
        new_text = decode(row.out_ids[row.prefix_offset :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith("\ufffd")):
            row.prefix_offset, row.read_offset = row.read_offset, len(row.out_ids)
            return new_text[len(prefix_text) :]
        return ""


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
