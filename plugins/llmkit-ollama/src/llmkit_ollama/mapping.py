"""llmkit → Ollama, as declared tables and pure functions (no `ollama` import), so tests check every field
without a server. Checked against ollama/ollama `api/types.go` (`Options`, `DefaultOptions`,
`GenerateRequest`, `ChatRequest`), `docs/api.md` and ollama-python 0.6.3.

Every option is sent explicitly: Ollama's own defaults (temperature 0.8, top_k 40, top_p 0.9,
num_predict -1 = unlimited, repeat_last_n 64) are not llmkit's. A native name `options.<x>` goes into the
request's `options` object, any other into the request body itself.

    SAMPLING   SamplingParams → options + body (`format`)
    REQUEST    Request → body (`prompt` with raw=true on /api/generate, or `messages` on /api/chat)
    OPTIONS    the portable EngineOptions → what this adapter does with each (Ollama's server decides
               batching, weights' types, caching and memory; see each row)

`ChunkReader` turns Ollama's NDJSON stream (one `GenerateResponse` / `ChatResponse` per line) into
llmkit's delta chunks.
"""

from __future__ import annotations

import json
from typing import Any

from llmkit.engine import EngineOptions
from llmkit.errors import InvalidRequestError
from llmkit.kit.constraints import dispatch
from llmkit.kit.jsonschema import prepare_schema
from llmkit.kit.mapping import Mapping, Param, refuse_unless
from llmkit.types import GREEDY_BELOW, Choice, Request, SamplingParams, StreamChunk, Usage

BACKEND = "ollama"
DEFAULT_NUM_CTX = 4096  # llmkit's default context for Ollama (Ollama's own depends on its version and memory)
DONE_REASONS = {"stop": "stop", "length": "length"}

# Why Ollama cannot honour a value: the table's refusals and Capabilities.limits say the same.
NO_N = "Ollama returns one completion per request; send the prompt several times (with different seeds)"
NO_IGNORE_EOS = "Ollama has no option to generate past the end-of-sequence token"
NO_LOGPROBS = "Ollama's API returns token strings without token ids, so llmkit cannot report logprobs faithfully"
NO_PROMPT_LOGPROBS = "Ollama does not score prompts (no prompt logprobs, no max_tokens=0)"
NO_REGEX = "Ollama's `format` takes a JSON schema only (no regex constraint)"
NO_GRAMMAR = "Ollama's `format` takes a JSON schema only (no GBNF grammar)"
NO_TOKEN_IDS = "Ollama takes text only: its API has no token-id prompts"
NO_LORA = "Ollama applies adapters through a Modelfile (ADAPTER), not per request"
LIMITS = {
    "n": NO_N,
    "ignore_eos": NO_IGNORE_EOS,
    "logprobs": NO_LOGPROBS,
    "prompt_logprobs": NO_PROMPT_LOGPROBS,
    "constraint:regex": NO_REGEX,
    "constraint:grammar": NO_GRAMMAR,
    "lora": NO_LORA,
}

ON_SERVER = "set on the Ollama server"
NO_DTYPE = (f"Ollama's server picks the types: the weights' are the model tag's quantization (pull another tag), "
            f"the KV cache's is OLLAMA_KV_CACHE_TYPE; {ON_SERVER}")
NO_PREFIX_CACHING = f"Ollama's server manages its prompt cache itself (OLLAMA_MULTIUSER_CACHE); {ON_SERVER}"
NO_MEMORY_FRACTION = f"Ollama's server decides how much accelerator memory it takes (OLLAMA_GPU_OVERHEAD, num_gpu); {ON_SERVER}"


def _temperature(value: float) -> float:
    return 0.0 if value < GREEDY_BELOW else value


def _format(constraint: Any) -> Any:
    if constraint is None:
        return None
    return dispatch(
        constraint,
        choice=lambda c: {"enum": list(c.choices)},  # a JSON string comes back: ChunkReader unwraps it
        regex=lambda c: None,  # refused by the row
        json_schema=lambda c: prepare_schema(c.schema_),
        grammar=lambda c: None,  # refused by the row
    )


def _refuse_constraint(constraint: Any) -> str | None:
    if constraint is None:
        return None
    return dispatch(constraint, choice=lambda c: None, regex=lambda c: NO_REGEX, json_schema=lambda c: None,
                    grammar=lambda c: NO_GRAMMAR)


SAMPLING = Mapping(SamplingParams, [
    Param("temperature", "options.temperature", _temperature, "below 1e-5 → 0 (greedy; Ollama's default is 0.8)"),
    Param("top_p", "options.top_p", note="1 is off (Ollama's default is 0.9)"),
    Param("top_k", "options.top_k", note="0 is off, as in Ollama's samplers (Ollama's default is 40)"),
    Param("min_p", "options.min_p"),
    Param("max_tokens", "options.num_predict", note="Ollama's default -1 is unlimited",
          refuse=lambda n: NO_PROMPT_LOGPROBS if n == 0 else None),
    Param("stop", "options.stop", list, "Ollama stops on them and leaves them out of the text, as llmkit does"),
    Param("seed", "options.seed", lambda s: -1 if s is None else s,
          "None → -1 (random), or the next seed of the engine's `seed` option (the adapter draws it)"),
    Param("n", None, refuse=refuse_unless(1, NO_N)),
    Param("logprobs", None, refuse=refuse_unless(None, NO_LOGPROBS)),
    Param("prompt_logprobs", None, refuse=refuse_unless(None, NO_PROMPT_LOGPROBS)),
    Param("ignore_eos", None, refuse=refuse_unless(False, NO_IGNORE_EOS)),
    Param("repetition_penalty", "options.repeat_penalty", note="over the whole context: repeat_last_n=-1 (fixed)"),
    Param("presence_penalty", "options.presence_penalty"),
    Param("frequency_penalty", "options.frequency_penalty"),
    Param("constraint", "format", _format, "JsonSchema → the schema; Choice → {\"enum\": choices}, the JSON string "
          "unwrapped to the bare choice", refuse=_refuse_constraint),
], fixed={"options.typical_p": 1.0, "options.repeat_last_n": -1})

REQUEST = Mapping(Request, [
    Param("prompt", "prompt", note="/api/generate with raw=true: a completion, no template applied"),
    Param("messages", "messages", lambda ms: None if ms is None else [m.model_dump() for m in ms],
          "/api/chat: Ollama applies the model's chat template"),
    Param("prompt_token_ids", None, refuse=refuse_unless(None, NO_TOKEN_IDS)),
    Param("lora", None, refuse=refuse_unless(None, NO_LORA)),
])

OPTIONS = Mapping(EngineOptions, [
    Param("max_batch_size", None, note="a cap on this engine's requests in flight at once (client side): Ollama's "
          "server decides its own batching (OLLAMA_NUM_PARALLEL) and queues the rest"),
    Param("max_model_len", "num_ctx", note="sent with every request (options.num_ctx); above the model's trained "
          "context it is refused at load (Ollama would lower it silently)"),
    Param("dtype", None, refuse=lambda v: None if v in (None, "auto") else NO_DTYPE),
    Param("seed", None, note="an engine-level generator of per-request seeds for requests without one"),
    Param("prefix_caching", None, refuse=refuse_unless(None, NO_PREFIX_CACHING)),
    Param("memory_fraction", None, refuse=refuse_unless(None, NO_MEMORY_FRACTION)),
], fields=EngineOptions.PORTABLE)


def sampling_to_native(params: SamplingParams, *, seed: int | None = None) -> dict[str, Any]:
    """{"options": {...}, "format": ...} for `params`; `seed` stands in for a request without its own."""
    if params.seed is None and seed is not None:
        params = params.model_copy(update={"seed": seed})
    flat = SAMPLING.to_native(params, BACKEND)
    native: dict[str, Any] = {"options": {}}
    for key, value in flat.items():
        if key.startswith("options."):
            native["options"][key.removeprefix("options.")] = value
        elif value is not None:
            native[key] = value
    return native


def to_native(model: str, request: Request, params: SamplingParams, *, num_ctx: int, keep_alive: str | None = None,
              seed: int | None = None) -> tuple[str, dict[str, Any]]:
    """(endpoint path, JSON body) of one request: every option explicit, always streamed (NDJSON)."""
    fields = {k: v for k, v in REQUEST.to_native(request, BACKEND).items() if v is not None}
    sampling = sampling_to_native(params, seed=seed)
    sampling["options"]["num_ctx"] = num_ctx
    body: dict[str, Any] = {"model": model, "stream": True, **sampling, "truncate": False, "shift": False}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    if "messages" in fields:
        body["messages"] = fields["messages"]
        return "/api/chat", body
    body["prompt"] = fields["prompt"]
    body["raw"] = True
    return "/api/generate", body


def requested_context(options: Any) -> int:
    """The num_ctx to ask for: the portable max_model_len or Ollama's own num_ctx (not both, unless equal)."""
    OPTIONS.to_native(options, BACKEND)  # refusals
    portable, native = options.max_model_len, getattr(options, "num_ctx", None)
    if portable is not None and native is not None and portable != native:
        raise InvalidRequestError(f"{BACKEND}: max_model_len={portable} and num_ctx={native} both set the context; give one",
                                  parameter="num_ctx", value=native)
    return portable or native or DEFAULT_NUM_CTX


def finish_reason(done_reason: str | None) -> str:
    return DONE_REASONS.get(done_reason or "", "error")


def _text(part: Any) -> str:
    message = getattr(part, "message", None)
    if message is not None:
        return message.content or ""
    return getattr(part, "response", None) or ""


def unwrap_choice(text: str, params: SamplingParams) -> str:
    if not isinstance(params.constraint, Choice):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text  # reported as is: the caller (or the conformance check) sees it is not one of the choices
    return value if isinstance(value, str) else text


class ChunkReader:
    """One request's NDJSON lines (typed `GenerateResponse` / `ChatResponse`) → llmkit delta chunks.

    Ollama streams text without token ids. A choice arrives as a JSON string whose pieces would show
    quotes and escapes, so it is held and sent as one chunk, unwrapped, with the last line (choices are
    short)."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.done = False
        self._held: list[str] | None = [] if isinstance(params.constraint, Choice) else None

    def chunks(self, part: Any) -> list[StreamChunk]:
        text = _text(part)
        if self._held is not None:
            self._held.append(text)
            if not part.done:
                return []
            text = unwrap_choice("".join(self._held), self.params)
        if not part.done:
            return [StreamChunk.model_construct(text=text, token_ids=[], index=0, finish_reason=None, stop_reason=None,
                                                logprobs=None, prompt_logprobs=None, usage=None)] if text else []
        self.done = True
        usage = Usage(prompt_tokens=part.prompt_eval_count or 0, completion_tokens=part.eval_count or 0)
        return [StreamChunk.model_construct(text=text, token_ids=[], index=0, finish_reason=finish_reason(part.done_reason),
                                            stop_reason=None, logprobs=None, prompt_logprobs=None, usage=usage)]


COUNTERS = ("prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration", "load_duration", "total_duration")


def add_counters(totals: dict[str, int], part: Any) -> None:
    """Add Ollama's own counters of one finished request (the last line) to `totals`."""
    for key in COUNTERS:
        totals[key] = totals.get(key, 0) + int(getattr(part, key, None) or 0)


def engine_metrics(totals: dict[str, int]) -> dict[str, Any]:
    """Ollama's counters summed over requests (durations in nanoseconds), and rates from them."""
    metrics: dict[str, Any] = dict(totals)
    if totals.get("eval_duration"):
        metrics["eval_tokens_per_s"] = totals["eval_count"] / (totals["eval_duration"] / 1e9)
    if totals.get("prompt_eval_duration"):
        metrics["prompt_eval_tokens_per_s"] = totals["prompt_eval_count"] / (totals["prompt_eval_duration"] / 1e9)
    return metrics
