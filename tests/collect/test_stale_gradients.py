"""stale_grad_norm: the gradient an optimizer step would carry over from before the step, against
the same loop's gradients read by hand."""

import math

import numpy as np
import torch
from torch import nn

import modeldebug as md
from modeldebug.collect.session import watch


def _norm(tensors) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)) for _ in range(n)]


def test_never_zeroed_gradients_are_the_previous_steps_gradient(store_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    expected = []
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for x, y in _batches(5):
            expected.append(_norm([p.grad for p in model.parameters() if p.grad is not None]))
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    ev = dbg.evidence()
    np.testing.assert_allclose(ev.steps.stale_grad_norm, expected, rtol=1e-5)
    assert expected[0] == 0 and min(expected[1:]) > 0


def test_parameters_no_optimizer_holds_do_not_count(store_path):
    """BatchNorm affine left out of the optimizer keeps its gradients (requires_grad stays on): they
    never reach an update, so the zeroed loop has no stale gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD([model[0].weight, model[0].bias, model[3].weight, model[3].bias], lr=0.01)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for x, y in _batches(5):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    ev = dbg.evidence()
    assert model[1].weight.grad.abs().sum() > 0  # piled up, outside the optimizer
    np.testing.assert_array_equal(ev.steps.stale_grad_norm[1:], 0.0)


def test_zeroed_before_one_of_several_backward_calls_is_not_stale(store_path):
    """A GAN-style step: a backward through the model for another objective, then the model's own
    zero_grad and two backward calls, then its step. The smallest norm over the step's backward
    calls is the one before its own first backward: zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for i, (x, y) in enumerate(_batches(6)):
            if i:
                model(x).mean().backward()  # the other player's loss, through this model
            model.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            nn.functional.mse_loss(model(-x), y).backward()
            opt.step()
    ev = dbg.evidence()
    assert (ev.steps.backward_calls[1:] >= 2).all()
    np.testing.assert_array_equal(ev.steps.stale_grad_norm, 0.0)
