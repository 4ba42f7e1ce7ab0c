"""Constraint → grammar text, shared by every adapter whose engine takes GBNF (llama.cpp's EBNF
dialect, also read by xgrammar and vLLM's grammar backends)."""

from __future__ import annotations

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def choice_gbnf(choices: list[str]) -> str:
    """A grammar whose language is exactly `choices`."""
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices) + "\n"


class RegexNotExpressible(ValueError):
    """The regex uses a feature a context-free grammar cannot express (backreference, lookaround)."""


def regex_gbnf(pattern: str) -> str:
    """A GBNF grammar whose language is the full matches of `pattern` (Python `re` syntax).

    Built from Python's own regex parser, so the pattern means what `re.fullmatch` means. Anchors at
    the ends are accepted and dropped (the whole output must match anyway); backreferences,
    lookaround and conditionals raise `RegexNotExpressible`.
    """
    import re._parser as sre_parse  # the parser `re` itself uses (3.11+)

    rules: list[str] = []
    body = _RegexToGbnf(rules).seq(sre_parse.parse(pattern)) or '""'
    return "\n".join([f"root ::= {body}", *rules]) + "\n"


class _RegexToGbnf:
    def __init__(self, rules: list[str]) -> None:
        self.rules = rules

    def seq(self, items) -> str:
        parts = [self.item(op, av) for op, av in items]
        return " ".join(p for p in parts if p)

    def item(self, op, av) -> str:
        import re._constants as c

        if op is c.LITERAL:
            return gbnf_literal(chr(av))
        if op is c.NOT_LITERAL:
            return f"[^{_class_char(chr(av))}]"
        if op is c.ANY:
            return "[^\\n]"
        if op is c.IN:
            return self.char_class(av)
        if op is c.AT:
            if av in (c.AT_BEGINNING, c.AT_BEGINNING_STRING, c.AT_END, c.AT_END_STRING):
                return ""
            raise RegexNotExpressible(f"anchor {av} inside the pattern")
        if op is c.SUBPATTERN:
            group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise RegexNotExpressible("inline flags")
            return f"({self.seq(sub)})"
        if op is c.BRANCH:
            return "(" + " | ".join(self.seq(branch) or '""' for branch in av[1]) + ")"
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, high, sub = av
            inner = self.seq(sub)
            inner = inner if _is_atom(inner) else f"({inner})"
            if high is c.MAXREPEAT:
                if low == 0:
                    return f"{inner}*"
                if low == 1:
                    return f"{inner}+"
                return f"{inner}{{{low},}}"
            if (low, high) == (0, 1):
                return f"{inner}?"
            if low == high:
                return f"{inner}{{{low}}}"
            return f"{inner}{{{low},{high}}}"
        if op is c.CATEGORY:
            return _CATEGORY[av]
        raise RegexNotExpressible(f"{str(op).lower()} is not expressible as a grammar")

    def char_class(self, items) -> str:
        import re._constants as c

        negate = False
        parts = []
        for op, av in items:
            if op is c.NEGATE:
                negate = True
            elif op is c.LITERAL:
                parts.append(_class_char(chr(av)))
            elif op is c.RANGE:
                parts.append(f"{_class_char(chr(av[0]))}-{_class_char(chr(av[1]))}")
            elif op is c.CATEGORY and av in _CATEGORY_CLASS:
                parts.append(_CATEGORY_CLASS[av])
            else:
                raise RegexNotExpressible(f"{str(op).lower()} {av} inside a character class")
        return f"[{'^' if negate else ''}{''.join(parts)}]"


def _is_atom(text: str) -> bool:
    if text.startswith("(") and text.endswith(")"):
        depth = 0
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(text) - 1:
                return False
        return True
    return (text.startswith("[") and text.endswith("]") and text.count("[") == 1) or (
        text.startswith('"') and text.endswith('"') and len(text) > 1 and text[1:-1].count('"') == text[1:-1].count('\\"')
    )


def _class_char(ch: str) -> str:
    if ch in "]\\^-[":
        return "\\" + ch
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    if ch == "\r":
        return "\\r"
    if ord(ch) < 0x20:
        return f"\\x{ord(ch):02X}"
    return ch


def _categories() -> tuple[dict, dict]:
    import re._constants as c

    members = {
        c.CATEGORY_DIGIT: "0-9",
        c.CATEGORY_WORD: "a-zA-Z0-9_",
        c.CATEGORY_SPACE: " \\t\\n\\r\\x0B\\x0C",
    }
    negated = {c.CATEGORY_NOT_DIGIT: "0-9", c.CATEGORY_NOT_WORD: "a-zA-Z0-9_", c.CATEGORY_NOT_SPACE: " \\t\\n\\r\\x0B\\x0C"}
    category = {k: f"[{v}]" for k, v in members.items()} | {k: f"[^{v}]" for k, v in negated.items()}
    return category, members


_CATEGORY, _CATEGORY_CLASS = _categories()
