"""Without the `llm` extra everything but prose works, and `--lm` names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modeldebug.errors import MissingExtraError


@pytest.fixture
def no_dspy(monkeypatch):
    """Simulate an install without the extra: `import dspy` raises ImportError."""
    for name in list(sys.modules):
        if name == "dspy" or name.startswith("dspy.") or name in ("modeldebug.llm.signatures",):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dspy", None)


def test_importing_the_package_agent_and_tools_does_not_import_dspy():
    code = ("import sys, modeldebug, modeldebug.agent, modeldebug.tools, modeldebug.llm, modeldebug.llm.chat, "
            "modeldebug.cli; modeldebug.ModelDebuggingAgent; print('dspy' in sys.modules, 'litellm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_resolve_settings_names_the_extra(no_dspy):
    from modeldebug.llm.settings import resolve_settings

    assert resolve_settings(None, None, env={}) is None  # no LM asked for: fine without dspy
    with pytest.raises(MissingExtraError, match=r"modeldebug\[llm\]"):
        resolve_settings("openai/gpt-4o-mini", None, env={})


@pytest.mark.parametrize("command", [["report", "latest"], ["ask", "latest", "why?"]], ids=["report", "ask"])
def test_cli_lm_option_says_which_extra(no_dspy, command, stored_run):
    from modeldebug.cli import app

    path, _, _ = stored_run
    res = CliRunner().invoke(app, command + ["--store", path, "--lm", "openai/gpt-4o-mini"])
    assert res.exit_code == 2
    assert "pip install 'modeldebug[llm]'" in " ".join(res.stderr.split())


def test_cli_run_lm_option_fails_before_running(no_dspy, tmp_path):
    from modeldebug.cli import app

    marker = tmp_path / "ran"
    res = CliRunner().invoke(app, ["run", "--store", str(tmp_path / "r.db"), "--lm", "openai/x", "--",
                                   sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert res.exit_code == 2 and "modeldebug[llm]" in " ".join(res.stderr.split())
    assert not marker.exists()


def test_ask_and_report_work_without_the_extra(no_dspy, stored_run):
    from modeldebug.cli import app

    path, _, _ = stored_run
    res = CliRunner().invoke(app, ["ask", "latest", "why are layer 0's weights frozen?", "--store", path])
    assert res.exit_code == 0, res.output
    assert "unchanged_weights" in res.stdout
    assert CliRunner().invoke(app, ["report", "latest", "--store", path]).exit_code == 0


def test_agent_works_without_the_extra_and_an_lm_falls_back(no_dspy, monkeypatch):
    import modeldebug as md
    from modeldebug.llm.settings import LMSettings

    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    batch = (torch.randn(16, 4), torch.randint(0, 2, (16,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    req = md.DebuggingRequest(model=model, data=batch, loss_fn=nn.CrossEntropyLoss(), optimizer=opt,
                              analysis_config={"probe_steps": 10, "profiling_config": {"warmup": 0, "iterations": 2}})
    plain = md.ModelDebuggingAgent().debug_model(req)
    assert plain.summary is None and not any("LM" in n for n in plain.notices)
    with_lm = md.ModelDebuggingAgent(lm=LMSettings("openai/x", api_base="http://127.0.0.1:9/v1")).debug_model(req)
    assert any("modeldebug[llm]" in n for n in with_lm.notices)
    assert with_lm.report.metrics.llm.status == "fallback"


def test_a_stored_lm_analysis_shows_without_the_extra(no_dspy, stored_run):
    """Showing what an LM said earlier needs no LM and no dspy."""
    from modeldebug.cli import app
    from modeldebug.store import RunStore

    path, run_id, _ = stored_run
    with RunStore(path) as s:
        s.save_llm_analysis(run_id, {"status": "ok", "model": "openai/x", "summary": "Layer 0 is frozen.",
                                     "ranking": ["F1"], "explanations": {}, "recommendations": [], "notes": [],
                                     "findings": [], "findings_seen": {}})
    res = CliRunner().invoke(app, ["report", "latest", "--store", path])
    assert res.exit_code == 0, res.output
    assert "Layer 0 is frozen." in res.stdout and "language model" in res.stdout
