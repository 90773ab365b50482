"""Patterns that are healthy by design get no false alarm (issue 13): a language model's skewed
token targets, parameters deliberately outside the optimizer, outputs no loss uses, adversarial
training, and the broken neighbours of each that must still fire."""

import numpy as np
import pytest
from builders import build, healthy_columns

from modeldebug.evidence import LayerInfo, OptimizerInfo, ParamInfo
from modeldebug.rules.data_issue import DataIssue
from modeldebug.rules.loss_not_decreasing import LossNotDecreasing
from modeldebug.rules.memory_growth import MemoryGrowth
from modeldebug.rules.oscillating_loss import OscillatingLoss
from modeldebug.rules.poor_weight_init import PoorWeightInit
from modeldebug.rules.saturated_activation import SaturatedActivation
from modeldebug.rules.unchanged_weights import UnchangedWeights


def _with_embedding(cols, vocab=5000):
    cols["layers"]["emb"] = LayerInfo("emb", "Embedding", 0, vocab * 64, f"Embedding({vocab}, 64)", family="Embedding")
    for name, info in cols["layers"].items():
        if name != "emb":
            info.order += 1
    return cols


def _zipf_counts(classes=2000, exponent=1.0, total=20000, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, classes + 1) ** exponent
    ids = rng.choice(classes, size=total, p=p / p.sum())
    return {int(k): int(v) for k, v in zip(*np.unique(ids, return_counts=True))}


@pytest.mark.parametrize("exponent", [0.8, 1.0, 1.3])
def test_a_language_models_zipf_targets_are_not_imbalanced_labels(exponent):
    counts = _zipf_counts(exponent=exponent)
    assert max(counts.values()) / min(counts.values()) >= 100
    assert DataIssue().check(build(_with_embedding(healthy_columns()), class_counts=counts)) == []


def test_zipf_counts_without_token_inputs_still_fire():
    """A long-tailed classification set (no Embedding): the class weights are the right advice."""
    found = DataIssue().check(build(healthy_columns(), class_counts=_zipf_counts()))
    assert [(f.kind, f.severity, f.causes[0]) for f in found] == [("data_issue", "medium", "label_problem")]


def test_token_inputs_with_a_few_skewed_classes_still_fire():
    """Token tagging with a class that almost never occurs: few classes, not a power law."""
    counts = {0: 5000, 1: 40, 2: 30, 3: 20}
    found = DataIssue().check(build(_with_embedding(healthy_columns()), class_counts=counts))
    assert [f.severity for f in found] == ["medium"]


# --- memory_growth: allocator jumps are not a leak ------------------------------------------------

MiB = 2**20


def test_a_few_allocator_jumps_are_not_a_leak():
    """The healthy BERT run's shape: flat, one 37 MiB jump, a smaller one, then flat (the suite's
    leaks rise on most steps)."""
    cols = healthy_columns(n_steps=144)
    st = np.arange(144)
    noise = 0.3 * MiB * np.random.default_rng(0).random(144)
    cols["steps"]["rss_bytes"] = 350 * MiB + 37 * MiB * (st >= 48) + 6 * MiB * (st >= 100) + noise
    assert MemoryGrowth().check(build(cols)) == []


def test_a_leak_in_chunks_every_few_steps_still_fires():
    cols = healthy_columns()
    st = np.arange(300)
    cols["steps"]["rss_bytes"] = 350 * MiB + 4 * MiB * (st // 5)  # a 4 MiB chunk every 5 steps
    (f,) = MemoryGrowth().check(build(cols))
    assert (f.kind, f.severity, f.causes[0]) == ("memory_growth", "medium", "graph_kept_alive")
    assert f.evidence["jumps_for_half"] > 3


# --- unchanged_weights: parameters left out of the optimizer by type -------------------------------


def _with_batchnorm(cols, in_optimizer):
    """Two BatchNorm1d layers after the first two Linear layers; their affine in the optimizer or not."""
    for i, (after, width) in enumerate((("net.0", 256), ("net.2", 128))):
        name = f"bn{i}"
        cols["layers"][name] = LayerInfo(name, "BatchNorm1d", cols["layers"][after].order, 2 * width,
                                         f"BatchNorm1d({width})", family="BatchNorm1d")
        for kind in ("weight", "bias"):
            cols["params"][f"{name}.{kind}"] = ParamInfo(f"{name}.{kind}", name, [width], width, True, in_optimizer,
                                                         0.01 if in_optimizer else None)
    pt, k = cols["param_stats"], len(np.unique(cols["param_stats"]["step"]))
    for name in [p for p in cols["params"] if p.startswith("bn")]:
        moved = cols["params"][name].in_optimizer
        for key, value in (("step", np.unique(pt["step"])), ("param", np.full(k, name)),
                           ("has_grad", np.ones(k, bool)), ("changed", np.full(k, moved)),
                           ("norm", np.ones(k)), ("grad_norm", np.full(k, 0.1)), ("update_ratio", np.full(k, 1e-3))):
            pt[key] = np.concatenate([pt[key], value])
    return cols


def test_every_batchnorm_left_out_of_the_optimizer_is_a_low_hint():
    found = UnchangedWeights().check(build(_with_batchnorm(healthy_columns(), in_optimizer=False)))
    assert [(f.severity, f.causes) for f in found] == [("low", ["parameters_not_in_optimizer"])]
    assert f"{found[0].evidence['count']}" == "4" and "BatchNorm1d" in found[0].message
    assert "requires_grad_(False)" in found[0].recommendations[0].implementation


def test_one_layer_left_out_of_the_optimizer_stays_medium():
    """The head replaced after the optimizer was built: one Linear of three, not a whole type."""
    cols = _with_batchnorm(healthy_columns(), in_optimizer=True)
    for p in ("net.4.weight", "net.4.bias"):
        cols["params"][p].in_optimizer = False
        cols["param_stats"]["changed"][cols["param_stats"]["param"] == p] = False
    found = UnchangedWeights().check(build(cols))
    assert [(f.severity, f.causes, f.evidence["params"]) for f in found] == [
        ("medium", ["parameters_not_in_optimizer"], ["net.4.weight", "net.4.bias"])]


# --- loss_not_decreasing: adversarial players ------------------------------------------------------


def _two_players(cols, backward_calls):
    """The MLP is the discriminator; a generator model with its own optimizer joins it."""
    for info in cols["params"].values():
        info.model = "netD"
    cols["params"]["netG.fc.weight"] = ParamInfo("netG.fc.weight", "netG.fc", [64, 32], 2048, True, True, 2e-4,
                                                 model="netG")
    cols["optimizers"] = [OptimizerInfo("Adam", [{"lr": 2e-4}]), OptimizerInfo("Adam", [{"lr": 2e-4}])]
    s = cols["steps"]
    s["loss"] = 0.7 + 0.3 * np.linspace(0, 1, len(s["step"])) + 0.05 * np.random.default_rng(0).random(len(s["step"]))
    s["backward_calls"] = np.full(len(s["step"]), backward_calls)
    return cols


def test_a_gans_summed_losses_need_not_fall():
    found = LossNotDecreasing().check(build(_two_players(healthy_columns(), backward_calls=3)))
    assert found == []


def test_two_models_with_one_backward_per_step_are_still_judged():
    """An encoder and a decoder with an optimizer each (the seq2seq tutorial): one loss, it must fall."""
    (f,) = LossNotDecreasing().check(build(_two_players(healthy_columns(), backward_calls=1)))
    assert (f.kind, f.severity) == ("loss_not_decreasing", "high")


# --- unchanged_weights: an output returned next to the used one, never used ------------------------


def _pooler_never_gets_gradients(cols):
    """The MLP's last Linear (net.4) plays a pooler: in the optimizer, it runs, no gradient ever."""
    t = cols["param_stats"]
    for p in ("net.4.weight", "net.4.bias"):
        t["has_grad"][t["param"] == p] = False
        t["changed"][t["param"] == p] = False
    return cols


@pytest.mark.parametrize("returned, expected", [
    (["net.4", "net.3"], ("low", ["other"])),  # returned by the model next to net.3's output, which is used
    ([], ("medium", ["detached_graph"])),  # nothing says it was returned: a cut graph
], ids=["returned-beside-a-used-output", "no-event"])
def test_a_returned_output_nobody_uses_is_a_hint(returned, expected):
    events = [{"step": 0, "type": "returned_outputs", "data": {"modules": returned}}] if returned else []
    found = UnchangedWeights().check(build(_pooler_never_gets_gradients(healthy_columns()), events=events))
    assert [(f.severity, f.causes) for f in found] == [expected]
    assert found[0].evidence["params"] == ["net.4.weight", "net.4.bias"]


def test_every_returned_output_cut_off_is_still_a_detached_graph():
    """The caller detached all of an enclosing module's outputs: no sibling gets a gradient."""
    cols = healthy_columns()
    t = cols["param_stats"]
    t["has_grad"][:] = False
    t["changed"][:] = False
    events = [{"step": 0, "type": "returned_outputs", "data": {"modules": ["net.0", "net.2", "net.4"]}}]
    found = UnchangedWeights().check(build(cols, events=events))
    assert [(f.severity, f.causes) for f in found] == [("high", ["detached_graph"])]


# --- oscillating_loss: a curve still falling is not a swing ----------------------------------------


def test_a_loss_falling_smoothly_to_almost_zero_does_not_oscillate():
    """A plateau, then a late smooth fall to ~0.01 (the run ends at full accuracy): the second half
    spans its start level and many times its median, all of it the trend."""
    cols = healthy_columns()
    st = np.arange(300)
    noise = 1 + 0.1 * np.random.default_rng(0).standard_normal(300)
    cols["steps"]["loss"] = (1.0 / (1 + np.exp((st - 200) / 10)) + 0.01) * noise
    assert OscillatingLoss().check(build(cols)) == []
    late = cols["steps"]["loss"][155:]  # the raw spread alone would call it a swing back to the start
    p10, p90 = np.percentile(late, [10, 90])
    assert p90 - p10 > 2.5 * np.median(late) and p90 > 0.5


def test_swings_on_a_falling_curve_still_fire():
    cols = healthy_columns()
    st = np.arange(300)
    base = 1.5 * np.exp(-st / 30) + 0.05
    cols["steps"]["loss"] = np.where(st % 3 == 0, base + 2.0, base)
    (f,) = OscillatingLoss().check(build(cols))
    assert (f.kind, f.causes[0]) == ("oscillating_loss", "learning_rate_too_high")


def test_the_falling_course_is_the_least_squares_non_increasing_fit():
    from modeldebug.rules.oscillating_loss import _falling_course

    np.testing.assert_allclose(_falling_course(np.array([3.0, 1.0, 2.0, 0.0])), [3.0, 1.5, 1.5, 0.0])
    np.testing.assert_allclose(_falling_course(np.array([1.0, 2.0, 3.0])), [2.0, 2.0, 2.0])


# --- saturated_activation: a GAN discriminator's confident output -----------------------------------


def _sigmoid_output(cols):
    cols["layers"]["net.5"] = LayerInfo("net.5", "Sigmoid", 5, 0, "Sigmoid()", family="Sigmoid")
    t = cols["layer_stats"]
    steps = np.unique(t["step"])
    extra = {"step": steps, "layer": np.full(len(steps), "net.5"), "sat_frac": np.full(len(steps), 0.8)}
    for key in t:
        t[key] = np.concatenate([t[key], extra.get(key, np.full(len(steps), t[key][0]))])
    return cols


def test_a_discriminators_saturated_output_sigmoid_is_not_a_finding():
    cols = _two_players(_sigmoid_output(healthy_columns()), backward_calls=3)
    assert SaturatedActivation().check(build(cols)) == []


def test_a_saturated_output_sigmoid_of_a_stalled_single_model_still_fires():
    cols = _sigmoid_output(healthy_columns())
    _stall = 2.3 + 0.02 * np.random.default_rng(0).standard_normal(300)
    cols["steps"]["loss"] = _stall
    (f,) = SaturatedActivation().check(build(cols))
    assert (f.kind, f.location) == ("saturated_activation", "net.5")


# --- poor_weight_init: parameters added to the activations have no fan-in ---------------------------


def _as_parameter_of_a_custom_module(cols, param: str, leaf: str) -> str:
    """``param`` becomes ``leaf``, a bare nn.Parameter of a hand-written module (family "")."""
    from dataclasses import replace

    info = cols["params"].pop(param)
    name = f"{info.module}.{leaf}"
    cols["params"][name] = replace(info, name=name)
    cols["layers"][info.module].type, cols["layers"][info.module].family = "TokenMixer", ""
    pt = cols["param_stats"]
    pt["param"] = np.where(pt["param"] == param, name, pt["param"])
    return name


def _zero_at_start(cols, param: str) -> None:
    pt = cols["param_stats"]
    pt["norm"] = np.where((pt["param"] == param) & (pt["step"] == pt["step"].min()), 0.0, pt["norm"])


@pytest.mark.parametrize("leaf", ["pos", "pos_embedding", "cls_token", "query"])
def test_a_zero_positional_embedding_or_class_token_is_not_a_poor_init(leaf):
    """``self.pos = nn.Parameter(torch.zeros(n, d))``: added to the activations, each position gets
    its own gradient; no symmetry to break, no fan-in to scale by."""
    cols = healthy_columns()
    cols["steps"]["loss"][:] = 2.3 + 0.02 * np.sin(np.arange(len(cols["steps"]["loss"])))  # (a stall: medium if it fired)
    _zero_at_start(cols, _as_parameter_of_a_custom_module(cols, "net.2.weight", leaf))
    assert PoorWeightInit().check(build(cols)) == []


@pytest.mark.parametrize("leaf", ["W", "w1", "weight", "W_q", "kernel"])
def test_a_hand_written_layers_zero_weight_still_fires(leaf):
    cols = healthy_columns()
    name = _as_parameter_of_a_custom_module(cols, "net.2.weight", leaf)
    _zero_at_start(cols, name)
    (f,) = PoorWeightInit().check(build(cols))
    assert f.evidence["param"] == name and "all zero" in f.message

