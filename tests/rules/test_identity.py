"""untracked_parameters and validation_overlap on hand-built Evidence (and unchanged_weights leaving
untracked parameters to the first)."""

from __future__ import annotations

import dataclasses

import numpy as np
from builders import build, healthy_columns

from modeldebug.rules.unchanged_weights import UnchangedWeights
from modeldebug.rules.untracked_parameters import UntrackedParameters
from modeldebug.rules.validation_overlap import ValidationOverlap


def _event(tag, step, **data):
    return {"step": step, "type": tag, "data": data}


# --- untracked_parameters: a module created inside forward() -------------------------------------


def _head_outside_optimizer(cols):
    """net.4 (the last Linear) is in no optimizer and never changes: what the collector sees of a
    head assigned in forward (the registered instance is the first training forward's)."""
    pt = cols["param_stats"]
    rows = np.char.startswith(pt["param"].astype(str), "net.4.")
    pt["changed"] = np.where(rows, False, pt["changed"])
    for name, info in list(cols["params"].items()):
        if name.startswith("net.4."):
            cols["params"][name] = dataclasses.replace(info, in_optimizer=False, lr=None)


def _renewed(step, in_optimizer=0):
    return _event("new_parameters", step, params=["net.4.weight", "net.4.bias"], count=2, numel=1290,
                  in_optimizer=in_optimizer)


def test_parameters_new_at_every_step_are_high_and_replace_unchanged_weights():
    cols = healthy_columns()
    _head_outside_optimizer(cols)
    ev = build(cols, events=[_renewed(1), _renewed(2), _renewed(60)])
    [f] = UntrackedParameters().check(ev)
    assert (f.kind, f.severity, f.causes[0], f.location) == ("untracked_parameters", "high",
                                                             "parameters_not_in_optimizer", "net.4")
    assert f.evidence["steps"] == [1, 2, 60]
    assert "LazyLinear(10)" in f.recommendations[0].implementation  # out_features of net.4
    # The same parameters are not reported a second time as unchanged_weights.
    assert UnchangedWeights().check(ev) == []
    assert [x.kind for x in UnchangedWeights().check(build(cols))] == ["unchanged_weights"]


def test_parameters_replaced_once_are_medium():
    cols = healthy_columns()
    [f] = UntrackedParameters().check(build(cols, events=[_renewed(40)]))
    assert f.severity == "medium"
    assert any("add_param_group" in (r.implementation or "") for r in f.recommendations)


def test_new_parameters_the_optimizer_holds_are_healthy():
    cols = healthy_columns()
    assert UntrackedParameters().check(build(cols, events=[_renewed(1, 1290), _renewed(2, 1290)])) == []
    assert UntrackedParameters().check(build(cols)) == []


# --- untracked_parameters: an optimizer built on another instance's parameters ----------------------


def _two_instances(live_in_optimizer: bool):
    """A live model and its copy (same shapes): the live one computes the loss (gradients)."""
    cols = healthy_columns(widths=(20, 16, 2))
    params, layers = {}, {}
    pt = cols["param_stats"]
    rows = {k: [] for k in pt}
    for model, prefix in (("Net", "Net."), ("Net2", "Net2.")):
        live = model == "Net"
        for name, info in cols["params"].items():
            q = prefix + name
            params[q] = dataclasses.replace(info, name=q, module=prefix + info.module, model=model,
                                            in_optimizer=live == live_in_optimizer)
        for name, info in cols["layers"].items():
            layers[prefix + name] = dataclasses.replace(info, name=prefix + name, model=model,
                                                        order=info.order if live else -1)
        for i, p in enumerate(pt["param"]):
            for k in pt:
                v = pt[k][i]
                if k == "param":
                    v = prefix + str(p)
                elif k == "has_grad":
                    v = live
                elif k == "changed":
                    v = live and live_in_optimizer
                rows[k].append(v)
    cols["params"], cols["layers"] = params, layers
    cols["param_stats"] = {k: np.array(v) for k, v in rows.items()}
    return cols


def test_optimizer_on_a_copy_of_the_trained_model_is_high():
    ev = build(_two_instances(live_in_optimizer=False))
    [f] = UntrackedParameters().check(ev)
    assert (f.severity, f.location, f.evidence["optimizer_holds"]) == ("high", "Net", "Net2")
    assert f.causes == ["parameters_not_in_optimizer"]
    assert UnchangedWeights().check(ev) == []  # one finding for one cause


def test_a_copy_outside_the_optimizer_is_healthy():
    """An EMA or target copy that no optimizer holds, next to the trained model: nothing to say."""
    assert UntrackedParameters().check(build(_two_instances(live_in_optimizer=True))) == []


def test_models_of_different_shapes_are_not_twins():
    cols = _two_instances(live_in_optimizer=False)
    name = "Net2.net.0.weight"
    cols["params"][name] = dataclasses.replace(cols["params"][name], shape=[16, 21])
    assert UntrackedParameters().check(build(cols)) == []


# --- validation_overlap ---------------------------------------------------------------------------


def _overlap(*sources, train_distinct=640, train_size=640):
    data = [{"source": f"s{i}", "kind": "dataset", "samples": d * 10, "distinct": d, "in_train": m}
            for i, (d, m) in enumerate(sources)]
    return build(healthy_columns(), events=[_event("eval_overlap", 500, sources=data, train_samples=3000,
                                                   train_distinct=train_distinct, train_size=train_size)])


def test_validation_built_from_the_training_tensors_is_high():
    [f] = ValidationOverlap().check(_overlap((480, 480), train_distinct=480, train_size=480))
    assert (f.kind, f.severity, f.causes) == ("validation_overlap", "high", ["data_leakage"])
    assert f.evidence["overlap"] == 1.0
    assert "every evaluation sample" in f.message


def test_a_second_random_split_overlaps_by_sample():
    [f] = ValidationOverlap().check(_overlap((160, 128)))
    assert f.severity == "high" and round(f.evidence["overlap"], 2) == 0.8


def test_partial_overlap_is_medium_and_coverage_is_accounted_for():
    [f] = ValidationOverlap().check(_overlap((1000, 60), train_distinct=6400, train_size=50000))
    # 6% of the evaluation samples found among the 12.8% of the training set fingerprinted: ~47%.
    assert f.severity == "medium" and 0.4 < f.evidence["overlap"] < 0.5


def test_disjoint_or_held_out_evaluation_is_healthy():
    assert ValidationOverlap().check(_overlap((160, 0))) == []
    assert ValidationOverlap().check(_overlap((160, 1))) == []  # a duplicate or two happen in real data
    # Evaluating on the training set next to a clean validation set is a choice, not a leak.
    assert ValidationOverlap().check(_overlap((640, 640), (160, 0))) == []


def test_data_with_a_handful_of_distinct_inputs_is_not_judged():
    assert ValidationOverlap().check(_overlap((16, 16), train_distinct=16, train_size=640)) == []
    assert ValidationOverlap().check(build(healthy_columns())) == []


def _repeating(source):
    """Contents that repeat by nature (binary shapes from a small generator): 6464 rows of a
    2048-item training set fingerprinted, 1211 distinct contents among them."""
    data = [{"source": "s0", "kind": "dataset", "samples": source[0] * 8, "distinct": source[0], "in_train": source[1]}]
    return build(healthy_columns(), events=[_event("eval_overlap", 500, sources=data, train_samples=6464,
                                                   train_distinct=1211, train_size=2048)])


def test_contents_repeating_by_nature_are_shared_by_chance_not_leaked():
    # A clean split of such data: 279 of 430 test contents also occur among the training ones,
    # about the share of the contents the training items cover (~0.6).
    assert ValidationOverlap().check(_repeating((430, 279))) == []
    # The training set evaluated as validation: every content is found.
    [f] = ValidationOverlap().check(_repeating((1150, 1150)))
    assert f.severity == "high" and f.evidence["overlap"] > 0.9 and 0.5 < f.evidence["chance_overlap"] < 0.7


def test_an_optimizer_on_a_copy_is_the_root_of_the_gradients_piling_up():
    """zero_grad() zeroes the copy's gradients: the trained model's grow step after step."""
    from modeldebug.findings import make_finding
    from modeldebug.rules.causality import link_findings

    ev = build(_two_instances(live_in_optimizer=False))
    [root] = UntrackedParameters().check(ev)
    grew = make_finding("exploding_gradient", severity="high", message="grew", step=40,
                        causes=["learning_rate_too_high", "bad_weight_init"])
    linked = link_findings([root, grew], ev)
    assert linked[1].caused_by == linked[0].id
    assert linked[1].causes[0] == "parameters_not_in_optimizer" and "learning_rate_too_high" not in linked[1].causes
    # A module created in forward() zeroes nothing it should not: its own gradients do not pile up.
    [renew] = UntrackedParameters().check(build(healthy_columns(), events=[_renewed(1), _renewed(2)]))
    assert link_findings([renew, grew], ev)[1].caused_by is None
