"""Fine-tuning data: three record formats, validated up front, split the same way every time.

- **alpaca**: `instruction`, optional `input`, `output` — the format of *Build a Large Language Model (From
  Scratch)* ch. 7; the prompt is that chapter's template (`llmkit.tasks.alpaca_prompt`).
- **chat**: `messages`, a list of `{"role", "content"}` ending with the assistant's reply.
- **preference**: a prompt (`instruction` + optional `input`, or `prompt`), `chosen` and `rejected` — the
  ch. 7 preference variant.

Every record becomes an `Example`; a bad record is refused with its position and field named
(`DataError`), before any model is loaded. `split` cuts train / validation / test by fractions, in file
order (as ch. 7 does) or shuffled by a seed. A tuning run writes its splits into its folder; `read_split`
(or `TuneResult.split`) reads one back as the same `Example`s, e.g. to evaluate on the test split.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.errors import InvalidRequestError

Format = Literal["alpaca", "chat", "preference"]
FORMATS: tuple[Format, ...] = ("alpaca", "chat", "preference")
SplitName = Literal["train", "validation", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "validation", "test")
ROLES = frozenset({"system", "user", "assistant"})
log = logging.getLogger(__name__)


class DataError(InvalidRequestError):
    """A dataset that cannot be used: names the file, the record's index and the field."""

    def __init__(self, message: str, *, source: str = "", index: int | None = None, field: str | None = None):
        where = source + (f", record {index}" if index is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}" if where else message, parameter="data", value=field)
        self.source, self.index, self.field = source, index, field


@dataclass(frozen=True)
class Example:
    """One training example. `prompt` is text (the Alpaca template applied) or chat messages; `completion`
    is the reference response (the SFT target, GRPO's reference); `chosen`/`rejected` are DPO's pair."""

    index: int
    prompt: str | tuple[dict[str, str], ...]
    completion: str | None = None
    chosen: str | None = None
    rejected: str | None = None

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        if self.conversational:
            record["prompt"] = [dict(m) for m in self.prompt]
        return {k: v for k, v in record.items() if v is not None}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> "Example":
        """The inverse of `to_json`."""
        prompt = record["prompt"]
        return cls(**{**record, "prompt": prompt if isinstance(prompt, str) else tuple(prompt)})


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def write(self, folder: Path) -> None:
        """One JSONL file per split, so a run can be reproduced and a subprocess tuner can read them."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in SPLIT_NAMES:
            with open(folder / f"{name}.jsonl", "w") as out:
                for example in getattr(self, name):
                    out.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")


def read_split(folder: Path | str, name: SplitName) -> list[Example]:
    """One split that `Splits.write` wrote into `folder` (a tuning run's `data/`), as its `Example`s."""
    if name not in SPLIT_NAMES:
        raise InvalidRequestError(f"unknown split {name!r}; one of {SPLIT_NAMES}", parameter="split", value=name)
    path = Path(folder) / f"{name}.jsonl"
    if not path.is_file():
        raise DataError("no such split file (was the folder written by a tuning run?)", source=str(path))
    return [Example.from_json(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_records(path: Path) -> list[dict[str, Any]]:
    """A JSON list of objects, or JSON Lines (`.jsonl`), one object per line."""
    source = str(path)
    if not path.is_file():
        raise DataError("file does not exist", source=source)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"line {line_number} is not valid JSON: {exc.msg}", source=source) from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc}", source=source) from None
    if not isinstance(records, list) or not records:
        raise DataError("must hold a non-empty list of records", source=source)
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"must be a JSON object, not {type(record).__name__}", source=source, index=index)
    return records


def detect_format(records: list[dict[str, Any]], source: str = "") -> Format:
    """From the first record's fields: `messages` → chat; `chosen` and `rejected` → preference; `output` →
    alpaca. (The ch. 7 preference file also holds `output`: it is preference data, and alpaca on request.)"""
    fields = set(records[0])
    if "messages" in fields:
        return "chat"
    if {"chosen", "rejected"} <= fields:
        return "preference"
    if "instruction" in fields and "output" in fields:
        return "alpaca"
    raise DataError(f"unknown record format (fields {sorted(fields)}); expected alpaca (instruction, input, output), "
                    "chat (messages) or preference (instruction or prompt, chosen, rejected)", source=source, index=0)


def _text(record: dict, field: str, source: str, index: int, *, required: bool = True) -> str:
    value = record.get(field)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError("missing" if value is None else f"must be a string, not {type(value).__name__}",
                        source=source, index=index, field=field)
    if required and not value.strip():
        raise DataError("is empty", source=source, index=index, field=field)
    return value


def _prompt(record: dict, source: str, index: int) -> str:
    from llmkit.tasks import alpaca_prompt

    if "instruction" in record:
        instruction = _text(record, "instruction", source, index)
        return alpaca_prompt({"instruction": instruction, "input": _text(record, "input", source, index, required=False)})
    if "prompt" in record:
        return _text(record, "prompt", source, index)
    raise DataError("missing (give instruction, or prompt)", source=source, index=index, field="instruction")


def _messages(record: dict, source: str, index: int) -> list[dict[str, str]]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError("must be a non-empty list of {role, content}", source=source, index=index, field="messages")
    out = []
    for position, message in enumerate(messages):
        field = f"messages[{position}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise DataError("must be an object with role and content only", source=source, index=index, field=field)
        if message.get("role") not in ROLES:
            raise DataError(f"role must be one of {sorted(ROLES)}, not {message.get('role')!r}", source=source, index=index, field=field)
        if not isinstance(message.get("content"), str):
            raise DataError("content must be a string", source=source, index=index, field=field)
        out.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "user" for m in out):
        raise DataError("holds no user message", source=source, index=index, field="messages")
    return out


def to_example(record: dict, fmt: Format, index: int, source: str = "") -> Example:
    if fmt == "alpaca":
        return Example(index, _prompt(record, source, index), completion=_text(record, "output", source, index))
    if fmt == "preference":
        chosen, rejected = _text(record, "chosen", source, index), _text(record, "rejected", source, index)
        return Example(index, _prompt(record, source, index), chosen=chosen, rejected=rejected)
    messages = _messages(record, source, index)
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise DataError("must end with a non-empty assistant message (the target)", source=source, index=index, field="messages")
    return Example(index, tuple(messages[:-1]), completion=messages[-1]["content"])


def load_examples(path: Path | str, fmt: Format | Literal["auto"] = "auto") -> tuple[Format, list[Example]]:
    """Read, detect (or check) the format, and validate every record."""
    path = Path(path)
    records = read_records(path)
    source = str(path)
    if fmt == "auto":
        fmt = detect_format(records, source)
    elif fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; one of {FORMATS}", source=source)
    examples = [to_example(record, fmt, index, source) for index, record in enumerate(records)]
    if fmt == "preference":
        ties = [e.index for e in examples if e.chosen == e.rejected]
        if ties:  # kept: such a pair adds nothing to DPO's gradient, and dropping records would be silent
            log.warning("%s: %d preference pairs have chosen == rejected (records %s): they teach nothing", source, len(ties), ties[:10])
    return fmt, examples


def split(examples: list[Example], *, train: float = 0.85, test: float = 0.10, shuffle_seed: int | None = None) -> Splits:
    """ch. 7's split: the first 85 % train, the next 10 % test, the rest validation, in file order unless
    `shuffle_seed` is given. (The conformance suite's held-out records, 935–974 of the ch. 7 set, are the
    start of its test split: tune on the train split and that check stays held out.)"""
    if not 0 < train <= 1 or not 0 <= test < 1 or train + test > 1:
        raise InvalidRequestError(f"split fractions train={train}, test={test} must be in (0, 1] and sum to at most 1", parameter="split")
    order = list(examples)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    n_train, n_test = int(len(order) * train), int(len(order) * test)
    if n_train == 0:
        raise DataError(f"{len(order)} records leave none for training at train={train}")
    return Splits(train=order[:n_train], test=order[n_train:n_train + n_test], validation=order[n_train + n_test:])
