"""labels_unrelated: the loss stays at what predicting without looking at the input gives, while the
weights move at a healthy rate: the targets carry nothing the inputs predict (misaligned labels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, best_practice, col, fix, flag, g, per_group_median, thrown_early
from modeldebug.rules.data_issue import DataIssue
from modeldebug.rules.dead_relu import DeadReLU
from modeldebug.rules.loss_shape_broadcast import broadcasting_calls
from modeldebug.rules.reference import READS as REFERENCE_READS
from modeldebug.rules.reference import Reference, reference
from modeldebug.rules.wrong_loss_input import misuse
from modeldebug.types import Finding


@register
@dataclass
class LabelsUnrelated(Rule):
    """Training that moves the weights but never beats the trivial predictor.

    Reads: the loss reference (rules/reference.py: the trivial predictor's loss, the training loss
    at the end and at its best, validation from the same loss function), param_stats.update_ratio,
    steps.optimizer_stepped / stale_grad_norm / grad_norm / lr, params (in an optimizer?),
    optimizers (weight decay), the loss-call rules' and data_issue's evidence (a broadcasting loss,
    a wrong loss input, inputs far from normalized explain a loss at the reference themselves).
    Fires: after ``min_steps`` judged losses, when the training loss ends within
    [``low``, ``high``] = [0.95, 1.25] x the trivial loss and never went below ``best`` = 0.9 x it
    (validation, when measured with the same loss, too), while the updates are healthy: the
    optimizer steps, gradients are zeroed, every parameter with a gradient is in the optimizer,
    the median per-parameter update ratio of the second half of the run lies in DeepDiagnosis'
    [1e-5, 0.1] and the first half shows no throw (``thrown_early``: a sampled step's above 0.1 while
    the loss rose to 2x its start: an lr far too high throws the weights into a collapse that sits
    at the trivial loss; Adagrad and Adam begin with ratios of 0.3-0.7 on a falling loss), no layer's units are all dead over the second half (an lr far too high kills
    ReLUs, and a dead network sits at the trivial loss whatever its labels), the lr ends at least a
    tenth of its peak, and lr x weight_decay < 1e-3 per step.
    A healthy model falls well below the trivial loss within its first epoch; one whose labels
    are unrelated to its inputs can only memorise (Zhang et al. 2017: far slower than learning).
    Quiet when the loss never got nearer the label frequencies' loss than the uniform guess's
    (``Reference.learned_nothing``): unrelated labels still teach the label frequencies.
    Severity: high (medium below ``short_run`` judged losses).
    Causes: label_problem.
    Recommends: checking that inputs and labels stay paired (one index for both), and a quick
    check that a simple model beats the trivial loss.
    """

    id = "labels_unrelated"
    kind = "labels_unrelated"
    reads = REFERENCE_READS + ("param_stats.update_ratio", "steps.optimizer_stepped", "steps.stale_grad_norm",
                               "steps.grad_norm", "steps.lr", "params", "optimizers", "steps.loss_input_min",
                               "steps.loss_input_max", "steps.loss_input_sum_err", "layers"
                               ) + DataIssue.reads + DeadReLU.reads
    low: float = 0.95
    high: float = 1.25
    best: float = 0.9
    min_steps: int = 20
    short_run: int = 50
    min_update_ratio: float = 1e-5
    max_update_ratio: float = 0.1
    max_decay_per_step: float = 1e-3
    dead_layer: float = 0.9

    def check(self, ev: Evidence) -> list[Finding]:
        ref = reference(ev)
        if ref is None or ref.n < self.min_steps or not self._at_reference(ref) or ref.learned_nothing():
            return []  # (a model that never learned the label frequencies was not moved: no labels' doing)
        if broadcasting_calls(ev) or misuse(ev) is not None or DataIssue().check(ev):
            return []  # what the loss call or the data show explains the loss better
        ratio = self._healthy_update_ratio(ev)
        if ratio is None:
            return []
        msg = (f"The training loss stays at the loss of ignoring the input: {ref.note()} (its best "
               f"{g(ref.best)} over {ref.n} steps)"
               + (f", validation {g(ref.val_end)}" if ref.val_end is not None else "")
               + f", while the weights move at a healthy rate (median update ratio |dW|/|W| {g(ratio)}). "
               "The targets carry nothing the inputs predict: labels misaligned with their inputs, or the "
               "wrong column as the target.")
        evidence = {**ref.evidence(), "median_update_ratio": ratio, "steps": ref.n}
        return [self.finding(
            severity="high" if ref.n >= self.short_run else "medium", confidence=0.75, location=None,
            step=int(col(ev.steps, "step")[0]), message=msg, evidence=evidence, causes=["label_problem"],
            recommendations=[
                fix("Check that every input stays paired with its own label: apply one index (split, shuffle, "
                    "filtering) to both, read features and labels with the same header/row handling, and "
                    "print a few pairs.",
                    "idx = torch.randperm(len(x))\n"
                    "x_train, y_train = x[idx[:n_train]], y[idx[:n_train]]  # one index for both\n"
                    "assert len(x) == len(y)"),
                best_practice(f"Check that a simple model (a linear layer) gets below {g(ref.baseline)} on a "
                              "held-out batch: if it cannot either, the labels do not follow from the inputs.",
                              None),
            ],
        )]

    def _at_reference(self, ref: Reference) -> bool:
        b = ref.baseline
        if not (self.low * b <= ref.end <= self.high * b and ref.best >= self.best * b):
            return False
        return ref.val_end is None or ref.val_end >= self.low * b

    def _healthy_update_ratio(self, ev: Evidence) -> float | None:
        """The median update ratio of the second half of the run, when nothing in the optimizer's
        setup explains a loss that does not move (those rules keep their findings)."""
        s = ev.steps
        if len(s) and np.mean(flag(s, "optimizer_stepped")) < 0.9:
            return None
        stale = col(s, "stale_grad_norm")
        stale = stale[np.isfinite(stale)]
        if len(stale) and np.mean(stale > 0) > 0.5:
            return None
        grad = col(s, "grad_norm")
        if not np.isfinite(grad).any() or not np.nanmax(grad) > 0:
            return None
        if any(p.requires_grad and not p.in_optimizer for p in ev.params.values()):
            return None
        lr = col(s, "lr")
        lr = lr[np.isfinite(lr)]
        if len(lr) and lr[-1] < 0.1 * lr.max():
            return None
        for opt in ev.optimizers:
            for group in opt.param_groups:
                if float(group.get("lr") or 0) * float(group.get("weight_decay") or 0) >= self.max_decay_per_step:
                    return None
        t = ev.param_stats
        if len(t) == 0:
            return None
        steps, ratios = col(t, "step"), col(t, "update_ratio")
        late = steps >= np.median(steps)
        if thrown_early(ev, self.max_update_ratio) is not None:
            return None  # a collapse sits at the trivial loss whatever the labels (Adam at lr 0.3: 0.3-4x early)
        if self._dead_layer(ev):
            return None  # units that never fire learn nothing, whatever the labels
        med = np.array(list(per_group_median(t["param"][late], ratios[late]).values()))
        if len(med) == 0:
            return None
        ratio = float(np.median(med))
        return ratio if self.min_update_ratio <= ratio <= self.max_update_ratio else None

    def _dead_layer(self, ev: Evidence) -> bool:
        """A layer whose units are nearly all dead (dead_relu's finding): nothing can be learnt through it."""
        return any(float(f.evidence.get("dead_frac") or 0) >= self.dead_layer for f in DeadReLU().check(ev))
