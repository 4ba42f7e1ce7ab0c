"""Regex and choice → GBNF, checked for meaning by parsing the grammar with a real engine elsewhere; here
the structure and the refusals."""

import pytest

from llmkit.kit.grammars import RegexNotExpressible, choice_gbnf, gbnf_literal, regex_gbnf


def test_literal_escapes():
    assert gbnf_literal('a"b\\c\n') == '"a\\"b\\\\c\\n"'
    assert gbnf_literal("😀") == '"😀"'


def test_choice_grammar():
    assert choice_gbnf([" Positive", " Negative"]) == 'root ::= " Positive" | " Negative"\n'


@pytest.mark.parametrize(
    "pattern, grammar",
    [
        (r"[0-9]{3}-[a-z]{2,4}", 'root ::= [0-9]{3} "-" [a-z]{2,4}'),
        (r"a+b*c?", 'root ::= "a"+ "b"* "c"?'),
        (r"^\d\w\s$", "root ::= [0-9] [a-zA-Z0-9_] [ \\t\\n\\r\\x0B\\x0C]"),
        (r"[^a\]]", "root ::= [^a\\]]"),
        (r"(ab){2,}", 'root ::= ("a" "b"){2,}'),
    ],
)
def test_regex_to_gbnf(pattern, grammar):
    assert regex_gbnf(pattern).strip() == grammar


@pytest.mark.parametrize("pattern", [r"(a)\1", r"a(?=b)", r"(?<!x)y", r"a\bb"])
def test_inexpressible_regex_is_refused(pattern):
    with pytest.raises(RegexNotExpressible):
        regex_gbnf(pattern)
