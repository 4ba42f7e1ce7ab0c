"""Snapshot the Unsloth signatures llmkit maps onto, from the source of a released wheel (no GPU, no import).

    pip download --no-deps unsloth==2026.10.9 -d /tmp/w
    python plugins/llmkit-unsloth/tools/snapshot_signatures.py /tmp/w/unsloth-2026.10.9-py3-none-any.whl \
        > plugins/llmkit-unsloth/tests/unsloth_signatures.json

FastLanguageModel.from_pretrained is defined in unsloth/models/loader.py; FastLanguageModel.get_peft_model
wraps FastLlamaModel.get_peft_model (unsloth/models/llama.py), whose parameters are the ones that count.
It also records the training-argument defaults Unsloth's patched TRL configs put in where a field is absent
(the `replacements` dict of unsloth/models/rl.py): llmkit must send each of them.
A rename upstream shows as a failing mapping test once the snapshot is refreshed.
"""

import ast
import json
import re
import sys
import zipfile

WANTED = {("unsloth/models/loader.py", "FastLanguageModel", "from_pretrained"),
          ("unsloth/models/llama.py", "FastLlamaModel", "get_peft_model")}


def parameters(function: ast.FunctionDef) -> dict[str, str | None]:
    args = function.args
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    found = {a.arg: (ast.unparse(d) if d is not None else None) for a, d in zip(positional, defaults)}
    found.update({a.arg: (ast.unparse(d) if d is not None else None) for a, d in zip(args.kwonlyargs, args.kw_defaults)})
    return found


def main(wheel: str) -> None:
    version = re.search(r"unsloth-([^-]+)-", wheel).group(1)
    snapshot = {"unsloth": version}
    with zipfile.ZipFile(wheel) as archive:
        for path, class_name, method in sorted(WANTED):
            tree = ast.parse(archive.read(path))
            cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
            function = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method)
            snapshot[method] = parameters(function)
        tree = ast.parse(archive.read("unsloth/models/rl.py"))
        replacements = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict)
                            and any(isinstance(t, ast.Name) and t.id == "replacements" for t in n.targets))
        snapshot["config_replacements"] = {ast.literal_eval(k): ast.unparse(v) for k, v in zip(replacements.keys, replacements.values)}
    json.dump(snapshot, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
