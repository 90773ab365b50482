"""zero_grad() between backward() and step(): the steps that found their gradients cleared are
counted (event steps_on_cleared_gradients at stop), and the loops that zero in the right places,
one optimizer or several, are not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug.events import StepsOnClearedGradients


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g)


def _events(dbg) -> list[StepsOnClearedGradients]:
    return list(dbg.evidence().events_of(StepsOnClearedGradients))


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_between_backward_and_step_is_counted(store_path, set_to_none):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with md.watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for i in range(12):
            x, y = _data(i)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.zero_grad(set_to_none=set_to_none)
            opt.step()
    (e,) = _events(dbg)
    assert (e.steps, e.optimizer_steps, e.first_step, e.optimizer) == (12, 12, 0, "Adam")


def _two_optimizers_one_backward(model, enc, dec):
    for i in range(10):
        x, y = _data(i)
        enc.zero_grad()
        dec.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        enc.step()
        dec.step()


def _gan_like(model, enc, dec):
    """Two losses, each stepped by its own optimizer; the second zeroes what the first backward
    left on its parameters (correct: those gradients are not its own loss's)."""
    for i in range(10):
        x, y = _data(i)
        enc.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        enc.step()
        dec.zero_grad()
        nn.functional.cross_entropy(model(x), (y + 1) % 3).backward()
        dec.step()


def _accumulating(model, enc, dec):
    for i in range(12):
        x, y = _data(i)
        (nn.functional.cross_entropy(model(x), y) / 3).backward()
        if i % 3 == 2:
            enc.step()
            dec.step()
            enc.zero_grad()
            dec.zero_grad()


@pytest.mark.parametrize("loop", [_two_optimizers_one_backward, _gan_like, _accumulating])
def test_loops_that_zero_in_the_right_places_are_not_counted(store_path, loop):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    enc = torch.optim.SGD(model[0].parameters(), lr=0.1)
    dec = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with md.watch(model, [enc, dec], config=md.DebuggingConfig(store_path=store_path)) as dbg:
        loop(model, enc, dec)
    assert _events(dbg) == []
    assert len(dbg.evidence().steps) >= 4
