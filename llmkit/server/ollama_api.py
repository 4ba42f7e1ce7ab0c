"""Ollama's API: `/api/generate`, `/api/chat`, `/api/tags`, `/api/show`, `/api/version`.

Field names from ollama/ollama api/types.go (GenerateRequest, ChatRequest, Options) and ollama-python 0.6.3;
checked against `plugins/llmkit-ollama/tests/ollama_protocol.py`. Replies stream as NDJSON unless
`stream: false` (Ollama's default is to stream); the last line has `done: true`, `done_reason` and Ollama's
counters in nanoseconds. Options a request leaves out take Ollama's defaults (api/types.go DefaultOptions:
temperature 0.8, top_k 40, top_p 0.9, ...) unless the engine's config file sets them (as a Modelfile's
PARAMETERs would). `format` is "json" or a JSON schema; `raw: true` sends the prompt as it is, otherwise the
model's chat template is applied to `system` + `prompt`.

What llmkit cannot do is refused with 400 naming it: load-time options (num_gpu, num_thread, ...: fixed
when the server starts), mirostat, typical_p other than 1, images, tools, thinking, templates, `context`,
`suffix`; `repeat_last_n` other than -1 while a penalty is on (llmkit's penalties cover the whole context).
`keep_alive` is accepted: the model stays loaded for the server's lifetime whatever it says. `num_ctx` limits
prompt + output to min(num_ctx, the model's context), as Ollama clamps it; a prompt that does not fit is an
error (llmkit never truncates a prompt: `truncate: true` cannot make it fit), and generation ends at the limit
(`shift: true`, Ollama's context shifting, is refused).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictInt

import llmkit
from llmkit.server.common import Served, Slot, check_extras, guarded_stream, merged, validated
from llmkit.server.errors import APIError
from llmkit.types import JsonSchema, Message, Request, TokenLogprob

# api/types.go DefaultOptions, the fields llmkit maps (as plugins/llmkit-ollama/tests/ollama_protocol.py has them)
DEFAULT_OPTIONS = {"num_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
                   "repeat_last_n": 64, "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                   "seed": -1, "stop": []}
# llmkit's config `sampling:` names → Ollama option names (a config file plays the Modelfile's part)
FROM_CONFIG = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "max_tokens": "num_predict",
               "repetition_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
               "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop"}
LOAD_TIME = ("numa", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap",
             "use_mlock", "embedding_only", "num_thread", "num_gqa", "rope_frequency_base", "rope_frequency_scale")
GENERATE_NEUTRAL = {"suffix": (None, ""), "template": (None, ""), "context": (None, []), "images": (None, []),
                    "think": (None, False), "_debug_render_only": (None, False), "width": (None,), "height": (None,),
                    "steps": (None,), "tools": (None, [])}
CHAT_NEUTRAL = {"tools": (None, []), "think": (None, False), "_debug_render_only": (None, False)}
MESSAGE_NEUTRAL = {"images": (None, []), "tool_calls": (None, []), "thinking": (None, ""), "tool_name": (None, "")}
VERSION = "0.12.0"  # the Ollama API version whose fields this server speaks (logprobs, truncate, shift)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    stream: bool | None = True
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None  # accepted: the model stays loaded while the server runs
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = False
    top_logprobs: StrictInt | None = None


class GenerateBody(_Body):
    prompt: str | None = None
    system: str | None = None
    raw: bool | None = False


class ChatBody(_Body):
    messages: list[Any] | None = None


class ShowBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    name: str | None = None  # the older spelling
    verbose: bool | None = False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def line(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _check_model(served: Served, name: str | None) -> str:
    if not name:
        raise APIError(400, "model is required")
    if not served.accepts_model(name):
        raise APIError(404, f"model '{name}' not found")
    return name


def _options(served: Served, body: _Body) -> dict[str, Any]:
    """Request options over the config's sampling over Ollama's defaults, each one checked."""
    given = dict(body.options or {})
    for key in given:
        if key in LOAD_TIME:
            raise APIError(400, f"option {key!r} is set when the server starts (llmkit serve -o ...), not per request")
    merged = dict(DEFAULT_OPTIONS)
    config = served.engine.default_params
    if config is not None:
        for name in config.model_fields_set & set(FROM_CONFIG):
            merged[FROM_CONFIG[name]] = getattr(config, name)
    merged.update(given)
    known = set(DEFAULT_OPTIONS) | {"num_ctx", "num_keep", "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "penalize_newline"}
    for key in sorted(set(given) - known):
        raise APIError(400, f"unsupported option {key!r}: llmkit's server does not know it (and ignores nothing silently)")
    if merged.get("mirostat", 0) not in (0, None):
        raise APIError(400, "option 'mirostat' is not supported: llmkit samples with temperature/top_k/top_p/min_p only")
    if merged.get("typical_p", 1.0) not in (1, 1.0, None):
        raise APIError(400, "option 'typical_p' is not supported (only 1.0, off)")
    if merged.get("tfs_z", 1.0) not in (1, 1.0, None):
        raise APIError(400, "option 'tfs_z' is not supported (only 1.0, off)")
    if "penalize_newline" in given:
        raise APIError(400, "option 'penalize_newline' is not supported")
    penalised = merged["repeat_penalty"] not in (1, 1.0) or merged["presence_penalty"] or merged["frequency_penalty"]
    if penalised and merged["repeat_last_n"] != -1:
        raise APIError(400, f"option 'repeat_last_n'={merged['repeat_last_n']} cannot be honoured: llmkit's penalties cover the "
                       "whole context; set repeat_last_n to -1")
    return merged


def _params(served: Served, body: _Body, options: dict[str, Any], prompt_ids: list[int] | None):
    limit = min(int(options.get("num_ctx") or served.context), served.context)
    if prompt_ids is not None and len(prompt_ids) >= limit:
        raise APIError(400, f"the input length ({len(prompt_ids)} tokens) exceeds the context length ({limit}); "
                       "llmkit does not truncate prompts")
    if body.shift:
        raise APIError(400, "shift=true is not supported: generation ends at the context length (done_reason 'length')")
    num_predict = options["num_predict"]
    if num_predict is None or num_predict < 0:  # -1 unlimited, -2 fill the context: up to the context and the server's cap
        max_tokens = served.default_max_tokens(prompt_ids, limit)
    elif num_predict == 0:
        raise APIError(400, "num_predict=0 generates nothing")
    else:
        served.check_max_tokens(num_predict, "num_predict")
        max_tokens = num_predict if prompt_ids is None else max(1, min(num_predict, limit - len(prompt_ids)))
    constraint = None
    if body.format == "json":
        constraint = JsonSchema(schema={"type": "object"})
    elif isinstance(body.format, dict):
        constraint = JsonSchema(schema=body.format)
    elif body.format not in (None, ""):
        raise APIError(400, f"format must be \"json\" or a JSON schema, got {body.format!r}")
    top_logprobs = body.top_logprobs
    if top_logprobs is not None and not 0 <= top_logprobs <= 20:
        raise APIError(400, f"top_logprobs must be in [0, 20], got {top_logprobs}")
    stop = options["stop"]
    seed = options["seed"]
    fields = dict(temperature=options["temperature"], top_p=options["top_p"], top_k=max(0, int(options["top_k"] or 0)),
                  min_p=options["min_p"], max_tokens=max_tokens, stop=[stop] if isinstance(stop, str) else list(stop or []),
                  seed=None if seed is None or seed < 0 else seed, repetition_penalty=options["repeat_penalty"],
                  presence_penalty=options["presence_penalty"], frequency_penalty=options["frequency_penalty"],
                  logprobs=(top_logprobs or 0) if body.logprobs else None, constraint=constraint)
    try:
        return llmkit.SamplingParams(**fields)
    except llmkit.InvalidRequestError as exc:
        raise APIError(400, f"invalid options: {exc}") from None


def _logprobs(served: Served, entries: list[TokenLogprob] | None, top: int) -> list[dict]:
    out = []
    for entry in entries or []:
        alternatives = sorted(entry.top.items(), key=lambda kv: -kv[1])[:top]
        out.append({"token": entry.token, "logprob": max(entry.logprob, -9999.0), "bytes": list(entry.token.encode()),
                    "top_logprobs": [{"token": (t := served.token_text(i)), "logprob": max(v, -9999.0), "bytes": list(t.encode())}
                                     for i, v in alternatives]})
    return out


def _counters(start_ns: int, ttft: float | None, prompt_tokens: int, eval_tokens: int) -> dict:
    total = time.perf_counter_ns() - start_ns
    prompt_ns = int((ttft or 0.0) * 1e9)
    return {"total_duration": total, "load_duration": 0, "prompt_eval_count": prompt_tokens, "prompt_eval_duration": prompt_ns,
            "eval_count": eval_tokens, "eval_duration": max(1, total - prompt_ns)}


def _chat_messages(raw: list[Any]) -> list[Message]:
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object with role and content")
        check_extras({k: v for k, v in m.items() if k not in ("role", "content")}, MESSAGE_NEUTRAL, f"messages[{i}].")
        role, content = m.get("role"), m.get("content", "")
        if role not in ("system", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role {role!r} is not supported (system, user or assistant)")
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string")
        out.append(Message(role=role, content=content))
    return out


async def generate(served: Served, body: Any, stream_response, chat: bool) -> Any:
    req = validated(ChatBody if chat else GenerateBody, body)
    check_extras(req.model_extra or {}, CHAT_NEUTRAL if chat else GENERATE_NEUTRAL)
    model = _check_model(served, req.model)
    served.check_serving()
    if chat:
        messages = _chat_messages(req.messages or [])
        if not messages:  # Ollama: an empty conversation loads the model and answers at once
            return _loaded(model, chat, req.stream, stream_response)
        request = Request(messages=messages)
    else:
        if not req.prompt:
            if req.system and not req.raw:
                raise APIError(400, "prompt is required when system is given")
            return _loaded(model, chat, req.stream, stream_response)
        if req.raw:
            if req.system:
                raise APIError(400, "system cannot be used with raw=true (no template is applied)")
            request = Request(prompt=req.prompt)
        else:
            request = Request(messages=([Message(role="system", content=req.system)] if req.system else [])
                              + [Message(role="user", content=req.prompt)])
    options = _options(served, req)
    slot = served.admit()
    try:
        prepared, ids = served.prepare(request, "prompt")
        params = _params(served, req, options, ids)
        start = time.perf_counter_ns()
        top = req.top_logprobs or 0
        if req.stream is None or req.stream:
            sources = served.open_streams([prepared], params)
            return stream_response(_lines(served, slot, sources, model, chat, start, ids, top, bool(req.logprobs)),
                                   media_type="application/x-ndjson")
        slot.started()  # a non-streamed request counts as running from here (its output is not seen until the end)
        completion = (await served.generate([prepared], params))[0]
    except BaseException:
        slot.release()
        raise
    slot.release()
    if completion.finish_reason == "error":
        raise APIError(500, "the engine ended the sequence with an error (a sampled token was rejected or invalid)")
    reply = _base(model, chat, completion.text)
    if req.logprobs:
        reply["logprobs"] = _logprobs(served, completion.logprobs, top)
    reply.update(done=True, done_reason=completion.finish_reason,
                 **_counters(start, completion.metrics.ttft, completion.usage.prompt_tokens, completion.usage.completion_tokens))
    return reply


def _base(model: str, chat: bool, text: str) -> dict:
    reply: dict[str, Any] = {"model": model, "created_at": _now()}
    if chat:
        reply["message"] = {"role": "assistant", "content": text}
    else:
        reply["response"] = text
    reply["done"] = False
    return reply


def _loaded(model: str, chat: bool, stream: bool | None, stream_response) -> Any:
    reply = _base(model, chat, "")
    reply.update(done=True, done_reason="load")
    if stream is None or stream:
        async def one():
            yield line(reply)
        return stream_response(one(), media_type="application/x-ndjson")
    return reply


def _lines(served: Served, slot: Slot, sources, model: str, chat: bool, start: int, ids: list[int] | None, top: int, logprobs: bool):
    async def body():
        first: float | None = None
        tokens = 0
        async with contextlib.aclosing(merged(sources)) as chunks:
            async for _, chunk in chunks:
                if chunk.token_ids or chunk.text:
                    slot.started()
                    if first is None:
                        first = (time.perf_counter_ns() - start) / 1e9
                tokens += len(chunk.token_ids)
                if chunk.finish_reason == "error":
                    raise APIError(500, "the engine ended the sequence with an error (a sampled token was rejected or invalid)")
                if not chunk.text and not chunk.logprobs and chunk.finish_reason is None:
                    continue
                part = _base(model, chat, chunk.text)
                if logprobs:
                    part["logprobs"] = _logprobs(served, chunk.logprobs, top)
                if chunk.finish_reason is not None:
                    usage = chunk.usage
                    prompt_tokens = usage.prompt_tokens if usage else len(ids or [])
                    eval_tokens = usage.completion_tokens if usage else tokens
                    part.update(done=True, done_reason=chunk.finish_reason, **_counters(start, first, prompt_tokens, eval_tokens))
                yield line(part)

    return guarded_stream(served, slot, body(), lambda e: line(e.ollama()))


def _details(served: Served) -> dict:
    weights = None
    try:
        weights = served.engine.weights()
    except llmkit.LLMKitError:
        pass
    return {"parent_model": "", "format": (weights.format if weights else None) or served.engine.backend, "family": "",
            "families": None, "parameter_size": "", "quantization_level": ((weights.quantization or weights.dtype or "") if weights else "").upper()}


def _size(served: Served) -> int:
    try:
        memory = served.engine.memory()
    except llmkit.LLMKitError:
        memory = None
    return int(memory.weights_bytes or 0) if memory is not None else 0


def tags(served: Served) -> dict:
    modified = datetime.datetime.fromtimestamp(served.started, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    return {"models": [{"name": served.name, "model": served.name, "modified_at": modified, "size": _size(served),
                        "digest": served.pseudo_digest(), "details": _details(served)}]}


def show(served: Served, body: Any) -> dict:
    req = validated(ShowBody, body)
    _check_model(served, req.model or req.name)
    modified = datetime.datetime.fromtimestamp(served.started, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    return {"modelfile": "", "parameters": "", "template": "", "details": _details(served),
            "model_info": {"general.architecture": "llmkit", "llmkit.backend": served.engine.backend,
                           "llmkit.context_length": served.context},
            "capabilities": ["completion"], "modified_at": modified}
