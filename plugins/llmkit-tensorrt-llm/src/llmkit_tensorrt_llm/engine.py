"""TensorRT-LLM behind llmkit's interface, over `tensorrt_llm.LLM` (PyTorch backend) and its
`generate_async(..., streaming=True)`.

NOT VERIFIED ON HARDWARE: TensorRT-LLM's wheels come only from NVIDIA's own package index, which neither the
machines this project is built on nor its lent GPUs can reach (the public registry holds placeholder sdists
that download the wheel at install time). The adapter is written against TensorRT-LLM's source, and its
mapping, reader and refusals are tested without it (tests/); `llmkit conformance run -b tensorrt-llm -m ...`
on a machine with TensorRT-LLM is what verifies it (README.md).

Concurrency: `generate_async` returns a RequestOutput whose async iteration awaits a queue that TensorRT-LLM
creates for the event loop running at the call (executor/result.py: has_event_loop()), so requests are
submitted from the engine's own loop (`llmkit.kit.aio.LoopThread`), one task per request, each pushing
delta chunks into its Generation. The LLM itself (its executor, worker processes and MPI session) is
created in the caller's thread, as TensorRT-LLM's examples do. Cancelling a stream cancels its task, which
aborts the request upstream (RequestOutput.abort → executor.abort_request); so does a stop string llmkit
finds before the engine stops.

The parameter mapping is declared in `llmkit_tensorrt_llm.mapping` (tested without TensorRT-LLM).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
from pathlib import Path
from typing import Any

from llmkit.catalog import hf_folder
from llmkit.engine import Engine
from llmkit.errors import (
    EngineStartupError,
    InvalidRequestError,
    PromptTooLongError,
    UnsupportedFeatureError,
    map_engine_errors,
)
from llmkit.kit import processes
from llmkit.kit.aio import LoopThread
from llmkit.kit.chat import HFPromptEncoder
from llmkit.kit.generation import Generation
from llmkit.kit.grammars import RegexNotExpressible
from llmkit.planner import dtype_name
from llmkit.types import Capabilities, Request, SamplingParams, SpecialTokens, WeightsInfo
from llmkit_tensorrt_llm.mapping import (
    BACKEND,
    GUIDED_DECODING_OFF,
    MEMORY_FRACTION_LIMIT,
    OPTIONS,
    PROMPT_LOGPROBS_LIMIT,
    StatsReader,
    StreamReader,
    TensorRTLLMOptions,
    llm_kwargs,
    lora_request_kwargs,
    to_native,
)

_SAMPLING = frozenset(SamplingParams.NEUTRAL) - {"constraint", "prompt_logprobs"}
_LIMITS = {"prompt_logprobs": PROMPT_LOGPROBS_LIMIT, "memory_fraction": MEMORY_FRACTION_LIMIT}


class TensorRTLLMEngine(Engine):
    backend = BACKEND
    capabilities_ = Capabilities(
        backend=BACKEND,
        sampling=_SAMPLING,
        constraints=frozenset({"choice", "regex", "json_schema", "grammar"}),
        prefix_caching=True,
        tensor_parallel=True,
        lora=False,
        devices=("cuda",),
        limits=_LIMITS,
    )
    Options = TensorRTLLMOptions

    def _start(self) -> None:
        opts = self.options
        for name, reason in OPTIONS.refusals(opts):  # before the (slow, GPU-only) import
            raise UnsupportedFeatureError(BACKEND, name, f"{name}={getattr(opts, name)!r}: {reason}")
        import tensorrt_llm
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import KvCacheConfig
        from tensorrt_llm.llmapi.llm_args import TorchLlmArgs

        self._trtllm = tensorrt_llm
        known = set(TorchLlmArgs.model_fields)
        extra = dict(opts.model_extra or {})
        unknown = sorted(set(extra) - known)
        if unknown:
            raise InvalidRequestError(f"{BACKEND}: unknown engine option(s) {unknown} for TensorRT-LLM {tensorrt_llm.__version__}",
                                      parameter=unknown[0], value=extra[unknown[0]])
        model = hf_folder(self.model)
        kwargs = llm_kwargs(opts, model)  # refuses what cannot be honoured (memory_fraction)
        clash = sorted(set(kwargs) & set(extra))
        if clash:
            raise InvalidRequestError(f"{BACKEND}: {clash[0]} given twice: as an llmkit option and by TensorRT-LLM's name",
                                      parameter=clash[0], value=extra[clash[0]])
        if extra.get("skip_tokenizer_init"):
            raise UnsupportedFeatureError(BACKEND, "skip_tokenizer_init", "llmkit encodes prompts and decodes output with the model's tokenizer")
        kwargs.update(extra)
        self._quantization = checkpoint_quantization(model)
        if isinstance(kwargs.get("kv_cache_config"), dict):
            kwargs["kv_cache_config"] = KvCacheConfig(**kwargs["kv_cache_config"])
        if isinstance(kwargs.get("lora_config"), dict):
            from tensorrt_llm.lora_helper import LoraConfig

            kwargs["lora_config"] = LoraConfig(**kwargs["lora_config"])
        self._kwargs = kwargs
        self._prefix_caching = getattr(kwargs["kv_cache_config"], "enable_block_reuse", True)
        try:
            with processes.spawned_processes() as pids, map_engine_errors(BACKEND, {Exception: EngineStartupError}):
                self.llm = LLM(**kwargs)
        except EngineStartupError:
            processes.wait_or_kill(pids, timeout=5.0)  # workers (MPI) a failed start left behind
            raise
        self._processes = pids
        try:
            self._setup(opts, model)
        except BaseException:
            if hasattr(self, "_loop"):
                self._loop.stop()
            self.llm.shutdown()
            processes.wait_or_kill(pids, timeout=15.0)
            raise

    def _setup(self, opts: TensorRTLLMOptions, model: str) -> None:
        """What the adapter reads from the started LLM (a failure here shuts it down again)."""
        self._loop = LoopThread("tensorrt-llm")
        self._seeds = random.Random(opts.seed) if opts.seed is not None else random.SystemRandom()
        self._seed_lock = threading.Lock()
        self._lora_ids: dict[str, int] = {}
        self._stats = StatsReader()
        self._stats_lock = threading.Lock()
        args = self.llm.args
        tokenizer = getattr(self.llm.tokenizer, "tokenizer", self.llm.tokenizer)  # TransformersTokenizer wraps HF's
        hf_config = _read_json(Path(model) / "config.json") if Path(model).is_dir() else {}
        vocab = hf_config.get("vocab_size") or len(tokenizer)
        self.encoder = HFPromptEncoder(tokenizer, BACKEND, self.model, vocab)
        self._context = int(args.max_seq_len or hf_config.get("max_position_embeddings") or 0)
        if self._context <= 0:
            raise EngineStartupError(f"{BACKEND}: cannot tell the context length (max_seq_len unset, no max_position_embeddings)")
        self._max_num_tokens = None if args.enable_chunked_prefill else args.max_num_tokens
        self._dtype = (hf_config.get("torch_dtype") or hf_config.get("dtype")) if args.dtype == "auto" else args.dtype
        generation_eos = _read_json(Path(model) / "generation_config.json").get("eos_token_id") if Path(model).is_dir() else None
        eos = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
        self._special = self.encoder.special_tokens(eos)
        self._end_ids = frozenset(self._special.eos_token_ids)

    def capabilities(self) -> Capabilities:
        update: dict[str, Any] = {
            "prefix_caching": bool(getattr(self, "_prefix_caching", True)),
            "lora": self.options.enable_lora,
            "quantization": (self._quantization,) if getattr(self, "_quantization", None) else (),
        }
        if not self.options.guided_decoding:
            update["constraints"] = frozenset()
            update["limits"] = {**self.capabilities_.limits, **{f"constraint:{k}": GUIDED_DECODING_OFF
                                                                 for k in self.capabilities_.constraints}}
        return self.capabilities_.model_copy(update=update)

    @property
    def context_length(self) -> int:
        return self._context

    def _close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        self._loop.stop()  # cancels the request tasks; each aborts its request
        llm.shutdown()
        processes.wait_or_kill(self._processes)
        del llm
        import gc

        gc.collect()

    # ---- requests --------------------------------------------------------------------------------

    def _tokenize(self, request: Request) -> list[int]:
        ids = self.encoder.encode(request)
        if self._max_num_tokens is not None and len(ids) > self._max_num_tokens:
            raise PromptTooLongError(len(ids), self._max_num_tokens, detail="max_num_tokens without chunked prefill")
        return ids

    def _special_tokens(self) -> SpecialTokens:
        return self._special

    def _weights(self) -> WeightsInfo:
        dtype = dtype_name(self._dtype) if self._dtype else None
        return WeightsInfo(format="dummy" if self.options.load_format == "dummy" else "safetensors",
                           dtype=self._quantization.lower() if self._quantization else dtype,
                           quantization=self._quantization, source=str(self._kwargs["model"]))

    def _draw_seed(self) -> int:
        with self._seed_lock:
            return self._seeds.randrange(2**63)

    def native_params(self, params: SamplingParams, prompt_tokens: int) -> Any:
        """llmkit SamplingParams → tensorrt_llm.SamplingParams."""
        if params.constraint is not None and not self.options.guided_decoding:
            raise UnsupportedFeatureError(BACKEND, f"constraint:{params.constraint.kind}", GUIDED_DECODING_OFF)
        try:
            native = to_native(params, prompt_tokens=prompt_tokens, context_length=self._context, seed=self._draw_seed())
        except RegexNotExpressible as exc:
            raise UnsupportedFeatureError(BACKEND, f"constraint:{params.constraint.kind}", str(exc)) from exc
        guided = native.pop("guided_decoding")
        with map_engine_errors(BACKEND, {ValueError: InvalidRequestError, TypeError: InvalidRequestError}):
            if guided is not None:
                native["guided_decoding"] = _guided_decoding_params()(**guided)
            return self._trtllm.SamplingParams(**native)

    def _submit(self, generation: Generation) -> None:
        prompt_ids = list(generation.request.prompt_token_ids)
        native = self.native_params(generation.params, len(prompt_ids))
        lora = self._lora_request(generation.request)
        future = self._loop.spawn(lambda: self._run(generation, prompt_ids, native, lora))
        generation.on_cancel(lambda: self._loop.call_soon(_cancel_task, future))

    async def _run(self, generation: Generation, prompt_ids: list[int], native: Any, lora: Any) -> None:
        reader = StreamReader(generation.params, prompt_ids, decode=self._decode, token_text=self._token_text,
                              context_length=self._context, end_ids=self._end_ids)
        output = None
        try:
            output = self.llm.generate_async({"prompt_token_ids": prompt_ids}, sampling_params=native, lora_request=lora,
                                             streaming=True)
            async for step in output:
                for chunk in reader.chunks(step):
                    generation.push(chunk)
                if reader.finished:  # done upstream, or a stop string llmkit found first
                    break
            generation.end()
        except asyncio.CancelledError:
            generation.end()
            raise
        except ValueError as exc:  # SamplingParams / argument checks of generate_async
            generation.end(InvalidRequestError(f"{BACKEND}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - this request ends; a dead executor ends them all
            if self._executor_dead():
                self.died(exc)
            else:
                generation.end(exc)
        finally:
            if output is not None and not output.finished:
                try:
                    output.abort()
                except Exception:  # noqa: BLE001 - the executor may be gone already
                    pass

    def _decode(self, ids: list[int]) -> str:
        return self.encoder.decode(ids)  # holds the encoder's lock: fast tokenizers refuse concurrent use

    def _token_text(self, token: int) -> str:
        return self.encoder.token_text(token)

    def _executor_dead(self) -> bool:
        llm = self.llm
        if llm is None:
            return False
        executor = getattr(llm, "_executor", None)
        try:
            return executor is None or bool(executor.is_shutdown())
        except Exception:  # noqa: BLE001
            return True

    def _lora_request(self, request: Request) -> Any:
        """A LoRARequest for the request's adapter (PEFT folder), its id keyed on the adapter's content."""
        if request.lora is None:
            return None
        from tensorrt_llm.executor.request import LoRARequest

        from llmkit.kit.files import digest

        if not os.path.isdir(request.lora):
            raise InvalidRequestError(f"{BACKEND}: LoRA adapter folder {request.lora!r} does not exist", parameter="lora",
                                      value=request.lora)
        key = digest(request.lora)
        lora_id = self._lora_ids.setdefault(key, len(self._lora_ids) + 1)
        name = f"{os.path.basename(request.lora.rstrip('/'))}-{key[:12]}"
        return LoRARequest(**lora_request_kwargs(request.lora, lora_id, name))

    # ---- engine state ----------------------------------------------------------------------------

    def _engine_metrics(self) -> dict[str, Any]:
        """TensorRT-LLM's iteration stats (enable_iter_perf_stats): the latest iteration's counters as
        TensorRT-LLM names them, kv_cache_usage = usedNumBlocks / maxNumBlocks."""
        llm = self.llm
        if llm is None or not self.options.enable_iter_perf_stats:
            return {}
        with self._stats_lock:
            try:
                self._stats.update(llm.get_stats(timeout=0.05))
            except Exception:  # noqa: BLE001 - stats are best effort; the engine serves on
                pass
            return self._stats.metrics()

    def engine_processes(self) -> set[int]:
        return set(self._processes)


def checkpoint_quantization(model: str) -> str | None:
    """The quantization a pre-quantized checkpoint declares: ModelOpt's hf_quant_config.json
    ({"quantization": {"quant_algo": "FP8" | "NVFP4" | "W4A16_AWQ" ...}}), else config.json's
    quantization_config.quant_method. TensorRT-LLM's PyTorch backend reads it from the checkpoint; the LLM
    takes no QuantConfig (TorchLlmArgs keeps it private)."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    modelopt = _read_json(folder / "hf_quant_config.json").get("quantization") or {}
    if modelopt.get("quant_algo"):
        return str(modelopt["quant_algo"])
    config = _read_json(folder / "config.json").get("quantization_config") or {}
    method = config.get("quant_algo") or config.get("quant_method")
    return str(method) if method else None


def _guided_decoding_params() -> type:
    """GuidedDecodingParams: exported by tensorrt_llm.llmapi; defined in tensorrt_llm.sampling_params up to
    v1.3.0rc24, in tensorrt_llm.executor.params.sampling after (the old module re-exports it)."""
    try:
        from tensorrt_llm.llmapi import GuidedDecodingParams
    except ImportError:
        from tensorrt_llm.sampling_params import GuidedDecodingParams
    return GuidedDecodingParams


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cancel_task(future: Any) -> None:
    task = getattr(future, "task", None)
    if task is not None:
        task.cancel()


__all__ = ["OPTIONS", "TensorRTLLMEngine", "checkpoint_quantization"]
