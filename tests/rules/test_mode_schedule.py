"""train_eval_mode, lr_schedule_misuse, clip_before_backward, weight_decay_too_high on hand-built Evidence."""

from __future__ import annotations

import numpy as np
from builders import build, healthy_columns

from modeldebug.events import GradientClip, LrScheduler
from modeldebug.evidence import LayerInfo, OptimizerInfo
from modeldebug.rules.clip_before_backward import ClipBeforeBackward
from modeldebug.rules.lr_schedule_misuse import LrScheduleMisuse
from modeldebug.rules.train_eval_mode import TrainEvalMode, mode_dependent
from modeldebug.rules.weight_decay_too_high import WeightDecayTooHigh


def _row(event, step=0):
    rec = event.record(step)
    return {"step": rec.step, "type": rec.type, "data": rec.data}


def _with_dropout(cols):
    cols["layers"]["net.drop"] = LayerInfo("net.drop", "Dropout", 9, 0, "Dropout(p=0.5, inplace=False)",
                                           family="Dropout")
    return cols


# --- train_eval_mode ---------------------------------------------------------------------------


def test_mode_dependent_layers():
    assert mode_dependent(LayerInfo("d", "Dropout", 0, 0, "Dropout(p=0.5, inplace=False)", family="Dropout"))
    assert not mode_dependent(LayerInfo("d", "Dropout", 0, 0, "Dropout(p=0.0, inplace=False)", family="Dropout"))
    assert mode_dependent(LayerInfo("b", "MyNorm", 0, 0, "MyNorm(8, eps=1e-05, momentum=0.1, affine=True, "
                                    "track_running_stats=True)", family="BatchNorm1d"))
    assert not mode_dependent(LayerInfo("b", "BatchNorm1d", 0, 0, "BatchNorm1d(8, track_running_stats=False)",
                                        family="BatchNorm1d"))
    assert not mode_dependent(LayerInfo("i", "InstanceNorm2d", 0, 0, "InstanceNorm2d(8, affine=False, "
                                        "track_running_stats=False)", family="InstanceNorm2d"))
    assert not mode_dependent(LayerInfo("l", "Linear", 0, 0, "Linear(in_features=2, out_features=2)", family="Linear"))


def test_training_in_eval_mode_after_the_first_evaluation_fires_high():
    cols = _with_dropout(healthy_columns())
    eval_mode = np.zeros(300, bool)
    eval_mode[60:] = True  # the first evaluation (step 60) called model.eval(); training never switched back
    cols["steps"]["eval_mode"] = eval_mode
    (f,) = TrainEvalMode().check(build(cols))
    assert f.kind == "train_eval_mode" and f.severity == "high" and f.causes == ["wrong_module_mode"]
    assert f.step == 60 and f.evidence["eval_mode_steps"] == 240 and f.evidence["after_evaluation"] is True
    assert "model.train()" in f.recommendations[0].description


def test_a_few_eval_mode_steps_are_not_a_fault():
    cols = _with_dropout(healthy_columns())
    eval_mode = np.zeros(300, bool)
    eval_mode[100:103] = True
    cols["steps"]["eval_mode"] = eval_mode
    assert TrainEvalMode().check(build(cols)) == []


def test_eval_mode_training_without_mode_dependent_layers_says_nothing():
    cols = healthy_columns()  # Linear and ReLU only: the mode changes nothing
    cols["steps"]["eval_mode"] = np.ones(300, bool)
    cols["validation"]["train_mode_batches"] = cols["validation"]["batches"]
    assert TrainEvalMode().check(build(cols)) == []


def test_evaluation_in_train_mode_fires_medium():
    cols = _with_dropout(healthy_columns())
    v = cols["validation"]
    v["batches"] = np.full(len(v["step"]), 38)
    v["train_mode_batches"] = np.full(len(v["step"]), 38)
    (f,) = TrainEvalMode().check(build(cols))
    assert f.severity == "medium" and f.causes == ["wrong_module_mode"]
    assert f.evidence["train_mode_eval_batches"] == 38 * len(v["step"])
    assert "model.eval()" in f.recommendations[0].description


def test_healthy_modes_say_nothing():
    cols = _with_dropout(healthy_columns())
    cols["steps"]["eval_mode"] = np.zeros(300, bool)
    cols["validation"]["train_mode_batches"] = np.zeros(len(cols["validation"]["step"]))
    assert TrainEvalMode().check(build(cols)) == []


# --- lr_schedule_misuse ------------------------------------------------------------------------


def test_steplr_stepped_every_batch_fires_with_the_scheduler_named():
    cols = healthy_columns()
    steps = np.arange(300)
    cols["steps"]["lr"] = 1e-3 * 0.5 ** (steps // 2)  # StepLR(step_size=2, gamma=0.5), stepped every batch
    cols["steps"]["scheduler_steps"] = np.ones(300, int)
    events = [_row(LrScheduler(type="StepLR", settings={"step_size": 2, "gamma": 0.5}))]
    (f,) = LrScheduleMisuse().check(build(cols, events=events))
    assert f.kind == "lr_schedule_misuse" and f.severity == "high" and f.causes == ["scheduler_misuse"]
    assert f.step == 20 and "every batch" in f.message and "StepLR(step_size=2, gamma=0.5)" in f.message
    assert "once per epoch" in f.recommendations[0].description


def test_lr_collapse_without_a_scheduler_still_fires():
    cols = healthy_columns()
    cols["steps"]["lr"] = 0.05 * 0.9 ** np.arange(300)
    (f,) = LrScheduleMisuse().check(build(cols))
    assert f.causes == ["scheduler_misuse"] and "every batch" not in f.message


def test_decay_to_zero_at_the_end_and_warmup_are_healthy():
    cols = healthy_columns()
    t = np.arange(300)
    warmup = np.minimum(1.0, (t + 1) / 30)
    cols["steps"]["lr"] = 3e-3 * warmup * 0.5 * (1 + np.cos(np.pi * t / 299))  # warmup + cosine to 0
    cols["steps"]["scheduler_steps"] = np.ones(300, int)
    events = [_row(LrScheduler(type="LambdaLR"))]
    assert LrScheduleMisuse().check(build(cols, events=events)) == []
    cols["steps"]["lr"] = 0.1 * 0.1 ** (t // 100)  # StepLR(30 of 90 epochs, gamma 0.1): 1e-2 of the peak at most
    assert LrScheduleMisuse().check(build(cols)) == []


def test_an_lr_that_recovers_is_not_a_collapse():
    cols = healthy_columns()
    t = np.arange(300)
    cols["steps"]["lr"] = 1e-3 * (0.5 * (1 + np.cos(2 * np.pi * t / 60)) + 1e-6)  # warm restarts
    assert LrScheduleMisuse().check(build(cols)) == []


# --- clip_before_backward ----------------------------------------------------------------------


def test_clipping_before_backward_fires_high_when_the_norm_exceeded_the_limit():
    cols = healthy_columns()
    cols["steps"]["clip_calls"] = np.ones(300, int)
    cols["steps"]["clips_before_backward"] = np.ones(300, int)
    cols["steps"]["grad_norm"] = np.linspace(0.3, 40.0, 300)
    events = [_row(GradientClip(function="clip_grad_norm_", max_value=0.5, before_backward=True))]
    (f,) = ClipBeforeBackward().check(build(cols, events=events))
    assert f.kind == "clip_before_backward" and f.severity == "high" and f.causes == ["clipping_misplaced"]
    assert f.step == 0 and f.evidence["steps_above_limit"] > 250 and f.evidence["max_value"] == 0.5
    assert "after loss.backward()" in f.recommendations[0].description


def test_misplaced_clipping_that_would_not_have_acted_is_medium():
    cols = healthy_columns()  # grad_norm 1.0-1.2
    cols["steps"]["clip_calls"] = np.ones(300, int)
    cols["steps"]["clips_before_backward"] = np.ones(300, int)
    events = [_row(GradientClip(function="clip_grad_norm_", max_value=5.0, before_backward=True))]
    (f,) = ClipBeforeBackward().check(build(cols, events=events))
    assert f.severity == "medium"


def test_clipping_after_backward_is_healthy():
    cols = healthy_columns()
    cols["steps"]["clip_calls"] = np.ones(300, int)
    cols["steps"]["clips_before_backward"] = np.zeros(300, int)
    assert ClipBeforeBackward().check(build(cols)) == []
    assert ClipBeforeBackward().check(build(healthy_columns())) == []  # no clipping at all


# --- weight_decay_too_high ---------------------------------------------------------------------


def _decayed(cols, opt: OptimizerInfo, shrink_to: float = 1.0):
    cols["optimizers"] = [opt]
    wd = opt.param_groups[0]["weight_decay"]
    for p in cols["params"].values():
        p.weight_decay = wd
    pt = cols["param_stats"]
    k = len(np.unique(pt["step"]))
    n_p = len(cols["params"])
    pt["norm"] = pt["norm"] * np.repeat(np.linspace(1.0, shrink_to, k), n_p)
    return cols


def test_sgd_l2_that_removes_a_quarter_of_the_weights_a_step_fires_high():
    cols = healthy_columns()
    cols["steps"]["lr"] = np.full(300, 0.05)
    cols = _decayed(cols, OptimizerInfo("SGD", [{"lr": 0.05, "momentum": 0.9, "weight_decay": 0.5, "params": 6}]),
                    shrink_to=0.02)
    (f,) = WeightDecayTooHigh().check(build(cols))
    assert f.kind == "weight_decay_too_high" and f.severity == "high" and f.causes == ["weight_decay_too_high"]
    assert abs(f.evidence["shrink_per_step"] - 0.25) < 1e-9 and f.evidence["norm_end_over_start"] < 0.05
    assert f.evidence["decay_to_gradient"] > 1


def test_adamw_decay_of_two_percent_a_step_fires():
    cols = healthy_columns()
    cols["steps"]["lr"] = np.full(300, 2e-3)
    cols = _decayed(cols, OptimizerInfo("AdamW", [{"lr": 2e-3, "weight_decay": 10.0, "params": 6}]))
    (f,) = WeightDecayTooHigh().check(build(cols))
    assert f.evidence["decoupled"] is True and abs(f.evidence["shrink_per_step"] - 0.02) < 1e-9
    assert f.evidence["decay_to_gradient"] is None


def test_common_weight_decay_settings_are_healthy():
    for opt, lr in ((OptimizerInfo("SGD", [{"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "params": 6}]), 0.1),
                    (OptimizerInfo("AdamW", [{"lr": 1e-3, "weight_decay": 0.1, "params": 6}]), 1e-3),
                    (OptimizerInfo("SGD", [{"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                                            "params": 6}]), 0.05)):
        cols = healthy_columns()
        cols["steps"]["lr"] = np.full(300, lr)
        assert WeightDecayTooHigh().check(build(_decayed(cols, opt))) == []


def test_strong_decay_for_a_few_steps_only_is_not_judged():
    cols = healthy_columns(n_steps=100)
    lr = np.full(100, 1e-5)
    lr[:10] = 2e-3  # 10 steps at 2% a step: 0.2 in all, the weights barely shrink
    cols["steps"]["lr"] = lr
    cols = _decayed(cols, OptimizerInfo("AdamW", [{"lr": 1e-5, "initial_lr": 2e-3, "weight_decay": 10.0,
                                                   "params": 6}]))
    assert WeightDecayTooHigh().check(build(cols)) == []


def test_coupled_l2_in_adam_is_not_judged():
    cols = healthy_columns()
    cols["steps"]["lr"] = np.full(300, 1e-2)
    cols = _decayed(cols, OptimizerInfo("Adam", [{"lr": 1e-2, "weight_decay": 5.0, "params": 6}]))
    assert WeightDecayTooHigh().check(build(cols)) == []
