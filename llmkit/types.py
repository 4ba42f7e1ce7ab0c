"""The types every engine speaks. Validated once, at the boundary, with errors that name the field.

`None` means "not set"; each "off" has exactly one encoding (top_k=0, min_p=0, penalties at their
neutral value). llmkit's defaults are llmkit's: adapters send every field to the engine explicitly,
because engines disagree on their own defaults (max tokens 16 in vLLM, unlimited in Ollama, ...).
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmkit.errors import InvalidRequestError

FinishReason = Literal["stop", "length", "abort", "error"]


class LLMKitModel(BaseModel):
    """Base for llmkit's types: unknown fields are errors, NaN/inf are rejected, and a validation
    failure surfaces as `InvalidRequestError` naming the field and the limit."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise invalid_request_from(exc, type(self).__name__) from None


def invalid_request_from(exc: ValidationError, where: str) -> InvalidRequestError:
    """Turn pydantic's report into one `InvalidRequestError` naming the first bad field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or where
    lines = [f"{where}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in errors]
    return InvalidRequestError("invalid request: " + "; ".join(lines), parameter=field, value=first.get("input"))


# --------------------------------------------------------------------------------------------------
# Constraints (guided decoding): exactly one per request, by type.
# --------------------------------------------------------------------------------------------------


class Choice(LLMKitModel):
    """The output is exactly one of `choices`."""

    kind: Literal["choice"] = "choice"
    choices: list[str] = Field(min_length=1, description="Allowed outputs, each non-empty, no duplicates.")

    @field_validator("choices")
    @classmethod
    def _distinct_non_empty(cls, choices: list[str]) -> list[str]:
        if any(not c for c in choices):
            raise ValueError("choices must be non-empty strings")
        if len(set(choices)) != len(choices):
            raise ValueError("choices must be distinct")
        return choices


class Regex(LLMKitModel):
    """The whole output matches `pattern` (anchored at both ends)."""

    kind: Literal["regex"] = "regex"
    pattern: str = Field(min_length=1, description="A regular expression the whole output must match.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return pattern


class JsonSchema(LLMKitModel):
    """The output is JSON valid under `schema` (a JSON Schema document)."""

    kind: Literal["json_schema"] = "json_schema"
    schema_: dict[str, Any] = Field(alias="schema", description="A JSON Schema (draft 2020-12) document.")

    @field_validator("schema_", mode="before")
    @classmethod
    def _parse_and_check(cls, schema: Any) -> Any:
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            schema = schema.model_json_schema()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise ValueError(f"schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise ValueError("schema must be a JSON object")
        import jsonschema

        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid JSON schema: {exc.message}") from None
        return schema

    @property
    def schema_json(self) -> str:
        return json.dumps(self.schema_)


class Grammar(LLMKitModel):
    """The output is derivable from `grammar`, written in GBNF (llama.cpp's EBNF dialect, which
    xgrammar and vLLM also read), with start symbol `root`."""

    kind: Literal["grammar"] = "grammar"
    grammar: str = Field(min_length=1, description="Grammar text in GBNF; the start rule is `root`.")
    syntax: Literal["gbnf"] = "gbnf"

    @field_validator("grammar")
    @classmethod
    def _has_root(cls, grammar: str) -> str:
        if not re.search(r"(?m)^\s*root\s*::=", grammar):
            raise ValueError("grammar must define the start rule `root ::= ...`")
        return grammar


Constraint = Annotated[Union[Choice, Regex, JsonSchema, Grammar], Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


class SamplingParams(LLMKitModel):
    """How to sample. Every field is sent to the engine; unsupported non-neutral values raise
    `UnsupportedFeatureError` before the engine runs."""

    temperature: float = Field(1.0, ge=0.0, le=100.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass in (0, 1]; 1 is off.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0 is off.")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens below min_p × the top probability; 0 is off.")
    max_tokens: int = Field(256, ge=1, description="Most tokens to generate (llmkit's default: 256).")
    stop: list[str] = Field(default_factory=list, description="Strings that end generation; not included in the output.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Per-request RNG seed; None is nondeterministic.")
    n: int = Field(1, ge=1, le=128, description="Samples per prompt.")
    logprobs: int | None = Field(
        None, ge=0, le=20, description="Return the sampled token's logprob and this many top alternatives; None is off."
    )
    prompt_logprobs: int | None = Field(
        None, ge=0, le=20,
        description="Also score the prompt: each prompt token's logprob and this many top alternatives (vLLM's "
        "meaning); None is off. Engines with a prefix cache recompute the prompt for such a request.",
    )
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token.")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="Multiplicative penalty (HF/vLLM); 1 is off.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Additive, once per seen token (OpenAI); 0 is off.")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Additive, per occurrence (OpenAI); 0 is off.")
    constraint: Constraint | None = Field(None, description="Guided decoding: Choice, Regex, JsonSchema or Grammar.")

    # The value of each field that means "this feature is not used". An engine that lacks a feature
    # may still receive the neutral value.
    NEUTRAL: ClassVar[dict[str, Any]] = {
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "stop": [],
        "seed": None,
        "n": 1,
        "logprobs": None,
        "prompt_logprobs": None,
        "ignore_eos": False,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "constraint": None,
    }

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, stop: Any) -> Any:
        if isinstance(stop, str):
            stop = [stop]
        if isinstance(stop, list) and any(isinstance(s, str) and not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        return stop

    @model_validator(mode="after")
    def _cross_field(self) -> "SamplingParams":
        if self.temperature == 0.0 and self.n > 1:
            raise ValueError("n > 1 needs temperature > 0: greedy samples would all be identical")
        if self.ignore_eos and self.constraint is not None:
            raise ValueError("ignore_eos cannot be combined with a constraint: the grammar decides where output ends")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def features_used(self) -> list[str]:
        """Names of the non-neutral features this request uses (a constraint is named by its kind)."""
        used = []
        for name, neutral in self.NEUTRAL.items():
            value = getattr(self, name)
            if value != neutral:
                used.append(f"constraint:{value.kind}" if name == "constraint" else name)
        return used


def greedy(**overrides: Any) -> SamplingParams:
    """Greedy decoding, the usual choice for tests and classification."""
    return SamplingParams(temperature=0.0, **overrides)


# --------------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------------


class Message(LLMKitModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Request(LLMKitModel):
    """One input: a raw prompt (completion), a conversation (chat template applied by the engine), or
    prompt token ids (sent as they are)."""

    prompt: str | None = None
    messages: list[Message] | None = None
    prompt_token_ids: list[int] | None = Field(None, description="Token ids, for engines that take them.")
    lora: str | None = Field(None, description="Path of a LoRA adapter (PEFT folder) to apply to this request only.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Request":
        if sum(x is not None for x in (self.prompt, self.messages, self.prompt_token_ids)) != 1:
            raise ValueError("give exactly one of prompt, messages or prompt_token_ids")
        if self.prompt_token_ids is not None and (not self.prompt_token_ids or min(self.prompt_token_ids) < 0):
            raise ValueError("prompt_token_ids must be a non-empty list of non-negative ids")
        if self.prompt is not None and not self.prompt:
            raise ValueError("prompt must not be empty")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("messages must not be empty")
            if all(not m.content for m in self.messages):
                raise ValueError("messages must not all be empty")
        return self


class TokenLogprob(LLMKitModel):
    token_id: int
    token: str
    logprob: float = Field(le=0.0)
    top: dict[int, float] = Field(default_factory=dict, description="Top alternatives: token id → logprob.")


class Usage(LLMKitModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    cached_tokens: int | None = Field(None, ge=0, description="Prompt tokens served from the prefix cache.")


class RequestMetrics(LLMKitModel):
    """Timings of one request, in seconds. `source` says who measured them."""

    source: Literal["client", "engine"] = "client"
    ttft: float | None = Field(None, ge=0, description="Request start to first output token.")
    e2e: float | None = Field(None, ge=0, description="Request start to last output token.")
    itl: list[float] = Field(default_factory=list, description="Gaps between consecutive output chunks.")

    def tpot(self, completion_tokens: int) -> float | None:
        """Time per output token after the first, as `vllm bench serve` defines it."""
        if self.ttft is None or self.e2e is None or completion_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (completion_tokens - 1)


class Completion(LLMKitModel):
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    stop_reason: str | int | None = Field(None, description="The stop string or token id that ended generation.")
    usage: Usage
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = Field(
        None, description="One entry per prompt token; the first is None (nothing precedes it)."
    )
    prompt_index: int = 0
    index: int = Field(0, description="Sample index within the prompt, for n > 1.")
    metrics: RequestMetrics = Field(default_factory=RequestMetrics)


class StreamChunk(LLMKitModel):
    """Always a delta: concatenating `text` over a stream gives the full completion."""

    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    index: int = 0
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = Field(None, description="Set on the first chunk, when asked for.")
    usage: Usage | None = Field(None, description="Set on the last chunk.")


class LatencySummary(LLMKitModel):
    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    values: list[float] | None = Field(None, description="The samples themselves, when asked for (stats(samples=True)).")

    @classmethod
    def of(cls, values: list[float], keep: bool = False) -> "LatencySummary":
        if not values:
            return cls(values=[] if keep else None)
        ordered = sorted(values)

        def pct(q: float) -> float:  # linear interpolation, as numpy.percentile's default
            pos = (len(ordered) - 1) * q
            lo, hi = math.floor(pos), math.ceil(pos)
            return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

        return cls(count=len(ordered), mean=sum(ordered) / len(ordered), p50=pct(0.5), p90=pct(0.9), p99=pct(0.99),
                   values=list(values) if keep else None)


class EngineStats(LLMKitModel):
    """What an engine did since it was loaded (or since `reset_stats()`), in seconds and tokens."""

    backend: str
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    busy_seconds: float = Field(0.0, description="Wall time spent inside generate/stream calls.")
    ttft: LatencySummary = Field(default_factory=LatencySummary)
    tpot: LatencySummary = Field(default_factory=LatencySummary)
    itl: LatencySummary = Field(default_factory=LatencySummary)
    e2e: LatencySummary = Field(default_factory=LatencySummary)
    output_tokens_per_s: float | None = Field(None, description="completion_tokens / busy_seconds.")
    prefix_cache_hit_rate: float | None = Field(None, ge=0, le=1, description="cached / prompt tokens, where the engine tells.")
    kv_cache_usage: float | None = Field(None, ge=0, le=1, description="Fraction of the KV cache in use, where the engine tells.")
    engine: dict[str, Any] = Field(default_factory=dict, description="Engine-native metrics, unchanged.")


# --------------------------------------------------------------------------------------------------
# Engines: quantization and capabilities
# --------------------------------------------------------------------------------------------------


class Quantization(LLMKitModel):
    """How weights are quantized: `method` as the engine names it (int8, fp8, awq, gptq, q4_k_m, ...)."""

    method: str = Field(min_length=1)
    bits: int | None = Field(None, ge=1, le=16)
    group_size: int | None = Field(None, ge=1)
    applied: Literal["load", "offline"] = Field("load", description="Quantized while loading, or ahead of time.")


class MemoryUsage(LLMKitModel):
    """What an engine allocated, as the engine itself tells it (None: it does not). `source` says where
    each figure came from, so a report can say how it was measured."""

    source: str
    weights_bytes: int | None = Field(None, ge=0)
    weights_dtype: str | None = Field(None, description="As llmkit.planner names it: fp32, bf16, q4_1, ...")
    kv_cache_bytes: int | None = Field(None, ge=0, description="The KV cache as allocated (engines that preallocate).")
    kv_cache_tokens: int | None = Field(None, ge=0, description="Tokens the allocated KV cache holds.")
    kv_bytes_per_token: float | None = Field(None, ge=0)
    kv_dtype: str | None = None


class Capabilities(LLMKitModel):
    """What a backend can do, readable without loading a model."""

    model_config = ConfigDict(frozen=True)

    backend: str
    streaming: bool = True
    chat: bool = True
    sampling: frozenset[str] = Field(
        default=frozenset(SamplingParams.NEUTRAL) - {"constraint"},
        description="Non-neutral SamplingParams features the backend honours.",
    )
    constraints: frozenset[str] = Field(default=frozenset(), description="Constraint kinds honoured.")
    quantization: tuple[str, ...] = ()
    lora: bool = False
    tensor_parallel: bool = False
    prefix_caching: bool = False
    batch_invariant_greedy: bool = Field(
        False, description="Greedy output is the same whether a prompt runs alone or in a batch."
    )
    devices: tuple[str, ...] = ("cpu",)
    limits: dict[str, str] = Field(
        default_factory=dict, description="Why a feature is unsupported in this configuration (feature → reason)."
    )

    def supports(self, feature: str) -> bool:
        if feature.startswith("constraint:"):
            return feature.split(":", 1)[1] in self.constraints
        return feature in self.sampling
