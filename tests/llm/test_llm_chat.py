"""`modeldebug ask`: a dspy.ReAct agent over a stored run (DummyLM and HTTP), and the rule answer without an LM."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

dspy = pytest.importorskip("dspy")
from dspy.utils import DummyLM  # noqa: E402

from modeldebug.cli import app  # noqa: E402
from modeldebug.llm.chat import RunTools, ask, rules_answer  # noqa: E402
from modeldebug.llm.settings import LMSettings  # noqa: E402
from modeldebug.store import RunStore  # noqa: E402


def load(path, run_id):
    with RunStore(path) as s:
        return s.load_evidence(run_id), s.load_report(run_id)


def test_react_calls_a_tool_and_answers(stored_run):
    path, run_id, _ = stored_run
    ev, report = load(path, run_id)
    lm = DummyLM([
        {"next_thought": "Look at the loss.", "next_tool_name": "get_series",
         "next_tool_args": {"name": "loss", "start_step": 0, "end_step": -1}},
        {"next_thought": "Check the first layer.", "next_tool_name": "layer_stats", "next_tool_args": {"name": "0"}},
        {"next_thought": "Enough.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "Layer 0 has no gradient.", "answer": "Layer 0 is frozen, so the loss stops falling."},
    ])
    result = ask(ev, report, "why does the loss go flat?", lm)
    assert result.source == "llm" and result.notice is None
    assert result.answer == "Layer 0 is frozen, so the loss stops falling."
    traj = result.trajectory
    assert traj["tool_name_0"] == "get_series" and traj["tool_name_1"] == "layer_stats"
    # the tools returned the run's recorded numbers
    assert "summary" in str(traj["observation_0"]) and "points" in str(traj["observation_0"])
    assert "requires_grad" in str(traj["observation_1"])


def test_without_lm_answers_from_matching_findings(stored_run):
    path, run_id, _ = stored_run
    ev, report = load(path, run_id)
    result = ask(ev, report, "why do the weights of the first layer never update?")
    assert result.source == "rules" and result.notice is None
    assert "unchanged_weights" in result.answer and result.matched


def test_rules_answer_on_clean_run_and_unmatched_question(stored_run):
    _, _, report = stored_run
    text, matched = rules_answer(report.model_copy(update={"findings": []}), "anything")
    assert "nothing wrong" in text and matched == []
    text, matched = rules_answer(report, "what colour is the sky")
    assert "No finding matches" in text and matched == []


def test_lm_failure_falls_back_to_rules(stored_run, fake_openai, sentinels):
    path, run_id, _ = stored_run
    ev, report = load(path, run_id)
    fake_openai.replies.append(sentinels["GARBAGE"])
    result = ask(ev, report, "why no learning?", LMSettings("openai/m", api_base=fake_openai.api_base, timeout_s=2))
    assert result.source == "rules" and result.notice and "\n" not in result.notice


def test_run_tools_are_json_and_report_unknown_names(stored_run):
    path, run_id, _ = stored_run
    ev, report = load(path, run_id)
    tools = RunTools(ev, report)
    overview = tools.run_overview()
    assert "loss" in overview["series"] and overview["findings"][0]["id"] == "F1"
    assert "error" in tools.get_series("nope") and "available" in tools.get_series("nope")
    assert tools.get_series("loss", 5, 10)["points"][0][0] == 5
    assert "error" in tools.layer_stats("missing")
    names = [l["name"] for l in tools.list_layers()["layers"]]
    assert names[:3] == ["0", "1", "2"]
    assert all(callable(t) and t.__doc__ for t in tools.tools())


def test_cli_ask_through_http(stored_run, fake_openai, chat):
    path, run_id, _ = stored_run
    fake_openai.replies += [
        chat(next_thought="Read the findings.", next_tool_name="list_findings", next_tool_args={}),
        chat(next_thought="Done.", next_tool_name="finish", next_tool_args={}),
        chat(reasoning="Frozen layer.", answer="The first layer is frozen (requires_grad=False)."),
    ]
    res = CliRunner().invoke(app, ["ask", "latest", "why is the loss flat?", "--store", path,
                                   "--lm", "openai/test-model", "--lm-api-base", fake_openai.api_base])
    assert res.exit_code == 0, res.output
    assert "first layer is frozen" in res.stdout
    assert len(fake_openai.requests) == 3


def test_cli_report_with_hanging_lm_keeps_exit_code(stored_run, fake_openai, sentinels, monkeypatch):
    path, run_id, _ = stored_run
    fake_openai.replies.append(sentinels["HANG"])
    monkeypatch.setenv("MODELDEBUG_LM_TIMEOUT", "1")
    monkeypatch.setenv("MODELDEBUG_LM", "openai/test-model")
    monkeypatch.setenv("MODELDEBUG_LM_API_BASE", fake_openai.api_base)
    res = CliRunner().invoke(app, ["report", run_id, "--store", path])
    assert res.exit_code == 0, res.output
    notes = [l for l in res.stderr.splitlines() if l.startswith("note:")]
    assert len(notes) == 1 and "rule engine" in notes[0]
    assert "unchanged_weights" in res.stdout


def test_cli_report_with_good_lm_prints_summary(stored_run, fake_openai, chat, tmp_path):
    import json

    path, run_id, report = stored_run
    fake_openai.replies.append(chat(summary="Unfreeze layer 0.", ranking=["F1"], issues=[], recommendations=[]))
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["report", run_id, "--store", path, "--json", str(out),
                                   "--lm", "openai/test-model", "--lm-api-base", fake_openai.api_base])
    assert res.exit_code == 0, res.output
    assert "Unfreeze layer 0." in res.stdout and "language model" in res.stdout  # in the report, marked
    assert json.loads(out.read_text())["metrics"]["llm"]["status"] == "ok"
