"""Extract the declarations llmkit's TensorRT-LLM adapter relies on from TensorRT-LLM's Python source.

The source is parsed with `ast`, never imported (importing tensorrt_llm needs CUDA and its C++ bindings).
For each class named in TARGETS the snapshot records, as written in the source:

    path, line  where the class is defined (line only for a verified checkout)
    fields      class-level annotated names (dataclass fields, pydantic fields, PrivateAttr): the
                annotation, the default (a JSON value when it is a literal, else its source text), a
                default_factory, whether the field is required, init=False, constraints (ge/le/gt/lt)
    members     Enum members and their values
    methods     signatures (parameter names, kinds and defaults), properties, async
    attributes  names assigned as `self.<name>` in __init__

Refresh it from a checkout of the release the adapter targets:

    git clone --depth 1 --branch v1.3.0rc24 https://github.com/NVIDIA/TensorRT-LLM trtllm
    python plugins/llmkit-tensorrt-llm/upstream/extract.py trtllm --ref v1.3.0rc24 \
        --commit "$(git -C trtllm rev-parse HEAD)" --verified

and run the adapter's tests: a field the mapping sends that was renamed or retyped upstream fails them.
Without --verified the snapshot says it was not made from a checkout of that ref (see README.md).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path
from typing import Any

# class name -> the files that may define it, in the order they are searched (the first one that does wins;
# SamplingParams moved from tensorrt_llm/sampling_params.py to tensorrt_llm/executor/params/sampling.py
# on main after v1.3.0rc24, with a re-export left at the old path).
_SAMPLING = ("tensorrt_llm/sampling_params.py", "tensorrt_llm/executor/params/sampling.py")
_LLM_ARGS = ("tensorrt_llm/llmapi/llm_args.py",)
_RESULT = ("tensorrt_llm/executor/result.py",)
_LLM = ("tensorrt_llm/llmapi/llm.py",)
TARGETS: dict[str, tuple[str, ...]] = {
    "SamplingParams": _SAMPLING,
    "GuidedDecodingParams": _SAMPLING,
    "LogprobMode": _SAMPLING,
    "KvCacheConfig": _LLM_ARGS,
    "BaseLlmArgs": _LLM_ARGS,
    "TorchLlmArgs": _LLM_ARGS,
    "LoRARequest": ("tensorrt_llm/executor/request.py",),
    "LoraConfig": ("tensorrt_llm/lora_helper.py",),
    "CompletionOutput": _RESULT,
    "Logprob": _RESULT,
    "GenerationResultBase": _RESULT,
    "GenerationResult": _RESULT,
    "RequestOutput": _LLM,
    "BaseLLM": _LLM,
    "LLM": _LLM,
}

_CONSTRAINTS = ("ge", "gt", "le", "lt", "min_length", "max_length")


def _value(node: ast.AST) -> dict[str, Any]:
    """A default as JSON: {"default": value} for a literal, {"default_expr": source} otherwise."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return {"default_expr": ast.unparse(node)}
    if isinstance(value, (tuple, set, frozenset)):
        value = list(value)
    try:
        json.dumps(value)
    except TypeError:
        return {"default_expr": ast.unparse(node)}
    return {"default": value}


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id
        if isinstance(func, ast.Attribute):
            return func.attr
    return None


def _field(stmt: ast.AnnAssign) -> dict[str, Any]:
    name = stmt.target.id  # type: ignore[union-attr]
    out: dict[str, Any] = {"annotation": ast.unparse(stmt.annotation), "private": name.startswith("_")}
    value = stmt.value
    call = _call_name(value) if value is not None else None
    if value is None:
        out["required"] = True
    elif call in ("Field", "field", "PrivateAttr", "PydanticField"):
        keywords = {k.arg: k.value for k in value.keywords if k.arg}  # type: ignore[union-attr]
        positional = value.args  # type: ignore[union-attr]
        if call == "PrivateAttr":
            out["private_attr"] = True
        default = keywords.get("default", positional[0] if positional else None)
        if default is not None and not (isinstance(default, ast.Constant) and default.value is Ellipsis):
            out.update(_value(default))
        elif "default_factory" in keywords:
            out["default_factory"] = ast.unparse(keywords["default_factory"])
        elif call != "PrivateAttr":
            out["required"] = True
        if "init" in keywords:
            out["init"] = _value(keywords["init"]).get("default")
        if "alias" in keywords:
            out["alias"] = _value(keywords["alias"]).get("default")
        constraints = {k: _value(keywords[k]).get("default") for k in _CONSTRAINTS if k in keywords}
        if constraints:
            out["constraints"] = constraints
    else:
        out.update(_value(value))
    return out


def _params(args: ast.arguments) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, defaults):
        params.append({"name": arg.arg, "kind": "positional", **(_value(default) if default is not None else {})})
    if args.vararg:
        params.append({"name": args.vararg.arg, "kind": "var_positional"})
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        params.append({"name": arg.arg, "kind": "keyword_only", **(_value(default) if default is not None else {})})
    if args.kwarg:
        params.append({"name": args.kwarg.arg, "kind": "var_keyword"})
    return params


def describe_class(node: ast.ClassDef) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bases": [ast.unparse(b) for b in node.bases],
        "decorators": [ast.unparse(d) for d in node.decorator_list],
        "fields": {}, "members": {}, "methods": {}, "attributes": [],
    }
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            out["fields"][stmt.target.id] = _field(stmt)
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name = stmt.targets[0].id
            if not name.startswith("_") and name.isupper():
                out["members"][name] = _value(stmt.value).get("default", ast.unparse(stmt.value))
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decorators = [ast.unparse(d) for d in stmt.decorator_list]
            out["methods"][stmt.name] = {
                "params": _params(stmt.args),
                "property": "property" in decorators,
                "async": isinstance(stmt, ast.AsyncFunctionDef),
                "staticmethod": "staticmethod" in decorators,
            }
            if stmt.name == "__init__":
                for sub in ast.walk(stmt):
                    targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target] if isinstance(sub, ast.AnnAssign) else []
                    for target in targets:
                        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                            if target.attr not in out["attributes"]:
                                out["attributes"].append(target.attr)
    return out


def find_class(source: Path, candidates: tuple[str, ...], name: str) -> tuple[str, ast.ClassDef] | None:
    for relative in candidates:
        path = source / relative
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return relative, node
    return None


def extract(source: Path, *, ref: str, commit: str | None, file_commits: dict[str, str], verified: bool,
            note: str = "", targets: dict[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    targets = TARGETS if targets is None else targets
    classes: dict[str, Any] = {}
    missing = []
    sources: dict[str, str | None] = {}
    for name, candidates in targets.items():
        found = find_class(source, candidates, name)
        if found is None:
            missing.append(name)
            continue
        relative, node = found
        sources[relative] = file_commits.get(relative, commit)
        location = {"path": relative, "line": node.lineno} if verified else {"path": relative}
        classes[name] = {**location, **describe_class(node)}
    if missing:
        raise SystemExit(f"extract: not found in {source}: {', '.join(missing)}")
    return {
        "repository": "NVIDIA/TensorRT-LLM",
        "ref": ref,
        "commit": commit,
        "verified_checkout_of_ref": verified,
        "note": note,
        "sources": dict(sorted(sources.items())),
        "generated_by": "plugins/llmkit-tensorrt-llm/upstream/extract.py",
        "classes": classes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="root of a TensorRT-LLM source tree (the folder holding tensorrt_llm/)")
    parser.add_argument("--ref", required=True, help="the release tag (or branch) the tree is a checkout of")
    parser.add_argument("--commit", help="the commit of the tree")
    parser.add_argument("--file-commit", action="append", default=[], metavar="PATH=SHA",
                        help="the commit one file was read at, when the tree was assembled from several")
    parser.add_argument("--verified", action="store_true", help="the tree is a checkout of --ref (git tag verified)")
    parser.add_argument("--note", default="", help="provenance, kept in the snapshot")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).with_name("snapshot.json"))
    args = parser.parse_args(argv)
    file_commits = dict(item.split("=", 1) for item in args.file_commit)
    snapshot = extract(args.source, ref=args.ref, commit=args.commit, file_commits=file_commits,
                       verified=args.verified, note=args.note)
    args.output.write_text(json.dumps(snapshot, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: {len(snapshot['classes'])} classes from {len(snapshot['sources'])} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
