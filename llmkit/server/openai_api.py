"""OpenAI's API as vLLM's server speaks it: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

Field names and defaults follow vLLM's request models (vllm/entrypoints/openai/completion/protocol.py and
chat_completion/protocol.py, vLLM 0.32): completions default to max_tokens=16, chat to the room the context
leaves (both capped by the server's max_tokens); temperature 1.0 and top_p 1.0 unless the engine's config
sets others. Constraints come as `response_format` (json_object, json_schema), as vLLM's
`structured_outputs` {choice, regex, json, grammar, json_object}, as the older `guided_choice`,
`guided_regex`, `guided_json`, `guided_grammar` fields, or as an llmkit `constraint` object — one per request.
Regexes are Python's `re` dialect and grammars GBNF, as everywhere in llmkit.

A field this server cannot honour is refused with 400 naming it; fields that vLLM accepts but that change
nothing at their neutral value (`use_beam_search: false`, `logit_bias: {}`, ...) are accepted at that value only.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from llmkit.errors import InvalidRequestError
from llmkit.server.common import Served, Slot, check_extras, guarded_stream, merged, validated
from llmkit.server.errors import APIError
from llmkit.types import Choice, Constraint, Grammar, JsonSchema, Message, Regex, Request, StreamChunk, TokenLogprob

# vLLM fields accepted only at the value that changes nothing (both APIs).
NEUTRAL = {
    "logit_bias": (None, {}), "use_beam_search": (False,), "length_penalty": (1.0, 1), "stop_token_ids": (None, []),
    "include_stop_str_in_output": (False,), "min_tokens": (0,), "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,), "truncate_prompt_tokens": (None,), "truncation_side": (None,),
    "allowed_token_ids": (None,), "bad_words": (None, []), "priority": (0,), "cache_salt": (None,),
    "watermarking": (None, False), "guided_decoding_backend": (None,), "guided_whitespace_pattern": (None,),
    "logprob_token_ids": (None, []), "vllm_xargs": (None, {}), "kv_transfer_params": (None,), "ec_transfer_params": (None,),
    "repetition_detection": (None,), "thinking_token_budget": (None,), "stream_interval": (None, 1),
}
COMPLETION_NEUTRAL = {**NEUTRAL, "suffix": (None, ""), "add_special_tokens": (True,), "prompt_embeds": (None,)}
CHAT_NEUTRAL = {
    **NEUTRAL, "tools": (None, []), "tool_choice": (None, "none", "auto"), "parallel_tool_calls": (None, True, False),
    "reasoning_effort": (None,), "include_reasoning": (None, True), "echo": (False,), "add_generation_prompt": (True,),
    "continue_final_message": (False,), "add_special_tokens": (False,), "documents": (None, []), "chat_template": (None,),
    "chat_template_kwargs": (None, {}), "mm_processor_kwargs": (None, {}), "functions": (None,), "function_call": (None,),
    "modalities": (None, ["text"]), "prompt_logprobs": (None,),
}
LOGPROB_FLOOR = -9999.0  # vLLM writes -inf as this (JSON has no infinity)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StreamOptions(_Strict):
    include_usage: bool | None = False
    continuous_usage_stats: Literal[False, None] = False


class JsonSchemaFormat(_Strict):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(_Strict):
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: Literal[False] = False
    disable_additional_properties: Literal[False] = False
    whitespace_pattern: None = None
    structural_tag: None = None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    model: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: StrictInt | None = 1
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None  # an end-user id for the caller's own records; it changes nothing (as in vLLM)
    top_k: StrictInt | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = False
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    constraint: dict[str, Any] | None = None  # llmkit's own: {"kind": "choice" | "regex" | "json_schema" | "grammar", ...}
    return_tokens_as_token_ids: bool | None = None
    return_token_ids: bool | None = None
    request_id: str | None = None


class CompletionBody(_Common):
    prompt: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    echo: bool | None = False
    logprobs: StrictInt | None = None
    max_tokens: StrictInt | None = None
    prompt_logprobs: StrictInt | None = None


class ChatBody(_Common):
    messages: list[Any]
    logprobs: bool | None = False
    top_logprobs: StrictInt | None = None
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None


_CONSTRAINT = TypeAdapter(Constraint)


def constraint_of(body: _Common) -> Any:
    """The one constraint a request asks for, however it was spelled."""
    found: list[tuple[str, Any]] = []

    def add(param: str, make) -> None:
        try:
            found.append((param, make()))
        except InvalidRequestError as exc:
            raise APIError(400, f"{param}: {exc}", param=param) from None

    rf = body.response_format
    if rf is not None and rf.type == "json_object":
        add("response_format", lambda: JsonSchema(schema={"type": "object"}))
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise APIError(400, "response_format of type 'json_schema' needs json_schema.schema", param="response_format")
        add("response_format", lambda: JsonSchema(schema=rf.json_schema.schema_))
    so = body.structured_outputs
    if so is not None:
        given = [k for k in ("json_", "regex", "choice", "grammar", "json_object") if getattr(so, k) is not None]
        if len(given) != 1:
            raise APIError(400, "structured_outputs takes exactly one of json, regex, choice, grammar, json_object",
                           param="structured_outputs")
        kind = given[0]
        make = {"json_": lambda: JsonSchema(schema=so.json_), "regex": lambda: Regex(pattern=so.regex),
                "choice": lambda: Choice(choices=so.choice), "grammar": lambda: Grammar(grammar=so.grammar),
                "json_object": lambda: JsonSchema(schema={"type": "object"})}[kind]
        if kind == "json_object" and not so.json_object:
            raise APIError(400, "structured_outputs.json_object must be true when given", param="structured_outputs.json_object")
        add(f"structured_outputs.{kind.rstrip('_')}", make)
    for name, make in (("guided_json", lambda: JsonSchema(schema=body.guided_json)), ("guided_regex", lambda: Regex(pattern=body.guided_regex)),
                       ("guided_choice", lambda: Choice(choices=body.guided_choice)), ("guided_grammar", lambda: Grammar(grammar=body.guided_grammar))):
        if getattr(body, name) is not None:
            add(name, make)
    if body.constraint is not None:
        try:
            found.append(("constraint", _CONSTRAINT.validate_python(body.constraint)))
        except (ValidationError, InvalidRequestError) as exc:
            raise APIError(400, f"constraint: {exc}", param="constraint") from None
    if len(found) > 1:
        raise APIError(400, f"give one constraint per request; got {', '.join(p for p, _ in found)}", param=found[1][0])
    return found[0][1] if found else None


def _sampling_fields(body: _Common) -> dict[str, Any]:
    top_k = body.top_k
    if top_k == -1:  # vLLM's "off"
        top_k = 0
    return dict(temperature=body.temperature, top_p=body.top_p, top_k=top_k, min_p=body.min_p, stop=body.stop, seed=body.seed,
                n=body.n, ignore_eos=body.ignore_eos or None, repetition_penalty=body.repetition_penalty,
                presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, constraint=constraint_of(body))


def _check_common(served: Served, body: _Common) -> None:
    if body.model is not None and not served.accepts_model(body.model):
        raise APIError(404, f"The model `{body.model}` does not exist. This server serves `{served.name}` only.", param="model")
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options can only be given with stream=true", param="stream_options")
    if body.n is not None and body.n < 1:
        raise APIError(400, "n must be at least 1", param="n")


# ---- output --------------------------------------------------------------------------------------


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def sse(payload: Any) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def _lp(value: float | None) -> float | None:
    if value is None:
        return None
    return max(value, LOGPROB_FLOOR) if value == value else value


class _Tokens:
    """Token strings for logprobs (vLLM's `token_id:N` form when asked for)."""

    def __init__(self, served: Served, as_ids: bool) -> None:
        self.served = served
        self.as_ids = as_ids

    def sampled(self, entry: TokenLogprob) -> str:
        return f"token_id:{entry.token_id}" if self.as_ids else entry.token

    def text(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.served.token_text(token_id)


def completion_logprobs(entries: list[TokenLogprob | None], first_prompt_id: int | None, tokens: _Tokens, offset: int) -> dict:
    """The legacy completions logprobs object. A None entry is the first prompt token (nothing predicts it)."""
    out: dict[str, list] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for entry in entries:
        if entry is None:
            token = tokens.text(first_prompt_id) if first_prompt_id is not None else ""
            out["tokens"].append(token)
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
        else:
            token = tokens.sampled(entry)
            out["tokens"].append(token)
            out["token_logprobs"].append(_lp(entry.logprob))
            top = {tokens.text(i): _lp(v) for i, v in entry.top.items()}
            top.setdefault(token, _lp(entry.logprob))  # vLLM lists the sampled token beside the top k
            out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(token)
    return out


def chat_logprobs(entries: list[TokenLogprob], tokens: _Tokens, top_n: int) -> dict:
    content = []
    for entry in entries:
        token = tokens.sampled(entry)
        top = sorted(entry.top.items(), key=lambda kv: -kv[1])[:top_n]
        content.append({"token": token, "logprob": _lp(entry.logprob), "bytes": list(token.encode()),
                        "top_logprobs": [{"token": (t := tokens.text(i)), "logprob": _lp(v), "bytes": list(t.encode())} for i, v in top]})
    return {"content": content}


def _usage(prompt_tokens: int, completion_tokens: int, cached: int | None = None) -> dict:
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
                             "completion_tokens": completion_tokens}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def _finish_error(reason: str | None) -> None:
    if reason == "error":  # vLLM: GenerationError → 500
        raise APIError(500, "the engine ended the sequence with an error (a sampled token was rejected or invalid)")


class _UsageTally:
    def __init__(self, n: int) -> None:
        self.n = n
        self.prompt: dict[int, int] = {}
        self.cached: dict[int, int] = {}
        self.completion: dict[int, int] = {}
        self.tokens: dict[int, int] = {}

    def add(self, index: int, chunk: StreamChunk) -> None:
        self.tokens[index] = self.tokens.get(index, 0) + len(chunk.token_ids)
        if chunk.usage is not None:
            self.prompt[index // self.n] = chunk.usage.prompt_tokens
            if chunk.usage.cached_tokens is not None:
                self.cached[index // self.n] = chunk.usage.cached_tokens
            self.completion[index] = chunk.usage.completion_tokens

    def usage(self) -> dict:
        completion = sum(self.completion.get(i, t) for i, t in self.tokens.items())
        return _usage(sum(self.prompt.values()), completion, sum(self.cached.values()) if self.cached else None)


async def _tallied(served: Served, slot: Slot, sources, tally: _UsageTally) -> AsyncIterator[tuple[int, StreamChunk]]:
    """(choice index, chunk) from the engine's streams, after what every OpenAI stream does with a chunk: the
    request counts as running from its first token, an engine error ends the stream (500), token texts are
    learnt for logprobs, usage is tallied. Closing it closes the streams (their requests are cancelled)."""
    async with contextlib.aclosing(merged(sources)) as chunks:
        async for index, chunk in chunks:
            if chunk.token_ids or chunk.text:
                slot.started()
            _finish_error(chunk.finish_reason)
            served.token_text.learn(chunk.logprobs)
            tally.add(index, chunk)
            yield index, chunk


# ---- the endpoints -------------------------------------------------------------------------------


def models(served: Served) -> dict:
    return {"object": "list", "data": [{
        "id": served.name, "object": "model", "created": int(served.started), "owned_by": "llmkit", "root": served.name,
        "parent": None, "max_model_len": served.context,
        "permission": [{"id": f"modelperm-{served.pseudo_digest()[:24]}", "object": "model_permission", "created": int(served.started),
                        "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True, "allow_search_indices": False,
                        "allow_view": True, "allow_fine_tuning": False, "organization": "*", "group": None, "is_blocking": False}],
    }]}


async def completions(served: Served, body: Any, stream_response) -> Any:
    req: CompletionBody = validated(CompletionBody, body)
    check_extras(req.model_extra or {}, COMPLETION_NEUTRAL)
    _check_common(served, req)
    prompts = req.prompt
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not prompts or any(not p for p in prompts):
        raise APIError(400, "prompt must be a non-empty string, token list, or list of them", param="prompt")
    n = req.n or 1
    served.check_sequences(len(prompts), n)
    echo = bool(req.echo)
    if echo and any(not isinstance(p, str) for p in prompts):
        raise APIError(400, "echo is supported for text prompts only", param="echo")
    default = served.engine.default_params.max_tokens if served.engine.default_params and "max_tokens" in \
        served.engine.default_params.model_fields_set else 16  # vLLM's (and OpenAI's) default for completions
    max_tokens = req.max_tokens if req.max_tokens is not None else default
    served.check_max_tokens(max_tokens, "max_tokens")
    if max_tokens < 0 or (max_tokens == 0 and not echo):
        raise APIError(400, "max_tokens must be at least 1 (0 only with echo)", param="max_tokens")
    prompt_logprobs = req.prompt_logprobs
    if echo and req.logprobs is not None and prompt_logprobs is None:
        prompt_logprobs = req.logprobs  # as vLLM: echo with logprobs scores the prompt too
    if req.stream and req.prompt_logprobs is not None:
        raise APIError(400, "prompt_logprobs are not available when stream=true", param="prompt_logprobs")
    fields = _sampling_fields(req)
    fields.update(max_tokens=max_tokens, logprobs=req.logprobs, prompt_logprobs=prompt_logprobs)
    echo_only = max_tokens == 0 and prompt_logprobs is None
    if echo_only:
        fields.update(max_tokens=1)  # validated as a generation; nothing is generated
    params = served.sampling(fields)
    if echo_only:
        params = params.model_copy(update={"max_tokens": 0})
    slot = served.admit()
    try:
        prepared = [served.prepare(Request(prompt=p) if isinstance(p, str) else Request(prompt_token_ids=p), "prompt") for p in prompts]
        requests = [r for r, _ in prepared]
        ids = [i for _, i in prepared]
        texts = [p if isinstance(p, str) else "" for p in prompts]
        tokens = _Tokens(served, bool(req.return_tokens_as_token_ids))
        rid = f"cmpl-{req.request_id or uuid.uuid4().hex}"
        created = int(time.time())
        if echo_only:
            result = _echo_only(served, rid, created, texts, ids, n, bool(req.return_token_ids))
            slot.release()
            return result
        if req.stream:
            sources = served.open_streams(requests, params)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return stream_response(_completion_events(served, slot, sources, rid, created, n, echo, texts, ids, req.logprobs,
                                                      tokens, include_usage, bool(req.return_token_ids)))
        slot.started()  # a non-streamed request counts as running from here (its output is not seen until the end)
        completions = await served.generate(requests, params)
    except BaseException:
        slot.release()
        raise
    slot.release()
    choices, prompt_tokens, completion_tokens, cached = [], 0, 0, None
    for c in completions:
        _finish_error(c.finish_reason)
        served.token_text.learn(c.logprobs)
        p = c.prompt_index
        text = (texts[p] if echo else "") + c.text
        logprobs = None
        if req.logprobs is not None:
            entries: list = []
            if echo:
                entries += list(c.prompt_logprobs or [])
            entries += c.logprobs or []
            logprobs = completion_logprobs(entries, (ids[p] or [None])[0], tokens, 0)
        choice = {"index": p * n + c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason,
                  "stop_reason": c.stop_reason}
        if req.return_token_ids:
            choice.update(token_ids=c.token_ids, prompt_token_ids=ids[p])
        if req.prompt_logprobs is not None and c.index == 0:
            choice["prompt_logprobs"] = _prompt_logprobs_json(c.prompt_logprobs, tokens)
        choices.append(choice)
        if c.index == 0:
            prompt_tokens += c.usage.prompt_tokens
            if c.usage.cached_tokens is not None:
                cached = (cached or 0) + c.usage.cached_tokens
        completion_tokens += c.usage.completion_tokens
    choices.sort(key=lambda ch: ch["index"])
    return {"id": rid, "object": "text_completion", "created": created, "model": served.name, "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens, cached)}


def _prompt_logprobs_json(entries, tokens: _Tokens) -> list | None:
    """vLLM's prompt_logprobs: per prompt token, None first, then {token id: {logprob, rank, decoded_token}}."""
    if entries is None:
        return None
    out: list = []
    for entry in entries:
        if entry is None:
            out.append(None)
            continue
        item = {str(entry.token_id): {"logprob": _lp(entry.logprob), "rank": entry.rank, "decoded_token": tokens.sampled(entry)}}
        for i, v in entry.top.items():
            item.setdefault(str(i), {"logprob": _lp(v), "rank": None, "decoded_token": tokens.text(i)})
        out.append(item)
    return out


def _echo_only(served: Served, rid: str, created: int, texts: list[str], ids: list, n: int, with_ids: bool) -> dict:
    """echo with max_tokens=0 and no logprobs: the prompts back, nothing generated (as vLLM answers it)."""
    choices = []
    for p, text in enumerate(texts):
        for i in range(n):
            choice = {"index": p * n + i, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}
            if with_ids:
                choice.update(token_ids=[], prompt_token_ids=ids[p])
            choices.append(choice)
    return {"id": rid, "object": "text_completion", "created": created, "model": served.name, "choices": choices,
            "usage": _usage(sum(len(i or []) for i in ids), 0)}


def _completion_events(served: Served, slot: Slot, sources, rid: str, created: int, n: int, echo: bool, texts: list[str],
                             ids: list, logprobs: int | None, tokens: _Tokens, include_usage: bool, with_ids: bool):
    tally = _UsageTally(n)
    started: set[int] = set()
    offsets: dict[int, int] = {}

    def frame(choices: list, usage: Any = None) -> bytes:
        payload = {"id": rid, "object": "text_completion", "created": created, "model": served.name, "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return sse(payload)

    async def body():
        async with contextlib.aclosing(_tallied(served, slot, sources, tally)) as chunks:
            async for index, chunk in chunks:
                p = index // n
                text, entries = chunk.text, list(chunk.logprobs or [])
                extra: dict[str, Any] = {}
                if index not in started:
                    started.add(index)
                    offsets[index] = 0
                    if echo:
                        text = texts[p] + text
                        entries = list(chunk.prompt_logprobs or []) + entries
                    if with_ids:
                        extra["prompt_token_ids"] = ids[p]
                if not text and not entries and chunk.finish_reason is None and not extra:
                    continue
                lp = None
                if logprobs is not None:
                    lp = completion_logprobs(entries, (ids[p] or [None])[0], tokens, offsets[index])
                    offsets[index] += sum(len(t) for t in lp["tokens"])
                choice = {"index": index, "text": text, "logprobs": lp, "finish_reason": chunk.finish_reason,
                          "stop_reason": chunk.stop_reason, **extra}
                if with_ids:
                    choice["token_ids"] = chunk.token_ids
                yield frame([choice])
        if include_usage:
            yield frame([], tally.usage())

    return guarded_stream(served, slot, body(), lambda e: sse(e.openai()) + DONE, DONE)


async def chat_completions(served: Served, body: Any, stream_response) -> Any:
    req: ChatBody = validated(ChatBody, body)
    check_extras(req.model_extra or {}, CHAT_NEUTRAL)
    _check_common(served, req)
    messages = chat_messages(req.messages)
    n = req.n or 1
    served.check_sequences(1, n)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
        raise APIError(400, f"top_logprobs must be in [0, 20], got {req.top_logprobs}", param="top_logprobs")
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    served.check_max_tokens(asked, param)
    if asked is not None and asked < 1:
        raise APIError(400, f"{param} must be at least 1", param=param)
    top_n = (req.top_logprobs or 0) if req.logprobs else None
    fields = _sampling_fields(req)
    fields.update(logprobs=top_n)
    names = {"logprobs": "top_logprobs", "max_tokens": param}
    slot = served.admit()
    try:
        request, ids = served.prepare(Request(messages=messages), "messages")
        if asked is None and not (served.engine.default_params and "max_tokens" in served.engine.default_params.model_fields_set):
            asked = served.default_max_tokens(ids)  # vLLM: what the context leaves
        fields.update(max_tokens=asked)
        params = served.sampling(fields, names)
        tokens = _Tokens(served, bool(req.return_tokens_as_token_ids))
        rid = f"chatcmpl-{req.request_id or uuid.uuid4().hex}"
        created = int(time.time())
        if req.stream:
            sources = served.open_streams([request], params)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return stream_response(_chat_events(served, slot, sources, rid, created, n, top_n, tokens, include_usage,
                                                bool(req.return_token_ids), ids))
        slot.started()  # a non-streamed request counts as running from here (its output is not seen until the end)
        completions = await served.generate([request], params)
    except BaseException:
        slot.release()
        raise
    slot.release()
    choices, completion_tokens = [], 0
    for c in completions:
        _finish_error(c.finish_reason)
        served.token_text.learn(c.logprobs)
        choice = {"index": c.index, "message": {"role": "assistant", "content": c.text},
                  "logprobs": chat_logprobs(c.logprobs or [], tokens, top_n) if top_n is not None else None,
                  "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
        if req.return_token_ids:
            choice["token_ids"] = c.token_ids
        choices.append(choice)
        completion_tokens += c.usage.completion_tokens
    first = completions[0].usage
    reply = {"id": rid, "object": "chat.completion", "created": created, "model": served.name, "choices": choices,
             "usage": _usage(first.prompt_tokens, completion_tokens, first.cached_tokens)}
    if req.return_token_ids:
        reply["prompt_token_ids"] = ids
    return reply


def chat_messages(raw: list[Any]) -> list[Message]:
    """OpenAI messages → llmkit's: roles system/user/assistant, text content (a string or text parts)."""
    if not raw:
        raise APIError(400, "messages must not be empty", param="messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object with role and content", param=where)
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise APIError(400, f"unsupported parameter '{where}.{extra[0]}': llmkit's server takes role and content only",
                           param=f"{where}.{extra[0]}")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"{where}.role {role!r} is not supported (system, user or assistant)", param=f"{where}.role")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                    raise APIError(400, f"{where}.content[{j}]: only text parts are supported", param=f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise APIError(400, f"{where}.content must be a string or a list of text parts", param=f"{where}.content")
        out.append(Message(role=role, content=content))
    return out


def _chat_events(served: Served, slot: Slot, sources, rid: str, created: int, n: int, top_n: int | None, tokens: _Tokens,
                       include_usage: bool, with_ids: bool, ids: list[int] | None):
    tally = _UsageTally(n)

    def frame(choices: list, usage: Any = None, **extra: Any) -> bytes:
        payload = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name, "choices": choices, **extra}
        if include_usage:
            payload["usage"] = usage
        return sse(payload)

    async def body():
        first = {"prompt_token_ids": ids} if with_ids else {}
        yield frame([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                     for i in range(n)], **first)
        async with contextlib.aclosing(_tallied(served, slot, sources, tally)) as chunks:
            async for index, chunk in chunks:
                if not chunk.text and not chunk.logprobs and chunk.finish_reason is None:
                    continue
                choice = {"index": index, "delta": {"content": chunk.text} if chunk.text or chunk.finish_reason is None else {},
                          "logprobs": chat_logprobs(chunk.logprobs or [], tokens, top_n) if top_n is not None else None,
                          "finish_reason": chunk.finish_reason}
                if chunk.finish_reason is not None:
                    choice["stop_reason"] = chunk.stop_reason
                if with_ids:
                    choice["token_ids"] = chunk.token_ids
                yield frame([choice])
        if include_usage:
            yield frame([], tally.usage())

    return guarded_stream(served, slot, body(), lambda e: sse(e.openai()) + DONE, DONE)
