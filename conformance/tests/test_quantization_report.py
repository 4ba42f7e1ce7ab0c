"""The quantization report, run for real on the tiny random Llama with the transformers engine (its baseline,
load-time int8, and a row the engine refuses), written as JSON, Markdown and HTML. SmolLM2's report across
llama.cpp and vLLM is committed in conformance/reports/quantization/."""

import json
from pathlib import Path

import pytest

import llmkit
from llmkit_conformance.quantization import Row, run, write


def test_rows_parse_and_bad_ones_are_named():
    assert Row.parse("vllm:load:fp8") == Row("vllm", "load:fp8") and Row.parse("vllm:load:fp8").quantization == "fp8"
    assert Row.parse("llamacpp:q8_0").applied == "offline" and Row.parse("vllm:none").applied == "none"
    with pytest.raises(llmkit.InvalidRequestError, match="BACKEND:METHOD"):
        Row.parse("llamacpp")


@pytest.fixture(scope="module")
def report(tiny_model_dir, tmp_path_factory):
    rows = [Row("transformers", "none"), Row("transformers", "load:int8"), Row("transformers", "load:int4")]
    return run(tiny_model_dir, rows, workdir=tmp_path_factory.mktemp("q"), options={"transformers": {"device": "cpu"}},
               max_tokens=8)


def test_each_row_is_measured_beside_its_baseline(report, tiny_model_dir):
    base, int8, int4 = report["rows"]
    assert base["baseline"] == int8["baseline"] == "transformers:none"
    weights = sum(f.stat().st_size for f in Path(tiny_model_dir).glob("*.safetensors"))
    assert base["disk_bytes"] == int8["disk_bytes"] == weights  # load-time: the same file on disk
    assert base["memory"]["weights_dtype"] == "fp32" and int8["memory"]["weights_dtype"] == "int8"
    assert int8["memory"]["weights_bytes"] < base["memory"]["weights_bytes"]
    assert base["plan_key"] == "fp32" and base["planned_weight_bytes"] == pytest.approx(base["memory"]["weights_bytes"], rel=0.01)
    assert {p["quantity"] for p in base["plan"]} >= {"weights (fp32)", "KV cache per token (fp32)"}
    for row in (base, int8):
        assert row["perplexity"] > 1 and row["tokens_per_s_1"] > 0 and row["tokens_per_s_8"] > 0
        assert row["peak_rss_bytes"] >= row["rss_before_bytes"] > 0 and len(row["greedy"]) == report["prompts"]
    assert 0 <= int8["identical_rate"] <= 1 and int8["perplexity_ratio"] == int8["perplexity"] / base["perplexity"]
    # a row the engine cannot run is reported as refused, with the engine's reason; the others ran
    assert "'int4' on cpu" in int4["refused"] and "runs here: int8" in int4["refused"] and "error" not in int4


def test_the_report_is_written_as_json_markdown_and_html(report, tmp_path):
    json_path, md_path, html_path = write(report, tmp_path)
    assert json.loads(json_path.read_text())["rows"][1]["row"] == "transformers:load:int8"
    text = md_path.read_text()
    assert "| transformers:none (baseline) |" in text and "## Rows the engine refused" in text
    assert all(f"| transformers:{m} |" in text for m in ("load:int8", "load:int4"))
    page = html_path.read_text()
    assert page.count("<svg") == 2 and "transformers:load:int8" in page
