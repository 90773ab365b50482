"""loss_spike: a loss far above its running level (robust z), recovered or not, with the batch that did it;
healthy noise, warm-up and a schedule's restarts are not spikes."""

import numpy as np
import pytest
from builders import build, healthy_columns

from modeldebug.events import BatchIdentity
from modeldebug.rules import run_rules
from modeldebug.rules.causality import link_findings
from modeldebug.rules.loss_spike import LossSpike


def _cols(n=2000, seed=0):
    return healthy_columns(n_steps=n, every=10, seed=seed)


def _spike(cols, step, factor=10.0, length=1):
    loss = cols["steps"]["loss"]
    loss[step:step + length] = loss[step:step + length] * factor


@pytest.mark.parametrize("seed", range(5))
def test_a_noisy_healthy_run_has_no_spike(seed):
    assert LossSpike().check(build(_cols(seed=seed))) == []


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_small_batch_loss_noise_is_not_a_spike(batch):
    """Each step's loss the mean of ``batch`` per-sample losses with an exponential tail (the noise of
    a classifier's cross-entropy on small batches), on a falling curve."""
    rng = np.random.default_rng(batch)
    cols = _cols(n=3000)
    level = 2.0 * np.exp(-np.arange(3000) / 600) + 0.05
    cols["steps"]["loss"] = level * rng.exponential(1.0, (3000, batch)).mean(axis=1)
    assert LossSpike().check(build(cols)) == []


def test_cosine_restarts_and_warmup_are_not_spikes():
    """SGDR: the lr jumps back up every 400 steps and the loss with it, for a few steps."""
    n = 2000
    cols = _cols(n=n)
    t = np.arange(n)
    lr = 0.001 + 0.1 * 0.5 * (1 + np.cos(np.pi * (t % 400) / 400))
    lr[:50] *= np.linspace(0.01, 1, 50)  # warm-up
    cols["steps"]["lr"] = lr
    for restart in range(400, n, 400):
        cols["steps"]["loss"][restart:restart + 3] *= [6.0, 3.0, 1.5]
    assert LossSpike().check(build(cols)) == []


def test_one_recovered_spike_is_a_hint_with_its_size_and_batch():
    cols = _cols()
    _spike(cols, 1200, factor=12.0)
    batch = BatchIdentity(step=1200, loss=1.0, level=0.1, epoch=3, position=17, content_hash="ab" * 16,
                          shape=[32, 784])
    ev = build(cols, events=[{"step": 1200, "type": batch.tag, "data": batch.to_data()}])
    [f] = LossSpike().check(ev)
    assert (f.kind, f.severity, f.step) == ("loss_spike", "low", 1200)
    [row] = f.evidence["spikes"]
    assert row["step"] == 1200 and row["recovered"] and row["z"] > 8
    assert row["loss"] == pytest.approx(cols["steps"]["loss"][1200])
    assert row["loss"] / row["level"] > 5
    assert (row["epoch"], row["position"], row["content_hash"]) == (3, 17, "ab" * 16)
    assert "batch 17 of epoch 3" in f.message
    assert "(3, 17)" in f.recommendations[0].implementation


def test_many_recovered_spikes_are_one_medium_finding_listing_them():
    cols = _cols()
    for step in (300, 700, 1100, 1500):
        _spike(cols, step, factor=8.0)
    [f] = LossSpike().check(build(cols))
    assert f.severity == "medium" and f.evidence["count"] == 4 and f.evidence["recovered"] == 4
    assert [r["step"] for r in f.evidence["spikes"]] == [300, 700, 1100, 1500]
    assert not f.evidence["diverged"]


def test_a_spike_followed_by_nan_is_high_and_links_to_nan_or_inf():
    cols = _cols()
    _spike(cols, 1000, factor=20.0, length=3)
    cols["steps"]["grad_norm"][1001:1003] *= [300.0, 1e4]  # the gradients follow (nan_or_inf blames the lr)
    cols["steps"]["loss"][1003:] = np.nan
    cols["steps"]["loss_nonfinite"] = np.arange(2000) >= 1003
    ev = build(cols)
    [f] = LossSpike().check(ev)
    assert (f.severity, f.step, f.evidence["diverged"]) == ("high", 1000, True)
    assert f.causes[0] == "learning_rate_too_high"
    linked = link_findings(run_rules(ev), ev)
    nan = next(x for x in linked if x.kind == "nan_or_inf")
    spike = next(x for x in linked if x.kind == "loss_spike")
    assert nan.caused_by == spike.id and spike.caused_by is None


def test_a_spike_training_never_recovers_from_is_high():
    cols = _cols()
    cols["steps"]["loss"][1500:] = cols["steps"]["loss"][1500:] * 15.0
    [f] = LossSpike().check(build(cols))
    assert f.severity == "high" and not f.evidence["spikes"][-1]["recovered"]
    assert "never recovered" in f.message


def test_a_small_bump_is_not_a_spike():
    """Far above the noise but not 2x the level: a noisy batch, not a spike."""
    cols = _cols()
    cols["steps"]["loss"][1200] = np.median(cols["steps"]["loss"][1170:1200]) * 1.8
    assert LossSpike().check(build(cols)) == []


def test_a_jump_among_others_nearly_as_large_is_noise():
    """Momentum overshoots of a healthy SGD run: jumps of about 2x the level, the largest not standing
    out from the others (z 12 next to z 9)."""
    cols = _cols()
    for step, factor in ((700, 1.9), (1100, 2.2), (1500, 1.9)):
        cols["steps"]["loss"][step] = np.median(cols["steps"]["loss"][step - 50:step]) * factor
    assert LossSpike().check(build(cols)) == []
    assert LossSpike(apart=0).check(build(cols))  # (the z-score alone would call the largest a spike)
    _spike(cols, 1800, factor=40.0)  # one far beyond them is a spike
    [f] = LossSpike().check(build(cols))
    assert [r["step"] for r in f.evidence["spikes"]] == [1800]


def test_a_nan_its_rule_blames_on_an_op_is_not_the_spikes_consequence():
    from modeldebug.rules.causality import LINKS
    from modeldebug.types import Finding

    link = next(l for l in LINKS if (l.root, l.consequence) == ("loss_spike", "nan_or_inf"))
    spike = Finding(kind="loss_spike", severity="high", confidence=0.8, message="", evidence={"diverged": True})
    by_lr = Finding(kind="nan_or_inf", severity="high", confidence=0.9, message="",
                    causes=["learning_rate_too_high", "numerically_unstable_op"])
    by_op = by_lr.model_copy(update={"causes": ["numerically_unstable_op", "learning_rate_too_high"]})
    ev = build(_cols(n=100))
    assert link.check(spike, by_lr, ev) and not link.check(spike, by_op, ev)
    recovered = spike.model_copy(update={"evidence": {"diverged": False}})
    assert not link.check(recovered, by_lr, ev)


def _batch_events(steps_positions):
    return [{"step": st, "type": BatchIdentity.tag,
             "data": BatchIdentity(step=st, loss=1.0, level=0.1, epoch=e, position=p).to_data()}
            for st, e, p in steps_positions]


def test_a_jump_at_every_epoch_boundary_is_not_a_spike():
    """Unshuffled data whose first batch is the hardest: the loss jumps at each epoch's start."""
    cols = _cols()
    starts = list(range(400, 2000, 400))
    for step in starts:
        _spike(cols, step, factor=8.0)
    assert LossSpike().check(build(cols))  # (without the batch positions: spikes)
    events = _batch_events([(st, st // 400, 0) for st in starts])
    assert LossSpike().check(build(cols, events=events)) == []
    # a bad batch elsewhere in the epoch is still one
    _spike(cols, 1250, factor=8.0)
    [f] = LossSpike().check(build(cols, events=events + _batch_events([(1250, 3, 50)])))
    assert [r["step"] for r in f.evidence["spikes"]] == [1250]
