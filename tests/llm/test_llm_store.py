"""What an LM said about a run is kept beside it: `report --lm` and `run --lm` store it, a later
`report` (without --lm) shows it and its JSON carries it, marked as the LM's; the rules' report in
the store stays the rules' alone, and no rule finding is ever dropped."""

from __future__ import annotations

import json
import sys

import pytest

dspy = pytest.importorskip("dspy")
from dspy.utils import DummyLM  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import modeldebug as md  # noqa: E402
from modeldebug.cli import app  # noqa: E402
from modeldebug.llm.analysis import (  # noqa: E402
    analysis_of,
    apply_analysis,
    load_report_with_analysis,
    rules_only,
)
from modeldebug.llm.analyst import enrich_report  # noqa: E402
from modeldebug.store import RunStore  # noqa: E402
from modeldebug.types import Report  # noqa: E402

SUMMARY = "Layer 0 never learns: it is frozen. Unfreeze it <now>."  # markup must show as text
EXPLANATION = "Layer 0 gets no gradient because requires_grad is False."
ADDED = "Hidden layer 1 may have dead units."


def answer(n_findings: int) -> dict:
    return {
        "summary": SUMMARY,
        "ranking": [f"F{i}" for i in range(n_findings, 0, -1)],
        "issues": [
            {"type": "gradient", "severity": "high", "description": EXPLANATION, "location": "0", "finding_id": "F1"},
            {"type": "activation", "severity": "low", "description": ADDED, "location": "1", "kind": "dead_relu"},
            {"type": "performance", "severity": "low", "description": "Batches of 16 are small.", "location": None},
        ],
        "recommendations": [{"type": "fix", "description": "Call model[0].requires_grad_(True).",
                             "implementation": "model[0].requires_grad_(True)"}],
    }


def dumps(findings) -> list[dict]:
    return [f.model_dump(mode="json") for f in findings]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(autouse=True)
def no_lm_env(monkeypatch):
    for name in ("MODELDEBUG_LM", "MODELDEBUG_LM_API_BASE"):
        monkeypatch.delenv(name, raising=False)


def test_report_lm_is_stored_and_a_later_report_shows_it(stored_run, fake_openai, chat, tmp_path):
    path, run_id, report = stored_run
    assert report.findings
    fake_openai.replies.append(chat(**answer(len(report.findings))))
    res = invoke("report", run_id, "--store", path, "--lm", "openai/test-model", "--lm-api-base", fake_openai.api_base)
    assert res.exit_code == 0, res.output
    assert len(fake_openai.requests) == 1

    with RunStore(path) as s:
        rows = s.llm_analyses(run_id)
        rules = s.load_report(run_id)
    assert [(r["status"], r["model"]) for r in rows] == [("ok", f"openai/test-model at {fake_openai.api_base}")]
    assert rows[0]["analysis"]["summary"] == SUMMARY
    # the stored report is still the rules' own: same findings, same order, nothing of the LM's
    assert dumps(rules.findings) == dumps(report.findings) and rules.metrics.llm is None

    out, html = tmp_path / "later.json", tmp_path / "later.html"
    later = invoke("report", run_id, "--store", path, "--json", out, "--html", html)  # no --lm: no LM call
    assert later.exit_code == 0, later.output
    assert len(fake_openai.requests) == 1
    text = " ".join(later.stdout.split())
    assert SUMMARY in text and EXPLANATION in text and "added by the language model" in text
    assert "explanation, not measurement" in text
    page = html.read_text()
    assert 'id="llm"' in page and "Unfreeze it &lt;now&gt;." in page and EXPLANATION in page

    data = json.loads(out.read_text())
    Report.model_validate(data)
    llm = data["metrics"]["llm"]
    assert llm["status"] == "ok" and llm["summary"] == SUMMARY and llm["stored"]["id"] == rows[0]["id"]
    assert llm["explanations"] == {"F1": EXPLANATION}
    assert llm["recommendations"][0]["source"] == "llm"
    assert llm["notes"][0]["source"] == "llm"
    rule_findings = [f for f in data["findings"] if f["source"] == "rules"]
    assert sorted(map(json.dumps, rule_findings)) == sorted(map(json.dumps, dumps(report.findings)))
    assert [(f["kind"], f["location"], f["source"]) for f in data["findings"] if f["source"] != "rules"] == \
        [("dead_relu", "1", "llm")]
    assert data["findings"][-1]["source"] == "llm"  # after the measured ones


def test_a_failed_lm_call_keeps_the_last_good_analysis(stored_run, fake_openai, chat, sentinels):
    path, run_id, report = stored_run
    fake_openai.replies += [chat(**answer(len(report.findings))), sentinels["GARBAGE"]]
    lm = ["--lm", "openai/test-model", "--lm-api-base", fake_openai.api_base]
    assert invoke("report", run_id, "--store", path, *lm).exit_code == 0
    failed = invoke("report", run_id, "--store", path, *lm)
    assert failed.exit_code == 0, failed.output
    assert [l for l in failed.stderr.splitlines() if l.startswith("note:")]
    assert SUMMARY not in failed.stdout  # this call's answer was garbage: the rules' report, as promised
    with RunStore(path) as s:
        assert [r["status"] for r in s.llm_analyses(run_id)] == ["ok", "fallback"]
        shown = load_report_with_analysis(s, run_id)
    assert shown.metrics.llm.summary == SUMMARY  # the last good one


def test_reanalyze_keeps_what_the_lm_said(stored_run, fake_openai, chat, tmp_path):
    path, run_id, report = stored_run
    fake_openai.replies.append(chat(**answer(len(report.findings))))
    assert invoke("report", run_id, "--store", path, "--lm", "openai/m", "--lm-api-base", fake_openai.api_base).exit_code == 0
    out = tmp_path / "r.json"
    res = invoke("report", run_id, "--store", path, "--reanalyze", "--json", out)
    assert res.exit_code == 0, res.output
    llm = json.loads(out.read_text())["metrics"]["llm"]
    assert llm["summary"] == SUMMARY and llm["explanations"] == {"F1": EXPLANATION} and "unmatched" not in llm


def frozen_script(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "model[0].requires_grad_(False)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.05)\n"
        "x = torch.randn(256, 8); y = (x[:, 0] > 0).long()\n"
        "for i in range(40):\n"
        "    opt.zero_grad(); nn.functional.cross_entropy(model(x[i % 16 * 16:][:16]), y[i % 16 * 16:][:16]).backward()\n"
        "    opt.step()\n")
    return script


def test_run_lm_stores_the_analysis_beside_the_rules_report(tmp_path, fake_openai, chat):
    script = frozen_script(tmp_path)
    store = tmp_path / "runs.db"
    fake_openai.replies.append(chat(**answer(1)))
    res = invoke("run", "--store", store, "--lm", "openai/test-model", "--lm-api-base", fake_openai.api_base,
                 "--", sys.executable, script)
    assert res.exit_code == 0, res.output
    with RunStore(store) as s:
        run_id = s.resolve("latest")
        rules = s.load_report(run_id)
        (row,) = s.llm_analyses(run_id)
    assert "unchanged_weights" in [f.kind for f in rules.findings]
    assert all(f.source == "rules" for f in rules.findings) and rules.metrics.llm is None
    assert row["status"] == "ok" and row["analysis"]["summary"] == SUMMARY
    later = invoke("report", "latest", "--store", store)
    assert later.exit_code == 0 and SUMMARY in " ".join(later.stdout.split())


def test_split_and_apply_give_back_the_enriched_report(stored_run):
    _, _, report = stored_run
    enriched, notice = enrich_report(report, DummyLM([answer(len(report.findings))]))
    assert notice is None
    # the store's split: the rules' report comes back exactly, and the analysis rebuilds the rest
    assert rules_only(enriched).model_dump() == report.model_dump()
    again = apply_analysis(report, json.loads(json.dumps(analysis_of(enriched).to_dict())))
    assert again.model_dump() == enriched.model_dump()


def test_enriching_an_enriched_report_replaces_the_earlier_lm_content(stored_run):
    _, _, report = stored_run
    first, _ = enrich_report(report, DummyLM([answer(len(report.findings))]))
    lm = DummyLM([answer(len(report.findings)) | {"summary": "Second opinion."}])
    second, notice = enrich_report(first, lm)
    assert notice is None and second.metrics.llm.summary == "Second opinion."
    assert [f.kind for f in second.findings if f.source == "llm"] == ["dead_relu"]  # not stacked
    assert ADDED not in json.dumps(lm.history[-1]["messages"])  # its own earlier claims are not shown as facts


def test_an_analysis_applies_to_changed_findings_without_dropping_any(stored_run):
    _, _, report = stored_run
    enriched, _ = enrich_report(report, DummyLM([answer(len(report.findings))]))
    analysis = analysis_of(enriched)
    changed = report.model_copy(deep=True)
    gone = changed.findings.pop(0)  # the rules ran again and F1 is no longer found
    out = apply_analysis(changed, analysis)
    assert dumps([f for f in out.findings if f.source == "rules"]) == dumps(
        [f for f in enriched.findings if f.source == "rules" and f != gone])
    assert out.metrics.llm.unmatched == ["F1"] and out.metrics.llm.explanations == {}
    assert [f.kind for f in out.findings if f.source == "llm"] == ["dead_relu"]


def test_the_agent_on_a_stored_run_shows_the_stored_analysis(stored_run, fake_openai, chat):
    path, run_id, report = stored_run
    fake_openai.replies.append(chat(**answer(len(report.findings))))
    assert invoke("report", run_id, "--store", path, "--lm", "openai/m", "--lm-api-base", fake_openai.api_base).exit_code == 0
    r = md.ModelDebuggingAgent().debug_model(md.DebuggingRequest(run=run_id, store=path))
    assert r.summary == SUMMARY and r.report.metrics.llm.stored
    assert any(rec.source == "llm" for rec in r.recommendations)
    assert {f.kind for f in report.findings} <= {f.kind for f in r.issues if f.source == "rules"}


def test_run_lm_that_answers_garbage_keeps_the_exit_code_and_the_rules_report(tmp_path, fake_openai, sentinels):
    script = frozen_script(tmp_path)
    store = tmp_path / "runs.db"
    fake_openai.replies.append(sentinels["GARBAGE"])
    res = invoke("run", "--store", store, "--lm", "openai/test-model", "--lm-api-base", fake_openai.api_base,
                 "--", sys.executable, script)
    assert res.exit_code == 0, res.output
    notes = [l for l in res.stderr.splitlines() if l.startswith("note:")]
    assert len(notes) == 1 and "rule engine" in notes[0]
    with RunStore(store) as s:
        run_id = s.resolve("latest")
        assert [r["status"] for r in s.llm_analyses(run_id)] == ["fallback"]
        shown = load_report_with_analysis(s, run_id)
    assert "unchanged_weights" in [f.kind for f in shown.findings] and shown.metrics.llm is None
