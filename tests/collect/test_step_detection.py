"""How steps are found: optimizer steps, gradient accumulation, loops that never step, manual marks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modeldebug as md
from modeldebug.collect.session import MAX_ACCUMULATION, Debugger, watch


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _batch(i):
    g = torch.Generator().manual_seed(i)
    return torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def test_gradient_accumulation_counts_optimizer_steps(store_path):
    model, opt = _setup()
    losses = []
    with watch(model, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for step in range(5):
            opt.zero_grad()
            micro = []
            for k in range(4):
                x, y = _batch(step * 4 + k)
                loss = F.cross_entropy(model(x), y)
                (loss / 4).backward()
                micro.append(loss.item() / 4)
            losses.append(np.mean(micro))
            opt.step()
    steps = dbg.evidence().steps
    assert len(steps) == 5
    assert (steps.backward_calls == 4).all() and (steps.forward_calls == 4).all()
    np.testing.assert_allclose(steps.loss, losses, rtol=1e-5)  # mean over the micro-batches
    assert steps.optimizer_stepped.all()


def test_a_loop_that_never_steps_is_counted_by_its_backward_passes(store_path):
    model, opt = _setup()
    n = MAX_ACCUMULATION + 10
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for i in range(n):
            opt.zero_grad()
            F.cross_entropy(model(*_batch(i)[:1]), _batch(i)[1]).backward()
            # optimizer.step() forgotten
    ev = dbg.evidence()
    assert len(ev.steps) == n
    assert not ev.steps.optimizer_stepped.any()
    assert list(ev.steps.step) == list(range(n))
    assert np.isfinite(ev.steps.loss).all()
    t = ev.param("0.weight")
    assert len(t) > 0 and t.has_grad.all()


def test_manual_steps_with_dbg_step(store_path):
    model, _ = _setup()
    with watch(model, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for i in range(4):
            x, y = _batch(i)
            loss = F.cross_entropy(model(x), y)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
            dbg.step(loss)
    steps = dbg.evidence().steps
    assert len(steps) == 4 and np.isfinite(steps.loss).all()
    assert not steps.optimizer_stepped.any()


def test_eval_mode_and_no_grad_passes_are_validation_not_steps(store_path):
    model, opt = _setup()
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for i in range(3):
            x, y = _batch(i)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()  # eval mode with gradients enabled: still evaluation
        val = F.cross_entropy(model(_batch(99)[0]), _batch(99)[1]).item()
        model.train()
        x, y = _batch(3)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    ev = dbg.evidence()
    assert len(ev.steps) == 4 and (ev.steps.forward_calls == 1).all()
    assert list(ev.validation.step) == [3]
    assert ev.validation.loss[0] == pytest.approx(val, rel=1e-6)


def test_several_models_and_optimizers_get_qualified_names(store_path):
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6))
    disc = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    dbg = Debugger(md.DebuggingConfig(every=1, store_path=store_path))
    dbg.attach(gen, "generator").attach(disc, "discriminator").attach_optimizer(opt_d).attach_optimizer(opt_g)
    with dbg:
        for _ in range(3):
            real, z = torch.randn(16, 6), torch.randn(16, 4)
            opt_d.zero_grad()
            d_loss = F.binary_cross_entropy_with_logits(disc(real), torch.ones(16, 1)) + F.binary_cross_entropy_with_logits(
                disc(gen(z).detach()), torch.zeros(16, 1)
            )
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad()
            F.binary_cross_entropy_with_logits(disc(gen(z)), torch.ones(16, 1)).backward()
            opt_g.step()
    ev = dbg.evidence()
    assert {"generator.0.weight", "discriminator.2.bias"} <= set(ev.params)
    assert {"generator.1", "discriminator.0"} <= set(ev.layers)
    assert [m.name for m in ev.run.models] == ["generator", "discriminator"]
    assert len(ev.steps) == 3  # the first optimizer to step closes a step
    assert ev.param("generator.0.weight").changed.any()


def test_compiled_model_is_watched_without_hooks_left_on_it(store_path):
    model, opt = _setup()
    compiled = torch.compile(model, backend="eager")
    with watch(compiled, opt, config=md.DebuggingConfig(every=1, store_path=store_path)) as dbg:
        for i in range(3):
            x, y = _batch(i)
            opt.zero_grad()
            F.cross_entropy(compiled(x), y).backward()
            opt.step()
    ev = dbg.evidence()
    assert len(ev.steps) == 3 and np.isfinite(ev.steps.loss).all() and np.isfinite(ev.steps.grad_norm).all()
    assert len(ev.layer_stats) == 9  # its 3 layers on 3 sampled steps, run eagerly (tests/collect/test_compile.py)
    assert "0.weight" in ev.params and ev.param("0.weight").changed.all()
    assert not any(m._forward_hooks for m in model.modules())


def test_nan_in_the_input_batch_is_flagged(store_path):
    model, opt = _setup()
    with watch(model, opt, config=md.DebuggingConfig(every=100, warmup_steps=1, store_path=store_path)) as dbg:
        for i in range(5):
            x, y = _batch(i)
            if i == 3:
                x[2, 1] = float("nan")
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    steps = dbg.evidence().steps
    assert steps.input_nonfinite.tolist() == [False, False, False, True, False]
    assert steps.loss_nonfinite[3] and steps.grad_nonfinite[3]


def test_type_errors_say_what_was_expected():
    with pytest.raises(TypeError, match="Expected `model` to be a torch.nn.Module"):
        watch("model")
    model, _ = _setup()
    with pytest.raises(TypeError, match="Expected `optimizer`"):
        watch(model, optimizer="sgd")


def test_backward_of_an_unwatched_model_is_not_a_step(store_path):
    model, opt = _setup()
    other = nn.Linear(3, 1)
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for i in range(3):
            x, y = _batch(i)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            other(torch.randn(2, 3)).sum().backward()  # unrelated autograd work
    steps = dbg.evidence().steps
    assert len(steps) == 3 and (steps.backward_calls == 1).all()


def test_pause_and_resume(store_path):
    model, opt = _setup()

    def train(n):
        for i in range(n):
            x, y = _batch(i)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        train(3)
        dbg.pause()
        assert not model._forward_hooks
        train(5)
        dbg.resume()
        train(2)
    assert len(dbg.evidence().steps) == 5
