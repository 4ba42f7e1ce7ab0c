"""llmkit → SGLang, as declared tables and pure functions (no SGLang import), so tests check every field
without the engine (SGLang has no CPU build on the registry).

Checked against the source of sglang 0.5.17 (the wheel on PyPI, = python/sglang/... at v0.5.17):
- `srt/sampling/sampling_params.py`: `SamplingParams` fields and defaults (`max_new_tokens` 128, top_k
  "all" = 1 << 30 with -1 meaning off and 0 rejected by `verify`, temperatures below 1e-6 become greedy
  as top_k=1, repetition_penalty in (0, 2], `json_schema` / `regex` / `ebnf` mutually exclusive,
  `sampling_seed`, `no_stop_trim`, `skip_special_tokens`). Every field llmkit has is sent explicitly.
- `srt/managers/io_struct.py` `GenerateReqInput`: logprobs are request-level (`return_logprob`,
  `top_logprobs_num` shared by prompt and output, `logprob_start_len` -1 = output only, 0 = every
  prompt token), `lora_path` names a loaded adapter, `rid`.
- `srt/managers/tokenizer_manager.py` `_handle_batch_output` / `_wait_one_response`: what a stream
  yields (`output_ids`, `text` unless skip_tokenizer_init, `meta_info` with `finish_reason` (a dict or
  None), `prompt_tokens`, `completion_tokens`, `cached_tokens`, logprob lists of (logprob, token id,
  text-or-None)); cumulative `output_ids` / `text` unless `incremental_streaming_output`, then deltas.
- `srt/server_args.py` `ServerArgs` for the portable engine options.

`to_native` gives the `sampling_params` dict, `generate_kwargs` the whole `Engine.async_generate`
call, `DeltaReader` turns one request's stream of outputs into llmkit delta chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from llmkit.engine import EngineOptions
from llmkit.errors import EngineError, InvalidRequestError, UnsupportedFeatureError
from llmkit.kit.constraints import choice_regex, dispatch
from llmkit.kit.decoding import DecodeState
from llmkit.kit.grammars import RegexNotExpressible, regex_gbnf
from llmkit.kit.jsonschema import prepare_schema
from llmkit.kit.mapping import Mapping, Param
from llmkit.types import GREEDY_BELOW, Choice, Grammar, JsonSchema, Regex, SamplingParams, StreamChunk, TokenLogprob

SGLANG_VERSION = "0.5.17"

# SamplingParams.verify: repetition_penalty must be in (0, 2] (llmkit allows up to 10).
RANGES = {"repetition_penalty": (0.0, 2.0)}

SEED_LIMIT = ("SGLang honours a per-request seed (sampling_seed) only with enable_deterministic_inference=True "
              "(srt/sampling/sampling_batch_info.py); load with that option to use seeds")


def _temperature(value: float) -> float:
    # llmkit's greedy limit (1e-5) is above SGLang's (1e-6): send 0 so both agree on what is greedy.
    return 0.0 if value < GREEDY_BELOW else value


def constraint_native(constraint: Choice | Regex | JsonSchema | Grammar | None) -> dict[str, str]:
    """The SGLang sampling field for a constraint. Choice and regex go through llmkit's exact regex → GBNF
    translation into `ebnf` (xgrammar, SGLang's default grammar backend, reads GBNF); a choice is first
    the escaped regex alternation of its strings. JSON schemas go as a JSON string to SGLang's
    `json_schema` (its converter), grammars as they are to `ebnf`. Raises `RegexNotExpressible`."""
    if constraint is None:
        return {}
    return dispatch(
        constraint,
        choice=lambda c: {"ebnf": regex_gbnf(choice_regex(list(c.choices)))},
        regex=lambda c: {"ebnf": regex_gbnf(c.pattern)},
        json_schema=lambda c: {"json_schema": json.dumps(prepare_schema(c.schema_))},
        grammar=lambda c: {"ebnf": c.grammar},
    )


CONSTRAINT_FIELDS = "json_schema | ebnf"

SAMPLING = Mapping(SamplingParams, [
    Param("temperature", "temperature", _temperature, "below 1e-5 → 0; SGLang turns 0 into top_k=1 (greedy)"),
    Param("top_p", "top_p"),
    Param("top_k", "top_k", lambda k: k or -1, "0 (off) → -1: SGLang's verify rejects 0"),
    Param("min_p", "min_p"),
    Param("max_tokens", "max_new_tokens", lambda n: max(n, 1),
          "always sent (SGLang's default is 128); 0 (scoring only) → 1, the token is dropped; also capped at the "
          "room left in the context (generate_kwargs)"),
    Param("stop", "stop", list, "SGLang stops there; llmkit's decode state trims the text and never streams part of one"),
    Param("seed", "sampling_seed", note="honoured with enable_deterministic_inference only (refused otherwise)"),
    Param("n", None, note="one SGLang request per sample (SGLang's parallel sampling gives every sample the same "
                          "sampling_seed); sample i > 0 gets a seed derived from the request's"),
    Param("logprobs", None, note="request-level: return_logprob, top_logprobs_num (generate_kwargs)"),
    Param("prompt_logprobs", None, note="request-level: return_logprob, logprob_start_len=0, top_logprobs_num"),
    Param("ignore_eos", "ignore_eos"),
    Param("repetition_penalty", "repetition_penalty"),
    Param("presence_penalty", "presence_penalty"),
    Param("frequency_penalty", "frequency_penalty"),
    Param("constraint", CONSTRAINT_FIELDS, constraint_native,
          "choice → escaped regex alternation, regex → llmkit's exact GBNF, both as ebnf; json_schema as a JSON "
          "string; grammar → ebnf"),
], fixed={"n": 1, "min_new_tokens": 0, "skip_special_tokens": True, "spaces_between_special_tokens": True,
          "no_stop_trim": False})


def _inverse(value: bool | None) -> bool | None:
    return None if value is None else not value


# Portable engine options → sglang ServerArgs fields (srt/server_args.py). None leaves SGLang's default.
OPTIONS = Mapping(EngineOptions, [
    Param("max_batch_size", "max_running_requests"),
    Param("max_model_len", "context_length"),
    Param("dtype", "dtype"),
    Param("seed", "random_seed"),
    Param("prefix_caching", "disable_radix_cache", _inverse, "RadixAttention is SGLang's prefix cache"),
    Param("memory_fraction", "mem_fraction_static",
          note="weights + KV pool as a share of the GPU memory free when the engine starts (vLLM's is of the total)"),
], fields=EngineOptions.PORTABLE)


def to_native(params: SamplingParams, backend: str = "sglang") -> dict[str, Any]:
    """The `sampling_params` dict of one SGLang request (before the context cap and the per-sample seed).
    Raises `UnsupportedFeatureError` for a regex a grammar cannot express."""
    try:
        native = SAMPLING.to_native(params, backend)
    except RegexNotExpressible as exc:
        raise UnsupportedFeatureError(backend, "constraint:regex", str(exc)) from exc
    native.update(native.pop(CONSTRAINT_FIELDS))
    return native


def server_args(options: EngineOptions) -> dict[str, Any]:
    """The ServerArgs fields the portable options set (those left None are not sent)."""
    return {k: v for k, v in OPTIONS.to_native(options, "sglang").items() if v is not None}


def logprob_args(params: SamplingParams, *, prompt: bool = True) -> dict[str, Any]:
    """Request-level logprob arguments: SGLang has one top_logprobs_num for prompt and output. `prompt`:
    this request carries the prompt's logprobs (sample 0 of a request; the others need not score it again)."""
    prompt_logprobs = params.prompt_logprobs if prompt else None
    if params.logprobs is None and prompt_logprobs is None:
        return {"return_logprob": False, "logprob_start_len": -1, "top_logprobs_num": 0}
    return {
        "return_logprob": True,
        "logprob_start_len": 0 if prompt_logprobs is not None else -1,
        "top_logprobs_num": max(params.logprobs or 0, prompt_logprobs or 0),
    }


def sample_seed(seed: int | None, index: int) -> int | None:
    """The seed of sample `index` of a request seeded with `seed`: sample 0 gets `seed` itself."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.sha256(f"llmkit-sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # SGLang keeps seeds in an int64 tensor


def request_id(generation_id: str, index: int) -> str:
    """SGLang aborts every request whose id *starts with* the aborted id (Scheduler.abort_request,
    srt/managers/scheduler.py): ids must be prefix-free, so each ends with a delimiter."""
    return f"{generation_id}/{index}/"


def generate_kwargs(params: SamplingParams, prompt_ids: list[int], *, room: int, index: int = 0, rid: str,
                    seed: int | None = None, lora_name: str | None = None) -> dict[str, Any]:
    """The keyword arguments of `Engine.async_generate` for sample `index` of a request. `room`: most
    prompt + output tokens the engine admits (TokenizerManager._validate_one_request refuses more, rather
    than stopping at the context); `seed`: the request's seed (already drawn where llmkit draws it)."""
    sampling = to_native(params)
    sampling["max_new_tokens"] = max(1, min(sampling["max_new_tokens"], room - len(prompt_ids)))
    sampling["sampling_seed"] = sample_seed(seed, index)
    return {"input_ids": list(prompt_ids), "sampling_params": sampling, "stream": True, "rid": rid,
            "lora_path": lora_name, **logprob_args(params, prompt=index == 0)}


# ---- from SGLang ---------------------------------------------------------------------------------------

def logprob_entry(entry: Any, top_row: Any, k: int, token_text: Callable[[int], str]) -> TokenLogprob:
    """One (logprob, token id, text) tuple of SGLang's logprob lists, with its top row, → TokenLogprob."""
    logprob, token, text = entry
    top = {int(t): float(v) for v, t, _ in (top_row or [])[:k]}
    # rank, as vLLM's sampler counts it: 1 + how many other tokens were at least as likely (exact ties included),
    # counted over the whole top row SGLang sent. Exact only where some entry is less likely than the token (then
    # every token at least as likely is in the row); unknown (None) otherwise.
    row = [(float(v), int(t)) for v, t, _ in (top_row or [])]
    at_least = sum(1 for value, t in row if value >= logprob and t != int(token))
    rank = at_least + 1 if any(value < logprob for value, _ in row) else None
    return TokenLogprob.model_construct(token_id=int(token), token=text if text is not None else token_text(int(token)),
                                        logprob=float(logprob), rank=rank, top=top)


def prompt_logprob_entries(meta_info: dict[str, Any], k: int, token_text: Callable[[int], str]) -> list[TokenLogprob | None] | None:
    """meta_info["input_token_logprobs"] (logprob_start_len=0: one per prompt token, the first with logprob
    None) and "input_top_logprobs" → llmkit's list, None first."""
    entries = meta_info.get("input_token_logprobs")
    if not entries:
        return None
    tops = meta_info.get("input_top_logprobs") or [None] * len(entries)
    out: list[TokenLogprob | None] = []
    for entry, top_row in zip(entries, tops):
        out.append(None if entry[0] is None else logprob_entry(entry, top_row, k, token_text))
    return out


# Req._check_vocab_boundary_finish (srt/managers/schedule_batch.py): a sampled id outside the vocabulary
# (NaN logits) ends the request as a "stop" with this string.
NAN_MATCHED = "NaN happened"


def abort_error(finish: dict[str, Any]) -> Exception | None:
    """An error for an abort SGLang reports in a stream (TokenizerManager._handle_abort_finish_reason
    passes these through when streaming): 400 is a bad request, 500/503 the engine's failure. None for an
    abort without a status (a request aborted on request)."""
    status = finish.get("status_code")
    message = finish.get("message") or "aborted"
    if status is None:
        return None
    if int(status) == 400:
        return InvalidRequestError(f"sglang: {message}")
    return EngineError(f"sglang: {message} (status {int(status)})")


class DeltaReader:
    """One sample's SGLang stream → llmkit delta chunks.

    Text is llmkit's own: the token ids go through `DecodeState` (the kit's incremental detokenizer, the one
    the transformers and llama.cpp engines use), so a chunk never ends inside a multi-byte character (SGLang's
    stream text showed U+FFFD for a byte-level tokenizer's partial characters on 2026-11-26) and never holds
    part of a stop string. SGLang's own `text` is not read.

    `incremental`: the server runs with incremental_streaming_output (each output holds only what is new);
    otherwise `output_ids` and the output logprob lists are cumulative and the reader takes what is new.
    `limit`: prompt + output tokens the engine admits (SGLang stops there with "length").
    """

    def __init__(self, params: SamplingParams, prompt_ids: list[int], *, decode: Callable[[list[int]], str],
                 token_text: Callable[[int], str], limit: int, incremental: bool, index: int = 0) -> None:
        self.params = params
        self.incremental = incremental
        self.token_text = token_text
        self.state = DecodeState(prompt_ids=list(prompt_ids), params=params, decode=decode, context_length=limit, index=index)
        self.seen_ids = 0  # output ids consumed (cumulative mode)
        self.seen_logprobs = 0  # output logprob entries consumed (cumulative mode)
        self.pending_logprobs: list[TokenLogprob] = []
        self.upstream_finished = False
        self.want_prompt_logprobs = params.prompt_logprobs is not None and index == 0  # sample 0 carries them

    @property
    def finished(self) -> bool:
        """llmkit has the whole sample (it may have ended before SGLang did: then abort SGLang's request)."""
        return self.state.finished

    def feed(self, out: dict[str, Any]) -> list[StreamChunk]:
        meta = out.get("meta_info") or {}
        finish = meta.get("finish_reason")
        if isinstance(finish, dict) and finish.get("type") == "abort":
            error = abort_error(finish)
            if error is not None:
                raise error
        if self.state.finished:
            return []
        ids = list(out.get("output_ids") or [])
        if not self.incremental:
            ids, self.seen_ids = ids[self.seen_ids:], len(ids)
        state = self.state
        if meta.get("cached_tokens") is not None:
            state.cached_tokens = int(meta["cached_tokens"])
        # The scheduler sends the prompt's logprobs with the first output (at the end of prefill), so they
        # ride on the first chunk; the tokenizer manager repeats them in every later meta_info.
        if self.want_prompt_logprobs and state.prompt_logprobs is None:
            state.prompt_logprobs = prompt_logprob_entries(meta, self.params.prompt_logprobs or 0, self.token_text)
        if self.params.logprobs is not None:
            self._take_logprobs(meta)
        if finish is not None:
            self.upstream_finished = True
        if self.params.scoring_only:
            if finish is not None:
                state.finish_scored()
        else:
            # An id SGLang matched as the end (EOS, a stop token id, a completed grammar) ends the sample as
            # "stop" even where it is also the last token max_tokens allows.
            matched = finish.get("matched") if isinstance(finish, dict) and finish.get("type") == "stop" else None
            end_id = matched if isinstance(matched, int) and not isinstance(matched, bool) else None
            for position, token in enumerate(ids):
                ends = end_id is not None and position == len(ids) - 1 and token == end_id
                state.append(token, logprob=self.pending_logprobs.pop(0) if self.pending_logprobs else None, ends=ends)
                if state.finished:
                    break
            if finish is not None and not state.finished:
                self._finish_as_upstream(finish)
        chunk = state.take_chunk()
        return [chunk] if chunk is not None else []

    def _take_logprobs(self, meta: dict[str, Any]) -> None:
        entries = meta.get("output_token_logprobs") or []
        tops = meta.get("output_top_logprobs")
        if not self.incremental:
            start, self.seen_logprobs = self.seen_logprobs, len(entries)
            entries = entries[start:]
            tops = tops[start:] if tops is not None else None
        k = self.params.logprobs or 0
        for i, entry in enumerate(entries):
            self.pending_logprobs.append(logprob_entry(entry, tops[i] if tops is not None and i < len(tops) else None, k, self.token_text))

    def _finish_as_upstream(self, finish: dict[str, Any]) -> None:
        """SGLang ended the sample and llmkit's decode state has not: at an end-of-sequence or stop token id
        (the id stays in token_ids and is the stop_reason, as on vLLM), at a stop string its own check found
        where llmkit's did not, or at a length its scheduler capped below the room llmkit computed."""
        kind = finish.get("type")
        if kind == "abort":
            self.state.abort()
        elif kind == "stop":
            matched = finish.get("matched")
            if matched == NAN_MATCHED and NAN_MATCHED not in self.params.stop:
                self.state.finish("error", None)  # an out-of-vocabulary id was sampled (NaN logits)
            else:
                self.state.finish("stop", matched if isinstance(matched, (str, int)) else None)
        else:
            self.state.finish("length", None)


def gpu_ids(args: dict[str, Any]) -> list[int]:
    """The CUDA device ids SGLang 0.5.17 puts its schedulers on, on a one-node deployment: for each data-parallel
    replica (one group where `enable_dp_attention` puts the replicas inside the tensor-parallel group) a block of
    tp_size × pp_size devices from `base_gpu_id`; inside it rank (pp, tp) takes pp × tp_size + tp × gpu_id_step
    (entrypoints/engine.py `_launch_scheduler_processes`, managers/data_parallel_controller.py)."""
    tp, pp, dp = (int(args.get(k) or 1) for k in ("tp_size", "pp_size", "dp_size"))
    base, step = int(args.get("base_gpu_id") or 0), int(args.get("gpu_id_step") or 1)
    replicas = 1 if args.get("enable_dp_attention") else dp
    return sorted({base + replica * tp * pp * step + p * tp + t * step
                   for replica in range(replicas) for p in range(pp) for t in range(tp)})


def check_gpu_layout(args: dict[str, Any], visible_gpus: int) -> None:
    """Refuse, before SGLang starts a process, a layout that needs a GPU this machine does not show (SGLang
    would fail later in a scheduler process, on an invalid device ordinal). Multi-node layouts (`nnodes` > 1)
    are placed per node by SGLang and not checked here."""
    if int(args.get("nnodes") or 1) != 1:
        return
    ids = gpu_ids(args)
    if ids[-1] < visible_gpus:
        return
    layout = " × ".join(f"{k}={int(args.get(k) or 1)}" for k in ("tp_size", "pp_size", "dp_size"))
    placement = ", ".join(f"{k}={args[k]}" for k in ("base_gpu_id", "gpu_id_step", "enable_dp_attention") if args.get(k))
    restricted = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise UnsupportedFeatureError(
        "sglang", f"{len(ids)} GPUs on one machine",
        f"{layout}{' (' + placement + ')' if placement else ''} puts schedulers on GPUs {ids}, and {visible_gpus} "
        f"{'is' if visible_gpus == 1 else 'are'} visible" + (f" (CUDA_VISIBLE_DEVICES={restricted})" if restricted is not None else "")
        + "; to span machines, give nnodes, node_rank and dist_init_addr (SGLang's multi-node mode)")
