"""SGLang 0.5.17's stream outputs, built the way its TokenizerManager builds them, for testing the reader
without the engine (SGLang has no CPU build).

Source followed (the sglang 0.5.17 wheel = python/sglang/srt/... at v0.5.17):
- `managers/tokenizer_manager.py` `_handle_batch_output`: per scheduler step, `meta_info = {"id", "finish_reason",
  "prompt_tokens", "weight_version", "num_retractions"}`, logprobs added by `convert_logprob_style` /
  `add_logprob_to_meta_info` (lists of (logprob, token_id, text-or-None); top lists per position, None for
  the first prompt token), then `reasoning_tokens`, `completion_tokens`, `cached_tokens`. A streamed
  request's out is `{"text", "output_ids", "meta_info"}`:
    - incremental_streaming_output: `text` and `output_ids` are this step's deltas, and the output logprob
      lists are sliced to them (`_slice_streaming_output_meta_info`);
    - otherwise: `output_ids` is the request state's own list (a live reference that keeps growing) and
      `text` is resolved to the cumulative text in `_wait_one_response`; logprob lists are cumulative.
  `e2e_latency` is added on the finishing step.
- `_wait_one_response`: steps queued before the caller reads are coalesced into one out in incremental
  mode (`_coalesce_streaming_chunks`), or only the last one is yielded otherwise.
- `managers/schedule_batch.py`: finish reasons `{"type": "stop", "matched": <token id | stop string>}`,
  `{"type": "length", "length": n}`, `{"type": "abort", "message", "status_code", "err_type"}`.
- `managers/detokenizer_manager.py`: the text of each step. Here it is decoded per step from that step's
  ids alone, so a character split across tokens shows up as U+FFFD, as seen in SGLang's stream on
  2026-11-26; the reader must not pass that on (it derives text from the ids itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Step:
    """One scheduler output for the request: new token ids (with their logprobs) and maybe its finish."""

    ids: list[int]
    finish: dict[str, Any] | None = None
    logprobs: list[float] | None = None  # one per id
    tops: list[list[tuple[float, int]]] | None = None  # per id: (logprob, token id), most likely first
    queued_with_next: bool = False  # the caller had not read this one when the next arrived


@dataclass
class Prompt:
    ids: list[int]
    logprobs: list[float | None] | None = None  # input_token_logprobs values (first None)
    tops: list[list[tuple[float, int]] | None] | None = None
    cached_tokens: int = 0


def stop_token(token: int) -> dict[str, Any]:
    return {"type": "stop", "matched": token}


def stop_string(text: str) -> dict[str, Any]:
    return {"type": "stop", "matched": text}


def length(n: int) -> dict[str, Any]:
    return {"type": "length", "length": n}


def abort(message: str = "Aborted", status: int | None = None) -> dict[str, Any]:
    return {"type": "abort", "message": message, "status_code": status, "err_type": None if status is None else "BadRequestError"}


@dataclass
class _State:
    output_ids: list[int] = field(default_factory=list)
    text_chunks: list[str] = field(default_factory=list)
    in_lp: list[tuple] = field(default_factory=list)
    out_lp: list[tuple] = field(default_factory=list)
    out_top: list[Any] = field(default_factory=list)
    last_output_offset: int = 0


def stream(prompt: Prompt, steps: list[Step], *, incremental: bool, decode: Callable[[list[int]], str] | None,
           rid: str = "llmkit-0/0/", logprobs: bool = False, top_logprobs_num: int = 0,
           prompt_logprobs: bool = False) -> Iterator[dict[str, Any]]:
    """The outs `Engine.async_generate(..., stream=True)` yields for `steps`. `decode` None: the engine
    runs with skip_tokenizer_init (BatchTokenIDOutput: no "text" key)."""
    state = _State()
    queued: list[dict[str, Any]] = []
    input_sent = False
    for n, step in enumerate(steps):
        meta: dict[str, Any] = {"id": rid, "finish_reason": step.finish, "prompt_tokens": len(prompt.ids),
                                "weight_version": "default", "num_retractions": 0}
        if logprobs or prompt_logprobs:
            # the scheduler sends the prompt's logprobs once, with the first output (after prefill); the
            # tokenizer manager keeps them in the request state and puts the whole list in every meta_info
            if not input_sent and prompt_logprobs:
                state.in_lp = [(v, t, None) for v, t in zip(prompt.logprobs, prompt.ids)]
                input_sent = True
            state.out_lp += [(v, t, None) for v, t in zip(step.logprobs or [], step.ids)]
            meta["input_token_logprobs"] = state.in_lp
            meta["output_token_logprobs"] = list(state.out_lp)
            meta["output_token_logprobs_length"] = len(state.out_lp)
            if top_logprobs_num > 0:
                state.out_top += [[(v, t, None) for v, t in row] for row in (step.tops or [])]
                if prompt_logprobs:
                    meta["input_top_logprobs"] = [None if row is None else [(v, t, None) for v, t in row] for row in prompt.tops]
                meta["output_top_logprobs"] = list(state.out_top)
        meta.update({"reasoning_tokens": 0, "completion_tokens": len(state.output_ids) + len(step.ids),
                     "cached_tokens": prompt.cached_tokens})
        delta_text = decode(step.ids) if decode is not None and step.ids else ""
        offset = state.last_output_offset
        state.output_ids.extend(step.ids)
        state.text_chunks.append(delta_text)
        finished = step.finish is not None
        if finished:
            meta["e2e_latency"] = 0.01 * (n + 1)
        if incremental:
            for key in ("output_token_logprobs", "output_top_logprobs"):
                if key in meta:
                    meta[key] = meta[key][offset:]
            state.last_output_offset = len(state.output_ids)
            out = {"output_ids": list(step.ids), "meta_info": meta}
            if decode is not None:
                out["text"] = delta_text
        else:
            # a live reference to the state's list, as SGLang yields for unfinished steps; a copy when finished
            out = {"output_ids": state.output_ids.copy() if finished else state.output_ids, "meta_info": meta}
            if decode is not None:
                out["text"] = "".join(state.text_chunks)
        queued.append(out)
        if step.queued_with_next and not finished:
            continue
        yield _coalesce(queued) if incremental and len(queued) > 1 else queued[-1]
        queued = []


def _coalesce(outs: list[dict[str, Any]]) -> dict[str, Any]:
    """TokenizerManager._coalesce_streaming_chunks."""
    out = dict(outs[-1])
    out["output_ids"] = [i for o in outs for i in o["output_ids"]]
    if "text" in out:
        out["text"] = "".join(o["text"] for o in outs)
    meta = dict(outs[-1]["meta_info"])
    for key in ("output_token_logprobs", "output_top_logprobs"):
        if any(key in o["meta_info"] for o in outs):
            meta[key] = [item for o in outs for item in o["meta_info"].get(key, [])]
    out["meta_info"] = meta
    return out
