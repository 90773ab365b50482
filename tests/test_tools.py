"""The agent's tools: typed calls checked against plain autograd, JSON `run`, error types, nothing left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug.errors import DebuggingError
from modeldebug.tools import ErrorDiagnoser, all_tools, tensor_stats


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_every_tool_has_the_spec_attributes():
    tools = all_tools()
    assert [t.name for t in tools] == ["LayerAnalyzer", "GradientDebugger", "PerformanceProfiler", "MemoryTracker",
                                      "ErrorDiagnoser"]
    assert {t.category for t in tools} == {"debugging", "profiling"}
    assert all(t.description for t in tools)
    assert md.LayerAnalyzer().category == "debugging" and md.PerformanceProfiler().category == "profiling"


def numpy_stats(a: np.ndarray) -> dict[str, float]:
    """The reference for tensor_stats: statistics of the finite values in float64, and how many are not."""
    a = np.asarray(a, dtype=np.float64).ravel()
    v = a[np.isfinite(a)]
    return {"mean": v.mean(), "std": v.std(ddof=1) if v.size > 1 else 0.0, "min": v.min(), "max": v.max(),
            "norm": np.sqrt(np.sum(v * v)), "nonfinite": int(a.size - v.size)}


@pytest.mark.parametrize("shape, plant", [((1000,), False), ((8, 3, 5, 5), True), ((1,), False), ((2, 3), True)],
                         ids=["vector", "conv-activation-with-nan-inf", "one-value", "small-with-nan-inf"])
def test_tensor_stats_matches_numpy(shape, plant):
    rng = np.random.default_rng(0)
    a = (3 * rng.standard_normal(shape) + 0.5).astype(np.float32)
    if plant:
        flat = a.reshape(-1)
        flat[[0, 3]] = np.nan
        flat[-1] = np.inf
    got = tensor_stats(torch.from_numpy(a))
    want = numpy_stats(a)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_tensor_stats_of_integers_empty_and_all_nonfinite_tensors():
    ints = np.arange(-5, 20)
    got = tensor_stats(torch.from_numpy(ints))
    assert got == pytest.approx(numpy_stats(ints))
    empty = tensor_stats(torch.empty(0))
    assert empty["norm"] == 0.0 and empty["nonfinite"] == 0 and np.isnan(empty["mean"])
    bad = tensor_stats(torch.tensor([np.nan, np.inf, -np.inf]))
    assert bad["nonfinite"] == 3 and all(np.isnan(bad[k]) for k in ("mean", "std", "min", "max", "norm"))
    assert tensor_stats(None) is None


def test_layer_analyzer_matches_plain_autograd():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    x = torch.randn(4, 5)
    old = torch.full_like(layer.weight, 7.0)
    layer.weight.grad = old.clone()
    result = md.LayerAnalyzer().analyze(layer, x)

    xr = x.clone().requires_grad_(True)
    ref = nn.Linear(5, 3)
    ref.load_state_dict(layer.state_dict())
    out = ref(xr)
    out.backward(torch.ones_like(out))
    (act,) = result["activations"]
    assert act["shape"] == [4, 3]
    for key, value in numpy_stats(out.detach().numpy()).items():
        assert act["stats"][key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    assert result["gradients"]["input"]["norm"] == pytest.approx(float(xr.grad.norm()), rel=1e-5)
    assert result["gradients"]["parameters"]["weight"]["mean"] == pytest.approx(float(ref.weight.grad.mean()), rel=1e-5)
    assert result["gradients"]["parameters"]["bias"]["norm"] == pytest.approx(float(ref.bias.grad.norm()), rel=1e-5)
    # the user's layer and input are as they were
    assert torch.equal(layer.weight.grad, old) and layer.bias.grad is None
    assert not x.requires_grad and x.grad is None and no_hooks(layer)


def test_layer_analyzer_raises_debugging_error_with_type_analysis():
    with pytest.raises(DebuggingError) as info:
        md.LayerAnalyzer().analyze(nn.Linear(5, 3), torch.randn(2, 4))
    assert info.value.type == "analysis"


def test_gradient_debugger_on_a_model():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)
    model(torch.randn(2, 3)).sum().backward()
    model[1].bias.grad = torch.zeros(1)
    out = md.GradientDebugger(threshold=1e-6).check_model(model)
    assert out["parameters"]["0.weight"] == {"requires_grad": False}
    assert out["below_threshold"] == ["1.bias"]


def test_profiler_times_layers_and_restores_grads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    model.train()
    grad_before = [p.grad for p in model.parameters()]
    out = md.PerformanceProfiler().profile(model, torch.randn(8, 16), loss_fn=nn.CrossEntropyLoss(),
                                           target=torch.randint(0, 4, (8,)), warmup=1, iterations=4,
                                           layer_types=["Linear"])
    assert out["iterations"] == 4 and out["forward_time_s"]["median"] > 0 and out["backward_time_s"]["median"] > 0
    assert {l["type"] for l in out["layers"]} == {"Linear"} and len(out["layers"]) == 2
    assert abs(sum(l["fraction"] for l in out["layers"]) - 1) < 1e-6
    assert [p.grad for p in model.parameters()] == grad_before and model.training and no_hooks(model)


def test_profiler_error_type_is_profiling():
    with pytest.raises(DebuggingError) as info:
        md.PerformanceProfiler().profile(nn.Linear(3, 3), torch.randn(2, 5), iterations=1)
    assert info.value.type == "profiling"


def test_memory_tracker_counts_bytes():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    model.zero_grad()
    out = md.MemoryTracker().measure(model, torch.randn(8, 10), loss_fn=lambda o: o.pow(2).mean(), optimizer=opt)
    n_params = sum(p.numel() for p in model.parameters())
    assert out["parameters_bytes"] == n_params * 4
    assert out["gradients_bytes"] == n_params * 4
    assert out["optimizer_state_bytes"] >= 2 * n_params * 4  # Adam's two moments
    assert out["activations_bytes"] == 8 * (20 + 20 + 5) * 4
    assert all(p.grad is None for p in model.parameters()) and no_hooks(model)


def test_error_diagnoser_gives_a_runtime_error_finding():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(6, 2))
    try:
        model(torch.randn(2, 4))
    except RuntimeError as exc:
        finding = ErrorDiagnoser().diagnose(exc, model=model, step=3)
    assert finding.kind == "runtime_error" and finding.severity == "high" and finding.step == 3
    assert finding.location == "1" and finding.evidence["cause"] == "shape_mismatch"
    assert "nn.Linear(8, 2)" in finding.message + " ".join(r.implementation or "" for r in finding.recommendations)
    text = ErrorDiagnoser().run("RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x8 and 6x2)")
    assert json.loads(text)["kind"] == "runtime_error"


@pytest.fixture
def stored(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "runs.db")
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with md.watch(model, opt, config=md.DebuggingConfig(every=1), store=path) as dbg:
        for _ in range(25):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 3, (8,))).backward()
            opt.step()
    dbg.store.close()
    return path


@pytest.mark.parametrize("tool", all_tools(), ids=lambda t: t.name)
def test_run_takes_and_returns_json(tool, stored):
    spec = {"run": "latest", "store": stored, "layer_types": ["Linear"], "threshold": 1e-3}
    out = json.loads(tool.run(json.dumps(spec)))
    assert isinstance(out, dict) and out.get("run")


def test_layer_analyzer_run_filters_layer_types(stored):
    out = json.loads(md.LayerAnalyzer().run(json.dumps({"run": "latest", "store": stored, "layer_types": ["Conv2d"]})))
    assert [l["type"] for l in out["layers"]] == ["Conv2d"] and out["layers"][0]["samples"] == 25


@pytest.mark.parametrize("tool,kind", [(md.LayerAnalyzer(), "analysis"), (md.PerformanceProfiler(), "profiling"),
                                       (md.MemoryTracker(), "monitoring")], ids=["layer", "profiler", "memory"])
def test_run_errors_carry_the_tool_type(tool, kind, tmp_path):
    with pytest.raises(DebuggingError) as info:
        tool.run(json.dumps({"run": "latest", "store": str(tmp_path / "missing.db")}))
    assert info.value.type == kind
    with pytest.raises(DebuggingError):
        tool.run("{not json")
