"""A stand-in for the few parts of `sglang` the adapter touches, for testing the adapter's own plumbing on
machines without SGLang: its tasks, aborts, request ids, n > 1 fan-out, close, process handling, SIGQUIT
guard and death detection. It is not SGLang and verifies nothing about SGLang's behaviour: what SGLang
produces is only replayed, in the shapes `sglang_recorded` builds from SGLang's source; the engine tests
(test_sglang.py, test_sglang_concurrency.py) run the same paths on real SGLang on a GPU.

Its "scheduler" and "detokenizer" are real child processes (sleeping Pythons), so closing the engine and
its death are real process events. Its tokens are a fixed text's, one per step.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import types
import weakref
from typing import Any

import sglang_api
from sglang_recorded import Prompt, Step, abort, length, stream

TEXT = "The quick brown fox jumps over the lazy dog, 晴れ ☀️ です. " * 8
STEP_S = 0.004


@dataclasses.dataclass
class ServerArgs:
    model_path: str
    tp_size: int = 1
    pp_size: int = 1
    dp_size: int = 1
    nnodes: int = 1
    enable_dp_attention: bool = False
    base_gpu_id: int = 0
    gpu_id_step: int = 1
    quantization: str | None = None
    enable_lora: bool | None = None
    max_lora_rank: int | None = None
    lora_target_modules: Any = None
    load_format: str = "auto"
    skip_tokenizer_init: bool = False
    enable_deterministic_inference: bool = False
    incremental_streaming_output: bool = False
    log_level: str = "info"
    max_running_requests: int | None = None
    context_length: int | None = None
    dtype: str = "auto"
    random_seed: int | None = None
    disable_radix_cache: bool = False
    mem_fraction_static: float | None = None
    grammar_backend: str | None = None
    kv_cache_dtype: str = "auto"
    attention_backend: str | None = None

    def __post_init__(self) -> None:
        self.grammar_backend = self.grammar_backend or "xgrammar"


assert set(sglang_api.SERVER_ARGS) == {f.name for f in dataclasses.fields(ServerArgs)}


class _Watchdog:
    stopped = False

    def stop(self) -> None:
        self.stopped = True


class _TokenizerManager:
    def __init__(self, tokenizer: Any, context_len: int) -> None:
        import torch

        self.tokenizer = tokenizer
        self.context_len = context_len
        self.num_reserved_tokens = 0
        self.max_req_input_len = context_len - 6
        self.model_config = types.SimpleNamespace(
            vocab_size=len(tokenizer) if tokenizer is not None else 512, dtype=torch.bfloat16, num_hidden_layers=2,
            num_key_value_heads=1, head_dim=64,
            hf_config=types.SimpleNamespace(eos_token_id=tokenizer.eos_token_id if tokenizer is not None else 1))
        self.rid_to_state: dict[str, bool] = {}
        self.aborted: list[str] = []
        self._subprocess_watchdog = _Watchdog()
        self._init_ipc_channels()
        self._result_dispatcher = [self.abort_request]  # upstream's TypeBasedDispatcher: a reference cycle

    def _init_ipc_channels(self) -> None:
        """Sockets as upstream's `init_ipc_channels` makes them (an asyncio context of its own, both bound),
        where pyzmq is installed."""
        try:
            import zmq
            import zmq.asyncio
        except ImportError:
            return
        context = zmq.asyncio.Context(2)
        self.ipc_dir = tempfile.mkdtemp(prefix="sglang-standin-")
        weakref.finalize(self, shutil.rmtree, self.ipc_dir, True)
        self.recv_from_detokenizer = context.socket(zmq.PULL)
        self.recv_from_detokenizer.bind(f"ipc://{self.ipc_dir}/tokenizer")
        self.send_to_scheduler = context.socket(zmq.PUSH)
        self.send_to_scheduler.bind(f"ipc://{self.ipc_dir}/scheduler")

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.aborted.append(rid)
        if rid in self.rid_to_state:
            self.rid_to_state[rid] = True


class Engine:
    """The interface of sglang.srt.entrypoints.engine.Engine that the adapter uses."""

    def __init__(self, **kwargs: Any) -> None:
        from transformers import AutoTokenizer

        self.server_args = ServerArgs(**kwargs)  # TypeError for an unknown name, as upstream
        self.loop = asyncio.get_running_loop()  # upstream keeps the running loop
        tokenizer = None if self.server_args.skip_tokenizer_init else AutoTokenizer.from_pretrained(self.server_args.model_path)
        self.tokenizer_manager = _TokenizerManager(tokenizer, self.server_args.context_length or 512)
        sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
        self.procs = [subprocess.Popen(sleeper), subprocess.Popen(sleeper)]  # "scheduler", "detokenizer"
        self._scheduler_init_result = types.SimpleNamespace(
            scheduler_infos=[{"max_total_num_tokens": 4096, "max_req_input_len": self.tokenizer_manager.max_req_input_len}])
        self.send_to_rpc = None
        self.calls: list[dict[str, Any]] = []
        self.loras: list[tuple[str, str]] = []
        self.shutdown_called = False
        atexit.register(self.shutdown)

    def get_all_child_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def shutdown(self) -> None:  # upstream kills every child of the process: the adapter must not call it
        self.shutdown_called = True

    async def async_load_lora_adapter(self, lora_name: str, lora_path: str, pinned: bool = False) -> Any:
        self.loras.append((lora_name, lora_path))
        return types.SimpleNamespace(success=True, error_message="")

    async def async_generate(self, **kwargs: Any) -> Any:
        assert set(kwargs) <= set(sglang_api.ASYNC_GENERATE_ARGS) | {"prompt"}, set(kwargs)
        assert kwargs["stream"] is True
        self.calls.append(kwargs)
        return self._generate(kwargs)

    async def _generate(self, kwargs: dict[str, Any]):
        manager = self.tokenizer_manager
        rid = kwargs["rid"]
        assert rid not in manager.rid_to_state, f"duplicate rid {rid}"
        manager.rid_to_state[rid] = False
        try:
            tok = manager.tokenizer
            n = kwargs["sampling_params"]["max_new_tokens"]
            script = tok(TEXT, add_special_tokens=False).input_ids if tok is not None else list(range(3, 3 + n))
            offset = sum(kwargs["input_ids"]) % 7  # different prompts, different outputs
            ids = (script[offset:] + script)[:n]
            steps = [Step(ids=[t], finish=length(n) if i == n - 1 else None) for i, t in enumerate(ids)]
            outs = stream(Prompt(ids=kwargs["input_ids"]), steps, rid=rid,
                          incremental=self.server_args.incremental_streaming_output,
                          decode=(lambda x: tok.decode(x)) if tok is not None else None)
            for out in outs:
                await asyncio.sleep(STEP_S)
                if manager.rid_to_state.get(rid):  # aborted
                    yield {"output_ids": [], "meta_info": {"id": rid, "finish_reason": abort(), "prompt_tokens": len(kwargs["input_ids"])}}
                    return
                yield out
        finally:
            manager.rid_to_state.pop(rid, None)


VISIBLE_GPUS = 1  # what torch.cuda.device_count() says under the stand-in: the machine it pretends to be


def install(monkeypatch) -> None:
    """Make `import sglang` (and the submodules the adapter imports) give the stand-in, for one test, on a
    machine with VISIBLE_GPUS GPUs."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: VISIBLE_GPUS)
    root = types.ModuleType("sglang")
    root.__version__ = "0.5.17-standin"
    srt = types.ModuleType("sglang.srt")
    server_args = types.ModuleType("sglang.srt.server_args")
    server_args.ServerArgs = ServerArgs
    server_args.QUANTIZATION_CHOICES = ["fp8", "awq", "gptq"]
    entrypoints = types.ModuleType("sglang.srt.entrypoints")
    engine = types.ModuleType("sglang.srt.entrypoints.engine")
    engine.Engine = Engine
    for name, module in {"sglang": root, "sglang.srt": srt, "sglang.srt.server_args": server_args,
                         "sglang.srt.entrypoints": entrypoints, "sglang.srt.entrypoints.engine": engine}.items():
        monkeypatch.setitem(sys.modules, name, module)
