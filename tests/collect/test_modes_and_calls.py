"""Train/eval mode, scheduler and clipping calls, weight decay: what the collector records, checked
against the loop's own counts and losses."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md
from modeldebug.collect.session import watch
from modeldebug.events import GradientClip, LrScheduler


def _setup(seed=0, **opt_kw):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, **opt_kw)


def _batch(i, n=8):
    g = torch.Generator().manual_seed(i)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _config(path):
    return md.DebuggingConfig(every=1, store_path=path)


def test_training_left_in_eval_mode_is_training_not_validation(store_path):
    model, opt = _setup()
    x_val, y_val = _batch(999, 32)
    losses, val_losses, eval_steps = [], [], 0
    with watch(model, opt, config=_config(store_path)) as dbg:
        model.train()
        for epoch in range(3):
            for i in range(5):
                x, y = _batch(epoch * 5 + i)
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                eval_steps += not model.training
            model.eval()  # the evaluation leaves the model in eval mode: epochs 1 and 2 train in it
            with torch.no_grad():
                val_losses.append(F.cross_entropy(model(x_val), y_val).item())
    ev = dbg.evidence()
    assert len(ev.steps) == 15 and eval_steps == 10
    np.testing.assert_allclose(ev.steps.loss, losses, rtol=1e-5)  # no training loss taken as validation
    assert list(ev.steps.eval_mode) == [False] * 5 + [True] * 10
    assert ev.steps.backward_calls.tolist() == [1] * 15
    np.testing.assert_allclose(ev.validation.loss, val_losses, rtol=1e-5)
    assert ev.validation.batches.tolist() == [1, 1, 1] and ev.validation.train_mode_batches.tolist() == [0, 0, 0]


def test_an_eval_mode_pass_with_grad_on_stays_validation(store_path):
    model, opt = _setup()
    x_val, y_val = _batch(999, 32)
    with watch(model, opt, config=_config(store_path)) as dbg:
        for epoch in range(2):
            model.train()
            for i in range(4):
                opt.zero_grad()
                F.cross_entropy(model(_batch(i)[0]), _batch(i)[1]).backward()
                opt.step()
            model.eval()
            val = F.cross_entropy(model(x_val), y_val).item()  # no torch.no_grad(): still an evaluation
    ev = dbg.evidence()
    assert len(ev.steps) == 8 and not ev.steps.eval_mode.any()
    assert len(ev.validation) == 2
    np.testing.assert_allclose(ev.validation.loss[-1], val, rtol=1e-5)


def test_evaluation_in_train_mode_is_counted(store_path):
    model, opt = _setup()
    with watch(model, opt, config=_config(store_path)) as dbg:
        for i in range(4):
            opt.zero_grad()
            F.cross_entropy(model(_batch(i)[0]), _batch(i)[1]).backward()
            opt.step()
        with torch.no_grad():  # model.eval() forgotten
            for j in range(3):
                x, y = _batch(100 + j)
                F.cross_entropy(model(x), y)
        opt.zero_grad()
        F.cross_entropy(model(_batch(9)[0]), _batch(9)[1]).backward()
        opt.step()
    v = dbg.evidence().validation
    assert v.batches.tolist() == [3] and v.train_mode_batches.tolist() == [3]


def test_clipping_calls_before_and_after_backward(store_path):
    model, opt = _setup()
    with watch(model, opt, config=_config(store_path)) as dbg:
        for i in range(6):
            x, y = _batch(i)
            opt.zero_grad()
            if i < 3:
                nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # before backward: never clips
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if i >= 3:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                nn.utils.clip_grad_value_(model.parameters(), 0.1)
            opt.step()
    ev = dbg.evidence()
    assert ev.steps.clip_calls.tolist() == [1, 1, 1, 2, 2, 2]
    assert ev.steps.clips_before_backward.tolist() == [1, 1, 1, 0, 0, 0]
    clips = ev.events_of(GradientClip)
    assert [(c.function, c.max_value, c.before_backward) for c in clips] == [
        ("clip_grad_norm_", 0.5, True), ("clip_grad_norm_", 1.0, False)]


def test_scheduler_calls_and_weight_decay(store_path):
    model, opt = _setup(momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    lrs = []
    with watch(model, opt, config=_config(store_path)) as dbg:
        for i in range(6):
            opt.zero_grad()
            F.cross_entropy(model(_batch(i)[0]), _batch(i)[1]).backward()
            opt.step()
            lrs.append(opt.param_groups[0]["lr"])
            scheduler.step()  # every batch
    ev = dbg.evidence()
    # A call after a step's optimizer.step() is counted with the next step that closes.
    assert ev.steps.scheduler_steps.tolist() == [0, 1, 1, 1, 1, 1]
    np.testing.assert_allclose(ev.steps.lr, lrs)
    (sched,) = ev.events_of(LrScheduler)
    assert sched.type == "StepLR" and sched.settings["step_size"] == 2 and sched.settings["gamma"] == 0.5
    assert {p.weight_decay for p in ev.params.values()} == {5e-4}
