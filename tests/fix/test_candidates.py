"""The candidates built from what the rules say caused a finding (issue 18): each is made for the
causes it addresses and not for others, and, applied to a real fault script in a short window, it
is verified there and rejected on a script whose fault it does not address.

Each window is the script watched as `modeldebug run` watches it; a judged candidate is compared
with one unfixed window (its run-to-run noise then taken from the end segment alone).
"""

from __future__ import annotations

import sys
from pathlib import Path

from modeldebug.fixes import candidates, verify
from modeldebug.fixes.candidates import build
from modeldebug.types import Finding

FAULTS = Path(__file__).parents[1] / "faults"


def _finding(kind: str, causes: list[str], **extra) -> Finding:
    return Finding(kind=kind, severity="high", confidence=0.9, message="m", causes=causes, **extra)


def _kinds(found) -> list[str]:
    return [c.spec["kind"] for c in found]


# ---------------------------------------------------------------- which causes get which candidate


def test_each_candidate_is_built_from_the_cause_or_kind_it_addresses_only():
    lr_high = _finding("oscillating_loss", ["learning_rate_too_high"])
    assert _kinds(build([lr_high], 8)) == ["lr_scale", "lr_scale"]  # x0.1, x0.01: nothing else
    init = _finding("poor_weight_init", ["bad_weight_init"], location="0")
    (reinit,) = build([init], 8, {"layer_types": ["Linear", "ReLU"]})
    assert reinit.spec == {"kind": "reinit", "scheme": "kaiming"} and reinit.addresses == ["poor_weight_init"]
    assert build([init], 8, {"layer_types": ["Linear", "Tanh"]})[0].spec["scheme"] == "xavier"
    inputs = _finding("data_issue", ["unnormalized_inputs"])
    assert _kinds(build([inputs], 8)) == ["standardize_inputs"]
    decay = _finding("weight_decay_too_high", ["weight_decay_too_high"], evidence={"shrink_per_step": 0.25})
    assert [c.spec for c in build([decay], 8)] == [{"kind": "weight_decay_scale", "factor": 0.001}]
    mild = _finding("weight_decay_too_high", ["weight_decay_too_high"], evidence={"shrink_per_step": 0.002})
    assert build([mild], 8)[0].spec["factor"] == 0.1


def test_the_loss_input_layer_is_named_by_the_rule_and_its_loss_decides_drop_or_log_softmax():
    ce = _finding("wrong_loss_input", ["wrong_loss_function"], location="classifier.4",
                  evidence={"loss_function": "cross_entropy"})
    assert build([ce], 8)[0].spec == {"kind": "loss_input", "layer": "classifier.4", "loss": "cross_entropy"}
    assert "drop it" in build([ce], 8)[0].change
    nll = _finding("wrong_loss_input", ["wrong_loss_function"], location="out", evidence={"loss_function": "nll_loss"})
    assert "log_softmax" in build([nll], 8)[0].change
    # a loss_not_decreasing that names wrong_loss_function names no layer: nothing to drop
    assert build([_finding("loss_not_decreasing", ["wrong_loss_function"])], 8) == []


def test_eps_only_for_an_op_the_nan_origin_names_or_a_loss_computed_outside_the_model():
    def nan(origin):
        return _finding("nan_or_inf", ["numerically_unstable_op"], evidence={"origin": origin})

    assert build([nan({"phase": "forward", "cause": "log of 0"})], 8)[0].spec["ops"] == ["log"]
    assert build([nan({"phase": "backward", "cause": "the gradient of sqrt at 0 is infinite"})], 8)[0].spec["ops"] == ["sqrt"]
    assert build([nan({"phase": "loss", "cause": "outside the model"})], 8)[0].spec["ops"] == ["log", "sqrt", "div"]
    assert build([nan({"phase": "forward", "cause": "overflow in matmul"})], 8) == []


def test_mode_scheduler_leaky_and_a_higher_rate_need_their_evidence():
    left_in_eval = _finding("train_eval_mode", ["wrong_module_mode"], evidence={"eval_mode_steps": 40})
    (mode,) = build([left_in_eval], 8)
    assert mode.spec == {"kind": "module_mode", "train": True} and mode.by_validation
    evaluated_in_train = _finding("train_eval_mode", ["wrong_module_mode"], evidence={"train_mode_eval_batches": 8})
    assert build([evaluated_in_train], 8)[0].spec == {"kind": "module_mode", "train": False}
    per_batch = _finding("lr_schedule_misuse", ["scheduler_misuse"], evidence={"scheduler_calls_per_step": 1.0})
    assert _kinds(build([per_batch], 8)) == ["scheduler_per_epoch"]
    assert build([_finding("lr_schedule_misuse", ["scheduler_misuse"], evidence={"scheduler_calls_per_step": 0.02})], 8) == []
    dead = _finding("dead_relu", ["bad_weight_init"])
    assert _kinds(build([dead], 8, {"layer_types": ["Linear", "ReLU"]})) == ["reinit", "leaky_relu"]
    assert _kinds(build([dead], 8, {"layer_types": ["Linear", "GELU"]})) == ["reinit"]  # no nn.ReLU to swap
    # x10 only when the rules name a too-low rate first (elsewhere they list it as a fallback)
    too_low = _finding("loss_not_decreasing", ["learning_rate_too_low"])
    assert build([too_low], 8)[0].spec == {"kind": "lr_scale", "factor": 10.0}
    assert build([too_low], 8, {"lr": 1e-7, "typical_lr": 1e-3})[0].spec["factor"] == 10000.0  # back to the usual
    assert build([_finding("loss_not_decreasing", ["wrong_loss_function", "learning_rate_too_low"])], 8) == []
    # nor when the rate is low because a schedule collapsed it: the schedule is fixed instead
    assert _kinds(build([per_batch, too_low], 8)) == ["scheduler_per_epoch"]


# ---------------------------------------------------------------- applied in real fault scripts


def _judged(tmp_path, script: str, steps: int, candidate, probe=None):
    """The candidate's window judged against one unfixed window of the same script."""
    command = [sys.executable, str(FAULTS / f"{script}.py")]
    store = tmp_path / "runs.db"
    probe = probe or verify._window(command, steps, None, store, None)
    return verify._judge(candidate, probe, probe, verify._window(command, steps, candidate.spec, store, None)), probe


def _for(finding_kind: str, candidate):
    candidate.addresses = [finding_kind]
    return candidate


def test_reinit_fixes_weights_drawn_at_16x_the_he_scale_and_standardising_does_not(tmp_path):
    found, probe = _judged(tmp_path, "exploding_gradient__deep_mlp_large_init", 32,
                           _for("poor_weight_init", candidates.reinit(None, {"layer_types": ["Linear", "ReLU"]})))
    assert found.verified and found.findings_after == [], found
    assert {"poor_weight_init", "nan_or_inf"} <= set(probe.kinds())
    wrong, _ = _judged(tmp_path, "exploding_gradient__deep_mlp_large_init", 32,
                       _for("poor_weight_init", candidates.standardize_inputs(None)), probe)
    assert not wrong.verified and "poor_weight_init" in wrong.reason


def test_standardised_inputs_fix_raw_tabular_features(tmp_path):
    found, probe = _judged(tmp_path, "data_issue__raw_tabular_features_regression", 80,
                           _for("data_issue", candidates.standardize_inputs(None)))
    assert "data_issue" in probe.kinds()
    assert found.verified and found.loss_after < 0.01 * found.loss_before, found


def test_dropping_the_softmax_before_cross_entropy_fixes_it(tmp_path):
    finding = _finding("wrong_loss_input", ["wrong_loss_function"], location="3",
                       evidence={"loss_function": "cross_entropy"})
    found, probe = _judged(tmp_path, "wrong_loss_input__mlp_softmax_before_cross_entropy", 300,
                           _for("wrong_loss_input", candidates.loss_input(finding)))
    assert "wrong_loss_input" in probe.kinds()
    assert found.verified and "wrong_loss_input" not in found.findings_after, found


def test_eps_in_a_hand_written_bce_fixes_its_log_of_0(tmp_path):
    finding = _finding("nan_or_inf", ["numerically_unstable_op"], evidence={"origin": {"phase": "loss"}})
    found, probe = _judged(tmp_path, "nan_or_inf__manual_bce_log_of_zero", 40,
                           _for("nan_or_inf", candidates.stable_op(finding)))
    assert "nan_or_inf" in probe.kinds()
    assert found.verified and found.findings_after == [], found


def test_a_per_epoch_scheduler_stepped_every_batch_is_stepped_once_per_epoch(tmp_path):
    finding = _finding("lr_schedule_misuse", ["scheduler_misuse"], evidence={"scheduler_calls_per_step": 1.0})
    found, probe = _judged(tmp_path, "lr_schedule_misuse__transformer_steplr_every_batch", 48,
                           _for("lr_schedule_misuse", candidates.scheduler_per_epoch(finding)))
    assert "lr_schedule_misuse" in probe.kinds()
    assert found.verified, found


def test_a_clip_called_before_backward_is_made_after_it(tmp_path):
    finding = _finding("clip_before_backward", ["clipping_misplaced"], evidence={"function": "clip_grad_norm_"})
    (candidate,) = build([finding], 8)
    found, probe = _judged(tmp_path, "clip_before_backward__mlp_price_regression", 100, candidate)
    assert "clip_before_backward" in probe.kinds()
    assert found.verified and found.findings_after == [], found


def test_a_zero_grad_between_backward_and_step_is_made_before_backward(tmp_path):
    finding = _finding("unchanged_weights", ["zero_grad_misplaced"])
    (candidate,) = build([finding], 8)
    assert candidate.spec == {"kind": "move_zero_grad"}
    found, probe = _judged(tmp_path, "unchanged_weights__regression_zero_grad_before_step", 60, candidate)
    assert "unchanged_weights" in probe.kinds()
    assert found.verified and found.findings_after == [], found


def test_a_clip_of_still_scaled_gradients_is_preceded_by_unscale(tmp_path):
    finding = _finding("clip_before_backward", ["clipping_misplaced"],
                       evidence={"function": "clip_grad_norm_", "clips_scaled": 40})
    (candidate,) = build([finding], 8)
    assert candidate.spec == {"kind": "unscale_before_clip", "function": "clip_grad_norm_"}
    found, probe = _judged(tmp_path, "clip_before_backward__amp_sgd_clip_scaled_gradients", 120, candidate)
    assert "clip_before_backward" in probe.kinds()
    assert found.verified and "clip_before_backward" not in found.findings_after, found
    # the same mechanism leaves a script that clips unscaled gradients as it was
    healthy, _ = _judged(tmp_path, "healthy__amp_sgd_clip_scaled_gradients", 60, _for("clip_before_backward", candidate))
    assert not healthy.verified, healthy


def test_a_mitigation_verified_beside_a_fix_of_the_cause_is_not_the_fix():
    from modeldebug.types import Fix

    lower, clip, leaky = candidates.lr_scale(0.1), candidates.clip_grad_norm(), candidates.leaky_relu(None)
    assert clip.mitigation and leaky.mitigation and not lower.mitigation

    def tried(c, verified, addresses):
        return Fix(addresses=addresses, change=c.change, verified=verified, reason="loss 3 -> 1")

    fixes = [tried(lower, True, ["exploding_gradient"]), tried(clip, True, ["exploding_gradient"]),
             tried(leaky, True, ["dead_relu"])]
    verify._mitigations_second(fixes, [lower, clip, leaky])
    assert [f.verified for f in fixes] == [True, False, True]  # LeakyReLU's finding has no other fix
    assert "treats the symptom" in fixes[1].reason and lower.change in fixes[1].reason
    # with the cause's fix rejected, clipping stays the verified one
    fixes = [tried(lower, False, ["exploding_gradient"]), tried(clip, True, ["exploding_gradient"])]
    verify._mitigations_second(fixes, [lower, clip])
    assert [f.verified for f in fixes] == [False, True]


def test_a_fix_that_changes_the_step_size_is_retried_with_the_rate_retuned_for_it(tmp_path):
    raw = _finding("data_issue", ["unnormalized_inputs"])
    assert build([raw], 8, {"input_std": 74.0})[0].retune_lr == 10.0  # pixels 0-255 brought to scale 1
    assert build([raw], 8, {"input_std": 0.003})[0].retune_lr == 0.1
    assert build([raw], 8)[0].retune_lr is None  # (no input seen: nothing to retune by)
    assert candidates.retuned(candidates.lr_scale(0.1)) is None
    zero = candidates.zero_grad()
    again = candidates.retuned(zero)
    assert again.spec == {"kind": "zero_grad", "lr_factor": 10.0} and again.retune_lr is None
    assert again.change.startswith(zero.change) and "learning rate x10" in again.change
    # gradients summed over all steps at SGD lr 0.01 fall faster than zeroed ones at the same rate
    # within this 300-step script; zeroed at the rate retuned for them they fall further
    plain, probe = _judged(tmp_path, "gradient_accumulation__mlp_no_zero_grad", 300, _for("gradient_accumulation", zero))
    assert not plain.verified and plain.reason.startswith(verify.NOT_LOWER), plain
    found, _ = _judged(tmp_path, "gradient_accumulation__mlp_no_zero_grad", 300,
                       _for("gradient_accumulation", again), probe)
    assert found.verified and found.loss_after < plain.loss_before, found


def test_a_head_built_inside_forward_is_kept_once_built_and_trained(tmp_path):
    renewed = _finding("untracked_parameters", ["parameters_not_in_optimizer"],
                       evidence={"params": ["head.weight", "head.bias"], "renewed_steps": 4})
    (keep,) = build([renewed], 8)  # (adding params renewed every step to the optimizer cannot help)
    assert keep.spec == {"kind": "keep_module", "modules": ["head"], "params": ["head.weight", "head.bias"]}
    replaced_once = _finding("untracked_parameters", ["parameters_not_in_optimizer"],
                             evidence={"params": ["head.weight", "head.bias"], "renewed_steps": 1})
    assert _kinds(build([replaced_once], 8)) == ["train_params"]
    found, probe = _judged(tmp_path, "untracked_parameters__cnn_lazy_head_in_forward", 120, keep)
    assert "untracked_parameters" in probe.kinds()
    assert found.verified and found.findings_after == [], found


def test_keeping_a_module_keeps_only_one_of_the_same_shape(monkeypatch):
    from torch import nn

    from modeldebug.fixes import modules

    monkeypatch.setattr(nn.Module, "__setattr__", nn.Module.__setattr__)  # (undone after the test)
    modules.keep_modules(["head"], lambda f: f)
    net = nn.Module()
    net.head = None
    first = nn.Linear(4, 2)
    net.head = first
    net.head = nn.Linear(4, 2)
    assert net.head is first
    net.head = nn.Linear(4, 3)  # another shape: the script means it
    assert net.head.out_features == 3
    net.body = nn.Linear(4, 2)
    other = nn.Linear(4, 2)
    net.body = other  # not a kept name
    assert net.body is other


def test_a_fix_that_leaves_a_finding_another_verified_fix_removes_is_not_the_fix():
    from modeldebug.types import Fix

    def tried(change, addresses, after):
        return Fix(addresses=addresses, change=change, verified=True, reason="loss 0.67 -> 0.2",
                   findings_after=after)

    decay = tried("weight decay x0.01", ["weight_decay_too_high"], [])
    lower = tried("learning rate x0.1", ["loss_spike"], ["weight_decay_too_high"])
    init = tried("re-initialise", ["poor_weight_init"], ["loss_spike", "weight_decay_too_high"])
    fixes = [decay, lower, init]
    verify._dominated_second(fixes)
    assert [f.verified for f in fixes] == [True, False, False]
    assert "weight decay x0.01" in lower.reason and "weight_decay_too_high stay" in lower.reason
    # two fixes of two independent roots, each leaving the other's finding: both stand
    a = tried("weight decay x0.01", ["weight_decay_too_high"], ["dead_relu"])
    b = tried("LeakyReLU", ["dead_relu"], ["weight_decay_too_high"])
    verify._dominated_second([a, b])
    assert a.verified and b.verified
    # two that leave the same findings: neither is second to the other
    c = tried("learning rate x0.1", ["loss_spike"], ["dead_relu"])
    d = tried("learning rate x0.01", ["loss_spike"], ["dead_relu"])
    verify._dominated_second([c, d])
    assert c.verified and d.verified
