"""llama.cpp through llama-cpp-python, driving `Llama.generate` token by token on one worker thread.

`create_completion` would hide token ids and decide stops itself; the token-level generator lets llmkit
apply the same stop-string, detokenization and chunk logic as every engine (`llmkit.kit.decoding`), read
logprobs straight from the context's logits, and report prefix-cache reuse.

Concurrency: one llama.cpp context holds one sequence's KV cache, so one worker thread owns it and serves
requests first come, first served; callers only queue and read their own channel. A cancelled request
stops at its next token; closing the engine stops the worker before the context is freed.

SamplingParams → `Llama.generate` (checked against llama_cpp/llama.py 0.3.36, `Llama._init_sampler`): the
table `SAMPLING` below. llama.cpp penalises the tokens *generated* in the window `penalty_last_n` (llmkit
sets -1: the whole context), not the prompt; vLLM's repetition penalty also counts the prompt.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import Field

from llmkit.catalog import gguf_path
from llmkit.engine import Engine, EngineOptions, check_token_ids
from llmkit.errors import EngineStartupError, InvalidRequestError, LLMKitError, UnsupportedFeatureError, map_engine_errors
from llmkit.kit.constraints import dispatch
from llmkit.kit.jsonschema import prepare_schema
from llmkit.kit.decoding import DecodeState, prompt_logprobs, top_logprobs
from llmkit.kit.generation import Generation
from llmkit.kit.grammars import RegexNotExpressible, choice_gbnf, regex_gbnf
from llmkit.kit.mapping import Mapping, Param
from llmkit.kit.worker import EngineWorker
from llmkit_llamacpp.gguf_tools import METHODS
from llmkit.planner import WEIGHT_BITS, dtype_name
from llmkit.types import (
    Capabilities,
    Choice,
    Grammar,
    JsonSchema,
    MemoryUsage,
    Regex,
    Request,
    SamplingParams,
    SpecialTokens,
    WeightsInfo,
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


# llama.cpp's KV-cache element types (ggml_type), for the kv_cache_dtype option
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}


def _greedy_temperature(params: SamplingParams) -> float:
    return 0.0 if params.greedy else params.temperature


SAMPLING = Mapping(SamplingParams, [
    Param("temperature", "temp", None, "0 (or below 1e-5) → llama.cpp's greedy sampler"),
    Param("top_p", "top_p"),
    Param("top_k", "top_k", note="0 disables, as in llmkit"),
    Param("min_p", "min_p"),
    Param("repetition_penalty", "repeat_penalty"),
    Param("presence_penalty", "presence_penalty"),
    Param("frequency_penalty", "frequency_penalty"),
    Param("max_tokens", None, note="llmkit's decode state counts tokens"),
    Param("stop", None, note="llmkit's decode state (held back while a stop string may be starting)"),
    Param("seed", None, note="Llama.set_seed before each sequence; n > 1: one derived seed per sample"),
    Param("n", None, note="one sequence per sample, one after another"),
    Param("logprobs", None, note="log-softmax of the context's logits after each token"),
    Param("prompt_logprobs", None, note="the prompt evaluated from scratch with every position's logits kept"),
    Param("ignore_eos", None, note="end-of-generation tokens do not end the sequence"),
    Param("constraint", "grammar", None, "GBNF: choice/regex by llmkit.kit.grammars, JSON schema by llama.cpp's converter"),
], fixed={"typical_p": 1.0, "tfs_z": 1.0, "mirostat_mode": 0, "reset": True})


class LlamaCppOptions(EngineOptions):
    n_threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per step.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to a GPU build; -1 = all.")
    flash_attn: bool = False
    use_mmap: bool = True
    kv_cache_dtype: Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"] = Field(
        "f16", description="KV-cache element type (llama.cpp type_k/type_v); quantized V needs flash_attn."
    )
    chat_template: str | None = Field(None, description="Jinja chat template; default: the GGUF's own.")
    verbose: bool = False


class LlamaCppEngine(Engine):
    backend = "llamacpp"
    capabilities_ = Capabilities(
        backend="llamacpp",
        constraints=frozenset({"choice", "regex", "json_schema", "grammar"}),
        quantization=METHODS,  # GGUF types llmkit.quantize makes (gguf_tools.GGUFQuantizer); any GGUF file loads
        prefix_caching=True,
        batch_invariant_greedy=True,  # one sequence at a time: there is no batch to vary with
        devices=("cpu",),
        limits={"quantization": "llama.cpp runs GGUF files as quantized ahead of time: "
                                f"llmkit.quantize('llamacpp', model, method, out) with method in {', '.join(METHODS)}"},
    )
    Options = LlamaCppOptions

    def _start(self) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        opts = self.options
        if opts.dtype not in (None, "auto"):
            raise UnsupportedFeatureError(self.backend, f"dtype={opts.dtype!r}", "GGUF weights keep their file's types; "
                                          "quantize to choose them (llmkit.quantize)")
        if opts.memory_fraction is not None:
            raise UnsupportedFeatureError(self.backend, "memory_fraction", "llama.cpp allocates the context it is given; "
                                          "choose max_model_len and n_gpu_layers instead")
        if opts.kv_cache_dtype not in ("f32", "f16", "bf16") and not opts.flash_attn:
            raise InvalidRequestError(f"llamacpp: a quantized KV cache ({opts.kv_cache_dtype}) needs flash_attn=True",
                                      parameter="kv_cache_dtype", value=opts.kv_cache_dtype)
        self._prefix_caching = opts.prefix_caching if opts.prefix_caching is not None else True
        path = str(gguf_path(self.model))
        self._path = path
        kwargs = dict(model_path=path, n_threads=opts.n_threads or os.cpu_count(), n_batch=opts.n_batch,
                      n_gpu_layers=opts.n_gpu_layers, flash_attn=opts.flash_attn, use_mmap=opts.use_mmap,
                      last_n_tokens_size=-1, verbose=opts.verbose, type_k=KV_CACHE_TYPES[opts.kv_cache_dtype],
                      type_v=KV_CACHE_TYPES[opts.kv_cache_dtype], seed=opts.seed if opts.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        with map_engine_errors(self.backend, {ValueError: EngineStartupError}), _llama_log(llama_cpp, opts.verbose) as log:
            llm = llama_cpp.Llama(n_ctx=opts.max_model_len or 0, **kwargs)  # 0: the model's training context
            if opts.max_model_len is None and llm.n_ctx() > MAX_DEFAULT_CONTEXT:
                llm.close()
                llm = llama_cpp.Llama(n_ctx=MAX_DEFAULT_CONTEXT, **kwargs)
        self.llm = llm
        self._context = llm.n_ctx()
        self._load_log = "".join(log)
        self._vocab = llm._model.vocab
        self._n_vocab = llm.n_vocab()
        template = opts.chat_template or llm.metadata.get("tokenizer.chat_template")
        self._chat = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            try:
                self._chat = Jinja2ChatFormatter(
                    template,
                    eos_token=llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else "",
                    bos_token=llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else "",
                    add_generation_prompt=True,
                )
            except Exception as exc:  # jinja2.TemplateSyntaxError and friends
                llm.close()
                raise InvalidRequestError(f"llamacpp: the chat template does not parse: {type(exc).__name__}: {exc}",
                                          parameter="chat_template", value=template[:200]) from exc
        self._seeds = random.Random(opts.seed)
        self._seeds_lock = threading.Lock()
        self._worker = EngineWorker(self.backend, self._loop)

    def capabilities(self) -> Capabilities:
        return self.capabilities_.model_copy(update={"prefix_caching": self._prefix_caching})

    @property
    def context_length(self) -> int:
        return self._context

    def _close(self) -> None:
        self._worker.stop()  # the worker no longer touches the context after this
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.close()

    def _special_tokens(self) -> SpecialTokens:
        bos, eos = self.llm.token_bos(), self.llm.token_eos()
        eog = [t for t in range(self._n_vocab) if self._is_eog(t)]
        probe = self.llm.tokenize(b"a", add_bos=True, special=True)
        return SpecialTokens(bos_token_id=bos if bos >= 0 else None, eos_token_ids=sorted(set(eog) | ({eos} if eos >= 0 else set())),
                             adds_bos=bool(probe) and probe[0] == bos)

    def _weights(self) -> WeightsInfo:
        file_type = self.llm.metadata.get("general.file_type")
        dtype = GGUF_FILE_TYPES.get(int(file_type)) if file_type is not None else None
        return WeightsInfo(format="gguf", dtype=dtype, bits=WEIGHT_BITS.get(dtype), kv_cache_dtype=dtype_name(self.options.kv_cache_dtype),
                           source=self._path)

    # ---- tokens and text -------------------------------------------------------------------------

    def _encode(self, request: Request) -> list[int]:
        if request.prompt_token_ids is not None:
            return check_token_ids(request.prompt_token_ids, self._n_vocab)
        if request.messages is not None:
            if self._chat is None:
                raise UnsupportedFeatureError(self.backend, "chat", f"{self.model!r} has no chat template")
            try:
                text = self._chat(messages=[m.model_dump() for m in request.messages]).prompt
            except Exception as exc:  # a template that raises on this conversation
                raise InvalidRequestError(f"llamacpp: the chat template refused the conversation: {type(exc).__name__}: {exc}",
                                          parameter="messages") from exc
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
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            text = dispatch(constraint, choice=lambda c: choice_gbnf(c.choices), regex=lambda c: regex_gbnf(c.pattern),
                            json_schema=self._schema_gbnf, grammar=lambda c: c.grammar)
        except RegexNotExpressible as exc:
            raise UnsupportedFeatureError(self.backend, "constraint:regex", str(exc)) from exc
        except LLMKitError:
            raise
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

    def _schema_gbnf(self, constraint: JsonSchema) -> str:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        schema = prepare_schema(constraint.schema_)  # refuses reference cycles; resolves a root $ref
        unenforced = unsupported_schema_keywords(schema)
        if unenforced:
            raise UnsupportedFeatureError(self.backend, "constraint:json_schema",
                                          f"llama.cpp's converter would not enforce {', '.join(unenforced)}")
        return json_schema_to_gbnf(json.dumps(schema))

    # ---- generation ------------------------------------------------------------------------------

    def _submit(self, generation: Generation) -> None:
        params = generation.params
        generation.grammar = self._grammar(params.constraint)  # errors reach the caller at the call
        SAMPLING.to_native(params, self.backend)  # the table refuses what llama.cpp cannot honour
        if params.seed is None:
            with self._seeds_lock:
                generation.seed = self._seeds.getrandbits(32)
        else:
            generation.seed = params.seed
        self._worker.submit(generation)

    def _loop(self, worker: EngineWorker) -> None:
        """First come, first served: one request at a time, each sample of it in turn."""
        while not worker.stopping:
            for generation in worker.admit(1, wait=True):
                try:
                    for index in range(generation.params.n):
                        state = DecodeState(list(generation.request.prompt_token_ids), generation.params, self._decode_text,
                                            self._context, index=index)
                        for _ in self._decode(state, generation, worker):
                            chunk = state.take_chunk()
                            if chunk is not None:
                                generation.push(chunk)
                        if generation.cancelled or worker.stopping:
                            break
                    worker.finish(generation)
                except Exception as exc:  # noqa: BLE001 - this request failed; the engine serves the next
                    worker.finish(generation, exc)

    def _decode(self, state: DecodeState, generation: Generation, worker: EngineWorker) -> Iterator[None]:
        params, llm = state.params, self.llm
        seed = (hash((generation.seed, state.index)) if params.n > 1 else generation.seed) & 0xFFFFFFFF
        llm.set_seed(seed)
        if params.prompt_logprobs is not None:
            state.cached_tokens = 0
            state.prompt_logprobs = self._score_all_but_last(state.prompt_ids, params.prompt_logprobs)
            if params.scoring_only:
                state.finish_scored()
                yield
                return
        else:
            state.cached_tokens = self._prefill_all_but_last(state.prompt_ids)
        native = SAMPLING.to_native(params, self.backend)
        native["temp"] = _greedy_temperature(params)
        native["grammar"] = generation.grammar
        tokens = llm.generate(state.prompt_ids, **native)
        try:
            with map_engine_errors(self.backend):
                for token in tokens:
                    logprob = None
                    if params.logprobs is not None:
                        logprob = top_logprobs(self._last_logprobs(), token, params.logprobs, self._token_text)
                    state.append(token, logprob=logprob, ends=self._is_eog(token) and not params.ignore_eos)
                    yield
                    if state.finished or generation.cancelled or worker.stopping:
                        break
        finally:
            tokens.close()
            state.abort()

    def _prefill_all_but_last(self, prompt: list[int]) -> int:
        """Evaluate all prompt tokens but the last, reusing the cached common prefix; return how many
        were reused. `Llama.generate` then evaluates the last token alone, cold or warm: without this, a
        warm request evaluated only its last token alone while a cold one evaluated it inside the prompt
        batch, in other kernels, and greedy output depended on what the cache held."""
        llm, head = self.llm, prompt[:-1]
        common = 0
        if self._prefix_caching:
            for cached, token in zip(llm._input_ids, head):
                if cached != token:
                    break
                common += 1
        llm.n_tokens = min(llm.n_tokens, common)
        if not self._prefix_caching:
            common = llm.n_tokens = 0
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
