"""llama.cpp through llama-cpp-python, driving `Llama.generate` token by token.

`create_completion` would hide token ids and decide stops itself; the token-level generator lets llmkit
apply the same stop-string, detokenization and chunk logic as every engine (`llmkit.decoding`), read
logprobs straight from the context's logits, and report prefix-cache reuse.

SamplingParams → llama.cpp (checked against llama_cpp/llama.py 0.3.36, `Llama._init_sampler`):
    temperature        → temp (0 → greedy sampler)
    top_k              → top_k (0 disables, as in llmkit)
    top_p, min_p       → top_p, min_p; typical_p fixed at 1.0 (off), mirostat off
    repetition_penalty → repeat_penalty  } llama.cpp penalises the tokens *generated* in the window
    presence_penalty   → present_penalty } `penalty_last_n` (llmkit sets -1: the whole context), not
    frequency_penalty  → freq_penalty    } the prompt; vLLM's repetition penalty also counts the prompt.
    seed               → Llama.set_seed before each sequence (n > 1: one derived seed per sample)
    constraint         → a GBNF grammar sampler: choice/regex compiled by llmkit.grammars, JSON schema by
                         llama.cpp's own converter, grammar as given; each is parsed by llama.cpp first
    ignore_eos         → end-of-generation tokens do not end the sequence (vLLM's meaning)
    stop, max_tokens, logprobs, n → handled by llmkit's decode state around the generator
    prompt_logprobs    → the prompt is evaluated from scratch with every position's logits kept (as vLLM
                         skips its prefix cache for such requests)
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from llmkit.catalog import gguf_path, hf_folder
from llmkit.decoding import DecodeState, prompt_logprobs, top_logprobs
from llmkit.engine import Engine, EngineOptions, check_token_ids
from llmkit.errors import EngineStartupError, InvalidRequestError, UnsupportedFeatureError, map_engine_errors
from llmkit.grammars import RegexNotExpressible, choice_gbnf, regex_gbnf
from llmkit.planner import dtype_name
from llmkit.types import (
    Capabilities,
    Choice,
    Completion,
    Grammar,
    JsonSchema,
    MemoryUsage,
    Quantization,
    Regex,
    Request,
    SamplingParams,
    StreamChunk,
)

MAX_DEFAULT_CONTEXT = 8192
# general.file_type of a GGUF (llama.cpp's enum llama_ftype) → llmkit.planner's weight names
GGUF_FILE_TYPES = {0: "fp32", 1: "fp16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 15: "q4_k_m", 17: "q5_k_m", 18: "q6_k", 32: "bf16"}
KV_CACHE_LOG = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells.*?K \((\w+)\)")

# What llama-cpp-python's JSON-schema converter (llama_cpp/llama_grammar.py, SchemaConverter) enforces,
# plus annotations that constrain nothing. Anything else (minimum, maximum, multipleOf, ...) would be
# dropped silently by the converter, so a schema using it is refused.
SCHEMA_KEYWORDS = {
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
    "definitions", "title", "description", "$schema", "$id", "default", "examples", "$comment",
}
SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def unsupported_schema_keywords(schema: Any, path: str = "#") -> list[str]:
    """JSON-pointer-like paths of keywords the converter would not enforce."""
    if not isinstance(schema, dict):
        return []
    found = [f"{path}/{key}" for key in schema if key not in SCHEMA_KEYWORDS]
    for key in SUBSCHEMA_MAPS:
        for name, sub in (schema.get(key) or {}).items():
            found += unsupported_schema_keywords(sub, f"{path}/{key}/{name}")
    for key in SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(key) or []):
            found += unsupported_schema_keywords(sub, f"{path}/{key}/{i}")
    for key in ("items", "additionalProperties"):
        found += unsupported_schema_keywords(schema.get(key), f"{path}/{key}")
    return found


class LlamaCppOptions(EngineOptions):
    n_ctx: int | None = Field(
        None, ge=16, description=f"Context length; default: the model's, at most {MAX_DEFAULT_CONTEXT}. llama.cpp rounds it up to a multiple of 256."
    )
    prefix_caching: bool = Field(True, description="Reuse the KV cache of the previous prompt's common prefix.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per step.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to a GPU build; -1 = all.")
    flash_attn: bool = False
    use_mmap: bool = True
    chat_template: str | None = Field(None, description="Jinja chat template; default: the GGUF's own.")
    verbose: bool = False


class LlamaCppEngine(Engine):
    backend = "llamacpp"
    capabilities_ = Capabilities(
        backend="llamacpp",
        constraints=frozenset({"choice", "regex", "json_schema", "grammar"}),
        quantization=("f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"),  # produced by quantize_model
        prefix_caching=True,
        batch_invariant_greedy=True,  # one sequence at a time: there is no batch to vary with
        devices=("cpu",),
    )
    Options = LlamaCppOptions

    def _start(self) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        opts = self.options
        path = str(gguf_path(self.model))
        n_ctx = opts.n_ctx or 0  # 0: the model's training context, capped below
        with map_engine_errors(self.backend, {ValueError: EngineStartupError}), _llama_log(llama_cpp, opts.verbose) as log:
            llm = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_threads=opts.n_threads or os.cpu_count(),
                n_batch=opts.n_batch,
                n_gpu_layers=opts.n_gpu_layers,
                flash_attn=opts.flash_attn,
                use_mmap=opts.use_mmap,
                last_n_tokens_size=-1,
                verbose=opts.verbose,
            )
            if opts.n_ctx is None and llm.n_ctx() > MAX_DEFAULT_CONTEXT:
                llm.close()
                llm = llama_cpp.Llama(
                    model_path=path, n_ctx=MAX_DEFAULT_CONTEXT, n_threads=opts.n_threads or os.cpu_count(),
                    n_batch=opts.n_batch, n_gpu_layers=opts.n_gpu_layers, flash_attn=opts.flash_attn,
                    use_mmap=opts.use_mmap, last_n_tokens_size=-1, verbose=opts.verbose,
                )
        self.llm = llm
        self._load_log = "".join(log)
        self._vocab = llm._model.vocab
        self._n_vocab = llm.n_vocab()
        template = opts.chat_template or llm.metadata.get("tokenizer.chat_template")
        self._chat = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._chat = Jinja2ChatFormatter(
                template,
                eos_token=llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else "",
                bos_token=llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else "",
                add_generation_prompt=True,
            )
        self._lock = threading.Lock()

    @classmethod
    def quantize_model(cls, model: str, quantization: Quantization, output: Path) -> Path:
        """Hugging Face folder (or catalog model, through its converted folder) → f16 GGUF (cached) →
        `quantization.method`. A GGUF is not re-quantized: that would stack two quantization errors."""
        from llmkit_llamacpp.gguf_tools import f16_gguf_for, quantize_gguf

        if Path(model).suffix == ".gguf":
            raise UnsupportedFeatureError(cls.backend, "quantize from GGUF", "give the Hugging Face folder or a catalog name")
        f16 = f16_gguf_for(hf_folder(model))
        if quantization.method == "f16":
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(f16.read_bytes())
            return output
        return quantize_gguf(f16, output, quantization.method)

    def capabilities(self) -> Capabilities:
        return self.capabilities_.model_copy(update={"prefix_caching": self.options.prefix_caching})

    @property
    def context_length(self) -> int:
        return self.llm.n_ctx()

    def _close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()

    # ---- tokens and text -------------------------------------------------------------------------

    def _encode(self, request: Request) -> list[int]:
        if request.prompt_token_ids is not None:
            return check_token_ids(request.prompt_token_ids, self._n_vocab)
        if request.messages is not None:
            if self._chat is None:
                raise UnsupportedFeatureError(self.backend, "chat", f"{self.model!r} has no chat template")
            text = self._chat(messages=[m.model_dump() for m in request.messages]).prompt
            return self.llm.tokenize(text.encode(), add_bos=False, special=True)
        return self.llm.tokenize(request.prompt.encode(), add_bos=True, special=True)

    def _tokenize(self, request: Request) -> list[int]:
        return self._encode(request)

    def _decode_text(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=False).decode("utf-8", errors="replace")

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # ---- constraints -----------------------------------------------------------------------------

    def _grammar(self, constraint: Choice | Regex | JsonSchema | Grammar | None) -> Any:
        if constraint is None:
            return None
        from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

        try:
            if isinstance(constraint, Choice):
                text = choice_gbnf(constraint.choices)
            elif isinstance(constraint, Regex):
                text = regex_gbnf(constraint.pattern)
            elif isinstance(constraint, JsonSchema):
                unenforced = unsupported_schema_keywords(constraint.schema_)
                if unenforced:
                    raise UnsupportedFeatureError(
                        self.backend, "constraint:json_schema", f"llama.cpp's converter would not enforce {', '.join(unenforced)}"
                    )
                text = json_schema_to_gbnf(json.dumps(constraint.schema_))
            else:
                text = constraint.grammar
        except RegexNotExpressible as exc:
            raise UnsupportedFeatureError(self.backend, "constraint:regex", str(exc)) from exc
        except Exception as exc:  # llama.cpp's schema converter raises plain exceptions for what it lacks
            raise UnsupportedFeatureError(self.backend, f"constraint:{constraint.kind}", f"{type(exc).__name__}: {exc}") from exc
        # llama.cpp's sampler init returns NULL for a grammar it cannot parse, and llama-cpp-python would
        # add that NULL to the sampler chain: parse it once here and refuse it cleanly.
        probe = self._llama_cpp.llama_sampler_init_grammar(self._vocab, text.encode(), b"root")
        if not probe:
            raise InvalidRequestError(
                f"llama.cpp cannot parse the {constraint.kind} constraint's grammar", parameter=f"constraint.{constraint.kind}", value=text[:200]
            )
        self._llama_cpp.llama_sampler_free(probe)
        return LlamaGrammar.from_string(text, verbose=False)

    # ---- generation ------------------------------------------------------------------------------

    def _generate(self, requests: list[Request], params: SamplingParams) -> list[Completion]:
        grammar = self._grammar(params.constraint)
        prompts = [self._encode(r) for r in requests]
        states = []
        with self._lock:
            for prompt_index, ids in enumerate(prompts):
                for index in range(params.n):
                    state = DecodeState(ids, params, self._decode_text, self.context_length, prompt_index=prompt_index, index=index)
                    for _ in self._decode(state, grammar, time.perf_counter()):
                        pass
                    states.append(state)
        return [s.completion() for s in states]

    def _stream(self, request: Request, params: SamplingParams) -> Iterator[StreamChunk]:
        grammar = self._grammar(params.constraint)  # errors surface at the call, not at the first next()
        state = DecodeState(self._encode(request), params, self._decode_text, self.context_length)
        return self._stream_state(state, grammar)

    def _stream_state(self, state: DecodeState, grammar: Any) -> Iterator[StreamChunk]:
        with self._lock:
            for _ in self._decode(state, grammar, time.perf_counter()):
                chunk = state.take_chunk()
                if chunk is not None:
                    yield chunk

    def _decode(self, state: DecodeState, grammar: Any, start: float) -> Iterator[None]:
        params, llm = state.params, self.llm
        seed = (hash((params.seed, state.index)) if params.seed is not None else random.getrandbits(32)) & 0xFFFFFFFF
        llm.set_seed(seed)
        if params.prompt_logprobs is not None:
            state.cached_tokens = 0
            state.prompt_logprobs = self._score_all_but_last(state.prompt_ids, params.prompt_logprobs)
        else:
            state.cached_tokens = self._prefill_all_but_last(state.prompt_ids)
        tokens = llm.generate(
            state.prompt_ids,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            typical_p=1.0,
            temp=params.temperature,
            repeat_penalty=params.repetition_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            tfs_z=1.0,
            mirostat_mode=0,
            reset=True,
            grammar=grammar,
        )
        try:
            with map_engine_errors(self.backend):
                for token in tokens:
                    logprob = None
                    if params.logprobs is not None:
                        logprob = top_logprobs(self._last_logprobs(), token, params.logprobs, self._token_text)
                    state.append(token, time.perf_counter() - start, logprob=logprob,
                                 ends=self._is_eog(token) and not params.ignore_eos)
                    yield
                    if state.finished:
                        break
        finally:
            tokens.close()
            state.abort(time.perf_counter() - start)

    def _prefill_all_but_last(self, prompt: list[int]) -> int:
        """Evaluate all prompt tokens but the last, reusing the cached common prefix; return how many
        were reused. `Llama.generate` then evaluates the last token alone, cold or warm: without this, a
        warm request evaluated only its last token alone while a cold one evaluated it inside the prompt
        batch, in other kernels, and greedy output depended on what the cache held."""
        llm, head = self.llm, prompt[:-1]
        common = 0
        if self.options.prefix_caching:
            for cached, token in zip(llm._input_ids, head):
                if cached != token:
                    break
                common += 1
        llm.n_tokens = min(llm.n_tokens, common)
        if head[common:]:
            llm.eval(head[common:])  # drops the stale cache entries past `common` first
        return common

    def _score_all_but_last(self, prompt: list[int], k: int) -> list:
        """Evaluate all prompt tokens but the last from an empty cache, as `_prefill_all_but_last` does,
        keeping every position's logits: position i predicts prompt[i + 1]. Entries are made batch by
        batch, so at most `n_batch` rows of logits are held at once."""
        import numpy as np

        llm = self.llm
        llm.n_tokens = 0
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        entries: list = [None]
        head = prompt[:-1]
        for i in range(0, len(head), llm.n_batch):
            batch = head[i : i + llm.n_batch]
            llm._batch.set_batch(batch=batch, n_past=llm.n_tokens, logits_all=True)
            with map_engine_errors(self.backend):
                llm._ctx.decode(llm._batch)
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch), self._n_vocab)).astype(np.float64)
            entries += prompt_logprobs(_log_softmax(logits), prompt[i + 1 : i + 1 + len(batch)], k, self._token_text)
            llm.input_ids[llm.n_tokens : llm.n_tokens + len(batch)] = batch
            llm.n_tokens += len(batch)
        return entries

    def _last_logprobs(self):
        import numpy as np

        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self._n_vocab,)).astype(np.float64)
        return _log_softmax(logits)

    def _memory(self) -> MemoryUsage:
        """Weights from llama_model_size; the KV cache as llama.cpp logged it when it allocated it."""
        match = None
        for match in KV_CACHE_LOG.finditer(self._load_log):
            pass  # the last context created is the one in use
        kv_bytes = kv_tokens = kv_dtype = None
        if match is not None:
            kv_bytes, kv_tokens = round(float(match[1]) * 2**20), int(match[2])
            kv_dtype = dtype_name(match[3])
        file_type = self.llm.metadata.get("general.file_type")
        return MemoryUsage(
            source="llama.cpp: llama_model_size; KV cache from llama.cpp's allocation log",
            weights_bytes=self._llama_cpp.llama_model_size(self.llm._model.model),
            weights_dtype=GGUF_FILE_TYPES.get(int(file_type)) if file_type is not None else None,
            kv_cache_bytes=kv_bytes, kv_cache_tokens=kv_tokens,
            kv_bytes_per_token=kv_bytes / kv_tokens if kv_bytes and kv_tokens else None, kv_dtype=kv_dtype,
        )

    def _engine_metrics(self) -> dict[str, Any]:
        """llama.cpp's own counters since the context was created (llama_perf_context)."""
        perf = self._llama_cpp.llama_perf_context(self.llm._ctx.ctx)
        return {
            "prompt_eval_ms": perf.t_p_eval_ms,
            "prompt_eval_tokens": perf.n_p_eval,
            "eval_ms": perf.t_eval_ms,
            "eval_tokens": perf.n_eval,
            "reused_prompt_tokens": getattr(perf, "n_reused", None),
        }


@contextmanager
def _llama_log(llama_cpp: Any, verbose: bool) -> Iterator[list[str]]:
    """Collect what llama.cpp logs (it tells allocation sizes only there), echoing it when verbose;
    llama-cpp-python's own log callback is put back afterwards."""
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))
        if verbose:
            print(lines[-1], end="", file=sys.stderr, flush=True)

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp._logger import llama_log_callback

        llama_cpp.llama_log_set(llama_log_callback, ctypes.c_void_p(0))


def _log_softmax(logits):
    """Along the last axis, in float64 (numpy)."""
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
