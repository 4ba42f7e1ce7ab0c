"""Guided decoding through xgrammar: each constraint is compiled to a token-level grammar and applied as
a bitmask on the logits at every step (no retry loop)."""

from __future__ import annotations

import threading
from typing import Any

from llmkit.errors import InvalidRequestError, LLMKitError, UnsupportedFeatureError
from llmkit.kit.grammars import RegexNotExpressible, choice_gbnf, regex_gbnf
from llmkit.kit.jsonschema import prepare_schema, xgrammar_json_ebnf
from llmkit.types import Choice, Grammar, JsonSchema, Regex


class GrammarCompiler:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=True)
        self.vocab_size = vocab_size
        self._lock = threading.Lock()  # callers compile from their own threads

    def compile(self, constraint: Choice | Regex | JsonSchema | Grammar) -> Any:
        with self._lock:
            return self._compile(constraint)

    def _compile(self, constraint: Choice | Regex | JsonSchema | Grammar) -> Any:
        try:
            if isinstance(constraint, Choice):
                return self._compiler.compile_grammar(choice_gbnf(constraint.choices))
            if isinstance(constraint, Regex):
                # llmkit's own translation (Python's re.fullmatch, exactly), as every engine gets it; not
                # xgrammar's regex converter (0.2.8), which reads \w, \d, \s as ASCII, refuses inline flags and
                # turns a^b into "a" "b".
                try:
                    grammar = regex_gbnf(constraint.pattern)
                except RegexNotExpressible as exc:
                    raise UnsupportedFeatureError("transformers", "constraint:regex", str(exc)) from exc
                return self._compiler.compile_grammar(grammar)
            if isinstance(constraint, JsonSchema):
                # Compact JSON (with free whitespace, small models can emit blanks until max_tokens), and no raw
                # control characters in strings (xgrammar 0.2.8 lets them into strings with length bounds).
                return self._compiler.compile_grammar(xgrammar_json_ebnf(prepare_schema(constraint.schema_)))
            return self._compiler.compile_grammar(constraint.grammar)
        except LLMKitError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses for bad input
            raise InvalidRequestError(
                f"transformers (xgrammar) cannot compile the {constraint.kind} constraint: {exc}",
                parameter=f"constraint.{constraint.kind}",
                value=str(exc).splitlines()[0] if str(exc) else None,
            ) from exc

    def matcher(self, compiled: Any) -> Any:
        return self._xgr.GrammarMatcher(compiled)

    def allocate_bitmask(self, rows: int) -> Any:
        return self._xgr.allocate_token_bitmask(rows, self.vocab_size)

    def apply(self, logits: Any, bitmask: Any) -> None:
        self._xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), vocab_size=self.vocab_size)
