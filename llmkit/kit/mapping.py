"""Declared mapping tables: how an adapter turns llmkit's types into its engine's, one row per field.

A table names every field of the llmkit type it maps (it refuses to be built otherwise), so a new
field cannot be dropped silently by an adapter that forgot it; a row says where the value goes, how it
is converted, or why a value cannot be honoured. `to_native` is a pure function of the llmkit object:
tests run it without the engine, for engines that cannot run on the test machine too.

    SAMPLING = Mapping(SamplingParams, [
        Param("temperature", "temperature", greedy_as_zero),
        Param("top_k", "top_k", lambda k: k or -1, note="-1 disables upstream"),
        Param("stop", None, note="enforced by llmkit's decode state"),
        ...
    ], fixed={"skip_special_tokens": True})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from llmkit.errors import UnsupportedFeatureError


@dataclass(frozen=True)
class Param:
    """One row. `native`: the engine's name for the field (None: llmkit itself handles it, said in
    `note`). `convert`: value → native value. `refuse`: value → the reason the engine cannot honour it
    (None: it can)."""

    name: str
    native: str | None
    convert: Callable[[Any], Any] | None = None
    note: str = ""
    refuse: Callable[[Any], str | None] | None = None


class Mapping:
    def __init__(self, source: type[BaseModel], rows: Iterable[Param], *, fixed: dict[str, Any] | None = None,
                 fields: Iterable[str] | None = None) -> None:
        """`fields`: the fields of `source` the table must cover (default: all of them)."""
        self.source = source
        self.rows = list(rows)
        self.fixed = dict(fixed or {})
        names = [row.name for row in self.rows]
        expected = set(fields if fields is not None else source.model_fields)
        duplicated = {n for n in names if names.count(n) > 1}
        missing, unknown = expected - set(names), set(names) - expected
        if missing or unknown or duplicated:
            raise TypeError(f"mapping of {source.__name__}: missing rows {sorted(missing)}, unknown {sorted(unknown)}, "
                            f"duplicated {sorted(duplicated)}")

    def refusals(self, obj: Any) -> list[tuple[str, str]]:
        """(field, reason) for each value the engine cannot honour."""
        found = []
        for row in self.rows:
            if row.refuse is not None:
                reason = row.refuse(getattr(obj, row.name))
                if reason:
                    found.append((row.name, reason))
        return found

    def to_native(self, obj: Any, backend: str) -> dict[str, Any]:
        """The engine's keyword arguments for `obj`; raises `UnsupportedFeatureError` for a value it
        cannot honour."""
        for name, reason in self.refusals(obj):
            raise UnsupportedFeatureError(backend, name, f"{name}={getattr(obj, name)!r}: {reason}")
        native = dict(self.fixed)
        for row in self.rows:
            if row.native is not None:
                value = getattr(obj, row.name)
                native[row.native] = row.convert(value) if row.convert is not None else value
        return native

    def describe(self) -> list[dict[str, str]]:
        """The table as rows of text, for docs."""
        rows = [{"llmkit": row.name, "native": row.native or "(llmkit)", "note": row.note} for row in self.rows]
        rows += [{"llmkit": "(fixed)", "native": f"{key}={value!r}", "note": ""} for key, value in self.fixed.items()]
        return rows


def refuse_unless(neutral: Any, reason: str) -> Callable[[Any], str | None]:
    """A `refuse` for a field the engine lacks: only its neutral value passes."""
    return lambda value: None if value == neutral else reason
