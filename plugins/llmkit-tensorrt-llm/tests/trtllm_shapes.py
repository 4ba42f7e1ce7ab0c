"""TensorRT-LLM's output objects as the reader receives them, for tests on machines without TensorRT-LLM.

These are data shapes, not an engine: `CompletionOutput` and `Logprob` are dataclasses built from the field
lists in upstream/snapshot.json (so a field renamed upstream changes them too), and `UpstreamStream` updates
them the way tensorrt_llm/executor/result.py does for a streaming request (GenerationResultBase.
_handle_sequence): each response carries one sequence's new tokens, which extend that output's token_ids and
logprobs; `_last_token_ids_len` moves for that sequence only; the final response sets finish_reason, and
stop-word finishes strip the stop ids from token_ids and name them in stop_reason.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SNAPSHOT = json.loads((Path(__file__).parents[1] / "upstream" / "snapshot.json").read_text())


def _dataclass(name: str) -> type:
    fields = []
    for field_name, spec in SNAPSHOT["classes"][name]["fields"].items():
        if spec.get("required"):
            fields.append((field_name, Any))
        elif "default_factory" in spec:
            factory = {"list": list, "dict": dict, "tuple": tuple}[spec["default_factory"]]
            fields.append((field_name, Any, dataclasses.field(default_factory=factory)))
        else:
            fields.append((field_name, Any, dataclasses.field(default=spec.get("default"))))
    return dataclasses.make_dataclass(name, fields)


CompletionOutput = _dataclass("CompletionOutput")
# The diff properties, as result.py defines them (the snapshot lists them as properties).
CompletionOutput.text_diff = property(lambda self: self.text[self._last_text_len:])
CompletionOutput.token_ids_diff = property(lambda self: self.token_ids[self._last_token_ids_len:])
CompletionOutput.logprobs_diff = property(lambda self: self.logprobs[self._last_logprobs_len:])
assert {"text_diff", "token_ids_diff", "logprobs_diff"} <= {
    name for name, m in SNAPSHOT["classes"]["CompletionOutput"]["methods"].items() if m["property"]}
Logprob = _dataclass("Logprob")


class RequestOutput:
    """The attributes of tensorrt_llm.llmapi.RequestOutput the reader reads (outputs, cached_tokens,
    finished), on one object that every step of the stream returns again, as upstream's `__anext__` does."""

    def __init__(self, n: int, prompt_token_ids: list[int], cached_tokens: int = 0) -> None:
        self._outputs = [CompletionOutput(index=i) for i in range(n)]
        self.prompt_token_ids = prompt_token_ids
        self.cached_tokens = cached_tokens
        self.finished = False

    @property
    def outputs(self) -> list[Any]:
        return self._outputs


class UpstreamStream:
    def __init__(self, n: int = 1, prompt_token_ids: list[int] | None = None, cached_tokens: int = 0) -> None:
        self.result = RequestOutput(n, prompt_token_ids or [1, 2, 3], cached_tokens)

    def respond(self, index: int, tokens: list[int], logprobs: list[dict[int, Any]] | None = None, *,
                finish: str | None = None, stop_reason: Any = None, stop_ids: list[int] | None = None) -> RequestOutput:
        """One response for sequence `index`: its new tokens (and their logprobs); `finish` on the last."""
        out = self.result.outputs[index]
        out._last_token_ids_len = len(out.token_ids)
        out.token_ids.extend(tokens)
        if logprobs is not None:
            out._last_logprobs_len = len(out.logprobs)
            out.logprobs += logprobs
        if finish is not None:
            out.finish_reason = finish
            out.stop_reason = stop_reason
            if stop_ids:  # STOP_WORDS with include_stop_str_in_output=False
                assert out.token_ids[-len(stop_ids):] == stop_ids
                out.token_ids = out.token_ids[:-len(stop_ids)]
        self.result.finished = all(o.finish_reason is not None for o in self.result.outputs)
        return self.result


def logprobs_of(token: int, table: dict[int, float], k: int) -> dict[int, Any]:
    """One position as the PyTorch sampler reports it: the top k by logprob, ranked, plus the sampled
    token (ranked among all) when it is not among them."""
    ordered = sorted(table.items(), key=lambda item: -item[1])
    position = {tid: Logprob(logprob=lp, rank=r + 1) for r, (tid, lp) in enumerate(ordered[:k])}
    if token not in position:
        rank = 1 + sum(1 for _, lp in ordered if lp > table[token])
        position[token] = Logprob(logprob=table[token], rank=rank)
    return position
