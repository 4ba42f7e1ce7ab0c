"""Fine-tuning data: formats detected, bad records named by position and field, ch. 7's split."""

import json
from pathlib import Path

import pytest

from llmkit.data import DataError, load_examples, split
from llmkit.evaluate import SCORE, answer, judge

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _write(tmp_path, records, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records) if name.endswith(".json") else "\n".join(json.dumps(r) for r in records))
    return path


def test_formats_are_detected(tmp_path):
    fmt, examples = load_examples(_write(tmp_path, [{"instruction": "Add.", "input": "2 2", "output": "4"}]))
    assert fmt == "alpaca" and examples[0].prompt.endswith("### Input:\n2 2\n\n### Response:\n") and examples[0].completion == "4"
    fmt, examples = load_examples(_write(tmp_path, [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}], "c.jsonl"))
    assert fmt == "chat" and examples[0].prompt == ({"role": "user", "content": "hi"},) and examples[0].completion == "yo"
    fmt, examples = load_examples(_write(tmp_path, [{"prompt": "P", "chosen": "a", "rejected": "b"}]))
    assert fmt == "preference" and (examples[0].chosen, examples[0].rejected) == ("a", "b")


@pytest.mark.parametrize("records, match", [
    ([{"instruction": "a", "output": "b"}, {"instruction": "a", "output": 3}], r"record 1, field 'output': must be a string, not int"),
    ([{"instruction": "a", "output": "b"}, {"instruction": " ", "output": "b"}], r"record 1, field 'instruction': is empty"),
    ([{"instruction": "a", "output": "b"}, {"instruction": "a"}], r"record 1, field 'output': missing"),
    ([{"prompt": "p", "chosen": "a", "rejected": 1}], r"record 0, field 'rejected': must be a string"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], r"record 0, field 'messages': must end with a non-empty assistant"),
    ([{"messages": [{"role": "robot", "content": "hi"}]}], r"record 0, field 'messages\[0\]': role must be one of"),
    ([{"text": "x"}], r"record 0: unknown record format"),
    ([], r"non-empty list"),
    ([["a"]], r"record 0: must be a JSON object"),
])
def test_bad_records_are_named(tmp_path, records, match):
    with pytest.raises(DataError, match=match):
        load_examples(_write(tmp_path, records))


def test_bad_json_lines_are_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_examples(path)


def test_split_follows_chapter7_and_is_seeded(tmp_path):
    _, examples = load_examples(_write(tmp_path, [{"instruction": f"i{n}", "output": "o"} for n in range(1100)]))
    plain = split(examples)
    assert (len(plain.train), len(plain.test), len(plain.validation)) == (935, 110, 55)
    assert plain.test[0].index == 935  # the conformance suite's held-out records start here
    a, b, c = split(examples, shuffle_seed=1), split(examples, shuffle_seed=1), split(examples, shuffle_seed=2)
    assert [e.index for e in a.train] == [e.index for e in b.train] != [e.index for e in c.train]
    assert sorted(e.index for s in (a.train, a.test, a.validation) for e in s) == list(range(1100))


@pytest.mark.skipif(not (SHARED / "instruction-data.json").exists(), reason="../shared/datasets absent")
def test_the_chapter7_files_load():
    assert load_examples(SHARED / "instruction-data.json")[0] == "alpaca"
    fmt, examples = load_examples(SHARED / "instruction-data-with-preference.json")
    assert fmt == "preference" and len(examples) == 1100
    assert [e.index for e in examples if e.chosen == e.rejected] == [122, 226, 400, 566, 628, 676]  # kept, and logged
    assert load_examples(SHARED / "instruction-data-with-preference.json", "alpaca")[0] == "alpaca"


def test_judge_scores_are_integers_from_0_to_100(tiny_engine, tmp_path):
    """The judge's reply is constrained, so even a random model's reply is a score (the mechanics; the
    judge's quality is the judge model's)."""
    _, examples = load_examples(_write(tmp_path, [{"instruction": f"Say {n}.", "output": str(n)} for n in range(4)]))
    answers = answer(tiny_engine, examples, max_tokens=4)
    report = judge(tiny_engine, examples, answers)
    assert len(report.scores) == 4 and all(0 <= s <= 100 for s in report.scores)
    assert 0 <= report.mean <= 100 and report.details[0]["reference"] == "0"
    assert SCORE.pattern == "(100|[1-9]?[0-9])"
