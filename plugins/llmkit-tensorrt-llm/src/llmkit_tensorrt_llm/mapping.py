"""llmkit → TensorRT-LLM (`tensorrt_llm.LLM`, PyTorch backend), as declared tables and pure functions: no
tensorrt_llm import, so the tests run them on machines without a GPU. Every native name here is checked
against `upstream/snapshot.json`, extracted from TensorRT-LLM's source by `upstream/extract.py`.

    to_native(params, ...)      keyword arguments of `tensorrt_llm.SamplingParams` (the constraint as the
                                keyword arguments of `GuidedDecodingParams`)
    llm_kwargs(options, model)  keyword arguments of `tensorrt_llm.LLM` (kv_cache_config and lora_config
                                as the keyword arguments of `KvCacheConfig` / `LoraConfig`)
    StreamReader                `generate_async(streaming=True)` outputs → llmkit delta chunks
    StatsReader                 `LLM.get_stats()` iteration dicts → engine metrics

Upstream facts these rest on (file and line in DEVELOPERS.md, "TensorRT-LLM adapter"):
- SamplingParams.max_tokens defaults to 32: always sent. Unset temperature/top_p/top_k mean greedy; an
  explicit greedy control is top_k=1 (or temperature=0, top_p=0, min_p=1 in newer releases): llmkit sends
  top_k=1 with the others unset, which means greedy on every release.
- Stop strings are matched as token-id sequences (SamplingParams._setup encodes each string), so one that
  does not fall on token boundaries never fires upstream: llmkit does not send them and enforces them in
  the reader, holding back any text that may begin one (llmkit.kit.decoding).
- In a stream, CompletionOutput.text / token_ids / logprobs are cumulative. token_ids_diff is measured
  from `_last_token_ids_len`, which GenerationResultBase._handle_sequence resets only for the sequence a
  response carries: with n > 1 it repeats other samples' last tokens. The reader keeps its own cursor.
- The reader decodes token ids with llmkit's tokenizer (detokenize=False upstream), so text, stop strings
  and whole characters work exactly as on the engines that run llmkit's own decode loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import ConfigDict, Field

from llmkit.engine import EngineOptions
from llmkit.errors import EngineError
from llmkit.kit.constraints import choice_regex, dispatch
from llmkit.kit.decoding import DecodeState
from llmkit.kit.grammars import regex_gbnf
from llmkit.kit.jsonschema import prepare_schema, xgrammar_json_ebnf
from llmkit.kit.mapping import Mapping, Param, refuse_unless
from llmkit.types import SamplingParams, StreamChunk, TokenLogprob

BACKEND = "tensorrt-llm"
# The release the adapter is written against (1.3.0rc22–rc24 pin torch 2.11 and CUDA 13).
TARGET_RELEASE = "1.3.0rc24"

PROMPT_LOGPROBS_LIMIT = (
    "TensorRT-LLM's PyTorch backend computes prompt logprobs as the top k of each context-logit row "
    "(executor/result.py compute_logprobs, tokens=None): the prompt token's own logprob is missing unless it "
    "is among the top k, prompt_logprobs=0 returns nothing, and with KV block reuse only the recomputed "
    "suffix has logits. llmkit cannot report per-token prompt logprobs from that"
)
MEMORY_FRACTION_LIMIT = (
    "TensorRT-LLM sizes its KV cache as a fraction of the GPU memory left free after loading the weights "
    "(KvCacheConfig.free_gpu_memory_fraction), not of the whole device; use the tensorrt-llm option "
    "free_gpu_memory_fraction for that meaning"
)
GUIDED_DECODING_OFF = "guided decoding is off (load with guided_decoding=True: TensorRT-LLM's xgrammar backend)"


# ---- sampling ------------------------------------------------------------------------------------


def guided_decoding(constraint: Any) -> dict[str, Any] | None:
    """Keyword arguments of `GuidedDecodingParams`. Every kind goes as `grammar` (xgrammar's EBNF, which
    reads GBNF): regexes and choices through llmkit's exact translation of Python's re.fullmatch, JSON
    schemas through xgrammar's converter with JSON's control-character rule restored (compact JSON)."""
    if constraint is None:
        return None
    return dispatch(
        constraint,
        choice=lambda c: {"grammar": regex_gbnf(choice_regex(c.choices))},
        regex=lambda c: {"grammar": regex_gbnf(c.pattern)},
        json_schema=lambda c: {"grammar": xgrammar_json_ebnf(prepare_schema(c.schema_))},
        grammar=lambda c: {"grammar": c.grammar},
    )


SAMPLING = Mapping(SamplingParams, [
    Param("temperature", "temperature", note="greedy (below 1e-5): sent as top_k=1 with temperature, top_p, min_p unset"),
    Param("top_p", "top_p", note="1 is off"),
    Param("top_k", "top_k", note="0 is off upstream too ('all logits')"),
    Param("min_p", "min_p", note="0 is off"),
    Param("max_tokens", "max_tokens", note="always sent (upstream default 32); capped to the context left after the prompt"),
    Param("stop", None, note="enforced by llmkit's reader: upstream matches stop strings as token sequences only"),
    Param("seed", "seed", note="None: the adapter draws one (upstream reads None as the runtime default seed 0)"),
    Param("n", "n", note="best_of left unset (upstream makes it n)"),
    Param("logprobs", "logprobs", note="k: top k plus the sampled token; 0: the sampled token only"),
    Param("prompt_logprobs", None, refuse=refuse_unless(None, PROMPT_LOGPROBS_LIMIT), note="refused"),
    Param("ignore_eos", "ignore_eos"),
    Param("repetition_penalty", "repetition_penalty", note="multiplicative, over prompt and output (as HF and vLLM)"),
    Param("presence_penalty", "presence_penalty", note="with prompt_ignore_length = prompt length: output tokens only"),
    Param("frequency_penalty", "frequency_penalty", note="with prompt_ignore_length = prompt length: output tokens only"),
    Param("constraint", "guided_decoding", guided_decoding, "GuidedDecodingParams(grammar=...) for every kind"),
], fixed={
    "detokenize": False,  # llmkit decodes the ids itself (StreamReader)
    "skip_special_tokens": True,
    "include_stop_str_in_output": False,
    "use_beam_search": False,
    "logprobs_mode": "raw",  # log-softmax of the raw logits, before temperature and filters (as vLLM)
    "return_context_logits": False,
    "return_generation_logits": False,
})


def to_native(params: SamplingParams, *, prompt_tokens: int, context_length: int, seed: int | None) -> dict[str, Any]:
    """Keyword arguments for `tensorrt_llm.SamplingParams` (guided_decoding as GuidedDecodingParams'
    keyword arguments). `seed` is used when the request has none."""
    native = SAMPLING.to_native(params, BACKEND)
    native["max_tokens"] = max(1, min(params.max_tokens, context_length - prompt_tokens))
    if params.greedy:
        native.update(temperature=None, top_k=1, top_p=None, min_p=None)
    if native["seed"] is None:
        native["seed"] = seed
    # Presence and frequency penalties count the prompt upstream unless told to skip it (values past the
    # prompt are clamped): skip it all, so they count output tokens only, as OpenAI and vLLM define them.
    native["prompt_ignore_length"] = prompt_tokens
    return native


# ---- engine options ------------------------------------------------------------------------------


class TensorRTLLMOptions(EngineOptions):
    """TensorRT-LLM's own options beside the portable ones. Any other field of the installed
    `TorchLlmArgs` is accepted by name and checked when the engine starts."""

    model_config = ConfigDict(extra="allow")

    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    max_num_tokens: int | None = Field(None, ge=1, description="Most tokens in one forward pass (upstream default 8192).")
    enable_chunked_prefill: bool = Field(False, description="Off: a prompt longer than max_num_tokens is refused.")
    free_gpu_memory_fraction: float | None = Field(
        None, gt=0, le=1, description="KV cache share of the GPU memory left free after the weights (upstream default 0.9)."
    )
    enable_lora: bool = Field(False, description="Per-request LoRA adapters (LoraConfig).")
    max_lora_rank: int = Field(64, ge=1)
    max_loras: int = Field(4, ge=1, description="Adapters held on the GPU at once.")
    max_cpu_loras: int = Field(4, ge=1, description="Adapters held in host memory.")
    load_format: Literal["auto", "dummy"] = Field("auto", description="'dummy': random weights of the right shape, for benchmarks.")
    guided_decoding: bool = Field(True, description="Constraints through TensorRT-LLM's xgrammar backend.")
    enable_iter_perf_stats: bool = Field(True, description="Iteration stats for stats() (upstream default off).")
    trust_remote_code: bool = False


OPTIONS = Mapping(EngineOptions, [
    Param("max_batch_size", "max_batch_size"),
    Param("max_model_len", "max_seq_len"),
    Param("dtype", "dtype", note="'auto' reads the checkpoint's dtype"),
    Param("seed", None, note="no engine-wide seed upstream: requests without one draw it from a generator seeded with this"),
    Param("prefix_caching", "kv_cache_config.enable_block_reuse", note="upstream default on"),
    Param("memory_fraction", None, refuse=refuse_unless(None, MEMORY_FRACTION_LIMIT), note="refused"),
], fields=EngineOptions.PORTABLE)


def llm_kwargs(options: TensorRTLLMOptions, model: str) -> dict[str, Any]:
    """Keyword arguments for `tensorrt_llm.LLM`; `kv_cache_config` and `lora_config` are given as the
    keyword arguments of KvCacheConfig / LoraConfig. Options left None are not sent (upstream defaults)."""
    kwargs: dict[str, Any] = {
        "model": model,
        "backend": "pytorch",
        "tensor_parallel_size": options.tensor_parallel_size,
        "pipeline_parallel_size": options.pipeline_parallel_size,
        "trust_remote_code": options.trust_remote_code,
        "enable_chunked_prefill": options.enable_chunked_prefill,
        "load_format": options.load_format,
        "enable_iter_perf_stats": options.enable_iter_perf_stats,
        "guided_decoding_backend": "xgrammar" if options.guided_decoding else None,
        "kv_cache_config": {},
    }
    for name, value in OPTIONS.to_native(options, BACKEND).items():
        if value is None:
            continue
        if "." in name:
            outer, inner = name.split(".", 1)
            kwargs[outer][inner] = value
        else:
            kwargs[name] = value
    if options.max_num_tokens is not None:
        kwargs["max_num_tokens"] = options.max_num_tokens
    if options.free_gpu_memory_fraction is not None:
        kwargs["kv_cache_config"]["free_gpu_memory_fraction"] = options.free_gpu_memory_fraction
    if options.enable_lora:
        kwargs["lora_config"] = {"lora_dir": [], "max_lora_rank": options.max_lora_rank, "max_loras": options.max_loras,
                                 "max_cpu_loras": options.max_cpu_loras}
    return kwargs


def lora_request_kwargs(path: str, lora_id: int, name: str) -> dict[str, Any]:
    """Keyword arguments of `tensorrt_llm.executor.request.LoRARequest` for a PEFT (Hugging Face) folder."""
    return {"lora_name": name, "lora_int_id": lora_id, "lora_path": path, "lora_ckpt_source": "hf"}


# ---- outputs -------------------------------------------------------------------------------------

# CompletionOutput.finish_reason (executor/result.py) → llmkit. 'timeout' only happens for requests given an
# upstream timeout, which llmkit never sets (its own timeouts cancel the request).
FINISH_REASONS = {"stop": "stop", "length": "length", "timeout": "error", "cancelled": "abort"}


def logprob_entry(token: int, position: dict[int, Any], k: int, token_text: Callable[[int], str]) -> TokenLogprob:
    """One position of CompletionOutput.logprobs ({token id: Logprob(logprob, rank)}: the top k and the
    sampled token, which upstream adds when it is not among them) → a TokenLogprob."""
    if token not in position:
        raise EngineError(f"{BACKEND}: the logprobs of a position lack the sampled token {token} (got {sorted(position)[:8]})")
    chosen = position[token]
    values = {tid: float(getattr(lp, "logprob", lp)) for tid, lp in position.items()}
    top = dict(sorted(values.items(), key=lambda item: -item[1])[:k]) if k else {}
    return TokenLogprob.model_construct(token_id=token, token=token_text(token), logprob=values[token],
                                        rank=getattr(chosen, "rank", None), top=top)


def _finish(state: DecodeState, reason: str, stop_reason: Any) -> None:
    """Close a sequence the engine ended without a token llmkit's own checks would have seen."""
    state.finish(reason, stop_reason)


@dataclass
class StreamReader:
    """Turns the successive states of one request's RequestOutput (cumulative per sample) into llmkit
    delta chunks: text decoded by llmkit (whole characters only, stop strings enforced and never streamed
    in part), logprobs, finish and stop reasons, usage with the engine's cached prompt tokens."""

    params: SamplingParams
    prompt_ids: list[int]
    decode: Callable[[list[int]], str]
    token_text: Callable[[int], str]
    context_length: int
    end_ids: frozenset[int] = frozenset()  # the tokenizer's and generation config's end-of-sequence ids
    states: dict[int, DecodeState] = field(default_factory=dict)
    consumed: dict[int, int] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)

    def _state(self, index: int) -> DecodeState:
        state = self.states.get(index)
        if state is None:
            state = self.states[index] = DecodeState(prompt_ids=self.prompt_ids, params=self.params, decode=self.decode,
                                                     context_length=self.context_length, index=index)
        return state

    @property
    def finished(self) -> bool:
        """Every sample has ended, upstream or by llmkit's own stop strings (the request may then be aborted)."""
        return len(self.states) == self.params.n and all(s.finished for s in self.states.values())

    def chunks(self, output: Any) -> list[StreamChunk]:
        cached = getattr(output, "cached_tokens", None)
        chunks = []
        for seq in output.outputs:
            state = self._state(seq.index)
            if cached is not None:
                state.cached_tokens = int(cached)
            if seq.index in self.closed:  # its last chunk went out: later responses are for other samples
                continue
            if not state.finished:
                self._advance(state, seq)
            chunk = state.take_chunk()
            if chunk is not None:
                chunks.append(chunk)
            if state.finished:
                self.closed.add(seq.index)
        return chunks

    def _advance(self, state: DecodeState, seq: Any) -> None:
        ids = list(seq.token_ids or [])
        start = self.consumed.get(seq.index, 0)
        self.consumed[seq.index] = len(ids)
        new = ids[start:]
        finish = seq.finish_reason
        if finish is not None and finish not in FINISH_REASONS:
            raise EngineError(f"{BACKEND}: unknown finish reason {finish!r}")
        # An end-of-sequence or stop token that is in the output ends the sequence as that token (llmkit's
        # stop_reason); upstream strips stop_token_ids from the output (result.py _handle_sequence), and
        # then its stop_reason names the id.
        eos_in_output = (finish == "stop" and bool(new) and not isinstance(seq.stop_reason, str)
                         and (new[-1] == seq.stop_reason or new[-1] in self.end_ids))
        k = self.params.logprobs
        logprobs = seq.logprobs if k is not None else None
        for offset, token in enumerate(new):
            entry = None
            if logprobs is not None:
                if start + offset >= len(logprobs):
                    raise EngineError(f"{BACKEND}: {len(ids)} tokens but {len(logprobs)} logprob positions")
                entry = logprob_entry(token, logprobs[start + offset], k, self.token_text)
            state.append(token, logprob=entry, ends=eos_in_output and offset == len(new) - 1)
            if state.finished:
                return
        if finish is not None:
            reason = FINISH_REASONS[finish]
            if reason == "abort":
                state.abort()
            elif reason == "stop":
                stop = seq.stop_reason
                if stop is None and len(self.end_ids) == 1:
                    stop = next(iter(self.end_ids))
                _finish(state, "stop", stop)
            else:
                _finish(state, reason, None)


# ---- engine metrics ------------------------------------------------------------------------------


@dataclass
class StatsReader:
    """`LLM.get_stats()` hands out the iteration stats gathered since the previous call (a queue). The
    reader keeps the latest, and counts iterations; `metrics()` is what stats() shows."""

    latest: dict[str, Any] = field(default_factory=dict)
    iterations: int = 0

    def update(self, stats: list[Any]) -> None:
        import json

        for item in stats:
            record = json.loads(item) if isinstance(item, (str, bytes)) else item
            if isinstance(record, dict):
                self.latest = record
                self.iterations += 1

    def metrics(self) -> dict[str, Any]:
        if not self.latest:
            return {}
        metrics: dict[str, Any] = {"iterations": self.iterations}
        for key in ("iter", "iterLatencyMS", "numActiveRequests", "numQueuedRequests", "maxNumActiveRequests",
                    "gpuMemUsage", "cpuMemUsage", "pinnedMemUsage"):
            if key in self.latest:
                metrics[key] = self.latest[key]
        kv = self.latest.get("kvCacheStats") or {}
        for key, value in kv.items():
            metrics[f"kvCacheStats.{key}"] = value
        used, total = kv.get("usedNumBlocks"), kv.get("maxNumBlocks")
        if isinstance(used, (int, float)) and isinstance(total, (int, float)) and total > 0:
            metrics["kv_cache_usage"] = min(1.0, max(0.0, used / total))
        if "cacheHitRate" in kv:
            metrics["engine_prefix_cache_hit_rate"] = kv["cacheHitRate"]
        return metrics
