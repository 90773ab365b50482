"""Hooks and patches are always removed, nothing is written on the user's objects (Captum's test, ours)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import optimizer as optim_mod
from torch.utils.data import dataloader

import modeldebug as md
from modeldebug.collect.session import watch

def _current():
    return {
        "backward": torch.Tensor.backward,
        "autograd.backward": torch.autograd.backward,
        "cross_entropy": F.cross_entropy,
        "mse_loss": F.mse_loss,
        "next": dataloader._BaseDataLoaderIter.__next__,
        "zero_grad": torch.optim.Optimizer.zero_grad,
    }


ORIGINALS = _current()  # as torch has them before any debugger runs


class Boom(nn.Module):
    def __init__(self, fail_at):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("forward failed")
        return self.lin(x)


def _model(fail_at=0):
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), Boom(fail_at), nn.Linear(4, 2))


def _assert_clean(model, attrs_before):
    for name, m in model.named_modules():
        assert not m._forward_hooks, name
        assert not m._forward_pre_hooks, name
        assert not m._backward_hooks, name
        assert not getattr(m, "_backward_pre_hooks", None), name
        assert set(vars(m)) == attrs_before[name], f"attributes written on {name}"
    assert not optim_mod._global_optimizer_pre_hooks
    assert not optim_mod._global_optimizer_post_hooks
    assert _current() == ORIGINALS


def _train(model, opt, steps=6):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 2, (8,))).backward()
        opt.step()


@pytest.mark.parametrize("where", ["normal", "forward_raises", "loop_raises", "interrupted"])
def test_no_hook_left_behind(where, store_path):
    model = _model(fail_at=4 if where == "forward_raises" else 0)
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    error = {"normal": None, "forward_raises": RuntimeError, "loop_raises": ValueError, "interrupted": KeyboardInterrupt}[where]
    cfg = md.DebuggingConfig(every=1, store_path=store_path)
    if error is None:
        with watch(model, opt, config=cfg) as dbg:
            _train(model, opt)
    else:
        with pytest.raises(error):
            with watch(model, opt, config=cfg) as dbg:
                _train(model, opt, steps=3)
                if where == "loop_raises":
                    raise ValueError("bad batch")
                if where == "interrupted":
                    raise KeyboardInterrupt
                _train(model, opt)
    _assert_clean(model, attrs)
    run = dbg.evidence().run
    assert run.status == {"normal": "completed", "interrupted": "interrupted"}.get(where, "crashed")
    if error is not None:
        assert any(e["type"] == "exception" for e in dbg.evidence().events)


def test_watching_twice_and_nesting_is_safe(store_path):
    model = _model()
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    outer = watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path))
    outer.attach(model).attach_optimizer(opt)  # attaching again changes nothing
    with outer:
        with watch(model, opt, config=md.DebuggingConfig(every=2, store_path=store_path)) as inner:
            _train(model, opt, steps=4)
        _train(model, opt, steps=2)
    _assert_clean(model, attrs)
    assert len(outer.evidence().steps) == 6
    assert len(inner.evidence().steps) == 4
    assert len(model[0]._forward_hooks) == 0


def test_stopping_a_debugger_never_started_says_so_and_writes_nothing(store_path, caplog):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dbg = watch(model, opt, config=md.DebuggingConfig(store_path=store_path))  # (no `with`, no start())
    _train(model, opt, steps=2)
    with caplog.at_level("WARNING"):
        assert dbg.stop() is None
    assert "never started" in caplog.text and "with md.watch" in caplog.text
    assert "could not finish writing" not in caplog.text
    dbg.stop()  # (twice is still safe)
    assert _current() == ORIGINALS


def test_exit_in_other_order_still_restores_the_originals(store_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    a = watch(model, opt, config=md.DebuggingConfig(store_path=store_path)).start()
    b = watch(model, opt, config=md.DebuggingConfig(store_path=store_path)).start()
    _train(model, opt, steps=2)
    a.stop()
    _train(model, opt, steps=1)
    b.stop()
    assert _current() == ORIGINALS
    assert len(a.evidence().steps) == 2 and len(b.evidence().steps) == 3


def test_no_tensor_of_the_graph_is_kept_after_the_step(store_path):
    import gc
    import weakref

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    refs = []
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)):
        for _ in range(3):
            opt.zero_grad()
            out = model(torch.randn(8, 4))
            loss = F.cross_entropy(out, torch.randint(0, 2, (8,)))
            loss.backward()
            opt.step()
            refs += [weakref.ref(out), weakref.ref(loss)]
            del out, loss
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_failure_inside_the_monitor_never_breaks_training(store_path, monkeypatch, caplog):
    import modeldebug.collect.hooks as session  # where the hooks reduce tensors

    def broken(*args, **kwargs):
        raise RuntimeError("statistics blew up")

    monkeypatch.setattr(session, "reduce", broken)
    model = _model()
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        _train(model, opt, steps=5)  # goes on as if unwatched
    _assert_clean(model, attrs)
    ev = dbg.evidence()
    assert ev.run.status == "completed"
    errors = [e for e in ev.events if e["type"] == "monitor_error"]
    assert len(errors) == 1 and errors[0]["data"]["message"] == "statistics blew up"
    assert "stopped watching" in caplog.text
    # and the report says so, with the step (the user should not read silence as health)
    from rich.console import Console

    from modeldebug.report.terminal import print_report

    report = dbg.report()
    assert report.metrics.monitor_stopped.model_dump() == {"step": 0, "hook": "_root_pre",  # reduces the batch
                                                 "error": "RuntimeError: statistics blew up"}
    console = Console(record=True, width=200)
    print_report(report, console)
    assert "stopped watching at step 0" in console.export_text()


def test_a_crash_in_a_watched_model_is_diagnosed_with_its_module(store_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(16, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RuntimeError):
        with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
            model(torch.randn(3, 4))
    report = dbg.report()
    (f,) = [f for f in report.findings if f.kind == "runtime_error"]
    assert f.location == "2.0" and f.evidence["cause"] == "shape_mismatch"
    assert "nn.Linear(8, 2)" in " ".join(r.implementation or "" for r in f.recommendations) + f.message
