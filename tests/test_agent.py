"""ModelDebuggingAgent.debug_model: broken models are diagnosed, and the user's model, optimizer and RNG are untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug.agent import clone_for_probe
from modeldebug.errors import DebuggingError

FAST = {"probe_steps": 40, "profiling_config": {"warmup": 1, "iterations": 3}}


def data(n=256, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)


def mlp():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


def lr_far_too_high():
    m = mlp()
    return m, torch.optim.SGD(m.parameters(), lr=30.0, momentum=0.9)


def dead_relus():
    m = mlp()
    with torch.no_grad():
        m[0].bias.fill_(-20.0)
    return m, torch.optim.Adam(m.parameters(), lr=1e-3)


def frozen_layer():
    m = mlp()
    m[0].requires_grad_(False)
    return m, torch.optim.SGD(m.parameters(), lr=0.1)


def head_only_in_optimizer():
    m = mlp()
    return m, torch.optim.SGD(m[4].parameters(), lr=0.1)


def shape_mismatch():
    m = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(16, 2))
    return m, torch.optim.SGD(m.parameters(), lr=0.1)


CASES = [
    pytest.param(lr_far_too_high, "exploding_gradient", id="lr_far_too_high"),
    pytest.param(dead_relus, "dead_relu", id="dead_relus"),
    pytest.param(frozen_layer, "unchanged_weights", id="frozen_layer"),
    pytest.param(head_only_in_optimizer, "unchanged_weights", id="head_only_in_optimizer"),
    pytest.param(shape_mismatch, "runtime_error", id="shape_mismatch"),
]


def snapshot(model, opt):
    return (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()],
            [m.training for m in model.modules()])


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def warm(model, opt, loader):
    """One real step first, so the optimizer has state (momentum, Adam moments) the probe must not touch."""
    x, y = next(iter(loader))
    try:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    except RuntimeError:
        pass


@pytest.mark.parametrize("build,kind", CASES)
def test_finds_the_fault_and_leaves_model_and_optimizer_unchanged(build, kind, monkeypatch):
    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    torch.manual_seed(0)
    model, opt = build()
    loader = data()
    warm(model, opt, loader)
    before = snapshot(model, opt)
    rng = torch.get_rng_state()
    response = md.ModelDebuggingAgent(md.DebuggingConfig(analysis_level="detailed")).debug_model(
        md.DebuggingRequest(model=model, data=loader, loss_fn=nn.CrossEntropyLoss(), optimizer=opt,
                            issue="Model not converging", analysis_config=FAST))
    assert kind in [f.kind for f in response.issues], [f.kind for f in response.issues]
    assert same(snapshot(model, opt), before), "debug_model changed the user's model or optimizer"
    assert torch.equal(torch.get_rng_state(), rng), "debug_model advanced the user's random stream"
    assert all(not m._forward_hooks for m in model.modules())
    m = response.metrics
    assert m.issues_found == len(response.issues) > 0 and m.recommendations == len(response.recommendations)
    assert m.analysis_time > 0 and m.memory_usage > 0
    assert response.report.metrics.issue == "Model not converging"
    assert list(response.tools)[:2] == ["GradientDebugger", "LayerAnalyzer"]  # what the issue points at, first


def test_the_probe_optimizer_carries_the_state():
    model, opt = lr_far_too_high()
    warm(model, opt, data())
    model_c, opt_c = clone_for_probe(model, opt)
    assert type(opt_c) is type(opt) and opt_c.param_groups[0]["lr"] == 30.0
    for p, pc in zip(model.parameters(), model_c.parameters()):
        assert pc is not p and torch.equal(pc, p)
        assert torch.equal(opt_c.state[pc]["momentum_buffer"], opt.state[p]["momentum_buffer"])
        assert opt_c.state[pc]["momentum_buffer"].data_ptr() != opt.state[p]["momentum_buffer"].data_ptr()
    copies = {id(q) for q in model_c.parameters()}
    assert all(id(p) in copies for g in opt_c.param_groups for p in g["params"])


def test_issue_text_puts_matching_findings_first(monkeypatch):
    # Two independent faults: the body is left out of the optimizer, and the head's lr is far too
    # high. (Gradients piling up on parameters no optimizer holds are no accumulation fault: they
    # never reach an update, issue 13.)
    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model[4].parameters(), lr=3.0, momentum=0.9)
    request = dict(model=model, data=data(), loss_fn=nn.CrossEntropyLoss(), optimizer=opt, analysis_config=FAST)
    agent = md.ModelDebuggingAgent()
    kinds = {f.kind for f in agent.debug_model(md.DebuggingRequest(**request)).issues}
    assert {"unchanged_weights", "exploding_gradient"} <= kinds
    assert "gradient_accumulation" not in kinds
    for issue, first in [("the gradients explode", "exploding_gradient"),
                         ("the first layer's weights never update", "unchanged_weights")]:
        r = agent.debug_model(md.DebuggingRequest(**request, issue=issue))
        assert r.issues[0].kind == first and 0 in r.matched


def test_single_batch_visualizations_and_layer_types(monkeypatch):
    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = (torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,)))
    r = md.ModelDebuggingAgent().debug_model(md.DebuggingRequest(
        model=model, data=batch, loss_fn=nn.CrossEntropyLoss(), optimizer=opt,
        analysis_config={**FAST, "probe_steps": 10, "layer_types": ["Conv2d", "Linear"]},
        visualizations={"gradient_flow": True, "activation_histograms": True, "memory_timeline": True}))
    assert r.report.run.steps == 10
    assert {l["type"] for l in r.tools["LayerAnalyzer"]["layers"]} == {"Conv2d", "Linear"}
    assert [l["name"] for l in r.visualizations["gradient_flow"]["layers"]] == ["0", "3"]
    assert all(len(h["counts"]) == 32 for h in r.visualizations["activation_histograms"])
    assert len(r.visualizations["memory_timeline"]["step"]) == 10
    assert "html" in r.visualizations or any("HTML" in n for n in r.notices)
    assert {l["type"] for l in r.tools["PerformanceProfiler"]["layers"]} == {"Conv2d", "Linear"}


def test_stored_run_is_analysed_without_a_model(tmp_path, monkeypatch):
    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    path = str(tmp_path / "runs.db")
    model, opt = frozen_layer()
    loader = data()
    with md.watch(model, opt, config=md.DebuggingConfig(every=1), store=path) as dbg:
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    dbg.store.close()
    r = md.ModelDebuggingAgent().debug_model(md.DebuggingRequest(run="latest", store=path, issue="frozen?"))
    assert r.issues[0].kind == "unchanged_weights" and r.report.run.id == dbg.run_id
    assert set(r.tools) == {"GradientDebugger", "LayerAnalyzer", "PerformanceProfiler", "MemoryTracker", "ErrorDiagnoser"}
    assert "0.weight" in r.tools["GradientDebugger"]["frozen"]


def test_bad_requests():
    agent = md.ModelDebuggingAgent()
    with pytest.raises(DebuggingError) as info:
        agent.debug_model(md.DebuggingRequest(issue="help"))
    assert info.value.type == "analysis"
    with pytest.raises(DebuggingError) as info:
        agent.debug_model(md.DebuggingRequest(run="latest", store="/nonexistent/runs.db"))
    assert info.value.type == "analysis"
    with pytest.raises(ValueError):
        agent.debug_model(md.DebuggingRequest(model=nn.Linear(2, 2)))
    with pytest.raises(TypeError):
        agent.debug_model(md.DebuggingRequest(model="not a model", data=torch.randn(2, 2)))


def test_model_that_returns_its_own_loss_without_optimizer(monkeypatch):
    monkeypatch.delenv("MODELDEBUG_LM", raising=False)

    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def forward(self, x, y):
            return {"loss": (self.net(x).squeeze(-1) - y).pow(2).mean()}

    model = WithLoss()
    before = copy.deepcopy(model.state_dict())
    r = md.ModelDebuggingAgent().debug_model(md.DebuggingRequest(
        model=model, data=(torch.randn(16, 4), torch.randn(16)), analysis_config={**FAST, "probe_steps": 8}))
    assert r.report.run.steps == 8
    assert same(model.state_dict(), before)


def test_with_dummy_lm_the_summary_and_marked_additions_come_back(monkeypatch):
    dspy = pytest.importorskip("dspy")
    from dspy.utils import DummyLM

    model, opt = frozen_layer()
    lm = DummyLM([{"summary": "Layer 0 is frozen.", "ranking": ["F1"],
                   "issues": [{"type": "activation", "severity": "low", "description": "Maybe saturation.",
                               "location": "1", "kind": "saturated_activation"}],
                   "recommendations": [{"type": "fix", "description": "Unfreeze layer 0 (LM).",
                                        "implementation": None}]}])
    r = md.ModelDebuggingAgent(lm=lm).debug_model(md.DebuggingRequest(
        model=model, data=data(), loss_fn=nn.CrossEntropyLoss(), optimizer=opt, analysis_config=FAST))
    assert r.summary == "Layer 0 is frozen." and not r.notices
    assert [f.kind for f in r.issues if f.source == "llm"] == ["saturated_activation"]
    assert any(rec.source == "llm" for rec in r.recommendations)
    assert dspy.settings.lm is None


def test_probe_says_when_the_monitor_switched_itself_off(monkeypatch):
    """The collector turns itself off after an internal error (recorded as a monitor_error event): the
    findings then cover only the steps before, and the response says so."""
    from modeldebug.collect.session import Debugger

    monkeypatch.delenv("MODELDEBUG_LM", raising=False)
    real = Debugger.evidence

    def evidence(self):
        ev = real(self)
        ev.events.append({"step": 3, "type": "monitor_error",
                          "data": {"hook": "_optimizer_post", "type": "ValueError", "message": "boom"}})
        return ev

    monkeypatch.setattr(Debugger, "evidence", evidence)
    model, opt = frozen_layer()
    r = md.ModelDebuggingAgent().debug_model(md.DebuggingRequest(
        model=model, data=data(), loss_fn=nn.CrossEntropyLoss(), optimizer=opt, analysis_config=FAST))
    assert any("monitor stopped at probe step 3" in n and "ValueError: boom" in n for n in r.notices), r.notices
