"""Constraint → grammar text, shared by every adapter whose engine takes GBNF (llama.cpp's EBNF dialect,
also read by xgrammar and vLLM's grammar backends).

Regex: llmkit's one dialect is Python's `re.fullmatch`, exactly
----------------------------------------------------------------
`regex_gbnf(pattern)` gives a grammar whose language is the set of strings `s` with
`re.fullmatch(pattern, s)`, and every engine receives that grammar, so a pattern means the same thing on
every engine. It is built from Python's own parser (`re._parser`), so syntax, escapes and flags are read
as `re` reads them:

- Each single-character construct (a literal under IGNORECASE, `[^x]`, `.`, `[...]` with ranges, negation
  and categories, `\\w \\d \\s \\W \\D \\S`) becomes the exact set of code points Python accepts for it under
  the flags in force there: `re` itself is run over one string holding every code point (surrogates
  excluded), once per construct and flags. So `\\w` is Unicode's word class (str patterns), `(?a)\\w` is
  ASCII's, `(?i)k` also matches KELVIN SIGN, and `[^\\w]` rejects 'ш' and '词'. The set is written as a
  positive class of ranges (`[^\\w]`: 735 of them), never a negated one: `[^...]` in llama.cpp and
  xgrammar also admits the surrogates (both decode the invalid UTF-8 ED A0 80 to U+D800) and llama.cpp
  code points up to U+1FFFFF (F4 90 80 80), which reach the text as U+FFFD, so a negated class would have
  to exclude those too and is never the shorter one. Code points beyond printable ASCII are written
  `\\uNNNN` or `\\UNNNNNNNN`, which both parsers read as code points; never `\\xNN`, which llama.cpp reads
  as two hex digits and xgrammar as all the hex digits that follow (`[\\x5Da]` is `[\\u05DA]` there).
- Flags, global (`(?i)`) and scoped (`(?i:...)`, `(?-i:...)`): i, s, a, u act through the sets above;
  x is applied by the parser; m only changes what `^`/`$` match inside a string, and where anchors are
  accepted (below) it changes nothing.
- Anchors `^` `\\A` are accepted only where nothing can precede them (the start of the pattern, of a
  branch or group that starts it, after other zero-width items), `$` `\\Z` only where nothing can follow
  them: there they are no-ops for fullmatch. Anywhere else (`a^b`, `a$b`), and `\\b` `\\B` anywhere:
  refused.
- Refused, because a context-free grammar cannot express them or they change which strings match:
  backreferences `(a)\\1`, lookahead and lookbehind `(?=x) (?!x) (?<=x) (?<!x)`, conditionals
  `(?(1)a|b)`, possessive quantifiers `a*+` and atomic groups `(?>...)` (`a*+a` matches nothing), and a
  pattern that matches no string at all (`[^\\s\\S]`). Refusal is `RegexNotExpressible`, which adapters
  turn into `UnsupportedFeatureError`.
- Lazy and greedy quantifiers have the same full matches: both accepted. Counts above 2000 (llama.cpp's
  limit per repetition) are rewritten exactly: `x{0,5000}` is `(x{0,2000}){0,2} x{0,1000}`.
"""

from __future__ import annotations

import threading

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\u{ord(ch):04X}")  # not \xNN: xgrammar reads every hex digit after \x ("\x0Bb" is U+0BB)
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def choice_gbnf(choices: list[str]) -> str:
    """A grammar whose language is exactly `choices`."""
    return "root ::= " + " | ".join(gbnf_literal(c) for c in choices) + "\n"


class RegexNotExpressible(ValueError):
    """The regex uses a construct a grammar cannot express exactly (backreference, lookaround, a misplaced
    anchor...); the message names it."""


def regex_gbnf(pattern: str) -> str:
    """A GBNF grammar whose language is exactly the strings `s` with `re.fullmatch(pattern, s)`.

    Raises `RegexNotExpressible` for what a grammar cannot express (see the module docstring) and
    `re.error` for an invalid pattern.
    """
    import re._parser as sre_parse  # the parser `re` itself uses (3.11+)

    parsed = sre_parse.parse(pattern)
    node = _Translator().seq(list(parsed), parsed.state.flags, at_start=True, at_end=True)
    if node == _NEVER:
        raise RegexNotExpressible(f"{pattern!r} matches no string, so no output could satisfy it")
    return _Renderer().grammar(node)


# ---- the intermediate form ----------------------------------------------------------------------------
# ("lit", text) | ("set", ((lo, hi), ...)) | ("seq", (node, ...)) | ("alt", (node, ...)) | ("rep", node, lo, hi)
# hi None is unbounded. ("seq", ()) matches only the empty string, ("alt", ()) matches nothing.

_EMPTY = ("seq", ())
_NEVER = ("alt", ())
MAX_REPETITION = 2000  # llama.cpp's grammar parser refuses a larger count in one repetition


def _seq(nodes) -> tuple:
    out: list[tuple] = []
    for node in nodes:
        if node == _NEVER:
            return _NEVER
        for part in node[1] if node[0] == "seq" else (node,):
            if out and part[0] == "lit" and out[-1][0] == "lit":
                out[-1] = ("lit", out[-1][1] + part[1])
            else:
                out.append(part)
    return out[0] if len(out) == 1 else ("seq", tuple(out))


def _alt(nodes) -> tuple:
    out: list[tuple] = []
    for node in nodes:
        for part in node[1] if node[0] == "alt" else (node,):
            if part not in out:
                out.append(part)
    return out[0] if len(out) == 1 else ("alt", tuple(out))


def _rep(node, lo: int, hi: int | None) -> tuple:
    if hi == 0 or node == _EMPTY:
        return _EMPTY
    if node == _NEVER:
        return _EMPTY if lo == 0 else _NEVER
    if (lo, hi) == (1, 1):
        return node
    limit = MAX_REPETITION
    if lo > limit:  # x{lo,hi} = x{lo} x{0,hi-lo}, and x{k} = (x{limit}){k // limit} x{k % limit}
        quotient, remainder = divmod(lo, limit)
        exactly = _seq([_rep(_rep(node, limit, limit), quotient, quotient), _rep(node, remainder, remainder)])
        return _seq([exactly, _rep(node, 0, None if hi is None else hi - lo)])
    if hi is not None and hi > limit:
        if lo:
            return _seq([_rep(node, lo, lo), _rep(node, 0, hi - lo)])
        quotient, remainder = divmod(hi, limit)  # x{0,k} = (x{0,limit}){0,k // limit} x{0,k % limit}
        return _seq([_rep(_rep(node, 0, limit), 0, quotient), _rep(node, 0, remainder)])
    return ("rep", node, lo, hi)


# ---- regex parse tree → intermediate form -------------------------------------------------------------


def _constants():
    import re._constants as c

    return c


def _combine_flags(flags: int, add_flags: int, del_flags: int) -> int:
    """What `re._compiler` does when it enters a scoped-flags group."""
    import re._parser as sre_parse

    if add_flags & sre_parse.TYPE_FLAGS:
        flags &= ~sre_parse.TYPE_FLAGS
    return (flags | add_flags) & ~del_flags


def _empty_only(op, av) -> bool:
    """True when the item can only match the empty string (anchors, lookarounds, empty groups, x{0})."""
    c = _constants()
    if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
        return True
    if op is c.SUBPATTERN:
        return all(_empty_only(*item) for item in av[3])
    if op is c.ATOMIC_GROUP:
        return all(_empty_only(*item) for item in av)
    if op is c.BRANCH:
        return all(_empty_only(*item) for branch in av[1] for item in branch)
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
        return av[1] == 0 or all(_empty_only(*item) for item in av[2])
    return False


class _Translator:
    def seq(self, items: list, flags: int, at_start: bool, at_end: bool) -> tuple:
        """`at_start`: nothing can precede this sequence in a match; `at_end`: nothing can follow it."""
        empty = [_empty_only(op, av) for op, av in items]
        nodes = [
            self.item(op, av, flags, at_start and all(empty[:i]), at_end and all(empty[i + 1 :]))
            for i, (op, av) in enumerate(items)
        ]
        return _seq(nodes)

    def item(self, op, av, flags: int, at_start: bool, at_end: bool) -> tuple:
        c = _constants()
        if op is c.LITERAL and not flags & c.SRE_FLAG_IGNORECASE:
            return _NEVER if 0xD800 <= av <= 0xDFFF else ("lit", chr(av))  # decoded output has no lone surrogate
        if op in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN, c.CATEGORY):
            return _charset_node(op, av, flags)
        if op is c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            return self.seq(list(sub), _combine_flags(flags, add_flags, del_flags), at_start, at_end)
        if op is c.BRANCH:
            return _alt([self.seq(list(branch), flags, at_start, at_end) for branch in av[1]])
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):  # lazy or greedy: the same full matches
            lo, hi, sub = av
            hi = None if hi == c.MAXREPEAT else hi
            # A second iteration starts after the first: an anchor inside is at the edge only if the body
            # runs at most once or consumes nothing.
            once = (hi is not None and hi <= 1) or all(_empty_only(*item) for item in sub)
            return _rep(self.seq(list(sub), flags, at_start and once, at_end and once), lo, hi)
        if op is c.AT:
            return self.anchor(av, at_start, at_end)
        raise RegexNotExpressible(_refusal(op, av))

    def anchor(self, av, at_start: bool, at_end: bool) -> tuple:
        c = _constants()
        if av in (c.AT_BEGINNING, c.AT_BEGINNING_STRING):
            name = "^" if av is c.AT_BEGINNING else "\\A"
            if at_start:
                return _EMPTY
            raise RegexNotExpressible(f"anchor {name} where something can precede it (a grammar has no position tests; "
                                      "it is expressible only where nothing can precede it)")
        if av in (c.AT_END, c.AT_END_STRING):
            name = "$" if av is c.AT_END else "\\Z"
            if at_end:
                return _EMPTY
            raise RegexNotExpressible(f"anchor {name} where something can follow it (a grammar has no position tests; "
                                      "it is expressible only where nothing can follow it)")
        name = {c.AT_BOUNDARY: "word boundary \\b", c.AT_NON_BOUNDARY: "non-boundary \\B"}.get(av, str(av))
        raise RegexNotExpressible(f"{name}: it depends on the characters around it, which a grammar cannot look at")


def _refusal(op, av) -> str:
    c = _constants()
    if op is c.GROUPREF:
        return f"backreference \\{av}: a grammar cannot require the text a group matched again"
    if op is c.GROUPREF_EXISTS:
        return "conditional (?(group)yes|no): a grammar cannot ask whether a group took part"
    if op in (c.ASSERT, c.ASSERT_NOT):
        kind = "lookahead" if av[0] == 1 else "lookbehind"
        syntax = {(c.ASSERT, 1): "(?=...)", (c.ASSERT_NOT, 1): "(?!...)", (c.ASSERT, -1): "(?<=...)",
                  (c.ASSERT_NOT, -1): "(?<!...)"}[op, 1 if av[0] == 1 else -1]
        return f"{kind} {syntax}: a grammar cannot look ahead or behind"
    if op is c.POSSESSIVE_REPEAT:
        return ("possessive quantifier (*+, ++, ?+, {m,n}+): it forbids backtracking, which changes what matches "
                "(a*+a matches nothing)")
    if op is c.ATOMIC_GROUP:
        return "atomic group (?>...): it forbids backtracking, which changes what matches"
    return f"{str(op).lower()} is not expressible as a grammar"


# ---- single-character constructs: the exact set Python accepts ----------------------------------------

_SURROGATES = (0xD800, 0xDFFF)
_cache: dict[tuple, tuple] = {}
_cache_lock = threading.Lock()
_universe: list[str] = []


def _every_code_point() -> str:
    """One string holding U+0000..U+10FFFF without the surrogates, in order (built once, 4.4 MB)."""
    with _cache_lock:
        if not _universe:
            _universe.append("".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000))))
        return _universe[0]


def _charset(op, av, flags: int) -> tuple:
    """Sorted, disjoint, non-adjacent (lo, hi) ranges of the code points Python's `re` accepts for the
    one-character item (op, av) under `flags`."""
    import re._compiler as sre_compile
    import re._parser as sre_parse

    c = _constants()
    flags &= c.SRE_FLAG_IGNORECASE | c.SRE_FLAG_DOTALL | c.SRE_FLAG_ASCII | c.SRE_FLAG_UNICODE | c.SRE_FLAG_LOCALE
    key = (str(op), repr(av), flags)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    if op is c.CATEGORY:
        op, av = c.IN, [(c.CATEGORY, av)]
    state = sre_parse.State()
    state.flags = flags
    body = sre_parse.SubPattern(state, [(op, av)])
    # `(?:item)+` over every code point in order: each match is one run of accepted code points.
    compiled = sre_compile.compile(sre_parse.SubPattern(state, [(c.MAX_REPEAT, (1, c.MAXREPEAT, body))]), flags)
    ranges: list[tuple[int, int]] = []
    for match in compiled.finditer(_every_code_point()):
        start, end = match.span()
        lo, hi = _code_point(start), _code_point(end - 1)
        if lo < _SURROGATES[0] < hi:  # the run crosses the (absent) surrogates
            ranges += [(lo, _SURROGATES[0] - 1), (_SURROGATES[1] + 1, hi)]
        else:
            ranges.append((lo, hi))
    result = tuple(ranges)
    with _cache_lock:
        if len(_cache) > 4096:
            _cache.clear()
        _cache[key] = result
    return result


def _code_point(index: int) -> int:
    return index if index < _SURROGATES[0] else index + (_SURROGATES[1] - _SURROGATES[0] + 1)


def _charset_node(op, av, flags: int) -> tuple:
    ranges = _charset(op, av, flags)
    if not ranges:
        return _NEVER
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return ("lit", chr(ranges[0][0]))
    return ("set", ranges)


_CLASS_PLAIN = frozenset(chr(i) for i in range(0x20, 0x7F)) - set('[]\\^-"')


def _class_char(cp: int) -> str:
    if chr(cp) in _CLASS_PLAIN:
        return chr(cp)
    if cp < 0x10000:  # \u and \U have fixed lengths in both parsers; \x has not in xgrammar
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


def _class_text(ranges) -> str:
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_class_char(lo))
        elif hi == lo + 1:
            parts.append(_class_char(lo) + _class_char(hi))
        else:
            parts.append(f"{_class_char(lo)}-{_class_char(hi)}")
    return "".join(parts)


def char_class(ranges) -> str:
    """A GBNF character class matching exactly the code points in `ranges` ((lo, hi) pairs, sorted,
    disjoint, without surrogates).

    Always positive: a negated class would also have to exclude the surrogates and U+110000..U+1FFFFF
    (llama.cpp and xgrammar decode invalid UTF-8 such as ED A0 80 and F4 90 80 80 to those, and the text
    then holds U+FFFD), so it never has fewer ranges than the positive one."""
    return f"[{_class_text(ranges)}]"


# ---- intermediate form → GBNF ------------------------------------------------------------------------

_RULE_CLASS_CHARS = 64  # a longer class gets a rule of its own, written once however often it is used


class _Renderer:
    def __init__(self) -> None:
        self.classes: dict[str, str] = {}

    def grammar(self, node: tuple) -> str:
        body, _ = self.text(node)
        if node[0] == "alt" and body.endswith(" )"):
            body = body[1:-1].strip()
        rules = [f"{name} ::= {text}" for text, name in self.classes.items()]
        return "\n".join([f"root ::= {body}", *rules]) + "\n"

    def text(self, node: tuple) -> tuple[str, bool]:
        """The node's GBNF and whether a quantifier may follow it as it is."""
        kind = node[0]
        if kind == "lit":
            return gbnf_literal(node[1]), True
        if kind == "set":
            text = char_class(node[1])
            if len(text) > _RULE_CLASS_CHARS:
                text = self.classes.setdefault(text, f"char{len(self.classes) + 1}")
            return text, True
        if kind == "seq":
            if not node[1]:
                return '""', True
            return " ".join(self.text(part)[0] for part in node[1]), False
        if kind == "alt":
            # An empty branch becomes `?` on the others: llama.cpp cannot parse `( "" | "a" )*`.
            branches = [part for part in node[1] if not _matches_only_empty(part)]
            if not branches:
                return '""', True
            group = "( " + " | ".join(self.text(part)[0] for part in branches) + " )"
            return (group, True) if len(branches) == len(node[1]) else (group + "?", False)
        _, body, lo, hi = node
        text, atom = self.text(body)
        return (text if atom else f"( {text} )") + _quantifier(lo, hi), False


def _matches_only_empty(node: tuple) -> bool:
    return (node[0] == "seq" and not node[1]) or (node[0] == "lit" and node[1] == "")


def _quantifier(lo: int, hi: int | None) -> str:
    if hi is None:
        return {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
    if (lo, hi) == (0, 1):
        return "?"
    return f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"
