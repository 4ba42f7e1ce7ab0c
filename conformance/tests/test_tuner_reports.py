"""The committed tuner reports (conformance/reports/tuners/) are whole, say where they ran, and agree with their
Markdown; docs/tuning.md's tuner table is generated from them. Plus the resume check's negative control for
a backend that declares epoch-end checkpoints but does not refuse a mid-epoch one, and undeclared_refused on a
backend that declares LoRA only."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from llmkit_conformance.tuning import (TABLE_END, TABLE_START, TUNER_CHECKS, capability_table, load_tuner_reports, markdown,
                                       replace_table, tuner_library)

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "conformance" / "reports" / "tuners"
MODEL = "smollm2-135m-instruct"


def test_committed_tuner_reports_are_whole_and_match_their_markdown():
    reports = load_tuner_reports(REPORTS)
    assert {"trl", "axolotl", "torchtune"} <= {r["backend"] for r in reports}
    for report in reports:
        env, name = report["environment"], report["backend"]
        assert env["device"] and env["cpu"] and env["python"] and env["date"], name
        assert env["library"] == tuner_library(name) and env["library_version"] == env["versions"][env["library"]], name
        assert "torch" in env["versions"], name
        assert [c["name"] for c in report["checks"]] == list(TUNER_CHECKS), name
        assert all(c["status"] in ("passed", "unsupported") for c in report["checks"]), (name, report["checks"])
        device = "cpu" if env["device"] == "cpu" else "gpu"
        md = REPORTS / f"tuner-{name}-{Path(report['model']).name}-{device}.md"
        assert md.read_text() == markdown(report), f"{md} differs from its JSON: regenerate it"


def test_docs_tuner_table_is_generated_from_committed_reports():
    doc = (ROOT / "docs" / "tuning.md").read_text()
    assert doc.count(TABLE_START) == 1 and doc.count(TABLE_END) == 1
    assert replace_table(doc, capability_table(load_tuner_reports(REPORTS))) == doc, \
        "docs/tuning.md's tuner table is stale: run `llmkit conformance matrix`"


def test_table_shows_each_status_and_declaration():
    trl = json.loads((REPORTS / f"tuner-trl-{MODEL}-cpu.json").read_text())
    other = copy.deepcopy(trl)
    other["backend"], other["declared"]["checkpoint_at"] = "epochal", "epoch_end"
    for check, status in zip(other["checks"], ["failed", "unsupported", "error", "passed", "passed"]):
        check["status"] = status
    rows = [line for line in capability_table([trl, other]).splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| backend | methods | artifacts | checkpoints | loss_falls |")
    assert rows[2].startswith("| epochal (CPU) |") and rows[2].endswith("| epoch ends | ✗ | — | ! | ✓ | ✓ |")
    assert rows[3].startswith("| trl (CPU) | dpo, grpo, lora, qlora, sft | adapter, gguf, merged | every N steps | ✓ |")
    with pytest.raises(ValueError, match="markers"):
        replace_table("no table here", capability_table([trl]))


def test_undeclared_epoch_end_checkpoints_fail_resume(tmp_path):
    """The bug: a backend declares checkpoints at epoch ends only, but takes checkpoint_steps=3 inside an epoch of
    4 steps without refusing it (its checkpoints then fall elsewhere). The run starts; the check fails at the
    first progress event."""
    pytest.importorskip("trl")
    from llmkit_conformance.tuning import TunerUnderTest, run_tuner_check
    from llmkit_trl.tuner import TRLTuner

    class ClaimsEpochEnds(TRLTuner):
        checkpoint_at = "epoch_end"

    result = run_tuner_check("resume", TunerUnderTest("trl", MODEL, tmp_path, tuner=ClaimsEpochEnds()))
    assert result.status == "failed" and "accepted checkpoint_steps=3" in result.detail, result.detail


def test_every_undeclared_method_is_refused_on_a_lora_only_tuner(tmp_path):
    """Each undeclared method's job is valid (sft without LoRA), so the refusal, not job validation, answers."""
    pytest.importorskip("trl")
    from llmkit_conformance.tuning import TunerUnderTest, run_tuner_check
    from llmkit_trl.tuner import TRLTuner

    class LoraOnly(TRLTuner):
        methods = frozenset({"lora"})

    result = run_tuner_check("undeclared_refused", TunerUnderTest("trl", MODEL, tmp_path, tuner=LoraOnly()))
    assert result.status == "passed" and result.data["refused"] == ["dpo", "grpo", "qlora", "sft"], (result.detail, result.data)
