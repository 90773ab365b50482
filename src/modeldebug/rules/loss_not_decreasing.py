"""loss_not_decreasing: the training loss does not go down (or the user's loss/accuracy alert trips)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    GRACE_STEPS,
    Rule,
    adversarial,
    clipped_hard,
    col,
    current_lr,
    family,
    fix,
    flag,
    g,
    grace_mask,
    init_scales,
    input_scale,
    layer_arg,
    loss_trend,
    lower_lr,
    lr_is_high,
    lr_is_low,
    optimizer_type,
    per_group_median,
    raise_lr,
    target_scale,
    thrown_early,
)
from modeldebug.rules.labels_unrelated import LabelsUnrelated
from modeldebug.rules.unchanged_weights import cleared_before_step
from modeldebug.rules.loss_shape_broadcast import broadcasting_calls
from modeldebug.rules.reference import NO_BETTER, Reference, reference
from modeldebug.rules.wrong_loss_input import misuse
from modeldebug.types import Finding


@register
@dataclass
class LossNotDecreasing(Rule):
    """Training loss that stalls or climbs.

    Reads: steps.loss (median of the first vs the last window after the grace steps, windows of
    10% of the run, 3 to 50 steps), steps.optimizer_stepped, steps.stale_grad_norm,
    param_stats.update_ratio / has_grad, layers (last layer), class_counts, optimizers (lr),
    config.alert_thresholds.loss / accuracy.
    Fires: after ``min_steps`` finite losses, when the loss fell less than ``min_drop`` = 1% over
    the run (SageMaker's LossNotDecreasing asks 0.1% per 10 steps; per-step minibatch noise makes
    whole-run medians the robust form), or rose more than 10% (diverging). Also when no parameter
    moves (the largest per-parameter median update ratio below ``min_update_ratio``, DeepDiagnosis'
    lower bound) and the loss fell by less than ``noise_z`` = 3 standard errors of the difference of
    the two window medians (from the windows' own spread): with weights that still, a drop of a few
    percent is the minibatches' noise, not learning (a flat loss at lr 1e-7 "fell" 1-2% by chance in
    1 of 5 100-step runs). Also when the loss ends above ``alert_thresholds.loss`` or the last
    accuracy is below ``alert_thresholds.accuracy``.
    Not for adversarial training (two models or more, an optimizer each, a median of two backward
    calls or more per step: a GAN's losses trade off and need not fall), nor for a loss whose level
    measures no progress: centred on zero (both signs in its first and last windows, each window's
    median within its spread) or risen from below to zero (a REINFORCE surrogate on normalised
    returns, whose terms vanish as the policy grows certain).
    Severity: high (medium for runs shorter than ``short_run`` steps).
    Causes, from the evidence: optimizer.step() never called -> missing_optimizer_step; stale
    gradients -> missing_zero_grad; no gradient at all -> detached_graph; Softmax as last layer
    -> wrong_loss_function; one class -> label_problem; loss rising or update ratio > 0.1 ->
    learning_rate_too_high; initial weights off the 1/sqrt(fan_in) scale 20x -> bad_weight_init;
    the best loss nearer the uniform guess (ln K) than the label frequencies' loss (not even those
    learned), every parameter's update ratio < 1e-5 or lr below the usual range -> learning_rate_too_low;
    clip_grad_norm_ at a max_norm 100x or more below the gradient norm under SGD-like optimizers ->
    learning_rate_too_low, with a larger max_norm as the fix (base.clipped_hard); regression targets
    whose root mean square is ``max_target_scale`` = 100 or more -> unnormalized_inputs (the
    targets'), with standardized targets as the fix
    (DeepDiagnosis' update-ratio bounds [1e-5, 0.1]).
    Recommends: the fix for the first two causes, concrete for this run (lr now and the lr to
    try, the Softmax layer to remove, the missing call).
    """

    id = "loss_not_decreasing"
    kind = "loss_not_decreasing"
    reads = ("steps.loss", "steps.optimizer_stepped", "steps.scaler_skipped", "steps.stale_grad_norm",
             "param_stats.update_ratio",
             "param_stats.has_grad", "layers", "class_counts", "optimizers", "config.alert_thresholds.loss",
             "param_stats.norm", "params", "steps.input_mean", "steps.input_std", "steps.loss_nonfinite",
             "validation", "steps.backward_calls", "events.steps_on_cleared_gradients", "steps.clip_calls",
             "steps.grad_norm", "events.gradient_clip", "events.loss_targets") + LabelsUnrelated.reads
    min_drop: float = 0.01
    min_steps: int = 20
    short_run: int = 50
    grace_steps: int = GRACE_STEPS
    min_update_ratio: float = 1e-5
    max_update_ratio: float = 0.1
    max_target_scale: float = 100.0
    noise_z: float = 3.0

    def check(self, ev: Evidence) -> list[Finding]:
        findings = []
        trend = loss_trend(ev, self.grace_steps, min_steps=self.min_steps)
        steps = col(ev.steps, "step")
        if (trend is not None and abs(trend.start) > 1e-6 and not adversarial(ev)  # players' summed losses trade off
                and not self._zero_centred(ev, trend)):
            rising = trend.end > trend.start + 0.1 * abs(trend.start)
            ref = reference(ev)
            if (rising or trend.end > trend.start - self.min_drop * abs(trend.start)
                    or self._drop_is_noise_of_still_weights(ev, trend)):
                findings.append(self._stalled(ev, trend, rising, steps, ref))
            elif ref is not None and ref.n >= self.min_steps and ref.end >= NO_BETTER * ref.baseline:
                # It fell from its start, but the start may be blown up (lr far too high): judged
                # against the trivial predictor, the run learned nothing.
                findings.append(self._stalled(ev, trend, rising, steps, ref, at_reference=True))
        findings += self._alerts(ev, steps)
        return findings

    def _zero_centred(self, ev: Evidence, trend) -> bool:
        """A loss whose level measures no progress: one that takes both signs, its first and last
        windows each centred within their own spread of zero (a centred score), or one that rose from
        below to zero (|end| under 1% of |start|: a REINFORCE surrogate, -sum(log_prob * advantage),
        whose terms vanish as the policy grows certain)."""
        if trend.start < 0 and trend.end <= 0 and abs(trend.end) < self.min_drop * abs(trend.start):
            return True
        loss = col(ev.steps, "loss")
        finite = loss[np.isfinite(loss)]
        k = int(np.clip(len(finite) // 10, 3, 50))
        if len(finite) < max(self.min_steps, 2 * k):
            return False
        for w in (finite[:k], finite[-k:]):
            spread = 1.4826 * float(np.median(np.abs(w - np.median(w))))
            if not ((w < 0).any() and (w > 0).any() and abs(float(np.median(w))) < spread):
                return False
        return True

    def _drop_is_noise_of_still_weights(self, ev: Evidence, trend) -> bool:
        ur_max, _ = self._update_ratios(ev)
        if ur_max is None or not ur_max < self.min_update_ratio:
            return False
        steps, loss = col(ev.steps, "step"), col(ev.steps, "loss")
        keep = grace_mask(steps, self.grace_steps) if len(steps) > 2 * self.grace_steps + self.min_steps \
            else np.ones(len(steps), bool)
        finite = loss[keep & np.isfinite(loss)]
        k = int(np.clip(len(finite) // 10, 3, 50))  # the windows loss_trend takes its medians over
        spread = [1.4826 * float(np.median(np.abs(w - np.median(w)))) for w in (finite[:k], finite[-k:])]
        se_diff = 1.2533 * float(np.mean(spread)) * np.sqrt(2.0 / k)  # standard error of a median, two windows
        return trend.start - trend.end < self.noise_z * se_diff

    def _stalled(self, ev: Evidence, trend, rising: bool, steps: np.ndarray, ref: Reference | None = None,
                 at_reference: bool = False) -> Finding:
        causes, why = self._causes(ev, rising)
        first = int(steps[grace_mask(steps, self.grace_steps)][0]) if len(steps) > self.grace_steps else int(steps[0])
        chance = self._chance_note(ev, trend)
        noise = not rising and trend.end <= trend.start - self.min_drop * abs(trend.start)  # the still-weights case
        verb = ("fell but does little better than ignoring the input" if at_reference else "rose" if rising
                else "fell no more than its minibatch noise" if noise else "did not decrease")
        msg = (f"The training loss {verb}: {g(trend.start)} at the start -> "
               f"{g(trend.end)} at the end over {trend.n} steps ({g(100 * trend.rel_change)}%).{chance}")
        if ref is not None:
            msg += f" The training {ref.note()} (its best {g(ref.best)})."
        if why:
            msg += f" {why}"
        recs = []
        for c in causes[:2]:
            recs += self._fix_for(ev, c)
        evidence = {"loss_start": trend.start, "loss_end": trend.end, "rel_change": trend.rel_change,
                    "steps": trend.n, "median_update_ratio": self._update_ratio(ev)}
        if ref is not None:
            evidence.update({k: v for k, v in ref.evidence().items() if k != "loss_end"})
        return self.finding(
            severity="high" if trend.n >= self.short_run else "medium",
            confidence=0.85 if trend.n >= self.short_run else 0.6, location=None, step=first, message=msg,
            evidence=evidence,
            causes=causes, recommendations=recs,
        )

    def _causes(self, ev: Evidence, rising: bool) -> tuple[list[str], str]:
        s = ev.steps
        ur_max, ur = self._update_ratios(ev)
        stale = col(s, "stale_grad_norm")
        stale = stale[np.isfinite(stale)]
        if len(s) and not (flag(s, "optimizer_stepped") | flag(s, "scaler_skipped")).any():  # (a skip was a call)
            return ["missing_optimizer_step"], "optimizer.step() was never called."
        if len(stale) and np.mean(stale > 0) > 0.5:
            return ["missing_zero_grad", "learning_rate_too_high"], "Gradients are never zeroed between steps."
        cleared = cleared_before_step(ev)
        if cleared is not None:
            return (["zero_grad_misplaced"],
                    f"zero_grad() ran between loss.backward() and optimizer.step() on {cleared.steps} of "
                    f"{cleared.optimizer_steps} steps: the updates had no gradients to apply.")
        t = ev.param_stats
        if len(t) and not flag(t, "has_grad").any():
            return ["detached_graph", "frozen_parameters"], "No parameter ever received a gradient."
        if broadcasting_calls(ev):
            c = broadcasting_calls(ev)[0]
            return (["loss_shape_mismatch"],
                    f"{c.name} compares input {c.input_shape} with target {c.target_shape}: they broadcast.")
        wrong = misuse(ev)
        if wrong is not None:
            return (["wrong_loss_function", "learning_rate_too_low"],
                    f"The loss function ({wrong.loss}) receives {wrong.got}.")
        if LabelsUnrelated().check(ev):
            return (["label_problem", "wrong_loss_function"],
                    "The loss stays at the trivial predictor's while the weights move at a healthy rate.")
        order = ev.layers_in_order()
        if order and family(order[-1]) == "Softmax":
            return (["wrong_loss_function", "learning_rate_too_low"],
                    f"The last layer ({order[-1].name}) is a Softmax: CrossEntropyLoss applies log_softmax itself.")
        if len(ev.class_counts) == 1:
            return ["label_problem"], "All labels are the same class."
        scale = target_scale(ev)
        if scale is not None and scale >= self.max_target_scale:
            return (["unnormalized_inputs", "learning_rate_too_low"],
                    f"The regression targets are unnormalized: their scale (root mean square of the sampled "
                    f"targets) is {g(scale)}, which the output layer must grow to from an init near 1.")
        tight = clipped_hard(ev)
        if tight is not None:
            return (["learning_rate_too_low", "wrong_loss_function"],
                    f"clip_grad_norm_ at max_norm {g(tight.max_norm)} shrinks the gradients (median norm "
                    f"{g(tight.median_norm)}) {g(tight.shrink)}x on every step: the updates are that much smaller "
                    f"than the learning rate says.")
        thrown = thrown_early(ev, self.max_update_ratio)
        if rising or (ur is not None and ur > self.max_update_ratio) or lr_is_high(ev) or thrown is not None:
            note = f"Median update ratio |dW|/|W| is {g(ur)}." if ur is not None else ""
            if thrown is not None:
                note += f" Early steps moved the weights by {g(thrown)}x themselves."
            return ["learning_rate_too_high", "bad_weight_init", "unnormalized_inputs"], note
        scales = init_scales(ev)
        if scales and not all(0.05 <= v <= 10 for v in scales.values()):
            p, v = max(scales.items(), key=lambda kv: abs(np.log(max(kv[1], 1e-12))))
            return (["bad_weight_init", "learning_rate_too_low"],
                    f"{p} starts at {g(v)}x the 1/sqrt(fan_in) scale.")
        ref = reference(ev)
        if ref is not None and ref.learned_nothing():
            return (["learning_rate_too_low", "bad_weight_init", "wrong_loss_function"],
                    f"Its best {g(ref.best)} is nearer the uniform guess's {g(ref.uniform)} than the label "
                    f"frequencies' {g(ref.baseline)}: the model did not learn even those, so its updates "
                    "hardly moved it.")
        if (ur_max is not None and ur_max < self.min_update_ratio) or lr_is_low(ev):
            lr = current_lr(ev)
            note = (f"The largest update ratio |dW|/|W| of any parameter is {g(ur_max)}, below "
                    f"{g(self.min_update_ratio)}: the weights barely move."
                    if ur_max is not None and ur_max < self.min_update_ratio
                    else f"The learning rate ({g(lr)}) is below the usual range for {optimizer_type(ev) or 'its optimizer'}."
                    if lr is not None else "The learning rate is very small.")
            return ["learning_rate_too_low", "bad_weight_init", "wrong_loss_function"], note
        scale = input_scale(ev)
        if scale > 10:
            return ["unnormalized_inputs", "learning_rate_too_low"], f"Inputs reach mean/std {g(scale)}."
        return ["learning_rate_too_low", "wrong_loss_function", "label_problem"], ""

    def _fix_for(self, ev: Evidence, cause: str):
        if cause == "bad_weight_init":
            return [fix("Re-initialize the weights at the Kaiming/Xavier scale (PyTorch's default init is fine).",
                        "for m in model.modules():\n    if isinstance(m, nn.Linear):\n"
                        "        nn.init.kaiming_normal_(m.weight, nonlinearity='relu'); nn.init.zeros_(m.bias)")]
        if cause == "missing_optimizer_step":
            return [fix("Call optimizer.step() after loss.backward().", "loss.backward()\noptimizer.step()")]
        if cause == "zero_grad_misplaced":
            return [fix("Clear the gradients before loss.backward() (or after optimizer.step()), never between them.",
                        "optimizer.zero_grad()\nloss.backward()\noptimizer.step()")]
        if cause == "missing_zero_grad":
            return [fix("Zero the gradients every step.", "optimizer.zero_grad(set_to_none=True)  # before backward")]
        if cause == "detached_graph":
            return [fix("Compute the loss from the model's output without .detach()/.item()/torch.no_grad().",
                        "loss = criterion(model(x), y)")]
        # The advice follows what the run showed, not only the cause's name: a Softmax to remove only
        # where there is one, "one class" only where the labels are one class.
        if cause == "wrong_loss_function":
            order = ev.layers_in_order()
            if order and family(order[-1]) == "Softmax":
                return [fix(f"Remove the Softmax ({order[-1].name}): nn.CrossEntropyLoss expects raw logits.",
                            "criterion = nn.CrossEntropyLoss()  # on logits, no softmax before it")]
            wrong = misuse(ev)
            if wrong is not None:
                return [fix(f"Feed {wrong.loss} {wrong.expects}, not {wrong.got}.",
                            "loss = criterion(logits, y)  # the model's raw output, no softmax/sigmoid")]
            return [fix("Check that the loss fits the model's output: CrossEntropyLoss takes raw logits, NLLLoss "
                        "log-probabilities, BCEWithLogitsLoss logits, MSELoss values of the target's shape.",
                        "print(output.shape, output.min().item(), output.max().item(), y.shape)")]
        if cause == "label_problem":
            if len(ev.class_counts) == 1:
                return [fix("Check the labels: all samples carry the same class.", "print(torch.bincount(y))")]
            return [fix("Check that every input stays paired with its own label (one index for inputs and "
                        "labels when splitting or shuffling), and print a few pairs.",
                        "for i in range(5):\n    print(x[i][:8], y[i])")]
        if cause == "learning_rate_too_high":
            return lower_lr(ev)
        if cause == "learning_rate_too_low":
            tight = clipped_hard(ev)
            if tight is not None:
                return [fix(f"Clip at a max_norm near the gradients' own norm (median {g(tight.median_norm)}) "
                            f"so that only outlier steps are cut, not every step.",
                            "torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)")]
            return raise_lr(ev)
        if cause == "unnormalized_inputs":
            scale = target_scale(ev)
            if scale is not None and scale >= self.max_target_scale:
                return [fix("Standardize the regression targets with the training set's mean and std, and map "
                            "the predictions back for reporting.",
                            "mu, sd = y_train.mean(0), y_train.std(0)\nloss = criterion(model(x), (y - mu) / sd)\n"
                            "prediction = model(x) * sd + mu")]
            return [fix("Standardize the inputs.", "x = (x - x.mean(0)) / (x.std(0) + 1e-8)")]
        return []

    @staticmethod
    def _update_ratios(ev: Evidence) -> tuple[float | None, float | None]:
        """(largest, median) of the per-parameter median update ratios. A low lr keeps even the
        largest tiny; vanishing gradients leave the last layers' ratios normal."""
        t = ev.param_stats
        if len(t) == 0:
            return None, None
        med = np.array(list(per_group_median(t["param"], col(t, "update_ratio")).values()))
        if len(med) == 0:
            return None, None
        return float(np.max(med)), float(np.median(med))

    def _update_ratio(self, ev: Evidence) -> float | None:
        return self._update_ratios(ev)[1]

    @staticmethod
    def _chance_note(ev: Evidence, trend) -> str:
        order = ev.layers_in_order()
        classes = layer_arg(ev, order[-1].name, "out_features") if order else None
        if order and classes is None and len(order) > 1:
            classes = layer_arg(ev, order[-2].name, "out_features")
        if classes and classes > 1 and abs(trend.end - np.log(classes)) < 0.05 * np.log(classes):
            return f" That is ln({classes}) = {g(np.log(classes))}, the loss of guessing uniformly among {classes} classes."
        return ""

    def _alerts(self, ev: Evidence, steps: np.ndarray) -> list[Finding]:
        out = []
        limit = ev.config.alert_thresholds.loss
        loss = col(ev.steps, "loss")
        ok = np.isfinite(loss)
        if limit is not None and ok.sum() >= 1:
            tail = loss[ok][-max(1, min(50, ok.sum() // 10)):]
            end = float(np.median(tail))
            below = np.flatnonzero(ok & (loss <= limit))
            above_after = np.flatnonzero(ok & (loss > limit) & (np.arange(len(loss)) > (below[0] if len(below) else -1)))
            if end > limit:
                step = int(steps[above_after[0]]) if len(below) and len(above_after) else int(steps[ok][-1])
                out.append(self.finding(
                    severity="medium", confidence=0.9, location=None, step=step,
                    message=f"The training loss ends at {g(end)}, above your alert threshold {g(limit)}.",
                    evidence={"loss_end": end, "alert_threshold": limit}, causes=self._causes(ev, False)[0],
                    recommendations=raise_lr(ev) if lr_is_low(ev) else lower_lr(ev, 3),
                ))
        acc_limit = ev.config.alert_thresholds.accuracy
        for table in (ev.validation, ev.steps):
            if acc_limit is None or "accuracy" not in table or len(table) == 0:
                continue
            acc = col(table, "accuracy")
            good = np.isfinite(acc)
            if good.any() and acc[good][-1] < acc_limit:
                out.append(self.finding(
                    severity="medium", confidence=0.9, location=None, step=int(col(table, "step")[good][-1]),
                    message=f"The accuracy ends at {g(acc[good][-1])}, below your alert threshold {g(acc_limit)}.",
                    evidence={"accuracy": float(acc[good][-1]), "alert_threshold": acc_limit},
                    causes=self._causes(ev, False)[0], recommendations=[],
                ))
            break
        return out
