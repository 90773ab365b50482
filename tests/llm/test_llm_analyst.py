"""DebugAnalysis through the real DSPy path: DummyLM (typed parse, unparseable answer) and HTTP (good, garbage, hang)."""

from __future__ import annotations

import json
import time

import pytest

dspy = pytest.importorskip("dspy")
from dspy.utils import DummyLM  # noqa: E402

from modeldebug.llm.analyst import LLM_CONFIDENCE, enrich_report  # noqa: E402
from modeldebug.llm.settings import LMSettings, build_lm  # noqa: E402
from modeldebug.types import Report  # noqa: E402


def good_answer(n_findings: int) -> dict:
    return {
        "summary": "The first layer never learns: it is frozen. Unfreeze it.",
        "ranking": [f"F{i}" for i in range(n_findings, 0, -1)],
        "issues": [
            {"type": "gradient", "severity": "high", "description": "Layer 0 receives no gradient.",
             "location": "0", "finding_id": "F1"},
            {"type": "activation", "severity": "medium", "description": "Half the hidden units of layer 1 look dead.",
             "location": "9", "kind": "dead_relu"},
            {"type": "performance", "severity": "low", "description": "Batch size 16 underuses the CPU.",
             "location": None},
        ],
        "recommendations": [
            {"type": "fix", "description": "Set requires_grad=True on layer 0.",
             "implementation": "model[0].requires_grad_(True)", "finding_id": "F1"},
        ],
    }


def test_typed_result_is_parsed_and_merged_without_dropping_rule_findings(stored_run):
    _, _, report = stored_run
    assert report.findings, "the broken run must give the rules something to find"
    n = len(report.findings)
    lm = DummyLM([good_answer(n)])
    out, notice = enrich_report(report, lm, issue="the loss goes flat")
    assert notice is None
    llm = out.metrics.llm
    assert llm.status == "ok" and "frozen" in llm.summary
    rule = [f for f in out.findings if f.source == "rules"]
    # every rule finding is still there, in the LM's order (reversed), none changed
    assert [f.model_dump() for f in rule] == [f.model_dump() for f in reversed(report.findings)]
    added = [f for f in out.findings if f.source == "llm"]
    assert [(f.kind, f.location, f.confidence) for f in added] == [("dead_relu", "9", LLM_CONFIDENCE)]
    assert out.findings[-1].source == "llm"  # the LM's own come after the measured ones
    assert llm.explanations == {"F1": "Layer 0 receives no gradient."}
    assert llm.notes[0].source == "llm" and llm.notes[0].type == "performance"
    assert llm.recommendations[0].source == "llm"
    # the prompt carried the findings with ids and the user's issue
    prompt = json.dumps(lm.history[-1]["messages"])
    assert "F1" in prompt and "the loss goes flat" in prompt
    Report.model_validate_json(out.to_json())  # still the contract


def test_unparseable_answer_falls_back_to_rules(stored_run):
    _, _, report = stored_run
    lm = DummyLM([{"summary": "ok", "ranking": "first one", "issues": "everything is broken",
                   "recommendations": "try harder"}])
    out, notice = enrich_report(report, lm)
    assert notice is not None and "\n" not in notice and "rule engine" in notice
    assert out.metrics.llm.status == "fallback"
    assert [f.model_dump() for f in out.findings] == [f.model_dump() for f in report.findings]
    assert report.metrics.llm is None  # the caller's report is not modified


def test_ranking_with_unknown_ids_keeps_every_finding(stored_run):
    _, _, report = stored_run
    ans = good_answer(0) | {"ranking": ["F99", "nonsense"], "issues": [], "recommendations": []}
    out, notice = enrich_report(report, DummyLM([ans]))
    assert notice is None
    assert [f.kind for f in out.findings] == [f.kind for f in report.findings]


def http_settings(server, timeout_s=2.0) -> LMSettings:
    return LMSettings(model="openai/test-model", api_base=server.api_base, timeout_s=timeout_s)


def test_http_good_answer(stored_run, fake_openai, chat):
    _, _, report = stored_run
    fake_openai.replies.append(chat(**good_answer(len(report.findings))))
    out, notice = enrich_report(report, http_settings(fake_openai))
    assert notice is None, notice
    assert out.metrics.llm.status == "ok"
    assert out.metrics.llm.model == f"openai/test-model at {fake_openai.api_base}"
    (req,) = fake_openai.requests
    assert req["path"] == "/v1/chat/completions" and req["body"]["model"] == "test-model"


def test_http_garbage_falls_back(stored_run, fake_openai, sentinels):
    _, _, report = stored_run
    fake_openai.replies.append(sentinels["GARBAGE"])
    out, notice = enrich_report(report, http_settings(fake_openai))
    assert notice and "\n" not in notice and out.metrics.llm.status == "fallback"
    assert [f.kind for f in out.findings] == [f.kind for f in report.findings]
    assert len(fake_openai.requests) == 1  # no retries, no second adapter call


def test_http_valid_json_but_unparseable_content_falls_back(stored_run, fake_openai):
    _, _, report = stored_run
    fake_openai.replies.append("I think your model is fine, good luck!")
    out, notice = enrich_report(report, http_settings(fake_openai))
    assert notice and out.metrics.llm.status == "fallback"
    assert len(fake_openai.requests) == 1


def test_http_hang_times_out_fast(stored_run, fake_openai, sentinels):
    _, _, report = stored_run
    fake_openai.replies.append(sentinels["HANG"])
    t0 = time.perf_counter()
    out, notice = enrich_report(report, http_settings(fake_openai, timeout_s=1.0))
    elapsed = time.perf_counter() - t0
    assert notice and out.metrics.llm.status == "fallback"
    assert elapsed < 5.0, f"a hung LM must not hold the report ({elapsed:.1f} s)"


def test_lm_is_built_without_disk_cache_or_retries():
    lm = build_lm(LMSettings(model="openai/x", api_base="http://127.0.0.1:9/v1", timeout_s=3))
    assert lm.cache is False and lm.num_retries == 0
    assert lm.kwargs["timeout"] == 3 and lm.kwargs["api_base"] == "http://127.0.0.1:9/v1"


def test_library_never_configures_dspy_globally(stored_run):
    _, _, report = stored_run
    before = dspy.settings.lm
    enrich_report(report, DummyLM([good_answer(1)]))
    assert dspy.settings.lm is before
