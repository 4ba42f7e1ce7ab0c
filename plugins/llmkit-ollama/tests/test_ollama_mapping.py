"""The Ollama adapter's declared tables and error mapping, without a server (and without llama.cpp)."""

import json

import httpx
import ollama
import pytest

import llmkit
from llmkit import greedy
from llmkit.engine import EngineOptions
from llmkit.types import Choice, Grammar, JsonSchema, Regex, Request, SamplingParams
from llmkit_ollama.engine import OllamaEngine, OllamaOptions, native_error
from llmkit_ollama.mapping import (
    LIMITS,
    OPTIONS,
    REQUEST,
    SAMPLING,
    ChunkReader,
    requested_context,
    sampling_to_native,
    to_native,
)

pytestmark = pytest.mark.timeout(60)
HOST = "http://127.0.0.1:11434"


def test_tables_cover_every_field():
    assert {row.name for row in SAMPLING.rows} == set(SamplingParams.model_fields)
    assert {row.name for row in REQUEST.rows} == set(Request.model_fields)
    assert {row.name for row in OPTIONS.rows} == set(EngineOptions.PORTABLE)
    for table in (SAMPLING, REQUEST, OPTIONS):
        assert all(set(row) == {"llmkit", "native", "note"} for row in table.describe())


def test_every_option_is_explicit_with_llmkit_defaults():
    native = sampling_to_native(SamplingParams())
    assert native == {"options": {
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "num_predict": 256, "stop": [], "seed": -1,
        "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "typical_p": 1.0, "repeat_last_n": -1,
    }}  # no format without a constraint


def test_values_pass_through_by_their_ollama_names():
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, max_tokens=17, stop=["\n", "END"], seed=123,
                            repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=-0.5)
    options = sampling_to_native(params)["options"]
    assert options["temperature"] == 0.7 and options["top_p"] == 0.9 and options["top_k"] == 40 and options["min_p"] == 0.05
    assert options["num_predict"] == 17 and options["stop"] == ["\n", "END"] and options["seed"] == 123
    assert options["repeat_penalty"] == 1.1 and options["presence_penalty"] == 0.5 and options["frequency_penalty"] == -0.5


@pytest.mark.parametrize("temperature,sent", [(0.0, 0.0), (1e-6, 0.0), (9.99e-6, 0.0), (1e-5, 1e-5), (0.3, 0.3)])
def test_greedy_is_temperature_zero(temperature, sent):
    assert sampling_to_native(SamplingParams(temperature=temperature))["options"]["temperature"] == sent


def test_engine_seed_stands_in_only_for_requests_without_one():
    assert sampling_to_native(SamplingParams(), seed=99)["options"]["seed"] == 99
    assert sampling_to_native(SamplingParams(seed=5), seed=99)["options"]["seed"] == 5
    assert sampling_to_native(SamplingParams(seed=0), seed=99)["options"]["seed"] == 0


def test_constraints_go_to_format():
    choice = sampling_to_native(greedy(constraint=Choice(choices=["yes", "no"])))
    assert choice["format"] == {"enum": ["yes", "no"]}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert sampling_to_native(greedy(constraint=JsonSchema(schema=schema)))["format"] == schema
    # a root $ref (pydantic's recursive models) is resolved as for every other engine's converter
    recursive = {"$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}}, "$ref": "#/$defs/Node"}
    sent = sampling_to_native(greedy(constraint=JsonSchema(schema=recursive)))["format"]
    assert "$ref" not in sent and sent["type"] == "object" and "$defs" in sent


@pytest.mark.parametrize("params,field,reason", [
    (dict(n=2, temperature=1.0), "n", "one completion per request"),
    (dict(ignore_eos=True), "ignore_eos", "end-of-sequence"),
    (dict(logprobs=1), "logprobs", "without token ids"),
    (dict(prompt_logprobs=1), "prompt_logprobs", "does not score prompts"),
    (dict(prompt_logprobs=1, max_tokens=0), "max_tokens", "does not score prompts"),
    (dict(constraint=Regex(pattern="[a-z]+")), "constraint", "no regex"),
    (dict(constraint=Grammar(grammar='root ::= "a"')), "constraint", "no GBNF"),
])
def test_what_ollama_cannot_do_is_refused_with_a_reason(params, field, reason):
    with pytest.raises(llmkit.UnsupportedFeatureError, match=reason) as info:
        sampling_to_native(SamplingParams(**params))
    assert info.value.feature == field and f"{field}=" in str(info.value) and "Ollama" in str(info.value)


def test_request_bodies():
    path, body = to_native("m:1b", Request(prompt="Hi"), greedy(max_tokens=3), num_ctx=2048, keep_alive="5m", seed=None)
    assert path == "/api/generate"
    assert body["model"] == "m:1b" and body["prompt"] == "Hi" and body["raw"] is True and body["stream"] is True
    assert body["truncate"] is False and body["shift"] is False and body["keep_alive"] == "5m"
    assert body["options"]["num_ctx"] == 2048 and "messages" not in body and "format" not in body
    path, body = to_native("m:1b", Request(messages=[{"role": "user", "content": "Hi"}]), greedy(), num_ctx=4096)
    assert path == "/api/chat" and body["messages"] == [{"role": "user", "content": "Hi"}]
    assert "prompt" not in body and "raw" not in body and "keep_alive" not in body and body["stream"] is True


def test_token_id_prompts_and_lora_are_refused():
    with pytest.raises(llmkit.UnsupportedFeatureError, match="text only") as info:
        to_native("m", Request(prompt_token_ids=[1, 2, 3]), greedy(), num_ctx=4096)
    assert info.value.feature == "prompt_token_ids"
    with pytest.raises(llmkit.UnsupportedFeatureError, match="Modelfile"):
        to_native("m", Request(prompt="x", lora="/tmp/adapter"), greedy(), num_ctx=4096)


def test_capability_limits_give_the_same_reasons():
    caps = OllamaEngine.capabilities_
    for feature in ("n", "ignore_eos", "logprobs", "prompt_logprobs", "constraint:regex", "constraint:grammar"):
        assert not caps.supports(feature) and LIMITS[feature] and caps.limits[feature] == LIMITS[feature]
    assert caps.supports("seed") and caps.supports("constraint:choice") and caps.supports("constraint:json_schema")


@pytest.mark.parametrize("option,value", [("dtype", "float16"), ("dtype", "bfloat16"), ("prefix_caching", True),
                                          ("prefix_caching", False), ("memory_fraction", 0.5)])
def test_server_side_options_are_refused(option, value):
    with pytest.raises(llmkit.UnsupportedFeatureError, match="set on the Ollama server") as info:
        requested_context(OllamaOptions(**{option: value}))
    assert info.value.feature == option and f"{option}={value!r}" in str(info.value)


def test_server_side_options_are_refused_at_load_before_any_connection():
    # a closed port: the refusal comes first, so this is not an EngineStartupError
    with pytest.raises(llmkit.UnsupportedFeatureError, match="set on the Ollama server"):
        llmkit.load("ollama", "m", host="http://127.0.0.1:9", dtype="float16")


def test_neutral_server_side_options_pass():
    for options in (dict(), dict(dtype="auto"), dict(dtype=None, prefix_caching=None, memory_fraction=None)):
        assert requested_context(OllamaOptions(**options)) == 4096


def test_context_comes_from_max_model_len_or_num_ctx():
    assert requested_context(OllamaOptions(max_model_len=1024)) == 1024
    assert requested_context(OllamaOptions(num_ctx=2048)) == 2048
    assert requested_context(OllamaOptions(num_ctx=2048, max_model_len=2048)) == 2048
    with pytest.raises(llmkit.InvalidRequestError, match="both set the context"):
        requested_context(OllamaOptions(num_ctx=2048, max_model_len=1024))


def _part(text="", done=False, chat=False, **fields):
    data = {"model": "m", "created_at": "2026-01-01T00:00:00Z", "done": done, **fields}
    if chat:
        return ollama.ChatResponse(message={"role": "assistant", "content": text}, **data)
    return ollama.GenerateResponse(response=text, **data)


@pytest.mark.parametrize("chat", [False, True])
def test_chunk_reader(chat):
    reader = ChunkReader(greedy())
    assert [c.text for c in reader.chunks(_part("Hel", chat=chat))] == ["Hel"]
    assert reader.chunks(_part("", chat=chat)) == []  # nothing to deliver
    last = reader.chunks(_part("lo", done=True, chat=chat, done_reason="length", prompt_eval_count=4, eval_count=2))
    assert reader.done and len(last) == 1
    assert last[0].text == "lo" and last[0].finish_reason == "length" and last[0].token_ids == []
    assert last[0].usage.prompt_tokens == 4 and last[0].usage.completion_tokens == 2
    assert ChunkReader(greedy()).chunks(_part(done=True, chat=chat, done_reason="stop"))[0].finish_reason == "stop"
    assert ChunkReader(greedy()).chunks(_part(done=True, chat=chat, done_reason="unload"))[0].finish_reason == "error"


def test_chunk_reader_holds_and_unwraps_a_choice():
    reader = ChunkReader(greedy(constraint=Choice(choices=["yes", "no"])))
    assert reader.chunks(_part('"y')) == [] and reader.chunks(_part('es')) == []
    assert [c.text for c in reader.chunks(_part('"', done=True, done_reason="stop"))] == ["yes"]
    odd = ChunkReader(greedy(constraint=Choice(choices=["yes", "no"]))).chunks(_part("maybe", done=True, done_reason="stop"))
    assert odd[0].text == "maybe"  # reported as is, for the caller to see it is not a choice


def _http_error(kind, message):
    request = httpx.Request("POST", f"{HOST}/api/generate")
    return kind(message, request=request)


def _ollama_connection_error():
    try:
        try:
            raise _http_error(httpx.ConnectError, "[Errno 111] Connection refused")
        except httpx.ConnectError:
            raise ConnectionError("Failed to connect to Ollama.") from None  # as ollama's client raises it
    except ConnectionError as exc:
        return exc


@pytest.mark.parametrize("exc,kind,text", [
    (ollama.ResponseError('{"error": "invalid options"}', 400), llmkit.InvalidRequestError, "invalid options"),
    (ollama.ResponseError('{"error": "model \'x\' not found"}', 404), llmkit.ModelNotFoundError, "not found"),
    (ollama.ResponseError("the input length exceeds the context length", 400), llmkit.PromptTooLongError, "exceeds the context"),
    (ollama.ResponseError("the input length exceeds the context length"), llmkit.PromptTooLongError, "exceeds the context"),
    (ollama.ResponseError("llama runner process has terminated", 500), llmkit.EngineError, "HTTP 500"),
    (ollama.ResponseError("an error was encountered while running the model"), llmkit.EngineError, "error was encountered"),
    (_http_error(httpx.ConnectError, "[Errno 111] Connection refused"), llmkit.EngineError, "cannot reach ollama.*refused"),
    (_http_error(httpx.ConnectError, "[Errno -2] Name or service not known"), llmkit.EngineError, "cannot reach.*Name or service"),
    (_ollama_connection_error(), llmkit.EngineError, "cannot reach ollama.*ConnectError.*refused"),
    (ConnectionRefusedError(111, "Connection refused"), llmkit.EngineError, "cannot reach ollama"),
    (_http_error(httpx.ReadTimeout, "timed out"), llmkit.EngineError, "did not answer within the timeout of 2 s"),
    (_http_error(httpx.ConnectTimeout, "timed out"), llmkit.EngineError, "did not answer within"),
    (_http_error(httpx.RemoteProtocolError, "incomplete chunked read"), llmkit.EngineError, "connection broke.*incomplete"),
    (_http_error(httpx.ReadError, "reset"), llmkit.EngineError, "connection broke"),
    (ConnectionResetError(104, "Connection reset by peer"), llmkit.EngineError, "connection broke"),
    (json.JSONDecodeError("Expecting value", "<html>", 0), llmkit.EngineError, "not Ollama's protocol"),
    (RuntimeError("boom"), llmkit.EngineError, "RuntimeError: boom"),
])
def test_upstream_errors_become_llmkit_errors(exc, kind, text):
    error = native_error(exc, HOST, timeout=2.0, context=2048)
    assert type(error) is kind and error.__cause__ is exc
    assert pytest.raises(kind, _raise, error).match(text)


def _raise(error):
    raise error

