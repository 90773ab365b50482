"""The always-on path: what our hooks do on an unsampled step does not grow with the model.

Counted, not timed: every Python and C call made while a frame of modeldebug's own code is on the
stack (``sys.setprofile``), over steady unsampled steps of a 3-module and a 30-module model.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import torch
from torch import nn

import modeldebug as md

SRC = str(Path(md.__file__).parent)


def _stack(modules: int) -> nn.Sequential:
    """Linear, ReLU, Linear, ... : ``modules`` of them."""
    return nn.Sequential(*(nn.Linear(8, 8) if i % 2 == 0 else nn.ReLU() for i in range(modules)))


def _calls_per_step(model: nn.Module, tmp_path, steps: int = 10) -> collections.Counter:
    torch.manual_seed(0)
    x, y = torch.randn(4, 8), torch.randint(0, 8, (4,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    cfg = md.DebuggingConfig(every=10**9, warmup_steps=0, store_path=str(tmp_path / f"{len(list(model))}.db"))
    counts: collections.Counter = collections.Counter()

    def profile(frame, event, arg):
        if event not in ("call", "c_call"):
            return
        f = frame
        while f is not None and not f.f_code.co_filename.startswith(SRC):
            f = f.f_back
        if f is None:
            return  # the user's own work, no frame of ours under it
        where = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
        counts[(where, getattr(arg, "__qualname__", "") if event == "c_call" else "")] += 1

    with md.watch(model, opt, config=cfg) as dbg:
        for _ in range(150):  # past the schedule's warm-up and the first 100 steps' fingerprints
            step()
        sampled = dbg.monitor_overhead().sampled_steps
        dbg.store.flush()  # the store's next timed write (each second) falls outside the counted steps
        sys.setprofile(profile)
        try:
            for _ in range(steps):
                step()
        finally:
            sys.setprofile(None)
        assert dbg.monitor_overhead().sampled_steps == sampled  # every counted step was unsampled
    return counts


def test_calls_on_an_unsampled_step_do_not_depend_on_the_number_of_modules(tmp_path):
    small, large = _stack(3), _stack(30)
    few, many = _calls_per_step(small, tmp_path), _calls_per_step(large, tmp_path)
    grown = {k: (few.get(k, 0), many[k]) for k in many if many[k] > few.get(k, 0)}
    assert not grown, f"calls that grow with the model (3 modules, 30 modules): {grown}"
    assert sum(many.values()) == sum(few.values())
