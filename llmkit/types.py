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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from llmkit.errors import InvalidRequestError

FinishReason = Literal["stop", "length", "abort", "error"]
# Integers that must be integers: `True` is not a token id and 5.0 is not a count.
StrictInt = Annotated[int, Strict()]
# Temperatures below this are greedy decoding (the limit as T → 0), as in vLLM (_SAMPLING_EPS): dividing
# logits by 1e-40 overflows to inf/NaN in every engine's kernels.
GREEDY_BELOW = 1e-5
# The smallest top_p accepted: smaller values underflow to 0 in float32 (1e-300 does) and would keep no
# token at all. For "only the most likely token" use top_k=1 or temperature=0.
TOP_P_MIN = 1e-6


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


class _OneField(LLMKitModel):
    """A constraint whose one field may be given positionally: `Choice(["a", "b"])`, `Regex(r"[0-9]+")`."""

    _positional: ClassVar[str]

    def __init__(self, value: Any = None, /, **data: Any) -> None:
        if value is not None:
            if self._positional in data or type(self).model_fields[self._positional].alias in data:
                raise InvalidRequestError(f"{type(self).__name__}: {self._positional} given twice", parameter=self._positional)
            data[self._positional] = value
        super().__init__(**data)


class Choice(_OneField):
    """The output is exactly one of `choices`."""

    _positional: ClassVar[str] = "choices"

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


class Regex(_OneField):
    """The whole output matches `pattern` as Python's `re.fullmatch` does (that is llmkit's one regex
    dialect: Unicode classes, inline flags; engines get an exact translation or refuse the pattern)."""

    _positional: ClassVar[str] = "pattern"

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


class JsonSchema(_OneField):
    """The output is JSON valid under `schema` (a JSON Schema document, a JSON string, or a pydantic model)."""

    _positional: ClassVar[str] = "schema_"

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


class Grammar(_OneField):
    """The output is derivable from `grammar`, written in GBNF (llama.cpp's EBNF dialect, which
    xgrammar and vLLM also read), with start symbol `root`."""

    _positional: ClassVar[str] = "grammar"

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

    temperature: float = Field(
        1.0, ge=0.0, le=100.0,
        description=f"0 means greedy decoding; so does any value below {GREEDY_BELOW} (the limit as T → 0, as vLLM treats it). "
        "Engines may accept a narrower range (Capabilities.ranges).",
    )
    top_p: float = Field(1.0, ge=TOP_P_MIN, le=1.0, description=f"Nucleus sampling mass in [{TOP_P_MIN}, 1]; 1 is off.")
    top_k: StrictInt = Field(0, ge=0, description="Keep the k most likely tokens; 0 is off.")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="Drop tokens below min_p × the top probability; 0 is off.")
    max_tokens: StrictInt = Field(
        256, ge=0, description="Most tokens to generate (llmkit's default: 256). 0 scores the prompt without generating "
        "(needs prompt_logprobs).",
    )
    stop: list[str] = Field(default_factory=list, description="Strings that end generation; not included in the output.")
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1, description="Per-request RNG seed; None is nondeterministic.")
    n: StrictInt = Field(1, ge=1, le=128, description="Samples per prompt.")
    logprobs: StrictInt | None = Field(
        None, ge=0, le=20, description="Return the sampled token's logprob and this many top alternatives; None is off."
    )
    prompt_logprobs: StrictInt | None = Field(
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
        if isinstance(stop, list) and any(isinstance(s, str) and not _encodable(s) for s in stop):
            raise ValueError("a stop string holds a lone surrogate (not valid Unicode)")
        return stop

    @model_validator(mode="after")
    def _cross_field(self) -> "SamplingParams":
        if self.greedy and self.n > 1:
            raise ValueError(f"n > 1 needs temperature >= {GREEDY_BELOW}: greedy samples would all be identical")
        if self.ignore_eos and self.constraint is not None:
            raise ValueError("ignore_eos cannot be combined with a constraint: the grammar decides where output ends")
        if self.max_tokens == 0 and self.prompt_logprobs is None:
            raise ValueError("max_tokens=0 generates nothing: it is for scoring a prompt, with prompt_logprobs set")
        return self

    @property
    def greedy(self) -> bool:
        """Greedy decoding: temperature 0, or below GREEDY_BELOW."""
        return self.temperature < GREEDY_BELOW

    @property
    def scoring_only(self) -> bool:
        """max_tokens=0: the prompt is scored (prompt_logprobs) and nothing is generated."""
        return self.max_tokens == 0

    def features_used(self) -> list[str]:
        """Names of the non-neutral features this request uses (a constraint is named by its kind)."""
        used = []
        for name, neutral in self.NEUTRAL.items():
            value = getattr(self, name)
            if value != neutral:
                used.append(f"constraint:{value.kind}" if name == "constraint" else name)
        return used


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def greedy(**overrides: Any) -> SamplingParams:
    """Greedy decoding, the usual choice for tests and classification."""
    return SamplingParams(**{"temperature": 0.0, **overrides})


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
    prompt_token_ids: list[StrictInt] | None = Field(None, description="Token ids, for engines that take them.")
    lora: str | None = Field(None, description="Path of a LoRA adapter (PEFT folder) to apply to this request only.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "Request":
        if sum(x is not None for x in (self.prompt, self.messages, self.prompt_token_ids)) != 1:
            raise ValueError("give exactly one of prompt, messages or prompt_token_ids")
        if self.prompt_token_ids is not None and (not self.prompt_token_ids or min(self.prompt_token_ids) < 0):
            raise ValueError("prompt_token_ids must be a non-empty list of non-negative ids")
        if self.prompt is not None and not self.prompt:
            raise ValueError("prompt must not be empty")
        texts = [self.prompt] if self.prompt is not None else [m.content for m in self.messages or []]
        if any(not _encodable(t) for t in texts):  # llama.cpp's tokenizer aborts the process on invalid UTF-8
            raise ValueError("the text holds a lone surrogate (not valid Unicode): it cannot be encoded as UTF-8")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("messages must not be empty")
            if all(not m.content for m in self.messages):
                raise ValueError("messages must not all be empty")
        return self


class TokenLogprob(LLMKitModel):
    token_id: int
    token: str
    logprob: float = Field(description="A log-probability: <= 0 up to rounding. Not clamped: a positive value is a bug to see.")
    rank: int | None = Field(None, ge=1, description="How many tokens were at least as likely, itself included (1: the top choice), "
                               "as vLLM's sampler counts; a token tied exactly with others may come back as 1 or behind them (TensorRT-LLM "
                               "counts only the more likely tokens for a token outside its top k).")
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
    values: list[float] | None = Field(
        None, description="The samples themselves, when asked for (stats(samples=True)): the most recent 10,000."
    )

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
    busy_seconds: float = Field(0.0, description="Wall time during which at least one request was in flight.")
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


class SpecialTokens(LLMKitModel):
    """The model's special token ids as the engine uses them (None where the engine cannot tell)."""

    bos_token_id: int | None = None
    eos_token_ids: list[int] = Field(default_factory=list, description="Every id that ends generation.")
    pad_token_id: int | None = None
    adds_bos: bool | None = Field(None, description="Whether tokenizing a raw prompt puts BOS first.")


class WeightsInfo(LLMKitModel):
    """Which numbers actually ran: the same catalog name can be a Q4_1 GGUF on one engine and a float32
    copy on another. Reports and `compare` show it, and warn when backends ran different weights."""

    format: str = Field(description="gguf, safetensors, ollama, dummy, ...")
    dtype: str | None = Field(None, description="As llmkit.planner names it: fp32, bf16, q4_1, fp8, int8, ...")
    bits: float | None = Field(None, description="Bits per weight (nominal, e.g. 5.0 for q4_1).")
    kv_cache_dtype: str | None = None
    quantization: str | None = Field(None, description="Load-time or checkpoint quantization method, if any.")
    source: str | None = Field(None, description="File or folder the weights came from.")


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
    ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict,
        description="Narrower bounds than llmkit's for a SamplingParams field (e.g. vLLM: temperature in [0, 2]); "
        "checked before the engine runs.",
    )

    # Features named by what the engine can do rather than by a SamplingParams field.
    PROPERTIES: ClassVar[tuple[str, ...]] = ("streaming", "chat", "lora", "tensor_parallel", "prefix_caching")

    def supports(self, feature: str) -> bool:
        """Whether the backend declares `feature`: a SamplingParams field (`top_k`, `logprobs`, ...), a
        constraint kind (`constraint:regex`) or a property (`prefix_caching`, `lora`, `chat`, ...)."""
        if feature.startswith("constraint:"):
            return feature.split(":", 1)[1] in self.constraints
        if feature in self.PROPERTIES:
            return bool(getattr(self, feature))
        return feature in self.sampling
