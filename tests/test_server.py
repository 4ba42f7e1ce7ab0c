"""`llmkit serve` through the real `openai` and `ollama` clients, on SmolLM2 served by llama.cpp over loopback.

Every generated answer is checked against the engine itself (the same greedy request through
`engine.generate`/`engine.chat`), and every streamed answer against its non-streamed twin: the server adds
and drops nothing. Errors, caps, auth and the security defaults are checked status by status, in each API's
own format. The Ollama adapter (`llmkit.load("ollama", ...)`) is run against the server too.
"""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import pytest

import llmkit

pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")

from llmkit.server import ServerSettings, start_in_thread  # noqa: E402

MODEL = llmkit.DEFAULT_MODEL
KEY = "test-key-0123456789"
pytestmark = [pytest.mark.smollm2, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def twin(engine, prompt, **params):
    """What the engine itself answers (greedy unless told)."""
    return engine.generate(prompt, llmkit.SamplingParams(**{"temperature": 0.0, **params}))[0]


def streamed_completion(client, **kw):
    text, finish, usage, stop_reason = [], None, None, None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.text)
            finish = choice.finish_reason or finish
            stop_reason = getattr(choice, "stop_reason", None) or stop_reason
    return "".join(text), finish, usage, stop_reason


def streamed_chat(client, **kw):
    text, finish, usage, logprobs, roles = [], None, None, [], []
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
            if choice.logprobs is not None:
                logprobs += choice.logprobs.content
    return "".join(text), finish, usage, logprobs, roles


# ---- OpenAI: completions and chat ------------------------------------------------------------------


def test_completion_is_the_engines_answer_and_streams_the_same(engine, client):
    prompt = "The three primary colors are"
    expected = twin(engine, prompt, max_tokens=12)
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert reply.object == "text_completion" and reply.model == MODEL
    assert reply.choices[0].text == expected.text and expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (expected.usage.prompt_tokens, 12)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12
    text, finish, usage, _ = streamed_completion(client, model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert (text, finish) == (reply.choices[0].text, "length")
    assert (usage.prompt_tokens, usage.completion_tokens) == (reply.usage.prompt_tokens, 12)


def test_completions_default_to_16_tokens_as_vllm(engine, client):
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 16
    assert reply.choices[0].text == twin(engine, "Once upon a time", max_tokens=16, ignore_eos=True).text


def test_chat_is_the_engines_answer_and_streams_the_same(engine, client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a fruit."}]
    expected = engine.chat(messages, llmkit.greedy(max_tokens=10))
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=10, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.text and expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens
    text, finish, usage, _, roles = streamed_chat(client, model=MODEL, messages=messages, max_tokens=10, temperature=0)
    assert (text, finish, roles) == (expected.text, expected.finish_reason, ["assistant"])
    assert (usage.prompt_tokens, usage.completion_tokens) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)


def test_chat_content_as_text_parts(engine, client):
    parts = [{"type": "text", "text": "Name a "}, {"type": "text", "text": "fruit."}]
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=4, temperature=0)
    assert reply.choices[0].message.content == engine.chat([{"role": "user", "content": "Name a fruit."}], llmkit.greedy(max_tokens=4)).text


def test_stop_strings(engine, client):
    prompt = "List: apples, pears, plums, figs, kiwis, limes, dates,"
    expected = twin(engine, prompt, max_tokens=30, stop=[","])
    assert expected.finish_reason == "stop"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=[","])
    choice = reply.choices[0]
    assert choice.text == expected.text and "," not in choice.text
    assert (choice.finish_reason, choice.stop_reason) == ("stop", ",")
    text, finish, _, stop_reason = streamed_completion(client, model=MODEL, prompt=prompt, max_tokens=30, temperature=0, stop=",")
    assert (text, finish, stop_reason) == (choice.text, "stop", ",")


def test_n_samples_with_a_seed_are_reproducible_and_stream_the_same(client):
    kw = dict(model=MODEL, prompt="My favourite animal is", max_tokens=6, temperature=1.0, seed=7, n=3)
    first = client.completions.create(**kw)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.text for c in first.choices]
    assert len(set(texts)) > 1  # three samples, not one copied
    with_ids = client.completions.create(**kw, extra_body={"return_token_ids": True})
    assert [c.text for c in with_ids.choices] == texts  # the same seed, the same samples
    assert with_ids.usage.completion_tokens == sum(len(c.model_dump()["token_ids"]) for c in with_ids.choices)
    streamed = {i: "" for i in range(3)}
    for chunk in client.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert [streamed[i] for i in range(3)] == texts


def test_several_prompts_in_one_request(engine, client):
    prompts = ["One, two,", "Red, green,"]
    reply = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.text for c in reply.choices] == [twin(engine, p, max_tokens=6).text for p in prompts]
    assert reply.usage.prompt_tokens == sum(len(engine.tokenize(p)) for p in prompts)


def test_token_id_prompt(engine, client):
    ids = engine.tokenize("The sky is")
    reply = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0, extra_body={"return_token_ids": True})
    expected = twin(engine, "The sky is", max_tokens=6)
    assert reply.choices[0].text == expected.text
    data = reply.choices[0].model_dump()
    assert data["token_ids"] == expected.token_ids and data["prompt_token_ids"] == ids


def test_chat_logprobs_are_the_engines(engine, client):
    messages = [{"role": "user", "content": "Say hello."}]
    expected = engine.chat(messages, llmkit.greedy(max_tokens=6, logprobs=3))
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert [e.token for e in content] == [e.token for e in expected.logprobs]
    assert [e.logprob for e in content] == pytest.approx([e.logprob for e in expected.logprobs], abs=1e-6)
    for entry, want in zip(content, expected.logprobs):
        assert len(entry.top_logprobs) == 3
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(sorted(want.top.values(), reverse=True), abs=1e-6)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the sampled token is the top one
        assert entry.bytes == list(entry.token.encode())
    *_, streamed, _ = streamed_chat(client, model=MODEL, messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    assert [(e.token, round(e.logprob, 6)) for e in streamed] == [(e.token, round(e.logprob, 6)) for e in content]


def test_completion_logprobs_with_echo(engine, client):
    prompt = "Water boils at"
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, logprobs=2, echo=True)
    choice = reply.choices[0]
    generated = twin(engine, prompt, max_tokens=4)
    assert choice.text == prompt + generated.text
    lp = choice.logprobs
    n_prompt = len(engine.tokenize(prompt))
    assert len(lp.tokens) == n_prompt + 4
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    assert all(v is not None and v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) >= 2 for top in lp.top_logprobs[1:])
    # without echo: the generated tokens only, the same numbers as the engine's
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0, logprobs=2).choices[0].logprobs
    scored = twin(engine, prompt, max_tokens=4, logprobs=2)
    assert plain.token_logprobs == pytest.approx([e.logprob for e in scored.logprobs], abs=1e-6)
    assert plain.tokens == lp.tokens[n_prompt:]


def test_echo_without_generation(engine, client):
    reply = client.completions.create(model=MODEL, prompt="Just this.", max_tokens=0, echo=True)
    assert reply.choices[0].text == "Just this." and reply.usage.completion_tokens == 0
    assert reply.usage.prompt_tokens == len(engine.tokenize("Just this."))


# ---- constraints ----------------------------------------------------------------------------------

OK_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def test_json_schema_response_format(client):
    messages = [{"role": "user", "content": "Give me a person as JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, temperature=0, response_format=fmt)
    value = json.loads(reply.choices[0].message.content)
    jsonschema.validate(value, SCHEMA)
    text, *_ = streamed_chat(client, model=MODEL, messages=messages, max_tokens=60, temperature=0, response_format=fmt)
    assert text == reply.choices[0].message.content


def test_json_object_response_format(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": 'Reply with {"ok": true}.'}],
                                           max_tokens=40, temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


REVIEW = "Review: The food was cold and the staff were rude.\nSentiment:"


@pytest.mark.parametrize("extra", [
    {"guided_choice": [" Positive", " Negative"]},
    {"structured_outputs": {"choice": [" Positive", " Negative"]}},
    {"constraint": {"kind": "choice", "choices": [" Positive", " Negative"]}},
])
def test_guided_choice_spellings(engine, client, extra):
    reply = client.completions.create(model=MODEL, prompt=REVIEW, max_tokens=5, temperature=0, extra_body=extra)
    assert reply.choices[0].text in (" Positive", " Negative")
    assert reply.choices[0].text == twin(engine, REVIEW, max_tokens=5, constraint=llmkit.Choice([" Positive", " Negative"])).text


def test_guided_regex_and_grammar(client):
    regex = client.completions.create(model=MODEL, prompt="The year the war ended:", max_tokens=8, temperature=0,
                                      extra_body={"guided_regex": r" (19|20)[0-9]{2}"})
    assert __import__("re").fullmatch(r" (19|20)[0-9]{2}", regex.choices[0].text)
    grammar = 'root ::= " " ("yes" | "no")'
    reply = client.completions.create(model=MODEL, prompt="Is water wet? Answer:", max_tokens=4, temperature=0,
                                      extra_body={"structured_outputs": {"grammar": grammar}})
    assert reply.choices[0].text in (" yes", " no")


# ---- errors, in OpenAI's format ----------------------------------------------------------------------


def wait_until(predicate, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def error_of(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    body = info.value.body
    return info.value.status_code, body if isinstance(body, dict) else {}


def test_openai_errors_name_what_is_wrong(client):
    status, body = error_of(lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"best_of": 2}))
    assert status == 400 and body["param"] == "best_of" and "best_of" in body["message"] and body["type"] == "BadRequestError"
    status, body = error_of(lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"logit_bias": {"5": 3}}))
    assert status == 400 and body["param"] == "logit_bias"


def test_neutral_vllm_fields_are_accepted(engine, client):
    reply = client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, temperature=0,
                                      extra_body={"logit_bias": {}, "use_beam_search": False, "min_tokens": 0, "top_k": -1})
    assert reply.choices[0].text == twin(engine, "Hi", max_tokens=3).text


@pytest.mark.parametrize("kw, status, param", [
    (dict(model="other-model"), 404, "model"),
    (dict(model="/etc/passwd"), 404, "model"),
    (dict(temperature=-1), 400, "temperature"),
    (dict(top_p=0), 400, "top_p"),
    (dict(max_tokens=-3), 400, "max_tokens"),
    (dict(extra_body={"suffix": "tail"}), 400, "suffix"),
    (dict(extra_body={"best_of": 3}), 400, "best_of"),
    (dict(extra_body={"lora_request": {"lora_path": "/tmp/x"}}), 400, "lora_request"),
    (dict(extra_body={"guided_choice": ["a"], "guided_regex": "b"}), 400, "guided_choice"),
    (dict(extra_body={"guided_regex": "(unclosed"}), 400, "guided_regex"),
    (dict(stream_options={"include_usage": True}), 400, "stream_options"),
    (dict(n=2, temperature=0), 400, None),  # llmkit: greedy samples would all be the same (a cross-field check)
])
def test_bad_completion_requests(client, kw, status, param):
    args = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, **kw}
    got, body = error_of(lambda: client.completions.create(**args))
    assert (got, body.get("param")) == (status, param), body
    assert body["code"] == status and body["message"]


def test_unsupported_feature_names_backend_and_feature(client):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}}
    status, body = error_of(lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=5,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    assert status == 400 and "llamacpp" in body["message"] and "minimum" in body["message"]


def test_bad_chat_requests(client):
    cases = [
        (dict(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
        (dict(messages=[{"role": "user", "content": "x", "name": "bob"}]), "messages[0].name"),
        (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "messages[0].content"),
        (dict(messages=[{"role": "user", "content": "x"}], top_logprobs=2), "top_logprobs"),
        (dict(messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=21), "top_logprobs"),
        (dict(messages=[{"role": "user", "content": "x"}], tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
        (dict(messages=[{"role": "user", "content": "x"}], extra_body={"chat_template": "{{ 1 }}"}), "chat_template"),
    ]
    for kw, param in cases:
        status, body = error_of(lambda: client.chat.completions.create(model=MODEL, max_tokens=2, **kw))
        assert (status, body.get("param")) == (400, param), (kw, body)


def test_prompt_longer_than_the_context(engine, client):
    long = "word " * (engine.context_length + 10)
    status, body = error_of(lambda: client.completions.create(model=MODEL, prompt=long, max_tokens=2))
    assert status == 400 and body["param"] == "prompt" and str(engine.context_length - 1) in body["message"]


def test_http_level_errors_in_each_format(server):
    bad_json = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == 400
    missing = httpx.get(server.url + "/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"
    ollama_missing = httpx.post(server.url + "/api/nothing", json={})
    assert ollama_missing.status_code == 404 and isinstance(ollama_missing.json()["error"], str)
    assert httpx.get(server.url + "/v1/completions").status_code == 405
    not_object = httpx.post(server.url + "/v1/completions", json=[1, 2])
    assert not_object.status_code == 400


def test_models_and_health(server, engine):
    models = openai.OpenAI(base_url=server.url + "/v1", api_key="x").models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_dump()["max_model_len"] == engine.context_length
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "backend": "llamacpp", "model": MODEL}


# ---- Ollama ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oclient(server):
    return ollama.Client(host=server.url, timeout=60)


def test_ollama_generate_raw_is_the_engines_answer(engine, oclient):
    prompt = "The largest planet is"
    expected = twin(engine, prompt, max_tokens=10)
    reply = oclient.generate(model=MODEL, prompt=prompt, raw=True, stream=False, options={"temperature": 0, "num_predict": 10})
    assert reply.response == expected.text and reply.done and reply.done_reason == "length"
    assert (reply.prompt_eval_count, reply.eval_count) == (expected.usage.prompt_tokens, 10)
    assert reply.total_duration > 0 and reply.eval_duration > 0
    parts = list(oclient.generate(model=MODEL, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 10}, stream=True))
    assert "".join(p.response for p in parts) == expected.text
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done and parts[-1].eval_count == 10


def test_ollama_generate_applies_the_template_and_system(engine, oclient):
    reply = oclient.generate(model=MODEL, prompt="Name a colour.", system="Answer in one word.", options={"temperature": 0, "num_predict": 8})
    expected = engine.chat([{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a colour."}],
                           llmkit.greedy(max_tokens=8))
    assert reply.response == expected.text


def test_ollama_chat_stream_and_format(engine, oclient):
    messages = [{"role": "user", "content": "Name a fruit."}]
    expected = engine.chat(messages, llmkit.greedy(max_tokens=8))
    reply = oclient.chat(model=MODEL, messages=messages, options={"temperature": 0, "num_predict": 8})
    assert reply.message.role == "assistant" and reply.message.content == expected.text
    streamed = "".join(p.message.content for p in oclient.chat(model=MODEL, messages=messages, stream=True,
                                                               options={"temperature": 0, "num_predict": 8}))
    assert streamed == expected.text
    as_json = oclient.chat(model=MODEL, messages=[{"role": "user", "content": 'Reply with {"ok": true}.'}], format=OK_SCHEMA,
                           options={"temperature": 0, "num_predict": 30})
    assert json.loads(as_json.message.content) == {"ok": True}
    as_object = oclient.generate(model=MODEL, prompt='Reply with {"ok": true}.', format="json", options={"temperature": 0, "num_predict": 30})
    assert json.loads(as_object.response) == {"ok": True}


def test_ollama_defaults_are_ollamas(engine, oclient):
    """Without options, Ollama samples (temperature 0.8, top_k 40, top_p 0.9): a seed makes it repeatable and it
    differs from greedy somewhere across a few seeds."""
    runs = [oclient.generate(model=MODEL, prompt="A story:", raw=True, options={"seed": s, "num_predict": 6}).response for s in (1, 2, 3)]
    again = oclient.generate(model=MODEL, prompt="A story:", raw=True, options={"seed": 1, "num_predict": 6}).response
    assert runs[0] == again
    assert len(set(runs)) > 1


def test_ollama_logprobs(engine, oclient):
    expected = twin(engine, "Hello", max_tokens=4, logprobs=2)
    reply = oclient.generate(model=MODEL, prompt="Hello", raw=True, logprobs=True, top_logprobs=2, options={"temperature": 0, "num_predict": 4})
    assert [e.token for e in reply.logprobs] == [e.token for e in expected.logprobs]
    assert [e.logprob for e in reply.logprobs] == pytest.approx([e.logprob for e in expected.logprobs], abs=1e-6)
    assert all(len(e.top_logprobs) == 2 for e in reply.logprobs)


def test_ollama_tags_show_version(oclient, server, engine):
    listed = oclient.list().models
    assert [m.model for m in listed] == [MODEL] and listed[0].details.format == "gguf"
    shown = oclient.show(MODEL)
    assert shown.modelinfo["llmkit.context_length"] == engine.context_length and "completion" in shown.capabilities
    assert httpx.get(server.url + "/api/version").json()["version"]
    loaded = oclient.generate(model=MODEL, prompt="")  # Ollama: an empty prompt loads the model
    assert loaded.done and loaded.done_reason == "load"


@pytest.mark.parametrize("kw, status, fragment", [
    (dict(model="llama3"), 404, "not found"),
    (dict(options={"num_gpu": 1}), 400, "num_gpu"),
    (dict(options={"num_thread": 8}), 400, "num_thread"),
    (dict(options={"mirostat": 2}), 400, "mirostat"),
    (dict(options={"no_such_option": 1}), 400, "no_such_option"),
    (dict(options={"repeat_penalty": 1.2}), 400, "repeat_last_n"),
    (dict(suffix="tail"), 400, "suffix"),
    (dict(images=["aGVsbG8="]), 400, "images"),
    (dict(think=True), 400, "think"),
    (dict(template="{{ .Prompt }}"), 400, "template"),
])
def test_ollama_errors(oclient, kw, status, fragment):
    args = {"model": MODEL, "prompt": "Hello", "options": {"num_predict": 2}, **kw}
    with pytest.raises(ollama.ResponseError) as info:
        oclient.generate(**args)
    assert info.value.status_code == status and fragment in str(info.value.error)


def test_ollama_errors_over_plain_http(server):
    cases = [({"format": "yaml"}, 400, "format"), ({"prompt": "x", "model": None}, 400, "model is required"),
             ({"options": {"num_predict": 0}}, 400, "num_predict"), ({"context": [1, 2, 3]}, 400, "context"),
             ({"shift": True}, 400, "shift"), ({"raw": True, "system": "s"}, 400, "raw")]
    for extra, status, fragment in cases:
        body = {"model": MODEL, "prompt": "Hello", "stream": False, **extra}
        reply = httpx.post(server.url + "/api/generate", json={k: v for k, v in body.items() if v is not None})
        assert reply.status_code == status and fragment in reply.json()["error"], (extra, reply.text)
    bad = httpx.post(server.url + "/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]})
    assert bad.status_code == 400 and "images" in bad.json()["error"]
    invalid = httpx.post(server.url + "/api/generate", content=b"{oops")
    assert invalid.status_code == 400 and "JSON" in invalid.json()["error"]


def test_ollama_penalty_over_the_whole_context_is_accepted(engine, oclient):
    reply = oclient.generate(model=MODEL, prompt="Hello", raw=True, options={"temperature": 0, "num_predict": 6, "repeat_penalty": 1.3,
                                                                              "repeat_last_n": -1})
    assert reply.response == twin(engine, "Hello", max_tokens=6, repetition_penalty=1.3).text


def test_ollama_num_ctx_limits_the_prompt(oclient):
    with pytest.raises(ollama.ResponseError) as info:
        oclient.generate(model=MODEL, prompt="word " * 40, raw=True, options={"num_ctx": 16, "num_predict": 2})
    assert info.value.status_code == 400 and "context length" in info.value.error


def test_ollama_adapter_against_llmkit_server(engine, server):
    """llmkit's own Ollama adapter, pointed at llmkit's server: the same greedy answers as the engine behind it."""
    with llmkit.load("ollama", MODEL, host=server.url) as remote:
        assert remote.context_length == 4096  # the adapter's default num_ctx, below the model's 8192
        prompt = "The smallest prime number is"
        expected = twin(engine, prompt, max_tokens=8)
        got = remote.generate(prompt, llmkit.greedy(max_tokens=8))[0]
        assert (got.text, got.finish_reason, got.usage.completion_tokens) == (expected.text, "length", 8)
        assert "".join(c.text for c in remote.stream(prompt, llmkit.greedy(max_tokens=8))) == expected.text
        messages = [{"role": "user", "content": "Name a colour."}]
        assert remote.chat(messages, llmkit.greedy(max_tokens=8)).text == engine.chat(messages, llmkit.greedy(max_tokens=8)).text
        label = remote.generate("Review: Loved it, wonderful!\nSentiment:",
                                llmkit.greedy(max_tokens=8, constraint=llmkit.Choice(["Positive", "Negative"])))[0].text
        assert label in ("Positive", "Negative")
        stop = remote.generate("Count: 1, 2, 3, 4,", llmkit.greedy(max_tokens=20, stop=[" 6"]))[0]
        assert stop.text == twin(engine, "Count: 1, 2, 3, 4,", max_tokens=20, stop=[" 6"]).text and stop.finish_reason == "stop"


# ---- metrics -----------------------------------------------------------------------------------------


def test_metrics_are_prometheus_text(server, client):
    parser = pytest.importorskip("prometheus_client.parser")
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    ttft = families["llmkit_time_to_first_token_seconds"]
    count = next(s.value for s in ttft.samples if s.name.endswith("_count"))
    assert count >= 1
    for name in ("llmkit_time_per_output_token_seconds", "llmkit_inter_token_latency_seconds", "llmkit_output_tokens_per_second",
                 "llmkit_num_requests_running", "llmkit_num_requests_waiting", "llmkit_generation_tokens_total",
                 "llmkit_http_requests_total", "llmkit_engine_up"):
        assert name.removesuffix("_total") in families, name
    ok = [s for s in families["llmkit_http_requests"].samples
          if s.labels == {"route": "/v1/completions", "status": "200"} and s.name.endswith("_total")]
    assert ok and ok[0].value >= 1
    assert next(s.value for s in families["llmkit_num_requests_running"].samples) == 0


# ---- limits and access -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(engine):
    settings = ServerSettings(port=0, max_n=2, max_tokens=64, max_prompt_tokens=32, max_body_bytes=4096, max_concurrent=1)
    running = start_in_thread(engine, settings)
    yield running
    running.stop()


def test_caps_answer_with_clear_4xx(capped):
    client = openai.OpenAI(base_url=capped.url + "/v1", api_key="x", max_retries=0)
    status, body = error_of(lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=2, n=3, temperature=1))
    assert (status, body["param"]) == (400, "n") and "max_n" in body["message"]
    status, body = error_of(lambda: client.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=2, n=2, temperature=1))
    assert (status, body["param"]) == (400, "n")
    status, body = error_of(lambda: client.completions.create(model=MODEL, prompt="x", max_tokens=65))
    assert (status, body["param"]) == (400, "max_tokens") and "64" in body["message"]
    status, body = error_of(lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                                                   max_completion_tokens=100))
    assert (status, body["param"]) == (400, "max_completion_tokens")
    status, body = error_of(lambda: client.completions.create(model=MODEL, prompt="word " * 40, max_tokens=2))
    assert (status, body["param"]) == (400, "prompt") and "32" in body["message"]
    big = httpx.post(capped.url + "/v1/completions", json={"model": MODEL, "prompt": "x" * 5000})
    assert big.status_code == 413 and "4096" in big.json()["error"]["message"]

    def chunked():  # no Content-Length: the cap applies as the body arrives
        yield b'{"model": "' + MODEL.encode() + b'", "prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'
    streamed = httpx.post(capped.url + "/v1/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    ollama_big = httpx.post(capped.url + "/api/generate", json={"model": MODEL, "prompt": "x" * 5000})
    assert ollama_big.status_code == 413 and isinstance(ollama_big.json()["error"], str)
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=capped.url).generate(model=MODEL, prompt="x", options={"num_predict": 65})
    assert info.value.status_code == 400 and "num_predict" in info.value.error


def test_concurrency_cap_is_429(engine):
    with start_in_thread(engine, ServerSettings(port=0, max_concurrent=1)) as capped, httpx.Client(base_url=capped.url, timeout=60) as http:
        # 2000 tokens take a minute here: the request is surely still being served while the others knock
        with http.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000,
                                                          "stream": True, "temperature": 0, "ignore_eos": True}) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: dropping the iterator would close the connection
            assert next(lines).startswith("data: ")  # the first request is being served
            busy = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["type"] == "RateLimitError"
            ollama_busy = http.post("/api/generate", json={"model": MODEL, "prompt": "x", "stream": False})
            assert ollama_busy.status_code == 429 and "max_concurrent" in ollama_busy.json()["error"]
        # the held stream was closed: the server sees the client go, cancels the request and frees its slot
        assert wait_until(lambda: capped.served.metrics.serving == 0, 10)
        after = http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "temperature": 0})
        assert after.status_code == 200, after.text


def test_request_timeout_is_504(engine):
    with start_in_thread(engine, ServerSettings(port=0, request_timeout=0.5)) as timed:
        long = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "temperature": 0, "ignore_eos": True}
        reply = httpx.post(timed.url + "/v1/completions", json=long, timeout=30)
        assert reply.status_code == 504 and reply.json()["error"]["code"] == 504
        streamed = httpx.post(timed.url + "/v1/completions", json={**long, "stream": True}, timeout=30).text
        events = [line[6:] for line in streamed.splitlines() if line.startswith("data: ")]
        assert json.loads(events[-2])["error"]["code"] == 504 and events[-1] == "[DONE]"
        ollama_reply = httpx.post(timed.url + "/api/generate", json={"model": MODEL, "stream": False, "keep_alive": 0, "raw": True,
                                                                     "prompt": "Count from one to one thousand in words: one, two, three,",
                                                                     "options": {"num_predict": 2000}}, timeout=30)
        assert ollama_reply.status_code == 504 and "timeout" in ollama_reply.json()["error"]
        assert wait_until(lambda: engine.stats().engine["in_flight"] == 0, 10)


@pytest.fixture(scope="module")
def keyed(engine):
    running = start_in_thread(engine, ServerSettings(port=0, api_key=KEY))
    yield running
    running.stop()


def test_api_key_on_every_route_but_health(keyed, engine):
    for method, path in [("GET", "/"), ("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/v1/completions"),
                         ("POST", "/v1/chat/completions"), ("GET", "/api/tags"), ("POST", "/api/show"), ("POST", "/api/generate"),
                         ("POST", "/api/chat"), ("GET", "/api/version")]:
        for headers in ({}, {"Authorization": "Bearer wrong-key-000000"}, {"Authorization": KEY}):
            reply = httpx.request(method, keyed.url + path, headers=headers, json={} if method == "POST" else None)
            assert reply.status_code == 401, (method, path, headers)
    assert httpx.get(keyed.url + "/").headers["www-authenticate"].startswith("Basic")
    assert httpx.get(keyed.url + "/health").status_code == 200
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(model=MODEL, prompt="Hi", max_tokens=3, temperature=0).choices[0].text == twin(engine, "Hi", max_tokens=3).text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong-key-000000", max_retries=0).models.list()
    assert [m.model for m in ollama.Client(host=keyed.url, headers={"Authorization": f"Bearer {KEY}"}).list().models] == [MODEL]
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=keyed.url).list()
    assert info.value.status_code == 401
    basic = base64.b64encode(f"me:{KEY}".encode()).decode()
    assert httpx.get(keyed.url + "/", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_binding_beyond_loopback_needs_a_key():
    with pytest.raises(llmkit.InvalidRequestError, match="API key"):
        ServerSettings(host="0.0.0.0")
    with pytest.raises(llmkit.InvalidRequestError, match="API key"):
        ServerSettings(host="192.168.1.20")
    assert ServerSettings(host="0.0.0.0", api_key=KEY).host == "0.0.0.0"
    assert ServerSettings(host="::1").host == "::1" and ServerSettings(host="localhost").api_key is None


def test_other_sites_cannot_drive_a_loopback_server(server):
    rebinding = httpx.post(server.url + "/v1/completions", headers={"Host": "evil.example:8000"}, json={"model": MODEL, "prompt": "x"})
    assert rebinding.status_code == 403
    cross = httpx.post(server.url + "/api/generate", headers={"Origin": "https://evil.example"}, json={"model": MODEL, "prompt": "x"})
    assert cross.status_code == 403 and "evil.example" in cross.json()["error"]
    same = httpx.get(server.url + "/v1/models", headers={"Origin": server.url})
    assert same.status_code == 200


def test_no_route_touches_models_or_files(server, tmp_path):
    """Ollama's and vLLM's model-management routes do not exist here; nothing is created, copied or deleted."""
    before = sorted(p.name for p in tmp_path.iterdir())
    target = str(tmp_path / "copy")
    for method, path, body in [
        ("POST", "/api/pull", {"model": "llama3"}), ("POST", "/api/push", {"model": MODEL}),
        ("POST", "/api/create", {"model": "x", "from": MODEL, "files": {}}), ("POST", "/api/copy", {"source": MODEL, "destination": target}),
        ("DELETE", "/api/delete", {"model": MODEL}), ("POST", "/api/blobs/sha256:00", {}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": target}), ("POST", "/v1/unload_lora_adapter", {"lora_name": "x"}),
        ("POST", "/v1/models", {"id": "x"}), ("DELETE", "/v1/models/" + MODEL, None),
    ]:
        reply = httpx.request(method, server.url + path, json=body)
        assert reply.status_code in (404, 405), (method, path, reply.status_code)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == [MODEL]
