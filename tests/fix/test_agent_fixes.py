"""``ModelDebuggingAgent.debug_model(..., verify_fixes=True)``: the candidate fixes verified on fresh
copies of the probed model (issue 18), with an LM (dspy's DummyLM) as the agent's tests use it; the
user's model, optimizer and random stream are left as they were."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import modeldebug as md

FAST = {"probe_steps": 40, "profiling_config": {"warmup": 1, "iterations": 3}}


def _data(n=512, d=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def _lm():
    pytest.importorskip("dspy")
    from dspy.utils import DummyLM

    return DummyLM([{"summary": "The learning rate looks too high.", "ranking": [], "issues": [],
                     "recommendations": []}] * 4)


def _debug(model, opt, **extra):
    return md.ModelDebuggingAgent(lm=_lm()).debug_model(md.DebuggingRequest(
        model=model, data=_data(), loss_fn=nn.CrossEntropyLoss(), optimizer=opt, analysis_config=FAST,
        verify_fixes=True, **extra))


def test_a_far_too_high_rate_gets_a_verified_lower_rate_on_the_probe():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=30.0, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    r = _debug(model, opt)
    assert r.fixes and r.fixes == r.report.fixes, r.notices
    best = r.fixes[0]
    assert best.verified and best.change.startswith("learning rate x0.0"), [(f.change, f.reason) for f in r.fixes]
    assert best.loss_after < best.loss_before and best.loss_curve is not None and len(best.loss_curve.step) > 10
    assert [f.verified for f in r.fixes] == sorted((f.verified for f in r.fixes), reverse=True)
    assert any(n.startswith("verify_fixes: ") for n in r.notices)
    assert opt.param_groups[0]["lr"] == 30.0 and not opt._optimizer_step_pre_hooks
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_layer_frozen_by_mistake_is_trained_again_on_the_copy_only():
    model = _mlp()
    model[0].requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    r = _debug(model, opt)
    trained = [f for f in r.fixes if f.change.startswith("train 0.weight")]
    assert trained and trained[0].verified, [(f.change, f.reason) for f in r.fixes]
    assert not model[0].weight.requires_grad and len(opt.param_groups) == 1


def test_a_healthy_model_needs_no_fix_and_a_command_goes_through_modeldebug_fix(tmp_path, monkeypatch):
    model = _mlp()
    r = _debug(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    assert r.fixes == [] and "verify_fixes: no fix needed" in " ".join(r.notices), r.notices
    called = {}

    def run_fix(command, **kwargs):
        called["command"] = command
        from modeldebug.fixes.verify import FixSession

        return FixSession(None, verdict="no fix needed: stub")

    monkeypatch.setattr("modeldebug.agent.fixes.run_fix", run_fix)
    r = _debug(model, torch.optim.Adam(model.parameters(), lr=1e-3), command=[sys.executable, "train.py"])
    assert called["command"] == [sys.executable, "train.py"] and "no fix needed: stub" in " ".join(r.notices)
