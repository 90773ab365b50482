"""The loss-call rules (wrong_loss_input, loss_shape_broadcast, labels_unrelated), the trivial
predictor's reference and severity judged by harm, on hand-built Evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import build, healthy_columns

from modeldebug.events import LossCall, LossTargets
from modeldebug.evidence import LayerInfo
from modeldebug.rules.base import impact_severity, loss_trend
from modeldebug.rules.data_issue import DataIssue
from modeldebug.rules.labels_unrelated import LabelsUnrelated
from modeldebug.rules.loss_not_decreasing import LossNotDecreasing
from modeldebug.rules.loss_shape_broadcast import LossShapeBroadcast
from modeldebug.rules.reference import harm, reference
from modeldebug.rules.vanishing_gradient import VanishingGradient
from modeldebug.rules.wrong_loss_input import WrongLossInput

CE = LossCall(name="cross_entropy", input_shape=[64, 10], target_shape=[64])


def _events(*events):
    return [{"step": e.at_step or 0, "type": e.tag, "data": e.to_data()} for e in events]


def _cols(n=300, every=10, loss=None, sampled_input=None, calls=1):
    """A healthy run whose steps carry the loss-call columns: the loss function's output equal to
    the step loss, and the range of its input on sampled steps (logits by default)."""
    cols = healthy_columns(n_steps=n, every=every)
    s = cols["steps"]
    if loss is not None:
        s["loss"] = np.asarray(loss, dtype=float)
    sampled = s["step"] % every == 0
    s["loss_calls"] = np.full(n, calls)
    s["loss_fn_value"] = np.where(sampled, s["loss"], np.nan)
    lo, hi, err = sampled_input or (-4.0, 5.0, 3.0)
    s["loss_input_min"] = np.where(sampled, lo, np.nan)
    s["loss_input_max"] = np.where(sampled, hi, np.nan)
    s["loss_input_sum_err"] = np.where(sampled, err, np.nan)
    return cols


def _balanced(classes=10):
    return {c: 100 for c in range(classes)}


# ---------------------------------------------------------------- the reference


def test_reference_of_cross_entropy_is_the_label_entropy():
    ev = build(_cols(), events=_events(CE), class_counts={0: 300, 1: 100})
    ref = reference(ev)
    p = np.array([0.75, 0.25])
    # The histogram's entropy with the Miller-Madow correction, (K - 1) / 2N for K classes seen in N labels.
    assert ref is not None and math.isclose(ref.baseline, float(-(p * np.log(p)).sum()) + 1 / 800)
    assert ref.predictor == "predicting the label frequencies"
    assert ref.note().startswith("loss ") and "predicting the label frequencies gives 0.564" in ref.note()


def test_many_classes_over_few_labels_do_not_bias_the_reference_low():
    """A vocabulary of 5000 uniform tokens seen in 20000 sampled targets: the histogram's own entropy
    is ~0.12 nats short of ln 5000; corrected, it is within 0.03."""
    rng = np.random.default_rng(0)
    counts = np.bincount(rng.integers(0, 5000, 20000), minlength=5000)
    call = LossCall(name="cross_entropy", input_shape=[64, 5000], target_shape=[64])
    ref = reference(build(_cols(), events=_events(call), class_counts={i: int(c) for i, c in enumerate(counts) if c}))
    p = counts[counts > 0] / counts.sum()
    assert math.log(5000) - float(-(p * np.log(p)).sum()) > 0.1
    assert abs(ref.baseline - math.log(5000)) < 0.03


def test_label_smoothing_raises_the_reference():
    smoothed = LossCall(name="cross_entropy", input_shape=[64, 4], target_shape=[64], options={"label_smoothing": 0.1})
    plain = reference(build(_cols(), events=_events(CE), class_counts={0: 90, 1: 10}))
    ref = reference(build(_cols(), events=_events(smoothed), class_counts={0: 90, 1: 10}))
    assert ref.baseline > plain.baseline


def test_regression_reference_comes_from_the_sampled_targets():
    mse = LossCall(name="mse_loss", input_shape=[64, 1], target_shape=[64, 1])
    ev = build(_cols(), events=_events(mse, LossTargets(name="mse_loss", rows=500, features=1, baseline=2.1,
                                                         predictor="the mean")))
    ref = reference(ev)
    assert ref.baseline == 2.1 and ref.note(value=1800.0) == "loss 1.8e+03, where predicting the mean gives 2.1"


@pytest.mark.parametrize("change", ["two_losses", "two_calls", "no_reduction", "weighted", "constant_target"])
def test_no_reference_where_the_loss_is_not_one_plain_call(change):
    events, counts, calls = [CE], _balanced(), 1
    if change == "two_losses":
        events = [CE, LossCall(name="mse_loss", input_shape=[64, 8], target_shape=[64, 8])]
    elif change == "two_calls":
        calls = 2  # a GAN's discriminator: real and fake losses every step
    elif change == "no_reduction":  # per-sample losses reduced by the script in its own way
        events = [LossCall(name="cross_entropy", input_shape=[64, 10], target_shape=[64], reduction="none")]
    elif change == "weighted":
        events = [LossCall(name="cross_entropy", input_shape=[64, 10], target_shape=[64], options={"weighted": True})]
    else:
        counts = {3: 500}
    assert reference(build(_cols(calls=calls), events=_events(*events), class_counts=counts)) is None


def test_a_summed_loss_has_a_reference_its_values_are_per_item():
    summed = LossCall(name="cross_entropy", input_shape=[512, 64], target_shape=[512], reduction="sum")
    ref = reference(build(_cols(), events=_events(summed), class_counts=_balanced(64)))
    assert ref is not None and ref.baseline == pytest.approx(np.log(64) + 63 / 12800)  # (Miller-Madow)


def test_a_step_loss_at_a_constant_ratio_is_judged_in_the_loss_functions_units():
    cols = _cols()
    s = cols["steps"]
    s["loss_fn_value"] = s["loss_fn_value"] * 32 / 31  # a causal LM: per shifted token, the step loss per label
    ref = reference(build(cols, events=_events(CE), class_counts=_balanced()))
    assert ref.n == 300  # every step, not only the sampled ones
    assert ref.end == pytest.approx(np.median(s["loss"][-30:]) * 32 / 31)


def test_series_is_the_loss_functions_output_when_the_step_loss_adds_to_it():
    cols = _cols()
    cols["steps"]["loss"] = cols["steps"]["loss"] + 5.0  # a penalty added to the criterion
    ref = reference(build(cols, events=_events(CE), class_counts=_balanced()))
    assert ref.n == 30 and ref.end < 1.0  # the sampled loss function outputs, not loss + 5


# ---------------------------------------------------------------- severity by harm


def _raw_features_cols(end):
    """Raw features: the loss falls 100x from a blown-up start but ends at ``end`` (reference 2.0)."""
    n = 300
    loss = 3e5 * np.exp(-np.arange(n) / 10) + end
    cols = _cols(n, loss=loss)
    cols["steps"]["input_mean"] = np.full(n, 2e4)
    cols["steps"]["input_std"] = np.full(n, 1e4)
    mse = LossCall(name="mse_loss", input_shape=[64, 1], target_shape=[64, 1])
    targets = LossTargets(name="mse_loss", rows=500, features=1, baseline=2.0, predictor="the mean")
    return cols, _events(mse, targets)


def test_a_falling_loss_that_stays_above_the_reference_is_not_low():
    cols, events = _raw_features_cols(end=460.0)
    ev = build(cols, events=events)
    trend = loss_trend(ev)
    assert trend.improving and "where predicting the mean gives 2" in trend.harm
    assert impact_severity(trend) == "medium"
    (f,) = DataIssue().check(ev)
    assert f.severity == "medium"


def test_a_falling_loss_below_the_reference_stays_low():
    cols, events = _raw_features_cols(end=0.1)
    ev = build(cols, events=events)
    assert harm(ev) == "" and impact_severity(loss_trend(ev)) == "low"
    assert DataIssue().check(ev)[0].severity == "low"


def test_validation_no_better_than_the_reference_is_harm():
    cols = _cols()
    cols["validation"]["loss"] = np.full(len(cols["validation"]["step"]), 3.5)
    cols["validation"]["loss_fn"] = np.array(["cross_entropy"] * len(cols["validation"]["step"]))
    ev = build(cols, events=_events(CE), class_counts={0: 100, 1: 100, 2: 100})
    assert "validation loss 3.5" in harm(ev)


def test_loss_not_decreasing_judges_a_blown_up_start_against_the_reference():
    # lr far too high: the loss "improves" from 1e3 at the start to 2.3, the loss of guessing.
    n = 300
    loss = 1e3 * np.exp(-np.arange(n) / 5) + 2.35 * (1 + 0.02 * np.random.default_rng(0).standard_normal(n))
    cols = _cols(n, loss=loss)
    cols["param_stats"]["update_ratio"] = np.full(len(cols["param_stats"]["step"]), 0.5)
    ev = build(cols, events=_events(CE), class_counts=_balanced())
    (f,) = LossNotDecreasing().check(ev)
    assert f.severity == "high" and f.causes[0] == "learning_rate_too_high"
    assert "predicting the label frequencies gives 2.3" in f.message and f.evidence["trivial_loss"] > 2.3


def test_loss_not_decreasing_quiet_when_the_run_beats_the_reference():
    ev = build(_cols(), events=_events(CE), class_counts=_balanced())
    assert LossNotDecreasing().check(ev) == []


# ---------------------------------------------------------------- wrong_loss_input


@pytest.mark.parametrize("name,sampled_input,got", [
    ("cross_entropy", (0.0, 0.97, 1e-7), "probabilities"),
    ("nll_loss", (0.0, 0.97, 1e-7), "probabilities"),
    ("nll_loss", (-3.0, 4.0, 2.0), "raw scores"),
    ("nll_loss", (-9.0, -0.01, 0.5), "log-probabilities normalized over another dimension"),  # log_softmax(dim=1) of [B, T, K]
    ("binary_cross_entropy_with_logits", (0.5, 0.73, np.nan), "sigmoid outputs"),
])
def test_wrong_loss_input_fires(name, sampled_input, got):
    cols = _cols(sampled_input=sampled_input)
    cols["layers"]["net.5"] = LayerInfo("net.5", "Softmax", 5, 0, "Softmax(dim=1)", family="Softmax")
    ev = build(cols, events=_events(LossCall(name=name, input_shape=[64, 10], target_shape=[64])),
               class_counts=_balanced())
    (f,) = WrongLossInput().check(ev)
    assert f.kind == "wrong_loss_input" and f.severity == "high" and f.causes == ["wrong_loss_function"]
    assert got in f.message and f.location == "net.5"


@pytest.mark.parametrize("name,sampled_input", [
    ("cross_entropy", (-4.0, 5.0, 3.0)),  # logits
    ("cross_entropy", (0.0, 6.0, 3.0)),  # ReLU'd scores: non-negative but not probabilities
    ("nll_loss", (-9.0, 0.0, 2e-7)),  # log_softmax output: the exps of a row sum to 1 (float32 rounding)
    ("binary_cross_entropy_with_logits", (-2.0, 3.0, np.nan)),
    ("binary_cross_entropy", (0.01, 0.99, np.nan)),  # sigmoid into BCELoss is right
])
def test_wrong_loss_input_quiet_on_the_right_input(name, sampled_input):
    ev = build(_cols(sampled_input=sampled_input),
               events=_events(LossCall(name=name, input_shape=[64, 10], target_shape=[64])), class_counts=_balanced())
    assert WrongLossInput().check(ev) == []


def _regression_head(activation, sampled_input, below_zero=0.0, below_minus_one=0.0, above_one=0.0):
    """An MSE regression whose model ends in ``activation`` (net.5), with the sampled targets' shares."""
    cols = _cols(sampled_input=sampled_input + (np.nan,))
    cols["layers"]["net.5"] = LayerInfo("net.5", activation, 5, 0, f"{activation}()", family=activation)
    targets = LossTargets(name="mse_loss", rows=640, features=1, baseline=1.0, predictor="the mean",
                          below_zero=below_zero, below_minus_one=below_minus_one, above_one=above_one)
    return build(cols, events=_events(LossCall(name="mse_loss", input_shape=[64, 1], target_shape=[64, 1]), targets))


def test_a_bounded_head_that_cannot_reach_the_targets_is_a_wrong_loss_input():
    (f,) = WrongLossInput().check(_regression_head("ReLU", (0.0, 2.5), below_zero=0.48, below_minus_one=0.16))
    assert (f.location, f.severity, f.causes) == ("net.5", "high", ["wrong_loss_function"])
    assert "cannot go below 0" in f.message and "48% of the sampled target values" in f.message
    assert f.evidence["targets_out_of_reach"] == pytest.approx(0.48)
    assert "nn.Identity()" in f.recommendations[0].implementation
    (f,) = WrongLossInput().check(_regression_head("Sigmoid", (0.02, 0.97), above_one=0.3))
    assert "outside [0, 1]" in f.message and len(f.recommendations) == 2


@pytest.mark.parametrize("activation,sampled_input,shares", [
    ("ReLU", (0.0, 2.5), {"below_zero": 0.02}),  # positive targets (prices, counts): a ReLU head is fine
    ("Sigmoid", (0.02, 0.97), {}),  # targets scaled into [0, 1]
    ("Tanh", (-0.9, 0.95), {"below_minus_one": 0.03, "above_one": 0.04}),
    ("ReLU", (-0.3, 2.5), {"below_zero": 0.48}),  # the loss sees negatives: something follows the ReLU
    ("GELU", (-0.1, 2.5), {"below_zero": 0.48}),  # not bounded
])
def test_a_bounded_head_within_reach_of_the_targets_is_quiet(activation, sampled_input, shares):
    assert WrongLossInput().check(_regression_head(activation, sampled_input, **shares)) == []


@pytest.mark.parametrize("rms,first", [(3.1e5, "unnormalized_inputs"), (1.0, None)])
def test_a_stalled_regression_on_raw_scale_targets_names_them(rms, first):
    """House prices in dollars under MSE: the loss stays near the mean predictor's 1e11."""
    cols = _cols(loss=1.0e11 + 1e8 * np.random.default_rng(0).standard_normal(300), sampled_input=(-3.0, 4.0, np.nan))
    targets = LossTargets(name="mse_loss", rows=640, features=1, baseline=2.1e10, predictor="the mean", rms=rms)
    (f,) = LossNotDecreasing().check(build(cols, events=_events(
        LossCall(name="mse_loss", input_shape=[64, 1], target_shape=[64, 1]), targets)))
    if first is None:
        assert "unnormalized" not in f.message
    else:
        assert f.causes[0] == first and "targets are unnormalized" in f.message and "3.1e+05" in f.message
        assert "Standardize the regression targets" in f.recommendations[0].description


# ---------------------------------------------------------------- loss_shape_broadcast


def test_loss_shape_broadcast_fires_on_n1_against_n():
    call = LossCall(name="mse_loss", input_shape=[64, 1], target_shape=[64], broadcast_shape=[64, 64], at_step=3)
    (f,) = LossShapeBroadcast().check(build(_cols(), events=_events(call)))
    assert f.severity == "high" and f.causes == ["loss_shape_mismatch"] and f.step == 3
    assert "[64, 1]" in f.message and "[64, 64]" in f.message
    assert "squeeze(-1)" in f.recommendations[0].implementation


def test_loss_shape_broadcast_quiet_on_equal_shapes():
    call = LossCall(name="mse_loss", input_shape=[64, 1], target_shape=[64, 1])
    assert LossShapeBroadcast().check(build(_cols(), events=_events(call))) == []


# ---------------------------------------------------------------- labels_unrelated


def _at_chance_cols(classes=5, update_ratio=1e-3, n=300):
    rng = np.random.default_rng(1)
    cols = _cols(n, loss=math.log(classes) * (1 + 0.02 * rng.standard_normal(n)))
    cols["param_stats"]["update_ratio"] = np.full(len(cols["param_stats"]["step"]), update_ratio)
    cols["validation"]["loss"] = np.full(len(cols["validation"]["step"]), math.log(classes) + 0.03)
    return cols


def test_labels_unrelated_fires_at_the_reference_with_healthy_updates():
    ev = build(_at_chance_cols(), events=_events(CE), class_counts=_balanced(5))
    (f,) = LabelsUnrelated().check(ev)
    assert f.severity == "high" and f.causes == ["label_problem"]
    assert "predicting the label frequencies gives 1.61" in f.message
    (stalled,) = LossNotDecreasing().check(ev)
    assert stalled.causes[0] == "label_problem"  # the symptom agrees with its cause


@pytest.mark.parametrize("plant", ["tiny_updates", "lr_collapsed", "broadcast", "no_zero_grad", "learns", "dead_units",
                                   "thrown_early"])
def test_labels_unrelated_leaves_other_explanations_alone(plant):
    cols, events = _at_chance_cols(), [CE]
    if plant == "dead_units":  # an lr far too high killed the ReLUs: a dead network sits at the trivial loss
        dead = cols["layer_stats"]["dead_frac"]
        cols["layer_stats"]["dead_frac"] = np.where(np.isfinite(dead), 1.0, dead)
    elif plant == "tiny_updates":
        cols["param_stats"]["update_ratio"][:] = 1e-7
    elif plant == "lr_collapsed":
        cols["steps"]["lr"] = 0.01 * 0.5 ** np.arange(len(cols["steps"]["step"]))
    elif plant == "broadcast":
        events = [LossCall(name="mse_loss", input_shape=[64, 1], target_shape=[64], broadcast_shape=[64, 64]),
                  LossTargets(name="mse_loss", rows=300, features=1, baseline=1.6, predictor="the mean")]
    elif plant == "no_zero_grad":
        cols["steps"]["stale_grad_norm"][:] = 1.0
    elif plant == "thrown_early":  # an lr far too high moved the weights by 0.7x themselves at the start
        _throw_early(cols)
    else:
        cols = _cols()  # falls well below ln 5
    ev = build(cols, events=_events(*events), class_counts=_balanced(5))
    assert LabelsUnrelated().check(ev) == []


def _throw_early(cols, ratio=0.7, loss_up=True):
    """The first sampled step's updates move the weights by ``ratio`` x themselves; with ``loss_up``,
    the loss jumps to 6x its first value over the next steps (the blow-up that goes with it)."""
    pt = cols["param_stats"]
    pt["update_ratio"] = np.where(pt["step"] == pt["step"].min(), ratio, pt["update_ratio"])
    if loss_up:
        cols["steps"]["loss"][1:4] = 6 * cols["steps"]["loss"][0]


def test_large_first_updates_with_a_falling_loss_are_how_adagrad_begins():
    """Adagrad at lr 0.05 (labels_unrelated__mlp_csv_header_skip): median update ratios 0.68, 0.41,
    0.33 in its first steps, the loss never above its start: not a collapse, the labels still are."""
    cols = _at_chance_cols()
    _throw_early(cols, loss_up=False)
    ev = build(cols, events=_events(CE), class_counts=_balanced(5))
    assert [f.causes[0] for f in LabelsUnrelated().check(ev)] == ["label_problem"]


def test_a_collapse_after_huge_early_updates_is_named_as_the_lr():
    """A transformer under Adam at lr 0.3: its first updates move the weights by 0.3-4x, the loss
    blows up, then it sits at the label frequencies' loss with small updates and its first layer
    starved of gradient. The lr is the cause: not the labels, not the init."""
    cols = _at_chance_cols()
    _throw_early(cols)
    ev = build(cols, events=_events(CE), class_counts=_balanced(5))
    (f,) = LossNotDecreasing().check(ev)
    assert f.causes[0] == "learning_rate_too_high" and "0.7x themselves" in f.message
    pt = cols["param_stats"]
    first_weight = next(p for p in pt["param"] if str(p).endswith("weight"))
    pt["grad_norm"] = np.where(pt["param"] == first_weight, 1e-7, pt["grad_norm"])
    (v,) = VanishingGradient().check(build(cols, events=_events(CE), class_counts=_balanced(5)))
    assert v.causes[0] == "learning_rate_too_high" and "lr=" in v.recommendations[0].implementation
    # Healthy early updates: the same starved first layer is put on the init, as before.
    cols = _at_chance_cols()
    cols["param_stats"]["grad_norm"] = np.where(cols["param_stats"]["param"] == first_weight, 1e-7,
                                                cols["param_stats"]["grad_norm"])
    (v,) = VanishingGradient().check(build(cols, events=_events(CE), class_counts=_balanced(5)))
    assert "learning_rate_too_high" not in v.causes


def test_a_model_that_never_learned_the_label_frequencies_was_not_moved():
    """Skewed labels (entropy 1.2 of ln 5 = 1.61): a loss at the uniform guess is an lr far too low, not
    unrelated labels, which would still teach the label frequencies."""
    skewed = {0: 400, 1: 250, 2: 200, 3: 100, 4: 50}
    call = LossCall(name="cross_entropy", input_shape=[64, 5], target_shape=[64])
    ev = build(_at_chance_cols(classes=5), events=_events(call), class_counts=skewed)
    ref = reference(ev)
    assert ref.uniform == pytest.approx(math.log(5)) and ref.learned_nothing()
    assert LabelsUnrelated().check(ev) == []
    (stalled,) = LossNotDecreasing().check(ev)
    assert stalled.causes[0] == "learning_rate_too_low" and "did not learn even those" in stalled.message
    # At the label frequencies' loss instead: what unrelated labels give.
    cols = _at_chance_cols(classes=5)
    cols["steps"]["loss"] = cols["steps"]["loss"] / math.log(5) * ref.baseline
    cols["steps"]["loss_fn_value"] = cols["steps"]["loss_fn_value"] / math.log(5) * ref.baseline
    cols["validation"]["loss"][:] = ref.baseline
    (f,) = LabelsUnrelated().check(build(cols, events=_events(call), class_counts=skewed))
    assert f.causes == ["label_problem"]


def test_wrong_loss_input_judges_the_first_of_summed_losses_when_it_is_cross_entropy():
    probabilities = _cols(sampled_input=(0.0, 0.97, 1e-7))
    mse = LossCall(name="mse_loss", input_shape=[64], target_shape=[64])
    (f,) = WrongLossInput().check(build(probabilities, events=_events(CE, mse), class_counts=_balanced()))
    assert f.causes == ["wrong_loss_function"] and "probabilities" in f.message
    assert WrongLossInput().check(build(_cols(), events=_events(CE, mse), class_counts=_balanced())) == []
    # The first loss another: its sampled input is not the cross-entropy's.
    assert WrongLossInput().check(build(probabilities, events=_events(mse, CE), class_counts=_balanced())) == []


def test_labels_unrelated_leaves_raw_inputs_to_data_issue():
    cols = _at_chance_cols(classes=2)
    cols["steps"]["input_mean"][:] = 128.0
    cols["steps"]["input_std"][:] = 74.0
    ev = build(cols, events=_events(CE), class_counts=_balanced(2))
    assert LabelsUnrelated().check(ev) == []
    (f,) = DataIssue().check(ev)
    assert f.severity == "medium"  # the loss stays at the reference: harm, whatever its trend


def test_harm_judged_findings_carry_the_reference():
    from modeldebug.rules.reference import with_reference

    cols, events = _raw_features_cols(end=460.0)
    ev = build(cols, events=events)
    (f,) = with_reference(DataIssue().check(ev), ev)
    assert "training loss 460, where predicting the mean gives 2" in f.message
    assert f.evidence["trivial_loss"] == 2.0 and f.evidence["trivial_predictor"] == "predicting the mean"
    cols, events = _raw_features_cols(end=0.1)
    ev = build(cols, events=events)
    (quiet,) = with_reference(DataIssue().check(ev), ev)
    assert "trivial_loss" not in quiet.evidence
