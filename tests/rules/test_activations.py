"""dead_relu, saturated_activation, poor_weight_init on hand-built evidence."""

from __future__ import annotations

import numpy as np
import pytest
from builders import build, healthy_columns

from modeldebug.rules.dead_relu import DeadReLU
from modeldebug.rules.poor_weight_init import PoorWeightInit
from modeldebug.rules.saturated_activation import SaturatedActivation


def _set_layer(cols, column, layer, value, from_step=0):
    lt = cols["layer_stats"]
    rows = (lt["layer"] == layer) & (lt["step"] >= from_step)
    lt[column] = np.where(rows, value, lt[column])


def _stall(cols):
    cols["steps"]["loss"][:] = 2.3 + 0.02 * np.sin(np.arange(len(cols["steps"]["loss"])))


# --- dead_relu ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frac, from_step, severity, first_cause",
    [(0.8, 50, "medium", "learning_rate_too_high"), (0.95, 0, "high", "bad_weight_init")],
    ids=["died-during-training", "dead-from-start"],
)
def test_dead_relu_fires(frac, from_step, severity, first_cause):
    cols = healthy_columns()
    _stall(cols)
    _set_layer(cols, "dead_frac", "net.1", frac, from_step)
    (f,) = DeadReLU().check(build(cols))
    assert (f.kind, f.location, f.step, f.severity) == ("dead_relu", "net.1", from_step, severity)
    assert f.causes[0] == first_cause
    impl = " ".join(r.implementation or "" for r in f.recommendations)
    assert "model.net[1] = nn.LeakyReLU(0.01)" in impl and "kaiming_normal_(model.net[0].weight" in impl


def test_dead_relu_that_does_not_hurt_is_low():
    cols = healthy_columns()
    _set_layer(cols, "dead_frac", "net.3", 0.6)
    (f,) = DeadReLU().check(build(cols))
    assert (f.location, f.severity) == ("net.3", "low")


def test_most_of_a_layer_dead_is_medium_even_while_the_loss_falls():
    cols = healthy_columns()
    _set_layer(cols, "dead_frac", "net.3", 0.97)
    (f,) = DeadReLU().check(build(cols))
    assert f.severity == "medium"


@pytest.mark.parametrize("frac", [0.05, 0.45], ids=["healthy", "near-miss-45pct"])
def test_dead_relu_stays_quiet(frac):
    cols = healthy_columns()
    _stall(cols)
    _set_layer(cols, "dead_frac", "net.1", frac)
    assert DeadReLU().check(build(cols)) == []


def test_dead_relu_from_zero_gradients_when_dead_frac_missing():
    cols = healthy_columns()
    _stall(cols)
    _set_layer(cols, "dead_frac", "net.1", np.nan)
    _set_layer(cols, "grad_zero_frac", "net.1", 0.85)
    (f,) = DeadReLU().check(build(cols))
    assert f.location == "net.1" and "grad_zero_frac" in f.evidence


# --- saturated_activation ----------------------------------------------------------------------


def test_saturated_fires_with_layernorm_sized_from_previous_layer():
    cols = healthy_columns(act="Tanh")
    _stall(cols)
    _set_layer(cols, "sat_frac", "net.1", 0.8, 30)
    (f,) = SaturatedActivation().check(build(cols))
    assert (f.kind, f.location, f.step, f.severity) == ("saturated_activation", "net.1", 30, "medium")
    assert f.causes[0] == "bad_weight_init"
    assert any("nn.LayerNorm(256)" in (r.implementation or "") for r in f.recommendations)


def test_saturated_blames_unnormalized_inputs_first():
    cols = healthy_columns(act="Sigmoid")
    _stall(cols)
    cols["steps"]["input_mean"][:] = 500.0
    _set_layer(cols, "sat_frac", "net.1", 0.9)
    (f,) = SaturatedActivation().check(build(cols))
    assert f.causes[0] == "unnormalized_inputs"


@pytest.mark.parametrize("frac", [0.05, 0.45], ids=["healthy", "near-miss-45pct"])
def test_saturated_stays_quiet(frac):
    cols = healthy_columns(act="Sigmoid")
    _stall(cols)
    _set_layer(cols, "sat_frac", "net.1", frac)
    assert SaturatedActivation().check(build(cols)) == []


def test_confident_output_sigmoid_of_a_learning_run_is_not_a_fault():
    from modeldebug.evidence import LayerInfo

    cols = healthy_columns()
    cols["layers"]["out"] = LayerInfo("out", "Sigmoid", 99, 0, "Sigmoid()")
    lt = cols["layer_stats"]
    steps = np.unique(lt["step"])
    for k, v in (("step", steps), ("layer", np.full(len(steps), "out")), ("sat_frac", np.full(len(steps), 0.9))):
        lt[k] = np.concatenate([lt[k], v])
    for k in list(lt):
        if len(lt[k]) != len(lt["step"]):
            lt[k] = np.concatenate([lt[k], np.full(len(steps), np.nan if lt[k].dtype.kind == "f" else 0)])
    assert SaturatedActivation().check(build(cols)) == []


# --- poor_weight_init --------------------------------------------------------------------------


def _scale_param(cols, param, factor):
    pt = cols["param_stats"]
    pt["norm"] = np.where(pt["param"] == param, pt["norm"] * factor, pt["norm"])


@pytest.mark.parametrize("factor, words", [(50.0, "too large"), (1e-3, "too small"), (0.0, "all zero")],
                         ids=["std-large", "std-tiny", "zeros"])
def test_poor_init_fires(factor, words):
    cols = healthy_columns()
    _stall(cols)
    _scale_param(cols, "net.2.weight", factor)
    (f,) = PoorWeightInit().check(build(cols))
    assert (f.kind, f.location, f.step, f.severity) == ("poor_weight_init", "net.2", 0, "medium")
    assert words in f.message and f.causes == ["bad_weight_init"]
    assert f.recommendations[0].implementation == "nn.init.kaiming_normal_(model.net[2].weight, nonlinearity='relu')"


def test_poor_init_that_does_not_hurt_is_low():
    cols = healthy_columns()
    _scale_param(cols, "net.4.weight", 0.0)  # a zero-initialized classifier head still trains
    (f,) = PoorWeightInit().check(build(cols))
    assert f.severity == "low"


@pytest.mark.parametrize("factor", [1.0, 2.4, 15.0, 0.1], ids=["default", "kaiming", "near-miss-15x", "near-miss-0.1x"])
def test_poor_init_stays_quiet(factor):
    cols = healthy_columns()
    _stall(cols)
    _scale_param(cols, "net.2.weight", factor)
    assert PoorWeightInit().check(build(cols)) == []


def test_poor_init_needs_the_initial_weights():
    cols = healthy_columns()
    _scale_param(cols, "net.2.weight", 50.0)
    pt = cols["param_stats"]
    late = pt["step"] >= 20
    cols["param_stats"] = {k: v[late] for k, v in pt.items()}
    assert PoorWeightInit().check(build(cols)) == []


# --- layer families: tables keyed by torch.nn class names match subclasses too -----------------


def _as_subclass(cols, layer, type_name, family):
    info = cols["layers"][layer]
    info.type = type_name
    info.family = family  # what the collector writes: the first built-in torch.nn class in the MRO


def test_saturated_fires_on_a_subclass_of_tanh():
    cols = healthy_columns(act="Tanh")
    _stall(cols)
    _as_subclass(cols, "net.1", "MyTanh", "Tanh")
    _set_layer(cols, "sat_frac", "net.1", 0.8, 30)
    (f,) = SaturatedActivation().check(build(cols))
    assert f.location == "net.1"
    assert any("nn.Tanh()" in (r.implementation or "") for r in f.recommendations)


def test_dead_relu_fires_on_a_subclass_of_relu_and_a_custom_module_is_not_one():
    cols = healthy_columns()
    _stall(cols)
    _as_subclass(cols, "net.1", "ClippedReLU", "ReLU")
    _as_subclass(cols, "net.3", "MyGate", "")  # a plain custom nn.Module: no family
    _set_layer(cols, "dead_frac", "net.1", 0.8)
    _set_layer(cols, "dead_frac", "net.3", 0.8)
    assert [f.location for f in DeadReLU().check(build(cols))] == ["net.1"]


def test_previous_weighted_layer_is_found_through_its_family():
    from modeldebug.rules.base import previous_weighted

    cols = healthy_columns()
    _as_subclass(cols, "net.2", "MaskedLinear", "Linear")
    ev = build(cols)
    assert previous_weighted(ev, "net.3") == "net.2"
    assert previous_weighted(ev, "net.1") == "net.0"
    assert previous_weighted(ev, "net.0") is None


# --- poor_weight_init from the first loss ------------------------------------------------------


def _first_loss(first, classes=10, input_std=None):
    from modeldebug.events import LossCall

    cols = healthy_columns()
    s = cols["steps"]
    s["loss_fn_value"] = np.full(len(s["step"]), np.nan)
    s["loss_fn_value"][0] = first
    if input_std is not None:
        s["input_std"] = np.full(len(s["step"]), input_std)
    call = LossCall(name="cross_entropy", input_shape=[64, classes], target_shape=[64])
    return build(cols, events=[{"step": 0, "type": call.tag, "data": call.to_data()}])


def test_a_first_loss_far_above_the_uniform_guess_is_an_output_layer_started_too_large():
    (f,) = PoorWeightInit().check(_first_loss(2.5 * np.log(10)))
    last_linear = [n for n, info in healthy_columns()["layers"].items() if info.type == "Linear"][-1]
    assert (f.kind, f.location, f.causes) == ("poor_weight_init", last_linear, ["bad_weight_init"])
    assert f.evidence["ratio"] == pytest.approx(2.5) and "ln(10)" in f.message


@pytest.mark.parametrize("first, input_std", [(1.48 * np.log(10), None), (1.0 * np.log(10), None),
                                              (3.0 * np.log(10), 80.0)],
                         ids=["1.48x-like-a-tanh-xavier-net", "at-the-uniform-guess", "raw-inputs-explain-it"])
def test_a_first_loss_near_the_uniform_guess_or_from_raw_inputs_is_no_init_finding(first, input_std):
    assert PoorWeightInit().check(_first_loss(first, input_std=input_std)) == []


def test_the_first_loss_of_a_summed_or_multi_loss_step_is_not_read_as_one_mean_loss():
    from modeldebug.events import LossCall

    cols = healthy_columns()
    s = cols["steps"]
    s["loss"] = s["loss"] * 64  # reduction="sum" over a batch of 64: no per-item value recorded at step 0
    s["loss_fn_value"] = np.full(len(s["step"]), np.nan)
    s["loss_calls"] = np.ones(len(s["step"]))
    call = LossCall(name="cross_entropy", input_shape=[64, 10], target_shape=[64], reduction="sum")
    assert PoorWeightInit().check(build(cols, events=[{"step": 0, "type": call.tag, "data": call.to_data()}])) == []
