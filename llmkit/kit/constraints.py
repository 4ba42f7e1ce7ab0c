"""One dispatch over the four constraint kinds, and the translations adapters share.

Every adapter turns a constraint into what its engine reads through `dispatch`, so a fifth kind cannot
be forgotten by one of them. Regexes are translated by llmkit itself (`llmkit.kit.grammars.regex_gbnf`)
into a grammar that means exactly what Python's `re.fullmatch` means, so the same pattern constrains the
same way on every engine; a pattern a grammar cannot express is refused (`RegexNotExpressible`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from llmkit.kit.grammars import choice_gbnf, regex_gbnf
from llmkit.kit.jsonschema import prepare_schema
from llmkit.types import Choice, Grammar, JsonSchema, Regex

T = TypeVar("T")


def dispatch(constraint: Choice | Regex | JsonSchema | Grammar, *, choice: Callable[[Choice], T], regex: Callable[[Regex], T],
             json_schema: Callable[[JsonSchema], T], grammar: Callable[[Grammar], T]) -> T:
    if isinstance(constraint, Choice):
        return choice(constraint)
    if isinstance(constraint, Regex):
        return regex(constraint)
    if isinstance(constraint, JsonSchema):
        return json_schema(constraint)
    if isinstance(constraint, Grammar):
        return grammar(constraint)
    raise TypeError(f"not a constraint: {constraint!r}")


def to_gbnf(constraint: Choice | Regex | Grammar) -> str:
    """GBNF for the kinds llmkit translates itself (JSON schemas go through each engine's converter)."""
    return dispatch(constraint, choice=lambda c: choice_gbnf(c.choices), regex=lambda c: regex_gbnf(c.pattern),
                    json_schema=lambda c: _no_gbnf(c), grammar=lambda c: c.grammar)


def _no_gbnf(constraint: JsonSchema) -> str:
    raise TypeError("JSON schemas are compiled by the engine's own converter")


def structured_output(constraint: Choice | Regex | JsonSchema | Grammar) -> dict[str, Any]:
    """Keyword arguments of vLLM's `StructuredOutputsParams` (SGLang reads the same kinds)."""
    return dispatch(
        constraint,
        choice=lambda c: {"choice": list(c.choices)},
        regex=lambda c: {"grammar": regex_gbnf(c.pattern)},
        json_schema=lambda c: {"json": prepare_schema(c.schema_)},
        grammar=lambda c: {"grammar": c.grammar},
    )


def choice_regex(choices: list[str]) -> str:
    """A regex whose full matches are exactly `choices` (for engines with no choice constraint)."""
    return "(" + "|".join(re.escape(c) for c in choices) + ")"
