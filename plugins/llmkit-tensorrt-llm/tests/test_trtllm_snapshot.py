"""The mapping tables against upstream/snapshot.json, TensorRT-LLM's declarations extracted from its source by
upstream/extract.py: every name the adapter sends exists upstream with a type that accepts the value, and the
defaults llmkit relies on overriding are what the snapshot says. Refreshing the snapshot from a newer release
turns a rename or retype upstream into a failure here."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit.types import Choice, Grammar, JsonSchema, Regex
from llmkit_tensorrt_llm import mapping
from llmkit_tensorrt_llm.mapping import TensorRTLLMOptions, llm_kwargs, lora_request_kwargs, to_native

PLUGIN = Path(__file__).parents[1]
SNAPSHOT = json.loads((PLUGIN / "upstream" / "snapshot.json").read_text())
CLASSES = SNAPSHOT["classes"]


def fields(name: str) -> dict[str, Any]:
    return CLASSES[name]["fields"]


def settable(name: str) -> dict[str, Any]:
    """What a caller may pass: public, init=True, not a PrivateAttr (pydantic bases included)."""
    out: dict[str, Any] = {}
    for base in CLASSES[name]["bases"]:
        if base in CLASSES:
            out.update(settable(base))
    out.update({k: v for k, v in fields(name).items()
                if not v["private"] and v.get("init", True) is not False and not v.get("private_attr")})
    return out


_NUMBERS = {"int": (int, None), "float": ((int, float), None), "PositiveInt": (int, 1), "NonNegativeInt": (int, 0),
            "NonNegativeFloat": ((int, float), 0)}
_NESTED = {"GuidedDecodingParams", "KvCacheConfig", "LoraConfig"}


def accepts(annotation: str, value: Any) -> bool:
    """Whether a field annotated `annotation` (as written upstream) accepts `value`. Unknown names fail the
    test instead of passing: extend this when the adapter starts sending a new kind of value."""
    return _accepts(ast.parse(annotation, mode="eval").body, value)


def _accepts(node: ast.AST, value: Any) -> bool:
    if isinstance(node, ast.Constant):
        if node.value is None:
            return value is None
        if isinstance(node.value, str):  # a quoted forward reference
            return accepts(node.value, value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _accepts(node.left, value) or _accepts(node.right, value)
    if isinstance(node, ast.Name):
        name = node.id
        if name in _NUMBERS:
            kind, low = _NUMBERS[name]
            return isinstance(value, kind) and not isinstance(value, bool) and (low is None or value >= low)
        if name == "bool":
            return isinstance(value, bool)
        if name in ("str", "Path"):
            return isinstance(value, str)
        if name == "LogprobMode":
            return value in CLASSES["LogprobMode"]["members"].values()
        if name in _NESTED:  # sent as that class's keyword arguments
            allowed = settable(name)
            return isinstance(value, dict) and all(k in allowed and accepts(allowed[k]["annotation"], v) for k, v in value.items())
        raise AssertionError(f"accepts() does not know the upstream type {name!r}")
    if isinstance(node, ast.Subscript):
        outer = ast.unparse(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer == "Optional":
            return value is None or _accepts(args[0], value)
        if outer == "Union":
            return any(_accepts(a, value) for a in args)
        if outer in ("List", "list"):
            return isinstance(value, list) and all(_accepts(args[0], v) for v in value)
        if outer == "Literal":
            return value in [a.value for a in args]
        if outer in ("Dict", "dict"):
            return isinstance(value, dict) and all(_accepts(args[0], k) and _accepts(args[1], v) for k, v in value.items())
    raise AssertionError(f"accepts() does not know the upstream annotation {ast.unparse(node)!r}")


def test_accepts_is_a_real_check():
    assert accepts("Optional[int]", None) and accepts("Optional[int]", 3) and not accepts("Optional[int]", 2.5)
    assert not accepts("int", True) and not accepts("float", "1") and accepts("float", 1)
    assert accepts("Literal['auto', 'dummy']", "dummy") and not accepts("Literal['auto', 'dummy']", "safetensors")
    assert accepts("bool | Literal['auto']", "auto") and not accepts("bool | Literal['auto']", "yes")
    assert not accepts("PositiveInt", 0) and accepts("NonNegativeInt", 0)
    assert accepts("Optional[GuidedDecodingParams]", {"grammar": "root ::= \"a\""})
    assert not accepts("Optional[GuidedDecodingParams]", {"ebnf": "root ::= \"a\""})
    with pytest.raises(AssertionError, match="does not know"):
        accepts("torch.Tensor", None)


# Requests that between them exercise every row of the table.
REQUESTS = [
    llmkit.SamplingParams(),
    llmkit.greedy(max_tokens=7, ignore_eos=True, logprobs=0),
    llmkit.SamplingParams(temperature=0.6, top_p=0.9, top_k=40, min_p=0.05, seed=11, n=3, logprobs=5, stop=["\n"],
                          repetition_penalty=1.1, presence_penalty=0.4, frequency_penalty=-0.3),
    llmkit.greedy(constraint=Choice(["yes", "no"])),
    llmkit.greedy(constraint=Regex(r"[0-9]{3}-\w+")),
    llmkit.greedy(constraint=JsonSchema({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})),
    llmkit.greedy(constraint=Grammar('root ::= "a" | "b"')),
]


@pytest.mark.parametrize("params", REQUESTS, ids=lambda p: ",".join(p.features_used()) or "defaults")
def test_every_sampling_kwarg_exists_upstream_with_a_compatible_type(params):
    allowed = settable("SamplingParams")
    native = to_native(params, prompt_tokens=12, context_length=2048, seed=99)
    unknown = sorted(set(native) - set(allowed))
    assert not unknown, f"sent but not SamplingParams fields upstream: {unknown}"
    for name, value in native.items():
        assert accepts(allowed[name]["annotation"], value), f"{name}={value!r} vs {allowed[name]['annotation']}"


def test_the_table_names_only_upstream_fields():
    allowed = settable("SamplingParams")
    sent = {row.native for row in mapping.SAMPLING.rows if row.native} | set(mapping.SAMPLING.fixed)
    assert sent <= set(allowed), sorted(sent - set(allowed))


def test_defaults_llmkit_overrides_are_what_upstream_declares():
    sp = fields("SamplingParams")
    assert sp["max_tokens"]["default"] == 32  # hence max_tokens is always sent
    for name in ("temperature", "top_k", "top_p", "min_p"):  # all unset is greedy upstream: llmkit sends them
        assert sp[name]["default"] is None
    assert sp["seed"]["default"] is None  # documented as the runtime default seed 0: the adapter draws one
    assert sp["detokenize"]["default"] is True  # llmkit decodes itself
    assert sp["prompt_ignore_length"]["default"] is None  # presence/frequency would count the prompt
    assert sp["best_of"]["default"] is None and sp["use_beam_search"]["default"] is False
    assert sp["logprobs_mode"]["default_expr"] == "LogprobMode.RAW" and CLASSES["LogprobMode"]["members"]["RAW"] == "raw"
    assert sp["include_stop_str_in_output"]["default"] is False


def test_greedy_is_sent_as_upstreams_explicit_greedy_control():
    """top_k=1 with temperature, top_p and min_p unset: greedy however upstream resolves the rest."""
    native = to_native(llmkit.greedy(top_p=0.5, min_p=0.2), prompt_tokens=3, context_length=100, seed=1)
    assert (native["top_k"], native["temperature"], native["top_p"], native["min_p"]) == (1, None, None, None)
    explicit = CLASSES["SamplingParams"]["methods"]["params_imply_explicit_greedy"]["params"]
    assert [p["name"] for p in explicit] == ["temperature", "top_p", "top_k", "min_p"]


def test_guided_decoding_kwargs_are_guided_decoding_params_fields():
    gd = settable("GuidedDecodingParams")
    assert set(gd) == {"json", "regex", "grammar", "json_object", "structural_tag"}
    for params in REQUESTS[3:]:
        kwargs = mapping.guided_decoding(params.constraint)
        assert set(kwargs) == {"grammar"} and accepts(gd["grammar"]["annotation"], kwargs["grammar"])


OPTION_SETS = [
    TensorRTLLMOptions(),
    TensorRTLLMOptions(max_batch_size=8, max_model_len=4096, dtype="bfloat16", seed=3, prefix_caching=False,
                       tensor_parallel_size=2, pipeline_parallel_size=1, max_num_tokens=2048, enable_chunked_prefill=True,
                       free_gpu_memory_fraction=0.5, enable_lora=True, max_lora_rank=16, max_loras=2, max_cpu_loras=3,
                       load_format="dummy", guided_decoding=False, enable_iter_perf_stats=False, trust_remote_code=True),
]


@pytest.mark.parametrize("options", OPTION_SETS, ids=["defaults", "everything"])
def test_every_llm_kwarg_exists_upstream_with_a_compatible_type(options):
    allowed = settable("TorchLlmArgs")
    kwargs = llm_kwargs(options, "/models/m")
    unknown = sorted(set(kwargs) - set(allowed))
    assert not unknown, f"sent to LLM() but not TorchLlmArgs fields upstream: {unknown}"
    for name, value in kwargs.items():
        assert accepts(allowed[name]["annotation"], value), f"{name}={value!r} vs {allowed[name]['annotation']}"


def test_llm_defaults_llmkit_relies_on():
    args, kv = settable("TorchLlmArgs"), fields("KvCacheConfig")
    assert args["enable_iter_perf_stats"]["default"] is False  # the adapter turns it on for stats()
    assert args["guided_decoding_backend"]["default"] is None  # constraints need 'xgrammar'
    assert accepts(args["backend"]["annotation"], "pytorch") and not accepts(args["backend"]["annotation"], "tensorrt")
    assert args["max_num_tokens"]["default"] == 8192 and args["enable_chunked_prefill"]["default"] is False
    assert args["max_seq_len"]["default"] is None  # inferred from the model when not sent
    assert kv["enable_block_reuse"]["default"] is True  # prefix caching is on unless turned off
    assert kv["free_gpu_memory_fraction"]["default"] == 0.9
    assert kv["free_gpu_memory_fraction"]["constraints"] == {"ge": 0, "le": 1}
    limits = TensorRTLLMOptions.model_fields["free_gpu_memory_fraction"].metadata
    assert {type(m).__name__ for m in limits} >= {"Gt", "Le"}  # llmkit's (0, 1] lies inside upstream's [0, 1]


def test_quantization_comes_from_the_checkpoint_not_a_quant_config_argument():
    """TorchLlmArgs keeps quant_config private (filled from the checkpoint), so LLM() refuses it."""
    assert "quant_config" not in settable("TorchLlmArgs")
    assert fields("TorchLlmArgs")["_quant_config"].get("private_attr") is True
    assert CLASSES["TorchLlmArgs"]["methods"]["quant_config"]["property"] is True


def test_lora_request_and_config():
    lr = settable("LoRARequest")
    kwargs = lora_request_kwargs("/adapters/a", 3, "a-0123")
    assert set(kwargs) <= set(lr) and {n for n, s in lr.items() if s.get("required")} <= set(kwargs)
    assert all(accepts(lr[k]["annotation"], v) for k, v in kwargs.items())
    assert fields("LoraConfig")["max_lora_rank"]["default"] == 64 == TensorRTLLMOptions.model_fields["max_lora_rank"].default


def test_what_the_reader_reads_exists_upstream():
    co, lp = fields("CompletionOutput"), fields("Logprob")
    assert {"index", "token_ids", "logprobs", "finish_reason", "stop_reason"} <= set(co)
    reasons = ast.parse(co["finish_reason"]["annotation"], mode="eval").body.slice  # Optional[Literal[...]]
    assert {e.value for e in reasons.slice.elts} == set(mapping.FINISH_REASONS)  # a new reason fails here
    assert set(lp) == {"logprob", "rank"}
    assert "cached_tokens" in CLASSES["GenerationResultBase"]["attributes"]
    result = CLASSES["GenerationResult"]["methods"]
    assert {"abort", "__aiter__", "__anext__"} <= set(result) and result["finished"]["property"]
    assert "GenerationResult" in CLASSES["RequestOutput"]["bases"]


def test_llm_methods_the_engine_calls():
    llm = CLASSES["BaseLLM"]["methods"]
    names = [p["name"] for p in llm["generate_async"]["params"]]
    assert names[:6] == ["self", "inputs", "sampling_params", "lora_request", "prompt_adapter_request", "streaming"]
    assert [p["name"] for p in llm["get_stats"]["params"]] == ["self", "timeout"]
    assert "shutdown" in llm and llm["tokenizer"]["property"]
    assert CLASSES["LLM"]["bases"] == ["_TorchLLM"] or "_TorchLLM" in CLASSES["LLM"]["bases"]
    assert any(p["kind"] == "var_keyword" for p in CLASSES["LLM"]["methods"]["__init__"]["params"])


def test_snapshot_provenance_is_stated():
    assert SNAPSHOT["repository"] == "NVIDIA/TensorRT-LLM" and SNAPSHOT["ref"] == f"v{mapping.TARGET_RELEASE}"
    assert SNAPSHOT["sources"] and all(len(c) == 40 for c in SNAPSHOT["sources"].values() if c)
    readme = (PLUGIN / "README.md").read_text()
    if not SNAPSHOT["verified_checkout_of_ref"]:
        assert "NOT a checkout" in SNAPSHOT["note"]
        assert "not from a checkout of the tag" in readme
    assert "not verified on hardware" in readme.lower()
