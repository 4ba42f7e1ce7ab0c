"""The SGLang mapping tables, tested without SGLang (it has no CPU build): every llmkit field is mapped or
refused with a reason, every value is sent explicitly, and the names are SGLang 0.5.17's (`sglang_api`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import llmkit
from llmkit import Choice, Grammar, JsonSchema, Regex, SamplingParams, greedy
from llmkit.engine import EngineOptions
from llmkit.errors import UnsupportedFeatureError
from llmkit.kit.constraints import choice_regex
from llmkit.kit.grammars import regex_gbnf
from llmkit_sglang import mapping
from llmkit_sglang.mapping import (
    OPTIONS,
    SAMPLING,
    generate_kwargs,
    logprob_args,
    request_id,
    sample_seed,
    server_args,
    to_native,
)

import sglang_api


def test_every_sampling_field_has_a_row():
    assert {row.name for row in SAMPLING.rows} == set(SamplingParams.model_fields)
    for row in SAMPLING.rows:
        assert row.native is not None or row.note, f"{row.name} is handled by llmkit but says nowhere how"


def test_defaults_are_sent_explicitly_and_are_llmkits():
    native = to_native(SamplingParams())
    assert native == {
        "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "max_new_tokens": 256, "stop": [],
        "sampling_seed": None, "ignore_eos": False, "repetition_penalty": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "n": 1, "min_new_tokens": 0, "skip_special_tokens": True,
        "spaces_between_special_tokens": True, "no_stop_trim": False,
    }
    assert native["max_new_tokens"] != sglang_api.SAMPLING_PARAMS["max_new_tokens"]  # SGLang's 128 never applies


def test_every_native_name_is_an_sglang_sampling_field():
    params = SamplingParams(temperature=0.5, top_p=0.9, top_k=7, min_p=0.05, seed=3, max_tokens=11, stop=["x"],
                            repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.3, logprobs=2,
                            prompt_logprobs=1, constraint=Regex(pattern="[a-z]+"))
    native = to_native(params)
    assert set(native) <= set(sglang_api.SAMPLING_PARAMS), set(native) - set(sglang_api.SAMPLING_PARAMS)
    assert native == {
        "temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.05, "max_new_tokens": 11, "stop": ["x"],
        "sampling_seed": 3, "ignore_eos": False, "repetition_penalty": 1.1, "presence_penalty": 0.2,
        "frequency_penalty": 0.3, "n": 1, "min_new_tokens": 0, "skip_special_tokens": True,
        "spaces_between_special_tokens": True, "no_stop_trim": False, "ebnf": regex_gbnf("[a-z]+"),
    }
    kwargs = generate_kwargs(params, [1, 2, 3], room=100, rid="r/0/")
    assert set(kwargs) == set(sglang_api.ASYNC_GENERATE_ARGS)


@pytest.mark.parametrize("value, sent", [(0.0, 0.0), (5e-6, 0.0), (1e-5, 1e-5), (0.7, 0.7), (2.0, 2.0)])
def test_temperature(value, sent):
    # SGLang makes [0, 1e-6) greedy; llmkit's greedy limit is 1e-5: values between go as 0, so both agree.
    assert to_native(SamplingParams(temperature=value))["temperature"] == sent
    assert (sent < sglang_api.SAMPLING_EPS) == SamplingParams(temperature=value).greedy


def test_top_k_off_is_minus_one():
    assert to_native(SamplingParams(top_k=0))["top_k"] == -1  # SGLang's verify rejects 0
    assert to_native(SamplingParams(top_k=40))["top_k"] == 40


def test_max_tokens_scoring_only_and_the_context_room():
    scoring = SamplingParams(max_tokens=0, prompt_logprobs=0)
    assert to_native(scoring)["max_new_tokens"] == 1
    prompt = list(range(90))
    assert generate_kwargs(greedy(max_tokens=50), prompt, room=100, rid="r/0/")["sampling_params"]["max_new_tokens"] == 10
    assert generate_kwargs(greedy(max_tokens=5), prompt, room=100, rid="r/0/")["sampling_params"]["max_new_tokens"] == 5
    assert generate_kwargs(greedy(max_tokens=5), list(range(99)), room=100, rid="r/0/")["sampling_params"]["max_new_tokens"] == 1


def test_logprob_arguments():
    assert logprob_args(SamplingParams()) == {"return_logprob": False, "logprob_start_len": -1, "top_logprobs_num": 0}
    assert logprob_args(SamplingParams(logprobs=3)) == {"return_logprob": True, "logprob_start_len": -1, "top_logprobs_num": 3}
    assert logprob_args(SamplingParams(prompt_logprobs=2)) == {"return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2}
    assert logprob_args(SamplingParams(logprobs=0, prompt_logprobs=0))["top_logprobs_num"] == 0
    assert logprob_args(SamplingParams(logprobs=1, prompt_logprobs=4))["top_logprobs_num"] == 4  # one number upstream
    # n > 1: sample 0 scores the prompt, the others do not score it again
    params = SamplingParams(temperature=1.0, n=3, logprobs=1, prompt_logprobs=4)
    sent = [generate_kwargs(params, [1, 2], room=10, index=i, rid=f"r/{i}/") for i in range(3)]
    assert [(k["logprob_start_len"], k["top_logprobs_num"]) for k in sent] == [(0, 4), (-1, 1), (-1, 1)]
    assert generate_kwargs(SamplingParams(temperature=1.0, n=2, prompt_logprobs=0), [1], room=10, index=1, rid="r/1/")["return_logprob"] is False


def test_per_sample_seeds():
    assert sample_seed(None, 3) is None
    assert sample_seed(7, 0) == 7
    seeds = [sample_seed(7, i) for i in range(64)]
    assert len(set(seeds)) == 64 and all(0 <= s < 2**63 for s in seeds)
    assert seeds == [sample_seed(7, i) for i in range(64)]  # reproducible
    assert sample_seed(8, 1) != sample_seed(7, 1)
    kwargs = [generate_kwargs(SamplingParams(seed=7, n=3), [1], room=10, index=i, rid=f"r/{i}/", seed=7) for i in range(3)]
    assert [k["sampling_params"]["sampling_seed"] for k in kwargs] == [7, sample_seed(7, 1), sample_seed(7, 2)]
    assert {k["sampling_params"]["n"] for k in kwargs} == {1}  # SGLang's own n never used


def test_request_ids_are_prefix_free():
    # Scheduler.abort_request aborts every request whose rid starts with the aborted one.
    ids = [request_id(f"llmkit-{g}", i) for g in (1, 10, 11, 100, 101) for i in (0, 1, 10, 11)]
    assert len(set(ids)) == len(ids)
    clashes = [(a, b) for a in ids for b in ids if a != b and b.startswith(a)]
    assert not clashes


# ---- constraints ---------------------------------------------------------------------------------

CHOICES = [" Positive", " Negative", "晴れ ☀️ です", "a-b#c&d~e", "x.y*z", 'q"uote', "back\\slash", "tab\there"]


def test_choice_is_the_escaped_alternation_as_an_exact_grammar():
    native = to_native(greedy(constraint=Choice(choices=CHOICES)))
    assert native["ebnf"] == regex_gbnf(choice_regex(CHOICES))
    assert not {"json_schema", "regex", "structural_tag"} & set(native)


def test_regex_and_grammar_go_as_ebnf():
    assert to_native(greedy(constraint=Regex(pattern=r"[0-9]{3}-[a-z]{2,5}")))["ebnf"] == regex_gbnf(r"[0-9]{3}-[a-z]{2,5}")
    gbnf = 'root ::= "(" [a-z]{1,6} ("," [a-z]{1,6})* ")"'
    native = to_native(greedy(constraint=Grammar(grammar=gbnf)))
    assert native["ebnf"] == gbnf and "json_schema" not in native


def test_json_schema_is_a_json_string_of_the_prepared_schema():
    schema = {"$defs": {"Node": {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}},
                                 "required": ["next"]}}, "$ref": "#/$defs/Node"}
    native = to_native(greedy(constraint=JsonSchema(schema=schema)))
    assert isinstance(native["json_schema"], str) and "ebnf" not in native
    sent = json.loads(native["json_schema"])
    assert "$ref" not in sent and sent["type"] == "object" and "Node" in sent["$defs"]  # root $ref resolved


def test_inexpressible_regex_is_refused_by_name():
    with pytest.raises(llmkit.UnsupportedFeatureError, match="constraint:regex") as info:
        to_native(greedy(constraint=Regex(pattern=r"(a)\1")))
    assert info.value.backend == "sglang"


def _xgrammar():
    xgr = pytest.importorskip("xgrammar")
    if not hasattr(getattr(xgr, "testing", None), "_is_grammar_accept_string"):
        pytest.skip("this xgrammar has no testing._is_grammar_accept_string")
    return xgr


def test_xgrammar_reads_the_choice_grammar_exactly():
    """SGLang's default grammar backend compiles `ebnf` with xgrammar's GrammarCompiler.compile_grammar
    (srt/constrained/xgrammar_backend.py); xgrammar 0.2.1 is what the SGLang 0.5.17 kit pins."""
    xgr = _xgrammar()
    grammar = xgr.Grammar.from_ebnf(to_native(greedy(constraint=Choice(choices=CHOICES)))["ebnf"])
    for choice in CHOICES:
        assert xgr.testing._is_grammar_accept_string(grammar, choice), choice
    for near in [" Positiv", " Positive ", "Positive", "晴れ ☀ です", "a-b#c&d~", "xzy*z", "tab here", ""]:
        assert not xgr.testing._is_grammar_accept_string(grammar, near), near


@pytest.mark.parametrize("pattern, samples", [
    (r"[0-9]{3}-[a-z]{2,5}", ["123-ab", "123-abcde", "123-abcdef", "12-ab", "123-a", "123ab", "999-zz"]),
    (r"(yes|no)( maybe)?", ["yes", "no maybe", "maybe", "yes maybe maybe", "yesno"]),
    (r"\d+(\.\d+)?", ["12", "1.5", "1.", ".5", "١٢"]),
    (r"[^,]{1,4},", ["abcd,", "abcde,", ",", "a,,", "é,"]),
])
def test_xgrammar_reads_the_regex_translation_as_python_does(pattern, samples):
    xgr = _xgrammar()
    grammar = xgr.Grammar.from_ebnf(to_native(greedy(constraint=Regex(pattern=pattern)))["ebnf"])
    for text in samples:
        assert xgr.testing._is_grammar_accept_string(grammar, text) == (re.fullmatch(pattern, text) is not None), text


def test_xgrammar_reads_the_json_schema_string():
    """SGLang's xgrammar backend compiles `json_schema` with compile_json_schema(any_whitespace=True by default)."""
    xgr = _xgrammar()
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "colour": {"enum": ["red", "green", "blue"]}, "member": {"type": "boolean"}},
              "required": ["name", "colour", "member"], "additionalProperties": False}
    grammar = xgr.Grammar.from_json_schema(to_native(greedy(constraint=JsonSchema(schema=schema)))["json_schema"], any_whitespace=True)
    assert xgr.testing._is_grammar_accept_string(grammar, '{"name": "Ada", "colour": "red", "member": true}')
    assert xgr.testing._is_grammar_accept_string(grammar, '{"name":"Ada","colour":"blue","member":false}')
    assert not xgr.testing._is_grammar_accept_string(grammar, '{"name": "Ada", "colour": "pink", "member": true}')
    assert not xgr.testing._is_grammar_accept_string(grammar, '{"name": "Ada", "member": true}')


# ---- engine options ----------------------------------------------------------------------------

def test_portable_options_map_to_server_args():
    assert {row.name for row in OPTIONS.rows} == set(EngineOptions.PORTABLE)
    native = server_args(EngineOptions(max_batch_size=8, max_model_len=2048, dtype="bfloat16", seed=5,
                                       prefix_caching=False, memory_fraction=0.4))
    assert native == {"max_running_requests": 8, "context_length": 2048, "dtype": "bfloat16", "random_seed": 5,
                      "disable_radix_cache": True, "mem_fraction_static": 0.4}
    assert set(native) <= set(sglang_api.SERVER_ARGS)
    assert server_args(EngineOptions(prefix_caching=True)) == {"disable_radix_cache": False}
    assert server_args(EngineOptions()) == {}  # None leaves SGLang's defaults


def test_adapter_options_are_server_args_fields():
    from llmkit_sglang.engine import SGLangOptions

    assert set(SGLangOptions.specific()) <= set(sglang_api.SERVER_ARGS)
    assert SGLangOptions().incremental_streaming_output is True  # llmkit's choice; the reader reads both


def test_declared_capabilities_and_refusals():
    from llmkit_sglang.engine import SGLangEngine

    caps = SGLangEngine.capabilities_
    assert not caps.supports("seed") and "enable_deterministic_inference" in caps.limits["seed"]
    assert caps.ranges == {"repetition_penalty": (0.0, 2.0)}
    assert caps.constraints == {"choice", "regex", "json_schema", "grammar"}
    for feature in ("top_k", "min_p", "stop", "n", "logprobs", "prompt_logprobs", "ignore_eos", "repetition_penalty",
                    "presence_penalty", "frequency_penalty"):
        assert caps.supports(feature), feature
    assert caps.devices == ("cuda",)


# ---- the plugin ----------------------------------------------------------------------------------

def test_registers_without_importing_sglang():
    import llmkit_sglang

    specs = []
    llmkit_sglang.register_engines(specs.append)
    (spec,) = specs
    assert (spec.name, spec.target, spec.requires) == ("sglang", "llmkit_sglang.engine:SGLangEngine", ("sglang",))
    # In a fresh interpreter (this one may have imported SGLang for the engine tests): the plugin, the
    # engine module and the mapping import no SGLang.
    code = "import sys, llmkit_sglang, llmkit_sglang.engine, llmkit_sglang.mapping; print(sorted(m for m in sys.modules if m.split('.')[0] == 'sglang'))"
    src = os.path.dirname(os.path.dirname(llmkit_sglang.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]", out.stdout


def test_load_without_sglang_is_backend_unavailable():
    try:
        import sglang  # noqa: F401
        pytest.skip("sglang imports here")
    except ImportError:
        pass
    from sglang_options import registered_plugin

    with registered_plugin():
        with pytest.raises(llmkit.BackendUnavailableError, match="sglang"):
            llmkit.load("sglang", "/nonexistent-model", max_batch_size=4)
        with pytest.raises(llmkit.InvalidRequestError) as info:  # options are checked before SGLang is needed
            llmkit.load("sglang", "/nonexistent-model", tp_size=0)
        assert info.value.parameter == "tp_size"


def test_mapping_is_documented_row_by_row():
    rows = SAMPLING.describe()
    assert {r["llmkit"] for r in rows} >= set(SamplingParams.model_fields)
    assert any(r["native"] == "max_new_tokens" for r in rows)
    assert mapping.SGLANG_VERSION == sglang_api.VERSION


# ---- GPU layout: tp × pp × dp checked against the visible GPUs before SGLang starts ----------------------------

@pytest.mark.parametrize("args, ids", [
    ({}, [0]),
    ({"tp_size": 2}, [0, 1]),
    ({"tp_size": 2, "pp_size": 2}, [0, 1, 2, 3]),
    ({"tp_size": 2, "dp_size": 2}, [0, 1, 2, 3]),
    ({"tp_size": 2, "dp_size": 2, "enable_dp_attention": True}, [0, 1]),  # the replicas live inside the TP group
    ({"tp_size": 2, "base_gpu_id": 1}, [1, 2]),
    ({"tp_size": 2, "gpu_id_step": 2}, [0, 2]),
])
def test_gpu_ids_follow_sglangs_placement(args, ids):
    assert mapping.gpu_ids(args) == ids


def test_a_layout_beyond_the_visible_gpus_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(UnsupportedFeatureError) as refused:
        mapping.check_gpu_layout({"tp_size": 2, "pp_size": 1, "dp_size": 1}, visible_gpus=1)
    assert refused.value.backend == "sglang" and refused.value.feature == "2 GPUs on one machine"
    assert "GPUs [0, 1], and 1 is visible (CUDA_VISIBLE_DEVICES=0)" in str(refused.value)
    with pytest.raises(UnsupportedFeatureError, match=r"base_gpu_id=1\) puts schedulers on GPUs \[1\]"):
        mapping.check_gpu_layout({"base_gpu_id": 1}, visible_gpus=1)  # one GPU, but not the one that exists


def test_layouts_that_fit_or_span_machines_pass():
    mapping.check_gpu_layout({"tp_size": 2}, visible_gpus=2)
    mapping.check_gpu_layout({"tp_size": 2, "dp_size": 4, "enable_dp_attention": True}, visible_gpus=2)
    mapping.check_gpu_layout({"tp_size": 8, "nnodes": 2}, visible_gpus=4)  # placed per node by SGLang
