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
