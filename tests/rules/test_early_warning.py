"""Early warning (issue 19): a gradient norm still climbing by orders of magnitude is reported (medium)
on the evidence so far, before the loss shows it; a climb that has stopped stays a hint, and a
healthy run says nothing."""

import numpy as np
from builders import build, healthy_columns

from modeldebug.rules import run_rules
from modeldebug.rules.exploding_gradient import ExplodingGradient, climbing

BLOWUP, NAN = 1200, 1240


def _diverging(n=1300):
    """Healthy until BLOWUP, then the gradient norm grows 1.25x a step; the loss follows only late
    (it rises with the square of the norm once the norm is 100x up) and is NaN from NAN."""
    cols = healthy_columns(n_steps=n, every=10)
    s = cols["steps"]
    t = np.arange(n)
    growth = np.where(t >= BLOWUP, 1.25 ** (t - BLOWUP), 1.0)
    s["grad_norm"] = s["grad_norm"] * growth
    s["loss"] = s["loss"] * np.maximum(1.0, (growth / 100) ** 2)
    s["loss"][NAN:] = np.nan
    s["grad_norm"][NAN:] = np.nan
    s["loss_nonfinite"] = t >= NAN
    s["grad_nonfinite"] = t >= NAN
    return cols


def _upto(cols, n):
    """The evidence a live pass sees after ``n`` steps."""
    out = {**cols, "steps": {k: v[:n] for k, v in cols["steps"].items()}}
    for table in ("layer_stats", "param_stats"):
        keep = cols[table]["step"] < n
        out[table] = {k: v[keep] for k, v in cols[table].items()}
    out["validation"] = {k: v[cols["validation"]["step"] < n] for k, v in cols["validation"].items()}
    return build(out)


def _serious(ev, kind):
    return [f for f in run_rules(ev) if f.kind == kind and f.severity in ("high", "medium")]


def test_a_climbing_gradient_is_reported_before_the_loss_shows_it():
    cols = _diverging()
    first = next(n for n in range(BLOWUP, NAN + 1, 2) if _serious(_upto(cols, n), "exploding_gradient"))
    loss = cols["steps"]["loss"]
    assert first < NAN - 10
    # At that point the loss is still at its level: nothing else has seen it coming.
    assert loss[first - 1] < 2 * np.median(loss[BLOWUP - 50:BLOWUP])
    [f] = _serious(_upto(cols, first), "exploding_gradient")
    assert f.severity == "medium" and f.evidence["climbing_per_step"] > 1.1 and "still climbing" in f.message


def test_a_climb_that_stopped_while_the_loss_improves_stays_a_hint():
    cols = healthy_columns(n_steps=1000, every=10)
    gn = cols["steps"]["grad_norm"]
    gn[500:520] *= 1.3 ** np.arange(20)
    gn[520:] *= 1.3 ** 19  # up 150x, then level: the loss still falls
    [f] = ExplodingGradient().check(build(cols))
    assert f.severity == "low" and f.evidence["climbing_per_step"] is None


def test_healthy_runs_have_no_climb():
    for seed in range(3):
        ev = build(healthy_columns(n_steps=2000, every=10, seed=seed))
        assert not [f for f in run_rules(ev) if f.kind == "exploding_gradient"]


def test_climbing_needs_an_order_of_magnitude_rising_on_most_steps_to_the_peak():
    rising = 1.3 ** np.arange(30.0)
    assert climbing(rising, 16) > 1.2
    assert climbing(np.concatenate([rising, rising[-1:] * 0.3]), 16) is None  # fell back from the peak
    slow = np.concatenate([np.ones(10), 10 ** np.linspace(0, 0.8, 16)])
    assert climbing(slow, 16) is None  # not 10x over the window
    zigzag = 1.4 ** np.arange(16.0) * np.tile([1.0, 3.0], 8)
    assert climbing(zigzag, 16) is None  # up on half the steps only
    assert climbing(rising[:10], 16) is None  # too few values to tell


def _dying_layer(values):
    """A healthy run whose ReLU net.1 has ``values`` as its dead fraction at its last samples."""
    cols = healthy_columns(n_steps=600, every=10)
    lt = cols["layer_stats"]
    rows = np.flatnonzero(lt["layer"] == "net.1")[-len(values):]
    lt["dead_frac"][rows] = values
    return build(cols)


def test_units_dying_at_every_sample_are_reported_before_most_are_dead():
    from modeldebug.rules.dead_relu import DeadReLU

    [f] = DeadReLU().check(_dying_layer([0.1, 0.25, 0.4, 0.55, 0.7]))
    assert f.location == "net.1" and f.severity == "medium"
    assert f.evidence["dead_frac"] < 0.5 and f.evidence["dying"] == [0.25, 0.7]
    assert "More die at every sample" in f.message
    assert DeadReLU().check(_dying_layer([0.1, 0.25, 0.2, 0.55, 0.7])) == []  # not at every sample
    assert DeadReLU().check(_dying_layer([0.1, 0.15, 0.2, 0.3, 0.4])) == []  # not half dead yet
    assert DeadReLU().check(build(healthy_columns(n_steps=600, every=10))) == []


def test_a_burst_of_dead_units_then_a_plateau_is_not_still_dying():
    from modeldebug.rules.dead_relu import DeadReLU, dying

    # CI's sparse samples of a healthy fp16 MLP: half a layer died by step 45 and held, creeping up
    # by a unit between samples, so the last four rose "at every sample".
    assert DeadReLU().check(_dying_layer([0.02, 0.0078, 0.53, 0.539, 0.547])) == []
    plateau = np.array([0.0078, 0.53, 0.539, 0.547])
    assert dying(plateau, np.array([2, 45, 105, 141]), 4, 0.3, 0.5) is None
    # A steady death sampled at uneven steps is still dying: the rate per step counts, not the step.
    steady = np.array([0.2, 0.3, 0.5, 0.6])
    assert dying(steady, np.array([100, 110, 130, 140]), 4, 0.3, 0.5) == (0.2, 0.6)
