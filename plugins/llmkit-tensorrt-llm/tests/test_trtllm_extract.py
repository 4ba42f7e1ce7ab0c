"""upstream/extract.py on a source tree written here: what it records, and that it refuses a tree that
lacks a class it must describe."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

EXTRACT = Path(__file__).parents[1] / "upstream" / "extract.py"
spec = importlib.util.spec_from_file_location("trtllm_extract", EXTRACT)
extract = importlib.util.module_from_spec(spec)
spec.loader.exec_module(extract)

SOURCE = '''
from dataclasses import dataclass, field
from pydantic import Field, PrivateAttr


class Mode(StrEnum):
    RAW = "raw"
    PROCESSED = "processed"


@dataclass(slots=True, kw_only=True)
class Params:
    max_tokens: int = 32
    stop: Optional[Union[str, List[str]]] = None
    _hidden: Optional[int] = field(default=None, init=False, repr=False)
    ids: List[int] = field(default_factory=list)
    mode: Mode = Mode.RAW
    name: str

    @property
    def greedy(self) -> bool:
        return True

    def setup(self, tokenizer, *, strict: bool = False, **extra):
        pass


class Args(BaseModel):
    model: str = Field(description="required")
    fraction: Optional[float] = Field(default=0.9, ge=0, le=1, description="x")
    cache: Cache = Field(default_factory=Cache)
    positional: int = Field(4)
    alias_field: Optional[object] = Field(default=None, alias="_alias")
    _private: Optional[int] = PrivateAttr(default=None)

    def __init__(self, a, b=2):
        self.x = a
        self.y: int = b

    async def run(self, prompt, streaming: bool = False):
        pass
'''

TARGETS = {"Mode": ("pkg/missing.py", "pkg/mod.py"), "Params": ("pkg/mod.py",), "Args": ("pkg/mod.py",)}


@pytest.fixture()
def tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(textwrap.dedent(SOURCE))
    return tmp_path


def test_fields_defaults_members_and_signatures(tree):
    snap = extract.extract(tree, ref="v9", commit="a" * 40, file_commits={}, verified=True, targets=TARGETS)
    assert snap["ref"] == "v9" and snap["verified_checkout_of_ref"] is True and snap["sources"] == {"pkg/mod.py": "a" * 40}
    mode, params, args = (snap["classes"][n] for n in ("Mode", "Params", "Args"))
    assert mode["members"] == {"RAW": "raw", "PROCESSED": "processed"} and mode["path"] == "pkg/mod.py" and mode["line"] > 0
    p = params["fields"]
    assert p["max_tokens"] == {"annotation": "int", "private": False, "default": 32}
    assert p["stop"]["annotation"] == "Optional[Union[str, List[str]]]" and p["stop"]["default"] is None
    assert p["_hidden"]["private"] and p["_hidden"]["init"] is False
    assert p["ids"]["default_factory"] == "list" and p["mode"]["default_expr"] == "Mode.RAW"
    assert p["name"]["required"] is True
    assert params["decorators"] == ["dataclass(slots=True, kw_only=True)"]
    assert params["methods"]["greedy"]["property"] is True
    setup = params["methods"]["setup"]["params"]
    assert [(q["name"], q["kind"]) for q in setup] == [("self", "positional"), ("tokenizer", "positional"),
                                                     ("strict", "keyword_only"), ("extra", "var_keyword")]
    assert setup[2]["default"] is False
    a = args["fields"]
    assert a["model"]["required"] is True and a["fraction"]["default"] == 0.9
    assert a["fraction"]["constraints"] == {"ge": 0, "le": 1}
    assert a["cache"]["default_factory"] == "Cache" and a["positional"]["default"] == 4
    assert a["alias_field"]["alias"] == "_alias"
    assert a["_private"]["private_attr"] is True and a["_private"]["default"] is None
    assert args["attributes"] == ["x", "y"] and args["methods"]["run"]["async"] is True
    assert args["bases"] == ["BaseModel"]


def test_unverified_snapshots_carry_no_line_numbers_and_per_file_commits(tree):
    snap = extract.extract(tree, ref="v9", commit=None, file_commits={"pkg/mod.py": "b" * 40}, verified=False,
                           note="excerpts", targets=TARGETS)
    assert "line" not in snap["classes"]["Params"] and snap["sources"] == {"pkg/mod.py": "b" * 40}
    assert snap["note"] == "excerpts"


def test_a_missing_class_is_an_error(tree):
    with pytest.raises(SystemExit, match="not found.*Gone"):
        extract.extract(tree, ref="v9", commit=None, file_commits={}, verified=False, targets={**TARGETS, "Gone": ("pkg/mod.py",)})


def test_command_line_writes_the_snapshot(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "TARGETS", TARGETS)
    out = tmp_path / "snap.json"
    assert extract.main([str(tree), "--ref", "v9", "--commit", "c" * 40, "--verified", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["commit"] == "c" * 40 and set(data["classes"]) == set(TARGETS)


def test_the_committed_snapshot_has_every_target():
    snap = json.loads((EXTRACT.parent / "snapshot.json").read_text())
    assert set(snap["classes"]) == set(extract.TARGETS)
    assert snap["generated_by"].endswith("upstream/extract.py")
