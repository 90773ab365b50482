"""What the Debugger records, step by step, against the same training done the slow obvious way."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug.collect.session import watch


def _data(steps, batch=16, features=12, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, features, generator=g), torch.randint(0, classes, (batch,), generator=g)) for _ in range(steps)]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))


def _reference_run(model, batches, lr):
    """Plain training with retain_grad on every leaf module's output; returns per-step numpy facts."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    steps = []
    for x, y in batches:
        outs = {}

        def keep(module, args, output, name):
            output.retain_grad()
            outs[name] = output

        handles = [m.register_forward_hook(lambda m, a, o, n=n: keep(m, a, o, n)) for n, m in leaves]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        for h in handles:
            h.remove()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        after = {n: p.detach().clone() for n, p in model.named_parameters()}
        steps.append(
            {
                "loss": loss.item(),
                "grad_norm": math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads.values())),
                "out": {n: o.detach().double().numpy() for n, o in outs.items()},
                "out_grad": {n: o.grad.double().numpy() for n, o in outs.items()},
                "param_grad": {n: g.double().numpy() for n, g in grads.items()},
                "before": {n: t.double().numpy() for n, t in before.items()},
                "after": {n: t.double().numpy() for n, t in after.items()},
            }
        )
    return steps


def test_every_statistic_matches_a_plain_autograd_reference(store_path):
    batches = _data(6)
    model = _model()
    ref = _reference_run(copy.deepcopy(model), batches, lr=0.05)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for x, y in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    ev = dbg.evidence()

    assert list(ev.steps.step) == list(range(6))
    np.testing.assert_allclose(ev.steps.loss, [r["loss"] for r in ref], rtol=1e-6)
    np.testing.assert_allclose(ev.steps.grad_norm, [r["grad_norm"] for r in ref], rtol=1e-5)
    np.testing.assert_allclose(ev.steps.lr, 0.05)
    assert ev.steps.optimizer_stepped.all() and (ev.steps.backward_calls == 1).all()
    np.testing.assert_allclose(ev.steps.input_mean, [x.double().mean().item() for x, _ in batches], rtol=1e-5)

    for name in ("0", "1", "2", "3", "4"):
        t = ev.layer(name)
        assert list(t.step) == list(range(6)), name
        for k, r in enumerate(ref):
            o, g = r["out"][name], r["out_grad"][name]
            assert t.mean[k] == pytest.approx(o.mean(), rel=1e-4, abs=1e-6)
            assert t.std[k] == pytest.approx(o.std(), rel=1e-4)
            assert (t.min[k], t.max[k]) == pytest.approx((o.min(), o.max()), rel=1e-6)
            assert t.zero_frac[k] == pytest.approx((o == 0).mean())
            assert t.dead_frac[k] == pytest.approx(1 - (o.max(axis=0) > 0).mean())
            assert t.grad_norm[k] == pytest.approx(np.linalg.norm(g), rel=1e-4)
            assert t.grad_mean[k] == pytest.approx(g.mean(), rel=1e-3, abs=1e-9)
            assert t.grad_max_abs[k] == pytest.approx(np.abs(g).max(), rel=1e-6)
    tanh = ev.layer("3")
    for k, r in enumerate(ref):
        o = r["out"]["3"]
        assert tanh.sat_frac[k] == pytest.approx(((o <= -0.98) | (o >= 0.98)).mean())

    for pname in ("0.weight", "0.bias", "4.weight"):
        t = ev.param(pname)
        assert list(t.step) == list(range(6))
        for k, r in enumerate(ref):
            g, w0, w1 = r["param_grad"][pname], r["before"][pname], r["after"][pname]
            assert t.grad_norm[k] == pytest.approx(np.linalg.norm(g), rel=1e-5)
            assert t.grad_mean[k] == pytest.approx(g.mean(), rel=1e-3, abs=1e-9)
            assert t.grad_std[k] == pytest.approx(g.std(), rel=1e-3)
            assert t.norm[k] == pytest.approx(np.linalg.norm(w0), rel=1e-5)
            assert t.update_ratio[k] == pytest.approx(np.linalg.norm(w1 - w0) / np.linalg.norm(w0), rel=1e-4)
            assert t.changed[k] and t.has_grad[k]


def test_update_ratio_on_a_large_parameter_uses_a_subset_close_to_the_truth(store_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2))  # 262k weights > subset size
    before = model[0].weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        x, y = torch.randn(8, 512), torch.randint(0, 2, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    truth = ((model[0].weight.detach() - before).norm() / before.norm()).item()
    assert dbg.evidence().param("0.weight").update_ratio[0] == pytest.approx(truth, rel=0.05)


def test_inplace_relu_output_gradients_match_the_out_of_place_model(store_path):
    def build(inplace):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 2))

    results = []
    for inplace in (False, True):
        model = build(inplace)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
            for x, y in _data(3, features=6, classes=2):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
        results.append(dbg.evidence())
    plain, inplace = results
    np.testing.assert_allclose(inplace.steps.loss, plain.steps.loss, rtol=1e-6)
    np.testing.assert_allclose(inplace.layer("1").grad_norm, plain.layer("1").grad_norm, rtol=1e-5)
    np.testing.assert_allclose(inplace.layer("1").mean, plain.layer("1").mean, rtol=1e-5)
