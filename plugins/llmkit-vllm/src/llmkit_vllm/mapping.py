"""llmkit → vLLM, as declared tables and pure functions (no vLLM import), so tests check every field
without the engine. Checked against vllm/sampling_params.py and vllm/engine/arg_utils.py of 0.26.0 and
0.32.0: every field is sent explicitly, since vLLM's own defaults differ from llmkit's (max_tokens 16).

`to_native` gives the keyword arguments of `vllm.SamplingParams` (the constraint as the keyword
arguments of `StructuredOutputsParams`), `from_native` turns one `RequestOutput` delta into llmkit
chunks.
"""

from __future__ import annotations

from typing import Any

from llmkit.engine import EngineOptions
from llmkit.kit.constraints import structured_output
from llmkit.kit.jsonschema import prepare_schema, xgrammar_json_ebnf
from llmkit.kit.mapping import Mapping, Param
from llmkit.types import GREEDY_BELOW, JsonSchema, SamplingParams, StreamChunk, TokenLogprob, Usage

# vLLM raises temperatures in (0, 0.01) to 0.01 with a warning (SamplingParams.__post_init__, _MAX_TEMP):
# llmkit refuses them instead of letting the value change silently.
VLLM_MIN_TEMPERATURE = 1e-2
TEMPERATURE_LIMIT = (f"vLLM raises temperatures below {VLLM_MIN_TEMPERATURE} to {VLLM_MIN_TEMPERATURE}; use 0 "
                     f"(greedy) or at least {VLLM_MIN_TEMPERATURE}")
RANGES = {"temperature": (0.0, 2.0)}  # vLLM's _verify_args


def _temperature(value: float) -> float:
    return 0.0 if value < GREEDY_BELOW else value


def _structured(constraint) -> dict[str, Any] | None:
    """StructuredOutputsParams fields. A JSON schema goes as xgrammar's own grammar for it with JSON's string
    rule restored (vLLM's `json=` path compiles with xgrammar 0.2.8, which admits raw control characters in
    strings with length bounds); xgrammar is vLLM's default structured-output backend."""
    if constraint is None:
        return None
    if isinstance(constraint, JsonSchema):
        return {"grammar": xgrammar_json_ebnf(prepare_schema(constraint.schema_))}
    return structured_output(constraint)


def _refuse_tiny_temperature(value: float) -> str | None:
    return TEMPERATURE_LIMIT if GREEDY_BELOW <= value < VLLM_MIN_TEMPERATURE else None


SAMPLING = Mapping(SamplingParams, [
    Param("temperature", "temperature", _temperature, "below 1e-5 → 0 (greedy)", refuse=_refuse_tiny_temperature),
    Param("top_p", "top_p"),
    Param("top_k", "top_k", note="0 disables (vLLM also reads -1 so)"),
    Param("min_p", "min_p"),
    Param("max_tokens", "max_tokens", lambda n: max(n, 1), "0 (scoring only) → 1; the one token is dropped by the adapter"),
    Param("stop", "stop", list),
    Param("seed", "seed"),
    Param("n", "n"),
    Param("logprobs", "logprobs"),
    Param("prompt_logprobs", "prompt_logprobs"),
    Param("ignore_eos", "ignore_eos"),
    Param("repetition_penalty", "repetition_penalty"),
    Param("presence_penalty", "presence_penalty"),
    Param("frequency_penalty", "frequency_penalty"),
    Param("constraint", "structured_outputs", _structured,
          "StructuredOutputsParams: choice / grammar (llmkit's exact regex translation) / grammar (xgrammar's JSON grammar, "
          "strings fixed) / grammar"),
], fixed={"skip_special_tokens": True, "include_stop_str_in_output": False})

# Portable engine options → vllm.EngineArgs fields. None leaves vLLM's default.
OPTIONS = Mapping(EngineOptions, [
    Param("max_batch_size", "max_num_seqs"),
    Param("max_model_len", "max_model_len"),
    Param("dtype", "dtype"),
    Param("seed", "seed"),
    Param("prefix_caching", "enable_prefix_caching"),
    Param("memory_fraction", "gpu_memory_utilization"),
], fields=EngineOptions.PORTABLE)


def to_native(params: SamplingParams, *, detokenize: bool = True) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` (output_kind is the adapter's: vLLM's enum)."""
    native = SAMPLING.to_native(params, "vllm")
    native["detokenize"] = detokenize
    return native


def engine_args(options: EngineOptions) -> dict[str, Any]:
    """The EngineArgs fields the portable options set (those left None are not sent)."""
    return {k: v for k, v in OPTIONS.to_native(options, "vllm").items() if v is not None}


def logprob_entries(token_ids: Any, native: Any, k: int | None) -> list[TokenLogprob] | None:
    """vLLM's per-position {token id: Logprob(logprob, rank, decoded_token)} → llmkit entries."""
    if k is None or native is None:
        return None
    entries = []
    for token, position in zip(token_ids, native):
        chosen = position[token]
        top = {tid: lp.logprob for tid, lp in position.items() if lp.rank is not None and lp.rank <= k}
        entries.append(TokenLogprob.model_construct(token_id=token, token=chosen.decoded_token or "", logprob=chosen.logprob,
                                                    rank=chosen.rank, top=top))
    return entries


def finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "abort") else "error" if reason else "abort"


class DeltaReader:
    """Turns one request's stream of vLLM `RequestOutput` deltas (RequestOutputKind.DELTA) into chunks,
    keeping the per-sample counts that the final chunk's usage needs."""

    def __init__(self, params: SamplingParams, prompt_tokens: int) -> None:
        self.params = params
        self.prompt_tokens = prompt_tokens
        self.completion_tokens: dict[int, int] = {}
        self.last_token: dict[int, int] = {}
        self.prompt_logprobs_sent = False

    def chunks(self, out: Any) -> list[StreamChunk]:
        params = self.params
        chunks = []
        prompt_logprobs = None
        if params.prompt_logprobs is not None and not self.prompt_logprobs_sent and out.prompt_logprobs:
            prompt_logprobs = [None] + logprob_entries(out.prompt_token_ids[1:], out.prompt_logprobs[1:], params.prompt_logprobs)
            self.prompt_logprobs_sent = True
        for seq in out.outputs:
            index = seq.index
            token_ids = [] if params.scoring_only else list(seq.token_ids)
            self.completion_tokens[index] = self.completion_tokens.get(index, 0) + len(token_ids)
            if token_ids:
                self.last_token[index] = token_ids[-1]
            chunk = StreamChunk.model_construct(
                text="" if params.scoring_only else seq.text,
                token_ids=token_ids,
                index=index,
                logprobs=None if params.scoring_only else logprob_entries(seq.token_ids, seq.logprobs, params.logprobs),
                prompt_logprobs=prompt_logprobs if index == 0 else None,
                finish_reason=None, stop_reason=None, usage=None,
            )
            if seq.finish_reason is not None:
                chunk.finish_reason = "length" if params.scoring_only else finish_reason(seq.finish_reason)
                stop = seq.stop_reason
                if stop is None and seq.finish_reason == "stop" and not params.scoring_only:
                    stop = self.last_token.get(index)  # the end-of-sequence token
                chunk.stop_reason = None if params.scoring_only else stop
                chunk.usage = Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens[index],
                                    cached_tokens=out.num_cached_tokens)
            if chunk.token_ids or chunk.text or chunk.finish_reason or chunk.prompt_logprobs:
                chunks.append(chunk)
        return chunks
