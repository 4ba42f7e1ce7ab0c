"""JSON-schema constraints made safe for every engine's converter.

`prepare_schema` refuses what no grammar can generate and rewrites what converters misread:
- `$ref`s that lead back to themselves without consuming any JSON (`{"$ref": "#"}`, two definitions
  pointing at each other, `anyOf` that includes itself) describe no finite value: refused with
  `InvalidRequestError` (seen: engines returned an empty completion, or a bare KeyError).
- A root `$ref` (pydantic's self-recursive models: `{"$defs": {...}, "$ref": "#/$defs/Node"}`) is
  replaced by the definition it names, with `$defs` kept at the root, which every converter resolves
  (llama-cpp-python's does not look for `$defs` under a root `$ref`).
- Only local references (`#...`) are accepted.

`xgrammar_json_ebnf` is xgrammar's grammar for a schema with JSON's own rule restored: no raw control
character (U+0000–U+001F) inside a string. xgrammar 0.2.8 admits them in strings with `minLength` /
`maxLength` or a `pattern` (a model produced U+001E, which `json.loads` rejects); every character class
that excludes characters — those only occur inside strings in a JSON grammar — now excludes those too.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from llmkit.errors import InvalidRequestError

_TRANSPARENT = ("allOf", "anyOf", "oneOf")  # members describe the same JSON value as their parent


def prepare_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` every converter reads the same way; raises InvalidRequestError for schemas
    whose references cannot generate anything."""
    schema = copy.deepcopy(schema)
    _check_references(schema)
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref != "#":
        target = resolve(schema, ref)
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        defs = {k: rest.pop(k) for k in ("$defs", "definitions") if k in rest}
        merged = {**copy.deepcopy(target), **{k: v for k, v in rest.items() if k not in target}}
        for key, value in defs.items():
            merged.setdefault(key, value)
        schema = merged
    return schema


def resolve(root: dict[str, Any], ref: str) -> Any:
    """The node a local JSON-pointer reference (`#`, `#/$defs/a`) names."""
    if not ref.startswith("#"):
        raise InvalidRequestError(f"only local $refs (#...) are supported, got {ref!r}", parameter="constraint.schema", value=ref)
    node: Any = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise InvalidRequestError(f"$ref {ref!r} points at nothing in the schema", parameter="constraint.schema", value=ref)
    return node


def _check_references(root: dict[str, Any]) -> None:
    """Refuse a cycle of references that consumes no JSON: following `$ref` and allOf/anyOf/oneOf
    from a node (they describe the same value) must never come back to it."""
    done: set[int] = set()

    def visit(node: Any, path: list[int], refs: list[str]) -> None:
        if not isinstance(node, dict) or id(node) in done:
            return
        if id(node) in path:
            cycle = " → ".join(refs) or "#"
            raise InvalidRequestError(f"the schema's $refs form a cycle that matches no JSON value ({cycle})",
                                      parameter="constraint.schema", value=cycle)
        path.append(id(node))
        ref = node.get("$ref")
        if isinstance(ref, str):
            visit(resolve(root, ref), path, refs + [ref])
        for key in _TRANSPARENT:
            for member in node.get(key) or []:
                visit(member, path, refs)
        path.pop()
        done.add(id(node))

    for node in _all_nodes(root):
        visit(node, [], [])


def _all_nodes(node: Any) -> list[dict[str, Any]]:
    found = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


# A negated character class of xgrammar's EBNF, e.g. [^\"\\\r\n]
_NEGATED_CLASS = re.compile(r"\[\^((?:\\.|[^\]\\])*)\]")
_ESCAPES = {"n": 0x0A, "r": 0x0D, "t": 0x09, "0": 0x00, "b": 0x08, "f": 0x0C, "v": 0x0B}


def xgrammar_json_ebnf(schema: dict[str, Any], *, any_whitespace: bool = False) -> str:
    """xgrammar's EBNF for `schema` (compact JSON unless `any_whitespace`), with every negated character
    class — in a JSON grammar those only occur inside strings — rewritten as the positive class of what JSON
    allows there: no raw control character U+0000–U+001F (xgrammar 0.2.8 admits them in strings with
    length bounds), and no byte sequence that is not a character (both engines' negated classes accept
    encoded surrogates, which come out as U+FFFD)."""
    import xgrammar as xgr

    ebnf = str(xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=any_whitespace, strict_mode=True))
    return _NEGATED_CLASS.sub(lambda m: _positive_class(_class_code_points(m[1])), ebnf)


def _class_code_points(body: str) -> list[tuple[int, int]]:
    """The (lo, hi) ranges an xgrammar class body lists: escapes \\x.. (any number of hex digits, as
    xgrammar reads them), \\u...., \\U........, \\n \\r \\t \\0 ..., and a-b ranges."""
    points: list[int] = []
    i = 0
    while i < len(body):
        if body[i] == "\\":
            kind = body[i + 1]
            if kind in "xuU":
                j = i + 2
                width = {"u": 4, "U": 8}.get(kind)
                while j < len(body) and body[j] in "0123456789abcdefABCDEF" and (width is None or j - i - 2 < width):
                    j += 1
                points.append(int(body[i + 2:j], 16))
                i = j
            else:
                points.append(_ESCAPES.get(kind, ord(kind)))
                i += 2
        else:
            points.append(ord(body[i]))
            i += 1
        if len(points) >= 2 and points[-2] == -1:  # the end of a range a-b
            hi = points.pop()
            points.pop()
            points[-1] = (points[-1], hi)
        if i < len(body) - 1 and body[i] == "-" and points and not isinstance(points[-1], tuple):
            points.append(-1)
            i += 1
    return [p if isinstance(p, tuple) else (p, p) for p in points]


def _positive_class(excluded: list[tuple[int, int]]) -> str:
    from llmkit.kit.grammars import char_class

    cuts = sorted([(0x00, 0x1F), (0xD800, 0xDFFF), *excluded])
    ranges, low = [], 0
    for lo, hi in cuts:
        if lo > low:
            ranges.append((low, lo - 1))
        low = max(low, hi + 1)
    if low <= 0x10FFFF:
        ranges.append((low, 0x10FFFF))
    return char_class(ranges)
