"""optimizer.step() called directly after scaler.scale(loss).backward() (scaler.step forgotten): the
collector counts the steps taken on scaled gradients, records their gradient norm unscaled, and the
rule reports the scale and the applied norm; stepping through the scaler, or after unscale_, is
never flagged."""

import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug.events import ScaledOptimizerSteps


def _train(store_path, how, optimizer="sgd", steps=8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = (torch.optim.SGD(model.parameters(), lr=0.01) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-3))
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(32 * steps, 8)
    y = x.sum(1, keepdim=True)
    norms = []
    with md.watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for i in range(0, len(x), 32):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(model(x[i:i + 32]), y[i:i + 32])
            scaler.scale(loss).backward()
            if how == "bypass":
                norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
                opt.step()
            elif how == "unscaled":
                scaler.unscale_(opt)
                opt.step()
                scaler.update()
            else:
                scaler.step(opt)
                scaler.update()
    return dbg, norms


def test_optimizer_step_on_scaled_gradients_is_found_with_its_numbers(store_path):
    dbg, norms = _train(store_path, "bypass")
    [event] = dbg.evidence().events_of(ScaledOptimizerSteps)
    assert (event.steps, event.optimizer_steps, event.first_step, event.scale, event.optimizer) == (8, 8, 0, 65536.0, "SGD")
    assert event.grad_norm == pytest.approx(norms[0] / 65536.0, rel=1e-5)  # in the gradients' own units
    assert float(dbg.evidence().steps.grad_norm[0]) == pytest.approx(event.grad_norm, rel=1e-5)
    [f] = [f for f in dbg.report().findings if f.kind == "grad_scaler_misuse"]
    assert f.severity == "high" and f.causes == ["scaler_step_bypassed"]
    assert f.evidence["applied_grad_norm"] == pytest.approx(norms[0], rel=1e-5)
    assert "8 of 8 SGD steps" in f.message and "6.55e+04" in f.message and "scaler.step(optimizer)" in f.message


def test_an_adaptive_optimizer_gets_a_medium_finding(store_path):
    dbg, _ = _train(store_path, "bypass", optimizer="adam")
    [f] = [f for f in dbg.report().findings if f.kind == "grad_scaler_misuse"]
    assert f.severity == "medium" and "epsilon" in f.message


@pytest.mark.parametrize("how", ["scaler", "unscaled"])
def test_stepping_through_the_scaler_or_after_unscale_is_not_flagged(store_path, how):
    dbg, _ = _train(store_path, how)
    assert dbg.evidence().events_of(ScaledOptimizerSteps) == []
    assert "grad_scaler_misuse" not in {f.kind for f in dbg.report().findings}
