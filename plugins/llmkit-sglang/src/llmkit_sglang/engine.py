"""SGLang behind llmkit's interface, over `sglang.Engine` (its offline engine: a TokenizerManager in this
process, the scheduler and detokenizer in processes of their own).

How it runs
- The engine is created on an event loop owned by this adapter (`llmkit.kit.aio.LoopThread`): SGLang's
  TokenizerManager binds its output loop to the loop it first runs on. Each request is one task on that
  loop, iterating `Engine.async_generate(..., stream=True)` and pushing delta chunks into the request's
  `Generation`; callers from any thread or event loop share one engine and its continuous batching.
- Text is llmkit's own, from the token ids (`mapping.DeltaReader`): whole characters only, stop strings
  never streamed in part.
- Cancelling a request calls `TokenizerManager.abort_request(rid)` (what `Engine` offers for it) and cancels
  its task; SGLang's generator then aborts it in the scheduler too. Request ids are prefix-free, since the
  scheduler aborts every id that *starts with* the one aborted.
- `n > 1`: one SGLang request per sample, seeds derived per sample (see `mapping`).

Processes (the parts of upstream's behaviour this adapter replaces, with the reason)
- `Engine.shutdown()` kills *every* child process of this process (`kill_process_tree(os.getpid(),
  include_parent=False)`, srt/entrypoints/engine.py), including other engines' processes. `close()` does
  what shutdown does for this engine only: it stops SGLang's subprocess watchdog, closes its RPC socket
  and ends the processes recorded while this engine started (`llmkit.kit.processes`), waiting for them.
- SGLang's processes report failure by sending SIGQUIT to this process; with no handler (SGLang installs
  one only when created on the main thread, and that one kills the whole process) SIGQUIT terminates the
  process. While an SGLang engine is open and it was loaded from the main thread, the adapter handles
  SIGQUIT (logs it) and a watcher task notices the engine's dead process: every in-flight and later
  request then ends with `EngineDiedError`. Loaded from another thread, the handler cannot be installed.

The parameter mapping is declared in `llmkit_sglang.mapping` (tested without SGLang).
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import dataclasses
import logging
import os
import random
import signal
import sys
import threading
import weakref
from typing import Any

from pydantic import ConfigDict, Field

from llmkit.catalog import hf_folder
from llmkit.engine import Engine, EngineOptions
from llmkit.errors import (
    EngineError,
    EngineStartupError,
    InvalidRequestError,
    LLMKitError,
    UnsupportedFeatureError,
    map_engine_errors,
)
from llmkit.kit import processes
from llmkit.kit.aio import LoopThread
from llmkit.kit.chat import HFPromptEncoder, token_ids_only
from llmkit.kit.generation import Generation
from llmkit.planner import KV_BYTES, WEIGHT_BITS, dtype_name
from llmkit.types import Capabilities, MemoryUsage, Request, SamplingParams, SpecialTokens, StrictInt, WeightsInfo
from llmkit_sglang.mapping import (
    OPTIONS,
    RANGES,
    SEED_LIMIT,
    DeltaReader,
    check_gpu_layout,
    generate_kwargs,
    request_id,
    server_args,
)

log = logging.getLogger("llmkit.sglang")

SUPPORTED_GRAMMAR_BACKENDS = ("xgrammar",)
WATCH_INTERVAL_S = 1.0


class SGLangOptions(EngineOptions):
    """SGLang's own options beside the portable ones; any other `sglang.srt.server_args.ServerArgs` field
    is accepted by name and checked against the installed SGLang when the engine starts."""

    model_config = ConfigDict(extra="allow")

    tp_size: StrictInt = Field(1, ge=1, description="Tensor parallelism: GPUs per model.")
    pp_size: StrictInt = Field(1, ge=1, description="Pipeline parallelism: stages, each on tp_size GPUs.")
    dp_size: StrictInt = Field(1, ge=1, description="Data parallelism: replicas of the model, each on tp_size × pp_size "
                                                    "GPUs (within the tensor-parallel group with enable_dp_attention).")
    quantization: str | None = Field(None, description="Any method the installed SGLang lists (capabilities().quantization).")
    enable_lora: bool = Field(False, description="Per-request LoRA adapters (Request.lora); with no lora_paths SGLang "
                                                 "also needs max_lora_rank and lora_target_modules.")
    load_format: str = Field("auto", description="'dummy' loads random weights of the right shape, for benchmarks.")
    skip_tokenizer_init: bool = Field(False, description="No tokenizer: prompts must be token ids; no text out, no stop "
                                                         "strings, constraints or chat.")
    enable_deterministic_inference: bool = Field(
        False, description="SGLang's batch-invariant kernels. Needed for per-request seeds (SGLang ignores sampling_seed "
        "otherwise); also makes greedy output independent of batching.")
    incremental_streaming_output: bool = Field(
        True, description="SGLang sends only what is new in each stream output (llmkit's default; SGLang's is False: "
        "cumulative). The adapter reads either.")
    log_level: str = Field("error", description="SGLang's log level (sglang.Engine's own default when not given).")


class SGLangEngine(Engine):
    backend = "sglang"
    capabilities_ = Capabilities(
        backend="sglang",
        sampling=frozenset(SamplingParams.NEUTRAL) - {"constraint", "seed"},
        constraints=frozenset({"choice", "regex", "json_schema", "grammar"}),
        prefix_caching=True,
        tensor_parallel=True,
        lora=False,
        devices=("cuda",),
        ranges=RANGES,
        limits={"seed": SEED_LIMIT},
    )
    Options = SGLangOptions

    # ---- lifecycle -------------------------------------------------------------------------------

    def _start(self) -> None:
        opts = self.options
        script = processes.unguarded_main_script()
        if script is not None:
            raise EngineStartupError(
                f"sglang: {script} loads the engine from its top-level code, and SGLang starts its processes with "
                f"`spawn`, which re-runs that code: put it under `if __name__ == \"__main__\":`")
        # Logprobs of the raw distribution, as every llmkit engine reports them; SGLang's default is the
        # temperature-scaled one (srt/layers/sampler.py). Read by the scheduler process at import.
        os.environ.setdefault("SGLANG_RETURN_ORIGINAL_LOGPROB", "1")
        import sglang
        import sglang.srt.entrypoints.engine  # noqa: F401 - sets uvloop's event loop policy: the engine's loop is one, as upstream's
        from sglang.srt.server_args import QUANTIZATION_CHOICES, ServerArgs

        self._version = getattr(sglang, "__version__", "?")
        self._quantization_choices = tuple(QUANTIZATION_CHOICES)
        known = {f.name for f in dataclasses.fields(ServerArgs)}
        extra = dict(opts.model_extra or {})
        unknown = sorted(set(extra) - known)
        if unknown:
            raise InvalidRequestError(f"sglang: unknown engine option(s) {unknown} for SGLang {self._version} (ServerArgs)",
                                      parameter=unknown[0], value=extra[unknown[0]])
        portable = server_args(opts)
        clash = sorted(set(portable) & set(extra))
        if clash:
            names = {row.native: row.name for row in OPTIONS.rows}
            raise InvalidRequestError(f"sglang: {clash[0]} given twice: as the portable option {names[clash[0]]!r} and by "
                                      f"SGLang's name", parameter=clash[0], value=extra[clash[0]])
        if "model_path" in extra:
            raise InvalidRequestError("sglang: give the model as load()'s model argument, not as model_path",
                                      parameter="model_path", value=extra["model_path"])
        if opts.quantization is not None and opts.quantization not in self._quantization_choices:
            raise UnsupportedFeatureError(self.backend, f"quantization={opts.quantization!r}",
                                          f"SGLang {self._version} lists {list(self._quantization_choices)}")
        kwargs: dict[str, Any] = dict(
            model_path=hf_folder(self.model),
            tp_size=opts.tp_size,
            pp_size=opts.pp_size,
            dp_size=opts.dp_size,
            quantization=opts.quantization,
            enable_lora=opts.enable_lora or None,
            load_format=opts.load_format,
            skip_tokenizer_init=opts.skip_tokenizer_init,
            enable_deterministic_inference=opts.enable_deterministic_inference,
            incremental_streaming_output=opts.incremental_streaming_output,
            log_level=opts.log_level,
        )
        kwargs.update(portable)
        kwargs.update(extra)
        import torch

        check_gpu_layout(kwargs, torch.cuda.device_count())
        self._loop = LoopThread("sglang")
        # Before the processes exist: a scheduler that fails while loading SIGQUITs this process.
        _sigquit_guard.add(self)
        try:
            with processes.spawned_processes() as pids, map_engine_errors(self.backend, {Exception: EngineStartupError}):
                self.engine = self._loop.run(_create({k: v for k, v in kwargs.items() if v is not None}))
        except BaseException:
            self._loop.stop()
            _kill(pids)  # a failed start can leave the detokenizer (or a scheduler) running
            processes.wait_or_kill(pids, timeout=10)
            _sigquit_guard.remove(self)
            raise
        self._processes = pids
        engine = self.engine
        tm = engine.tokenizer_manager
        self._server_args = engine.server_args
        # SGLang's own liveness watchdog SIGQUITs this process when a child dies; the adapter watches instead.
        watchdog = getattr(tm, "_subprocess_watchdog", None)
        if watchdog is not None:
            watchdog.stop()
        self._main_pids = {int(pid) for pid in engine.get_all_child_pids()}
        self._names = {pid: _process_name(pid) for pid in self._main_pids}
        model_config = tm.model_config
        self._model_config = model_config
        self._vocab_size = int(model_config.vocab_size)
        # Room for prompt + output: TokenizerManager._validate_one_request refuses more than context_len
        # (minus tokens reserved for speculative drafts); the scheduler refuses prompts of max_req_input_len.
        self._room = int(tm.context_len) - int(getattr(tm, "num_reserved_tokens", 0) or 0)
        self._context = min(int(tm.max_req_input_len), self._room)
        self._kv_tokens = _scheduler_info(engine, "max_total_num_tokens")
        self._incremental = bool(self._server_args.incremental_streaming_output)
        tokenizer = None if opts.skip_tokenizer_init else tm.tokenizer
        if tokenizer is not None:
            # llmkit's own copies: one for prompts (any thread, under the encoder's lock), one for decoding
            # on the loop thread; SGLang keeps using its own.
            self.encoder = HFPromptEncoder(copy.deepcopy(tokenizer), self.backend, self.model, self._vocab_size)
            self._decode, self._token_text = _decoders(copy.deepcopy(tokenizer))
        else:
            self.encoder = None
            self._decode, self._token_text = (lambda ids: ""), (lambda token: "")
        self._seeds = random.Random(opts.seed) if opts.seed is not None else random.SystemRandom()
        self._tasks: dict[str, Any] = {}  # generation id → future of its task
        self._tasks_lock = threading.Lock()
        self._loras: set[str] = set()  # adapter names loaded into SGLang
        self._lora_locks: dict[str, asyncio.Lock] = {}
        self._watcher = self._loop.spawn(self._watch)

    def _close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is None:
            return
        self._loop.stop()  # cancels the watcher and the request tasks (each aborts its request)
        _sigquit_guard.remove(self)
        _close_zmq_contexts(engine)
        engine.send_to_rpc = None
        daemons = getattr(engine, "_weight_cache_daemon_procs", None)
        if daemons:
            engine._terminate_weight_cache_daemons(daemons)
            engine._weight_cache_daemon_procs = []
        # As shutdown() does (SIGKILL, then wait until they are reaped, so the GPU memory is free when close
        # returns), but for this engine's processes only: SGLang's and what they started, then whatever
        # else appeared while it started.
        killed = _with_descendants(self._main_pids)
        _kill(killed)
        processes.wait_or_kill(killed, timeout=60)
        processes.wait_or_kill(self._processes - killed, timeout=15)  # as the vLLM adapter does
        atexit.unregister(engine.shutdown)  # registered by sglang.Engine; it would kill every child at exit
        del engine
        import gc

        gc.collect()

    @property
    def context_length(self) -> int:
        return self._context

    def engine_processes(self) -> set[int]:
        """The processes this engine started (scheduler, detokenizer and what they started)."""
        return set(self._processes)

    # ---- capabilities ----------------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        base = self.capabilities_
        args = getattr(self, "_server_args", None)
        if args is None:
            return base
        sampling, constraints, limits = set(base.sampling), set(base.constraints), dict(base.limits)
        deterministic = bool(args.enable_deterministic_inference)
        if deterministic:
            sampling.add("seed")
            limits.pop("seed", None)
        chat = True
        if args.skip_tokenizer_init:
            reason = "skip_tokenizer_init=True: SGLang has no tokenizer to match stop strings or build grammars with"
            sampling.discard("stop")
            constraints.clear()
            chat = False
            limits.update({"stop": reason, "chat": "skip_tokenizer_init=True: prompts are token ids"})
            limits.update({f"constraint:{k}": reason for k in base.constraints})
        elif args.grammar_backend not in SUPPORTED_GRAMMAR_BACKENDS:
            constraints.clear()
            limits.update({f"constraint:{k}": f"grammar_backend={args.grammar_backend!r}: llmkit's constraints are sent as "
                                              f"xgrammar reads them (GBNF, JSON schema)" for k in base.constraints})
        lora = bool(args.enable_lora)
        if not lora:
            limits["lora"] = "load with enable_lora=True (and max_lora_rank, lora_target_modules) for per-request adapters"
        return base.model_copy(update={
            "sampling": frozenset(sampling), "constraints": frozenset(constraints), "limits": limits, "chat": chat,
            "lora": lora, "prefix_caching": not args.disable_radix_cache, "batch_invariant_greedy": deterministic,
            "quantization": self._quantization_choices,
        })

    # ---- requests --------------------------------------------------------------------------------

    def _tokenize(self, request: Request) -> list[int]:
        if self.encoder is None:
            return token_ids_only(request, self._vocab_size, self.backend)
        return self.encoder.encode(request)

    def request_kwargs(self, params: SamplingParams, prompt_ids: list[int], *, rid: str = "llmkit-x/0/", index: int = 0,
                       seed: int | None = None, lora_name: str | None = None) -> dict[str, Any]:
        """The `async_generate` keyword arguments for one sample (what `_submit` sends)."""
        return generate_kwargs(params, prompt_ids, room=self._room, index=index, rid=rid, seed=seed, lora_name=lora_name)

    def _submit(self, generation: Generation) -> None:
        params = generation.params
        prompt = list(generation.request.prompt_token_ids)
        seed = params.seed
        if seed is None and self._server_args.enable_deterministic_inference:
            seed = self._seeds.getrandbits(62)  # SGLang would give every unseeded request the seed 42
        plan = [self.request_kwargs(params, prompt, rid=request_id(generation.id, i), index=i, seed=seed)
                for i in range(params.n)]
        lora = self._lora_adapter(generation.request.lora)
        future = self._loop.spawn(lambda: self._run(generation, plan, lora))
        with self._tasks_lock:
            self._tasks[generation.id] = future
        future.add_done_callback(lambda _: self._forget(generation.id))  # at once if it is done already
        rids = [kwargs["rid"] for kwargs in plan]
        generation.on_cancel(lambda: self._loop.call_soon(self._abort, future, rids))

    def _forget(self, generation_id: str) -> None:
        with self._tasks_lock:
            self._tasks.pop(generation_id, None)

    def _lora_adapter(self, path: str | None) -> tuple[str, str] | None:
        """(SGLang name, folder) of a request's adapter. The name is keyed on the adapter's content, so an
        adapter rewritten in place is loaded again rather than served stale (hashed here, on the caller's
        thread, not on the engine's loop)."""
        if path is None:
            return None
        if not os.path.isdir(path):
            raise InvalidRequestError(f"sglang: LoRA adapter folder {path!r} does not exist", parameter="lora", value=path)
        from llmkit.kit.files import digest

        return f"{os.path.basename(path.rstrip('/'))}-{digest(path)[:12]}", path

    def _abort(self, future: Any, rids: list[str]) -> None:
        """On the loop: abort the request in SGLang and stop its task."""
        engine = self.engine
        if engine is not None:
            for rid in rids:
                try:
                    engine.tokenizer_manager.abort_request(rid=rid)
                except Exception:  # noqa: BLE001 - best effort; cancelling the task aborts it as well
                    log.debug("abort_request(%s) failed", rid, exc_info=True)
        task = getattr(future, "task", None)
        if task is not None:
            task.cancel()

    async def _run(self, generation: Generation, plan: list[dict[str, Any]], lora: tuple[str, str] | None) -> None:
        try:
            if lora is not None:
                name = await self._load_lora(*lora)
                for kwargs in plan:
                    kwargs["lora_path"] = name
            if len(plan) == 1:
                await self._sample(generation, plan[0], 0)
            else:
                await _all(self._sample(generation, kwargs, i) for i, kwargs in enumerate(plan))
            generation.end()
        except asyncio.CancelledError:
            generation.end()
            raise
        except LLMKitError as exc:
            generation.end(exc)
        except ValueError as exc:  # SGLang's request validation (TokenizerManager, SamplingParams.verify)
            generation.end(InvalidRequestError(f"sglang: {exc}"))
        except Exception as exc:  # noqa: BLE001 - ends this request; the engine serves the next
            dead = self._dead_processes()
            if dead:
                self.died(f"SGLang process {', '.join(dead)} exited ({type(exc).__name__}: {exc})")
            generation.end(EngineError(f"sglang: {type(exc).__name__}: {exc}"))

    async def _sample(self, generation: Generation, kwargs: dict[str, Any], index: int) -> None:
        reader = DeltaReader(generation.params, kwargs["input_ids"], decode=self._decode, token_text=self._token_text,
                             limit=self._room, incremental=self._incremental, index=index)
        stream = await self.engine.async_generate(**kwargs)
        try:
            async for out in stream:
                for chunk in reader.feed(out):
                    generation.push(chunk)
                if reader.finished:
                    break  # llmkit saw the end first (a stop string): closing the stream aborts SGLang's request
        finally:
            await stream.aclose()

    async def _load_lora(self, name: str, path: str) -> str:
        """On the loop: load the adapter into SGLang on first use (Engine.async_load_lora_adapter), once."""
        lock = self._lora_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self._loras:
                result = await self.engine.async_load_lora_adapter(lora_name=name, lora_path=path)
                if not getattr(result, "success", False):
                    raise InvalidRequestError(f"sglang: LoRA adapter {path!r} did not load: "
                                              f"{getattr(result, 'error_message', result)}", parameter="lora", value=path)
                self._loras.add(name)
        return name

    # ---- engine death ----------------------------------------------------------------------------

    def _dead_processes(self) -> list[str]:
        import psutil

        dead = []
        for pid in sorted(self._main_pids):
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                pass
            dead.append(f"{self._names.get(pid) or 'process'} (pid {pid})")
        return dead

    async def _watch(self) -> None:
        """On the loop: notice that one of the engine's processes died, end everything with EngineDiedError."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            dead = self._dead_processes()
            if dead:
                self.died(f"SGLang process {', '.join(dead)} exited")
                with self._tasks_lock:
                    futures = list(self._tasks.values())
                for future in futures:
                    task = getattr(future, "task", None)
                    if task is not None:
                        task.cancel()
                return

    # ---- engine state ----------------------------------------------------------------------------

    def _special_tokens(self) -> SpecialTokens:
        eos = getattr(self._model_config.hf_config, "eos_token_id", None)
        extra = [eos] if isinstance(eos, int) else list(eos or [])
        if self.encoder is None:
            return SpecialTokens(eos_token_ids=sorted(set(extra)))
        return self.encoder.special_tokens(extra)

    def _weights(self) -> WeightsInfo:
        args = self._server_args
        dtype = dtype_name(self._model_config.dtype) if args.quantization is None else args.quantization
        kv = args.kv_cache_dtype
        return WeightsInfo(format="dummy" if args.load_format == "dummy" else "safetensors", dtype=dtype,
                           bits=WEIGHT_BITS.get(dtype), quantization=args.quantization,
                           kv_cache_dtype=dtype_name(self._model_config.dtype if kv in (None, "auto") else kv),
                           source=str(args.model_path))

    def _memory(self) -> MemoryUsage | None:
        """SGLang's KV pool (the scheduler's max_total_num_tokens), at the bytes per token of its model config.
        SGLang reports its weight memory only in the scheduler's log, so weights stay None."""
        config, args = self._model_config, self._server_args
        kv = args.kv_cache_dtype
        kv_dtype = dtype_name(config.dtype if kv in (None, "auto") else kv)
        per_token = None
        try:
            if kv_dtype in KV_BYTES:
                per_token = 2 * int(config.num_hidden_layers) * int(config.num_key_value_heads) * int(config.head_dim) * KV_BYTES[kv_dtype]
        except (AttributeError, TypeError):
            per_token = None
        tokens = self._kv_tokens
        return MemoryUsage(
            source="SGLang: KV pool tokens (scheduler max_total_num_tokens), bytes per token from its model config",
            kv_cache_tokens=tokens, kv_bytes_per_token=per_token,
            kv_cache_bytes=int(per_token * tokens) if per_token and tokens else None,
            kv_dtype=kv_dtype, weights_dtype=dtype_name(config.dtype),
        )


# ---- helpers ---------------------------------------------------------------------------------------

async def _create(kwargs: dict[str, Any]) -> Any:
    """sglang.Engine, created on the adapter's loop (it keeps the running loop as its own)."""
    from sglang.srt.entrypoints.engine import Engine as SGLEngine

    return SGLEngine(**kwargs)


async def _all(coroutines) -> None:
    """Run the samples together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _decoders(tokenizer: Any) -> tuple[Any, Any]:
    """Token ids → text (special tokens skipped) and one token's text, for the loop thread. The Rust
    tokenizer's own decode where transformers would add nothing to it (no clean-up of spaces): 4x faster."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return (lambda ids: backend.decode(ids, skip_special_tokens=True)), (lambda token: backend.decode([token], skip_special_tokens=False))
    return (lambda ids: tokenizer.decode(ids, skip_special_tokens=True)), (lambda token: tokenizer.decode([token]))


def _scheduler_info(engine: Any, key: str) -> int | None:
    result = getattr(engine, "_scheduler_init_result", None)
    infos = getattr(result, "scheduler_infos", None) or []
    value = infos[0].get(key) if infos else None
    return int(value) if value is not None else None


def _process_name(pid: int) -> str:
    """SGLang titles its processes "sglang::scheduler...", "sglang::detokenizer" (setproctitle, which shows in
    the command line; the 15-character process name would cut it)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return " ".join(process.cmdline())[:60] or process.name()
    except psutil.Error:
        return ""


def _with_descendants(pids: set[int]) -> set[int]:
    import psutil

    found = set(pids)
    for pid in pids:
        try:
            found |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            pass
    return found


def _close_zmq_contexts(engine: Any) -> None:
    """Close the ZeroMQ contexts of the engine's and its TokenizerManager's sockets, every socket with linger 0.

    Left to the garbage collector they hang this process: the manager sits in reference cycles (its result
    dispatcher holds its bound methods), so a context and its sockets are collected together, the context's
    weak set of sockets is already cleared when its `__del__` calls `destroy()`, nothing is closed, and
    `term()` waits for the still-open sockets forever (the session engine's close in the adapter's GPU tests,
    2026-11-28). Context.instance(), shared by the whole process, is left alone."""
    zmq = sys.modules.get("zmq")  # SGLang imported it if it made sockets
    if zmq is None:
        return
    contexts: list[Any] = []
    for owner in (engine, getattr(engine, "tokenizer_manager", None)):
        for value in vars(owner).values() if owner is not None else ():
            if isinstance(value, zmq.Socket) and not value.closed:
                context = value.context
                shared = getattr(type(context), "_instance", None)
                if context is not shared and all(context is not c for c in contexts):
                    contexts.append(context)
    for context in contexts:
        context.destroy(linger=0)


def _kill(pids: set[int]) -> None:
    import psutil

    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


class _SigquitGuard:
    """SIGQUIT from SGLang's processes must not end this process: while an SGLang engine is open, a handler
    logs it (the engine's watcher finds the dead process). Installed from the main thread only (Python's
    rule); the previous handler is restored when the last engine closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: "weakref.WeakSet[SGLangEngine]" = weakref.WeakSet()
        self._previous: Any = None
        self._installed = False

    def add(self, engine: SGLangEngine) -> None:
        with self._lock:
            self._engines.add(engine)
            if self._installed or threading.current_thread() is not threading.main_thread():
                return
            self._previous = signal.getsignal(signal.SIGQUIT)
            signal.signal(signal.SIGQUIT, self._handle)
            self._installed = True

    def remove(self, engine: SGLangEngine) -> None:
        with self._lock:
            self._engines.discard(engine)
            if self._engines or not self._installed or threading.current_thread() is not threading.main_thread():
                return
            signal.signal(signal.SIGQUIT, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGQUIT received: SGLang's processes send it when they fail; llmkit checks the engine's processes "
                    "(EngineDiedError) instead of ending this process")
        previous = self._previous
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
            previous(signum, frame)


_sigquit_guard = _SigquitGuard()
