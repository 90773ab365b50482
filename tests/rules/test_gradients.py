"""exploding_gradient, vanishing_gradient, nan_or_inf on hand-built evidence."""

from __future__ import annotations

import numpy as np
import pytest
from builders import build, healthy_columns

from modeldebug.config import AlertThresholds, DebuggingConfig
from modeldebug.evidence import Evidence, OptimizerInfo
from modeldebug.rules.exploding_gradient import ExplodingGradient
from modeldebug.rules.nan_or_inf import NanOrInf
from modeldebug.rules.vanishing_gradient import VanishingGradient


def _param_rows(cols, param, values, from_step=0):
    pt = cols["param_stats"]
    rows = (pt["param"] == param) & (pt["step"] >= from_step)
    pt["grad_norm"] = np.where(rows, values, pt["grad_norm"])


def _explode(cols, at=150, factor=1e4):
    s = cols["steps"]
    n = len(s["step"])
    s["grad_norm"][at:] = factor * np.geomspace(1, 100, n - at)
    s["loss"][at:] = np.geomspace(1, 1e3, n - at)
    _param_rows(cols, "net.2.weight", 1e5, from_step=at)


# --- exploding_gradient ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opt, lr, first_cause",
    [("SGD", 5.0, "learning_rate_too_high"), ("Adam", 0.1, "learning_rate_too_high"),
     ("SGD", 0.01, "learning_rate_too_high")],
    ids=["sgd-lr5", "adam-lr0.1", "sgd-moderate-lr"],
)
def test_exploding_fires_with_location_step_and_concrete_lr(opt, lr, first_cause):
    cols = healthy_columns()
    _explode(cols)
    cols["optimizers"] = [OptimizerInfo(opt, [{"lr": lr}])]
    (f,) = ExplodingGradient().check(build(cols))
    assert (f.kind, f.step, f.location, f.severity) == ("exploding_gradient", 150, "net.2", "high")
    assert f.causes[0] == first_cause
    assert f"lr is {lr:g}; try {lr / 10:g}" in f.recommendations[0].description
    assert f"torch.optim.{opt}(model.parameters(), lr={lr / 10:g})" == f.recommendations[0].implementation
    assert f.evidence["grad_norm"] >= 1e4 and "net.2.weight" in f.message


def test_exploding_blames_unnormalized_inputs_when_lr_is_usual():
    cols = healthy_columns()
    _explode(cols)
    cols["steps"]["input_mean"][:] = 120.0
    cols["steps"]["input_std"][:] = 60.0
    (f,) = ExplodingGradient().check(build(cols))
    assert f.causes[0] == "unnormalized_inputs"


def test_exploding_that_does_not_hurt_is_low():
    cols = healthy_columns()
    cols["steps"]["grad_norm"][150:152] = 500.0  # two spikes, the loss keeps falling
    (f,) = ExplodingGradient().check(build(cols))
    assert f.severity == "low"


@pytest.mark.parametrize("factor", [1.0, 60.0], ids=["healthy", "near-miss-60x"])
def test_exploding_stays_quiet(factor):
    cols = healthy_columns()
    cols["steps"]["grad_norm"][150:] *= factor
    assert ExplodingGradient().check(build(cols)) == []


def test_exploding_alert_threshold():
    cols = healthy_columns()
    cfg = DebuggingConfig(alert_thresholds=AlertThresholds(gradient_norm=1.1))
    cols["steps"]["grad_norm"][:] = 1.0
    cols["steps"]["grad_norm"][40] = 1.5
    (f,) = ExplodingGradient().check(build(cols, config=cfg))
    assert (f.severity, f.step, f.evidence["alert_threshold"]) == ("medium", 40, 1.1)
    cfg = DebuggingConfig(alert_thresholds=AlertThresholds(gradient_norm=2.0))
    assert ExplodingGradient().check(build(cols, config=cfg)) == []


@pytest.mark.parametrize("ratio, fires", [(200.0, True), (50.0, False)], ids=["ratio-200", "near-miss-50"])
def test_exploding_first_to_last_layer_ratio(ratio, fires):
    cols = healthy_columns()
    cols["param_stats"]["grad_norm"] = np.full(len(cols["param_stats"]["step"]), 0.01)
    _param_rows(cols, "net.0.weight", 0.01 * ratio)
    cols["steps"]["loss"][:] = 2.3  # and it hurts
    found = ExplodingGradient().check(build(cols))
    assert bool(found) == fires
    if fires:
        assert found[0].location == "net.0" and found[0].causes[0] == "bad_weight_init"


def test_no_layer_ratio_when_the_head_shares_the_first_layers_weight():
    """A language model's head tied to its token embedding: the embedding's gradient holds the head's,
    and the head has no parameter of its own to compare with."""
    from modeldebug.evidence import LayerInfo

    cols = healthy_columns()
    cols["param_stats"]["grad_norm"] = np.full(len(cols["param_stats"]["step"]), 0.01)
    _param_rows(cols, "net.0.weight", 2.0)
    cols["steps"]["loss"][:] = 2.3
    assert ExplodingGradient().check(build(cols))  # untied: the ratio is judged
    cols["layers"]["lm_head"] = LayerInfo("lm_head", "Linear", 99, 1280, "Linear(in_features=128, out_features=10)")
    assert ExplodingGradient().check(build(cols)) == []


# --- vanishing_gradient ------------------------------------------------------------------------


def _vanish(cols, first=1e-6):
    cols["param_stats"]["grad_norm"] = np.full(len(cols["param_stats"]["step"]), 0.1)
    _param_rows(cols, "net.0.weight", first)
    cols["steps"]["loss"][:] = 2.3 + 0.01 * np.sin(np.arange(len(cols["steps"]["loss"])))


@pytest.mark.parametrize("act, first_cause", [("Sigmoid", "saturating_activation_choice"),
                                              ("ReLU", "missing_normalization_layer")], ids=["sigmoid", "relu"])
def test_vanishing_fires_on_first_layer(act, first_cause):
    cols = healthy_columns(act=act)
    _vanish(cols)
    (f,) = VanishingGradient().check(build(cols))
    assert (f.kind, f.location, f.severity, f.step) == ("vanishing_gradient", "net.0", "high", 10)
    assert f.causes[0] == first_cause
    assert any("kaiming_normal_(model.net[0].weight" in (r.implementation or "") for r in f.recommendations)


def test_vanishing_with_tiny_init_blames_init():
    cols = healthy_columns(act="Sigmoid")
    _vanish(cols)
    pt = cols["param_stats"]
    pt["norm"] = np.where(pt["param"] == "net.0.weight", 1e-3, pt["norm"])
    (f,) = VanishingGradient().check(build(cols))
    assert f.causes[0] == "bad_weight_init"


def test_vanishing_that_does_not_hurt_is_low():
    cols = healthy_columns()
    cols["param_stats"]["grad_norm"] = np.full(len(cols["param_stats"]["step"]), 0.1)
    _param_rows(cols, "net.0.weight", 1e-6)
    (f,) = VanishingGradient().check(build(cols))
    assert f.severity == "low"


@pytest.mark.parametrize("first", [0.1, 2e-4], ids=["healthy", "near-miss-ratio-2e-3"])
def test_vanishing_stays_quiet(first):
    cols = healthy_columns()
    _vanish(cols, first)
    assert VanishingGradient().check(build(cols)) == []


def test_vanishing_from_global_norm_without_layer_data():
    cols = healthy_columns()
    cols["steps"]["grad_norm"][:] = 1e-6  # ~235k parameters: RMS 2e-9
    cols["param_stats"] = {}
    (f,) = VanishingGradient().check(build(cols))
    assert f.location is None and f.evidence["grad_rms"] < 1e-7


# --- nan_or_inf --------------------------------------------------------------------------------


def _nan_at(cols, at=120, grow=False):
    s = cols["steps"]
    s["loss"][at:] = np.nan
    s["loss_nonfinite"] = np.arange(len(s["step"])) >= at
    s["grad_nonfinite"] = np.arange(len(s["step"])) >= at
    s["grad_norm"][at:] = np.nan
    if grow:
        s["grad_norm"][at - 10:at] = np.geomspace(10, 1e6, 10)
    lt = cols["layer_stats"]
    lt["nonfinite"] = np.where((lt["step"] >= at) & np.isin(lt["layer"], ["net.2", "net.3", "net.4"]), 5, 0)


@pytest.mark.parametrize(
    "grow, inputs_bad, first_cause",
    [(True, False, "learning_rate_too_high"), (False, False, "numerically_unstable_op"), (False, True, "other")],
    ids=["after-growth", "sudden", "bad-inputs"],
)
def test_nan_fires_at_first_step_and_first_layer(grow, inputs_bad, first_cause):
    cols = healthy_columns()
    _nan_at(cols, 120, grow)
    if inputs_bad:
        cols["steps"]["input_nonfinite"] = np.arange(len(cols["steps"]["step"])) >= 118
    (f,) = NanOrInf().check(build(cols))
    if inputs_bad:  # the data's fault, not the model's: no layer blamed, data_issue says more
        assert (f.kind, f.step, f.location, f.severity) == ("nan_or_inf", 120, None, "medium")
    else:
        assert (f.kind, f.step, f.location, f.severity) == ("nan_or_inf", 120, "net.2", "high")
    assert f.causes[0] == first_cause
    if grow:
        assert "lr is 0.01; try 0.001" in f.recommendations[0].description


def test_nan_quiet_on_healthy_and_on_missing_loss():
    assert NanOrInf().check(build(healthy_columns())) == []
    # a NaN loss column without the non-finite flag is missing data, not a NaN loss
    ev = Evidence.build(steps=[{"step": i, "grad_norm": 1.0} for i in range(50)])
    assert NanOrInf().check(ev) == []


@pytest.mark.parametrize(
    "origin, location, first_cause, severity, words",
    [
        ({"phase": "forward", "module": "net.1", "module_type": "Log", "op": "log", "cause": "log of 0"},
         "net.1", "numerically_unstable_op", "high", "`log` in net.1 (Log) in the forward pass: log of 0"),
        ({"phase": "backward", "module": "net.0", "module_type": "RowNorm", "op": "SqrtBackward0",
          "cause": "the gradient of sqrt at 0 is infinite"},
         "net.0", "numerically_unstable_op", "high", "backward pass: the gradient of sqrt at 0"),
        ({"phase": "loss", "module": None, "module_type": None, "op": None, "cause": "..."},
         None, "numerically_unstable_op", "high", "arises in the loss computation"),
        ({"phase": "loss", "module": None, "module_type": None, "op": None, "cause": "...", "grow": True},
         None, "learning_rate_too_high", "high", "arises in the loss computation"),
        ({"phase": "input", "module": None, "module_type": None, "op": None, "cause": "NaN in the batch"},
         None, "other", "medium", "the data, not the model"),
        ({"phase": "loss", "module": "rnn", "module_type": "RNN", "op": None,
          "cause": "the model's outputs reach 9.22e+13: rnn turns inputs of at most 4.36 into outputs up to 1.55e+15",
          "details": {"blown_up": {"module": "rnn", "input": 4.36, "output": 1.55e15, "ratio": 3.6e14}}},
         "rnn", "bad_weight_init", "high", "rnn turns inputs of at most 4.36 into outputs up to 1.55e+15"),
    ],
    ids=["forward-op", "backward-node", "in-the-loss", "in-the-loss-after-blow-up", "in-the-batch",
         "activations-blown-up"],
)
def test_nan_uses_the_collectors_replay_of_the_first_bad_step(origin, location, first_cause, severity, words):
    cols = healthy_columns()
    origin = dict(origin)
    # A replayed op of the model outranks the learning rate even after gradient growth; a NaN
    # that only appears in the loss after a blow-up is the learning rate's.
    _nan_at(cols, 120, grow=origin.pop("grow", origin["phase"] != "loss"))
    ev = build(cols)
    ev.events.append({"step": 121, "type": "nonfinite_origin", "data": {"step": 120, "details": {}, **origin}})
    (f,) = NanOrInf().check(ev)
    assert (f.location, f.causes[0], f.severity) == (location, first_cause, severity)
    assert words in f.message
    assert f.evidence["origin"]["phase"] == origin["phase"]
    assert ("blown_up" in f.evidence["origin"]) == ("blown_up" in origin.get("details", {}))


@pytest.mark.parametrize("at, input_scale, first_cause", [
    (0, 1.0, "bad_weight_init"),  # before any update: the initial weights grew the state
    (0, 3e4, "unnormalized_inputs"),  # raw inputs of scale 3e4 did
    (120, 1.0, "numerically_unstable_op"),  # after 120 updates with no growth: not the init's alone
])
def test_a_layer_overflowing_before_any_update_is_the_init(at, input_scale, first_cause):
    cols = healthy_columns()
    _nan_at(cols, at)
    cols["steps"]["input_std"] = cols["steps"]["input_std"] * input_scale
    ev = build(cols)
    origin = {"phase": "forward", "module": "rnn", "module_type": "RNN", "op": "rnn_relu",
              "cause": "overflow in rnn_relu (inputs up to 6.24e+26)"}
    ev.events.append({"step": at + 1, "type": "nonfinite_origin", "data": {"step": at, "details": {}, **origin}})
    (f,) = NanOrInf().check(ev)
    assert (f.location, f.causes[0]) == ("rnn", first_cause)
    if at == 0:
        assert "No update had run yet" in f.message
        first_fix = f.recommendations[0]
        assert ("Standardize" in first_fix.description if input_scale > 1
                else "orthogonal_" in (first_fix.implementation or ""))
