"""Reward functions for GRPO, by name (`GRPOOptions.rewards`), in the signature TRL calls them with:
`reward(completions, reference, **columns) -> list[float]`, one score per completion. `reference` is the
record's reference response (`output` of an Alpaca record). A job may also name any `module:function`
with that signature.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from llmkit.errors import InvalidRequestError

Reward = Callable[..., list[float]]


def _text(completion: Any) -> str:
    """A completion as text: TRL passes strings, or for chat prompts a list of messages."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def exact_match(completions: list, reference: list[str], **_: Any) -> list[float]:
    """1 where the completion, stripped, equals the reference, else 0."""
    return [float(_text(c).strip() == r.strip()) for c, r in zip(completions, reference)]


def starts_with_reference(completions: list, reference: list[str], **_: Any) -> list[float]:
    """1 where the completion begins with the reference (what follows is not judged), else 0."""
    return [float(_text(c).strip().startswith(r.strip())) for c, r in zip(completions, reference)]


def token_f1(completions: list, reference: list[str], **_: Any) -> list[float]:
    """F1 of the words of completion and reference (SQuAD's measure): partial credit, a denser signal."""
    scores = []
    for c, r in zip(completions, reference):
        got, want = re.findall(r"\w+", _text(c).lower()), re.findall(r"\w+", r.lower())
        common = sum(min(got.count(w), want.count(w)) for w in set(want))
        scores.append(0.0 if common == 0 else 2 * common / (len(got) + len(want)))
    return scores


BUILT_IN: dict[str, Reward] = {"exact_match": exact_match, "starts_with_reference": starts_with_reference, "token_f1": token_f1}


def resolve(name: str) -> Reward:
    """A built-in name, or `module:function`."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    module_name, _, attr = name.partition(":")
    if not attr:
        raise InvalidRequestError(f"unknown reward {name!r}: built-in {sorted(BUILT_IN)}, or 'module:function'", parameter="grpo.rewards", value=name)
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidRequestError(f"reward {name!r} does not import: {exc}", parameter="grpo.rewards", value=name) from None
    if not callable(function):
        raise InvalidRequestError(f"reward {name!r} is not callable", parameter="grpo.rewards", value=name)
    return function
