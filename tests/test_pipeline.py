"""The post-run pipeline: one evaluation of a stored run serves the agent and every tool call until the run changes."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug import pipeline
from modeldebug.records import StepRecord
from modeldebug.store import RunStore
from modeldebug.tools import all_tools


@pytest.fixture
def stored(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "runs.db")
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with md.watch(model, opt, config=md.DebuggingConfig(every=1), store=path) as dbg:
        for _ in range(20):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 2, (8,))).backward()
            opt.step()
    dbg.store.close()
    return path, dbg.run_id


@pytest.fixture
def rule_runs(monkeypatch):
    """How many times the rules ran."""
    import modeldebug.rules as rules

    calls = []
    real = rules.apply_rules

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rules, "apply_rules", counting)
    pipeline._cache.clear()
    yield calls
    pipeline._cache.clear()


def test_tool_calls_on_one_run_share_one_evaluation(stored, rule_runs):
    path, run_id = stored
    spec = json.dumps({"run": "latest", "store": path})
    outputs = [json.loads(tool.run(spec)) for tool in all_tools()]
    assert all(out["run"] == run_id for out in outputs)
    assert len(rule_runs) == 1
    gradient = outputs[1]
    assert gradient["findings"] == [f.model_dump(mode="json") for f in pipeline.evaluated_run(path, run_id).report.findings
                                   if f.kind in md.tools.GRADIENT_FINDINGS]
    assert len(rule_runs) == 1


def test_the_agent_and_the_tools_share_it_and_a_changed_run_is_evaluated_again(stored, rule_runs, monkeypatch):
    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    path, run_id = stored
    agent = md.ModelDebuggingAgent()
    first = agent.debug_model(md.DebuggingRequest(run=run_id, store=path, issue="loss flat"))
    assert len(rule_runs) == 1 and set(first.tools) == {t.name for t in all_tools()}
    # the agent changed its copy of the report, not the one the cache keeps
    assert pipeline.evaluated_run(path, run_id).report.metrics.issue is None
    md.GradientDebugger().run(json.dumps({"run": run_id, "store": path}))
    assert len(rule_runs) == 1
    with RunStore(path) as store:
        store.add(run_id, StepRecord(step=20, loss=0.5))
    again = agent.debug_model(md.DebuggingRequest(run=run_id, store=path))
    assert len(rule_runs) == 2 and again.report.run.id == run_id
    with RunStore(path) as store:
        store.update_run(run_id, status="crashed")
    assert pipeline.evaluated_run(path, run_id).evidence.run.status == "crashed" and len(rule_runs) == 3


def test_diagnose_saves_the_rules_report_and_writes_the_files(stored, tmp_path):
    path, run_id = stored
    out = tmp_path / "out" / "r.json"
    with RunStore(path) as store:
        diagnosis = pipeline.diagnose(store, run_id, issue="loss flat", json_out=out)
        saved = store.load_report(run_id)
        reused = pipeline.diagnose(store, run_id, reuse_saved=True)
    assert diagnosis.written == [str(out)] and diagnosis.evidence is not None
    assert json.loads(out.read_text())["run"]["id"] == run_id
    assert saved.metrics.issue == "loss flat" and saved.to_json() == diagnosis.report.to_json()
    assert reused.evidence is None and reused.report.to_json() == saved.to_json()


def test_the_store_converts_numpy_values_without_a_global_sqlite3_adapter(tmp_path):
    with RunStore(tmp_path / "runs.db") as store:
        store.create_run({"id": "np"})
        store.add("np", StepRecord(step=np.int64(2), loss=np.float32(0.25), loss_nonfinite=np.bool_(False)))
        store.add("np", StepRecord(step=3, loss=0.5))
        assert store.progress("np") == (0, None)  # what other processes see: rows not yet written are not
        store.flush()
        assert store.progress("np") == (4, 0.5)
        ev = store.load_evidence("np")
    assert ev.steps.step.tolist() == [2, 3] and ev.steps.loss.tolist() == [0.25, 0.5]
    assert not [t for t, _ in sqlite3.adapters if getattr(t, "__module__", "") == "numpy"]
