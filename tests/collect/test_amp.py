"""Mixed precision with a real torch.amp.GradScaler (float16 autocast on the CPU): losses recorded
unscaled, the scale series, skipped steps counted as steps, and the loss-scale collapse told apart
from the healthy skips of a scaler finding its scale."""

import numpy as np
import pytest
import torch
from torch import nn

import modeldebug as md
from modeldebug.collect.session import watch
from modeldebug.pipeline import evaluate

SERIOUS = ("high", "medium")


def _data(n=512, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = (x[:, :4] @ torch.tensor([1.0, -2.0, 0.5, 1.5])).unsqueeze(1) * scale
    return x, y


def _train(dbg_config, steps, *, init_scale=2.0 ** 16, growth_interval=2000, target_scale=1.0, lr=1e-2,
           accumulate=1, enabled=True):
    """A float16 autocast regression loop with a GradScaler; returns (debugger, what the loop saw:
    the unscaled loss, the scale used, whether the step was skipped, per optimizer step)."""
    torch.manual_seed(0)
    x, y = _data(scale=target_scale)
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval, enabled=enabled)
    seen = []
    g = torch.Generator().manual_seed(1)
    with watch(model, opt, config=dbg_config) as dbg:
        for _ in range(steps):
            losses = []
            for _ in range(accumulate):
                i = torch.randint(0, len(x), (32,), generator=g)
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = nn.functional.mse_loss(model(x[i]), y[i])
                scaler.scale(loss / accumulate).backward()
                losses.append(loss.item() / accumulate)
            used = scaler.get_scale()
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            moved = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
            seen.append((float(np.mean(losses)), used, not moved))
    return dbg, seen


def test_losses_are_unscaled_and_skipped_steps_are_steps(store_path):
    # An initial scale far too high: the scaler skips steps (halving each time) until it fits.
    dbg, seen = _train(md.DebuggingConfig(store_path=store_path), 40, init_scale=2.0 ** 30)
    s = dbg.evidence().steps
    loss, used, skipped = map(np.array, zip(*seen))
    assert skipped[:5].all() and (~skipped).sum() >= 10  # the run did skip, then trained
    assert len(s) == 40 == dbg.step_count  # every iteration is a step, skipped or not
    np.testing.assert_allclose(s.loss, loss, rtol=1e-6)
    np.testing.assert_allclose(s.loss_scale, used, rtol=0)
    np.testing.assert_array_equal(s.scaler_skipped, skipped)
    np.testing.assert_array_equal(s.optimizer_stepped, ~skipped)
    # Gradient norms are the unscaled ones (scaler.step unscales before optimizer.step), and a
    # skipped step's inf gradients are not measured.
    assert np.isnan(s.grad_norm[skipped]).all()
    assert np.isfinite(s.grad_norm[~skipped]).all() and s.grad_norm[~skipped].max() < 1e4
    series = evaluate(dbg.evidence()).metrics.series  # the report's series carry both
    np.testing.assert_allclose(series.loss_scale, used)
    np.testing.assert_array_equal(series.scaler_skipped, skipped.astype(float))


def test_accumulated_scaled_losses_make_one_step_in_the_users_units(store_path):
    dbg, seen = _train(md.DebuggingConfig(store_path=store_path), 12, accumulate=4)
    s = dbg.evidence().steps
    loss, used, skipped = map(np.array, zip(*seen))
    assert len(s) == 12 and (s.backward_calls == 4).all()
    # the mean of the four backward losses (each loss/4, unscaled) as the loop computed them
    np.testing.assert_allclose(s.loss, loss, rtol=1e-5)
    np.testing.assert_allclose(s.loss_scale, used, rtol=0)


def test_a_disabled_scaler_changes_nothing(store_path):
    dbg, seen = _train(md.DebuggingConfig(store_path=store_path), 8, enabled=False)
    s = dbg.evidence().steps
    np.testing.assert_allclose(s.loss, [v[0] for v in seen], rtol=1e-6)
    assert np.isnan(s.loss_scale).all() and not s.scaler_skipped.any() and s.optimizer_stepped.all()
    assert "loss_scale" not in evaluate(dbg.evidence()).to_json()  # no scaler: the report is as without one


def test_scaler_errors_reach_the_user_as_they_are(store_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        scaler.scale(model(torch.randn(8, 4)).pow(2).mean()).backward()
        scaler.step(opt)
        with pytest.raises(RuntimeError, match="step\\(\\) has already been called") as raised:
            scaler.step(opt)
        # (the traceback goes from this line into torch, not through our wrapper)
        assert not [e for e in raised.traceback if "modeldebug" in str(e.path)]
        scaler.update()
    assert dbg.step_count == 1 and not dbg.guard.broken


def _findings(dbg):
    return evaluate(dbg.evidence()).findings


def test_a_collapsing_loss_scale_is_found_and_healthy_skips_are_not(store_path, tmp_path):
    # Targets beyond float16's range (largest 65504): the forward overflows once the model learns
    # their size, every step from then on is skipped and the scale halves each time.
    dbg, seen = _train(md.DebuggingConfig(store_path=store_path), 120, target_scale=3e4, lr=0.05)
    assert np.mean([v[2] for v in seen[-30:]]) > 0.5  # the loop itself saw the weights all but stop
    found = [f for f in _findings(dbg) if f.kind == "nan_or_inf"]
    assert found and found[0].severity == "high" and found[0].causes[0] == "numerically_unstable_op"
    assert "loss scale collapsed" in found[0].message and found[0].evidence["min_loss_scale"] < 1e-6

    # A scaler that starts 2**24 high and grows every 10 clean steps skips again and again, and
    # settles: nothing to report.
    dbg, seen = _train(md.DebuggingConfig(store_path=str(tmp_path / "h.db")), 120, init_scale=2.0 ** 24,
                       growth_interval=10)
    assert sum(v[2] for v in seen[20:]) >= 3  # it did skip after the start
    findings = _findings(dbg)
    assert not [f for f in findings if f.kind == "nan_or_inf"]
    assert not [f for f in findings if f.severity in SERIOUS], [(f.kind, f.message) for f in findings]


@pytest.mark.parametrize("unscale_first", [False, True], ids=["clip_scaled", "unscale_then_clip"])
def test_clipping_scaled_gradients_is_found_and_norms_stay_unscaled(store_path, unscale_first):
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu")
    norms = []  # the unscaled norm before clipping, as the loop measures it
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for step in range(20):
            i = slice(32 * step % 480, 32 * step % 480 + 32)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.mse_loss(model(x[i]), y[i])
            scaler.scale(loss).backward()
            if unscale_first:
                scaler.unscale_(opt)
            scale = 1.0 if unscale_first else scaler.get_scale()
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)) / scale)
            scaler.step(opt)
            scaler.update()
    s = dbg.evidence().steps
    norms = np.array(norms)
    overflow = ~np.isfinite(norms)  # steps the scaler skips: their gradient norm is not measured
    assert np.isnan(s.grad_norm[overflow]).all() and (~overflow).sum() >= 15
    np.testing.assert_allclose(s.grad_norm[~overflow], norms[~overflow], rtol=1e-4)
    np.testing.assert_array_equal(s.clips_scaled, 0 if unscale_first else 1)
    found = [f for f in _findings(dbg) if f.kind == "clip_before_backward"]
    if unscale_first:
        assert not found
    else:
        assert found and found[0].severity == "high" and found[0].causes == ["clipping_misplaced"]
        assert "scaler.unscale_(optimizer)" in found[0].recommendations[0].description


def test_a_scaler_that_skips_every_step_is_not_a_missing_optimizer_step(store_path):
    # Inputs beyond float16's range: the forward overflows from the first step, nothing is applied.
    torch.manual_seed(0)
    x, y = _data()
    x = x * 3e4
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
        for step in range(30):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.mse_loss(model(x[:32]), y[:32])
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    assert dbg.evidence().steps.scaler_skipped.all()
    findings = _findings(dbg)
    collapse = [f for f in findings if f.kind == "nan_or_inf"]
    assert collapse and "skipped every step" in collapse[0].message and collapse[0].severity == "high"
    assert collapse[0].causes[0] == "unnormalized_inputs"  # the batches are beyond float16 already
    assert not [f for f in findings if "missing_optimizer_step" in f.causes]


def test_fsdp_sharded_grad_scaler_losses_are_unscaled_too(store_path, tmp_path):
    import torch.distributed as dist

    # (imported after the debugger starts, as a script does: the wrappers go in when it is imported)
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with watch(model, opt, config=md.DebuggingConfig(store_path=store_path)) as dbg:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            assert hasattr(ShardedGradScaler.scale, "__wrapped__")  # (its own scale and unscale_ are wrapped)
            scaler = ShardedGradScaler("cpu", init_scale=2.0 ** 12)
            losses = []
            for step in range(6):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = nn.functional.mse_loss(model(x[:32]), y[:32])
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
                scaler.step(opt)
                scaler.update()
                losses.append(loss.item())
        s = dbg.evidence().steps
    finally:
        dist.destroy_process_group()
    np.testing.assert_allclose(s.loss, losses, rtol=1e-6)
    assert (s.loss_scale == 2.0 ** 12).all() and (s.clips_scaled == 0).all()  # unscale_ seen: no misplaced clip
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    assert not hasattr(ShardedGradScaler.scale, "__wrapped__")  # the original again
