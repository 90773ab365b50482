"""The LM analysis as a value (modeldebug.llm.analysis), without dspy: an analysis the previous
version stored applies to a rules' report, an enriched report splits in two and comes back whole,
and the store keeps the analysis as opaque JSON (it imports no LLM code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from modeldebug.llm.analysis import (
    LLMAnalysis,
    analysis_of,
    apply_analysis,
    apply_latest_analysis,
    load_report_with_analysis,
    rules_only,
    save_report_with_analysis,
)
from modeldebug.store import RunStore
from modeldebug.types import Finding, Report, RunInfo

RULES = [Finding(kind="unchanged_weights", severity="high", confidence=0.9, location="0", message="frozen"),
         Finding(kind="dead_relu", severity="medium", confidence=0.8, location="1", step=4, message="dead")]

# A row of llm_analyses as the previous version wrote it (analysis_of of an enriched report, a dict).
PREVIOUS_ROW = {
    "status": "ok", "model": "openai/m", "issue": None, "summary": "Layer 0 is frozen.",
    "ranking": ["F2", "F1"], "explanations": {"F1": "requires_grad is False."},
    "recommendations": [{"type": "fix", "description": "Unfreeze it.", "implementation": "m[0].requires_grad_(True)",
                         "finding_id": "F1", "source": "llm"}],
    "notes": [{"type": "performance", "severity": "low", "description": "Small batches.", "location": None,
               "finding_id": None, "kind": None, "source": "llm"}],
    "findings": [{"kind": "saturated_activation", "severity": "low", "confidence": 0.3, "location": "3", "step": None,
                  "message": "Tanh may saturate.", "evidence": {"llm_issue_type": "activation"}, "causes": [],
                  "recommendations": [], "source": "llm"}],
    "findings_seen": {"F1": {"kind": "unchanged_weights", "location": "0", "step": None},
                      "F2": {"kind": "dead_relu", "location": "1", "step": 4}},
    "added_findings": 1, "seconds": 2.0,
}


def rules_report() -> Report:
    return Report(run=RunInfo(id="r", status="completed"), findings=list(RULES), metrics={"steps": 10})


def test_a_previously_stored_analysis_applies():
    out = apply_analysis(rules_report(), PREVIOUS_ROW)
    assert [f.kind for f in out.findings] == ["dead_relu", "unchanged_weights", "saturated_activation"]
    assert out.findings[-1].source == "llm"
    llm = out.metrics.llm
    assert llm.summary == "Layer 0 is frozen." and llm.ranking == ["F2", "F1"] and llm.added_findings == 1
    assert llm.explanation_for(out.findings[1]) == "requires_grad is False."
    assert "findings" not in out.to_dict()["metrics"]["llm"]  # the LM's findings are in report.findings


def test_split_and_apply_give_back_the_enriched_report():
    enriched = apply_analysis(rules_report(), PREVIOUS_ROW)
    assert rules_only(enriched) == rules_report()
    assert rules_only(enriched).to_dict()["metrics"] == {"steps": 10}
    analysis = analysis_of(enriched)
    assert isinstance(analysis, LLMAnalysis) and [f.kind for f in analysis.findings] == ["saturated_activation"]
    again = apply_analysis(rules_report(), json.loads(json.dumps(analysis.to_dict())))
    assert again == enriched


def test_the_store_keeps_the_rules_report_and_the_analysis_apart(tmp_path):
    enriched = apply_analysis(rules_report(), PREVIOUS_ROW)
    with RunStore(tmp_path / "runs.db") as store:
        store.create_run(RunInfo(id="r"))
        save_report_with_analysis(store, "r", enriched)
        assert store.load_report("r") == rules_report()
        (row,) = store.llm_analyses("r")
        assert row["analysis"]["summary"] == "Layer 0 is frozen."
        shown = load_report_with_analysis(store, "r")
        assert shown.metrics.llm.stored.id == row["id"] and [f.kind for f in shown.findings] == [f.kind for f in enriched.findings]
        save_report_with_analysis(store, "r", shown)  # read back from the store: nothing new to keep
        assert len(store.llm_analyses("r")) == 1
        assert apply_latest_analysis(store, "r", rules_report()).metrics.llm.summary == "Layer 0 is frozen."


def test_store_and_reports_import_no_llm_code():
    code = ("import sys, modeldebug.store, modeldebug.types, modeldebug.report.terminal;"
            "print([m for m in sys.modules if m.startswith('modeldebug.llm')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_litellm_uses_its_bundled_price_list_and_the_environment_is_left_alone():
    """LiteLLM fetches a model price list from the internet on import unless told not to: the LM is
    built with the bundled one, and the setting is not left behind in the caller's environment."""
    pytest.importorskip("dspy")
    code = ("import os\n"
            "from modeldebug.llm.settings import LMSettings, build_lm\n"
            "build_lm(LMSettings(model='openai/x', api_base='http://127.0.0.1:9'))\n"
            "from litellm.litellm_core_utils.get_model_cost_map import _cost_map_source_info as info\n"
            "print(info.source, 'LITELLM_LOCAL_MODEL_COST_MAP' in os.environ)\n")
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=300)
    assert out.stdout.split() == ["local", "False"]
