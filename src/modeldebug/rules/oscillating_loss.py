"""oscillating_loss: the loss swings up and down by about its own size instead of settling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    GRACE_STEPS,
    Rule,
    best_practice,
    clip_grad,
    col,
    fix,
    g,
    grace_mask,
    input_scale,
    loss_trend,
    lower_lr,
)
from modeldebug.types import Finding


def _falling_course(v: np.ndarray) -> np.ndarray:
    """The closest non-increasing curve to ``v`` (least squares; pool adjacent violators)."""
    means, sizes = [], []
    for x in v:
        means.append(float(x))
        sizes.append(1)
        while len(means) > 1 and means[-2] < means[-1]:
            m, n = means.pop(), sizes.pop()
            means[-1] = (means[-1] * sizes[-1] + m * n) / (sizes[-1] + n)
            sizes[-1] += n
    return np.repeat(means, sizes)


@register
@dataclass
class OscillatingLoss(Rule):
    """Large, persistent swings of the training loss in the second half of the run.

    Reads: steps.loss (finite values after the grace steps), steps.input_mean/std, optimizers.
    Fires: after ``min_steps`` finite losses, when in the second half of the run the spread of the
    loss (90th minus 10th percentile) is at least ``amplitude`` = 2.5 x its median level AND its
    90th percentile is back at ``back_to_start`` = 50% of the starting loss or more: swings much
    bigger than the loss itself that keep undoing the progress. AND the spread around the best
    non-increasing course (isotonic fit) is at least ``around_course`` = half of it: a curve that
    still falls smoothly (to full accuracy) has its spread taken up by the course (~5% of it
    left); the suite's high-lr runs keep 65-110%. Fault suite: minibatch noise of
    healthy runs near convergence reaches 0.6-1.8x the median (and sometimes peaks near the
    start when the loss falls within the grace steps); planted lr-too-high runs swing 4-6x.
    Severity: high when the loss does not improve over the run, else medium.
    Causes: learning_rate_too_high first; unnormalized_inputs when inputs are far from
    normalized; missing_normalization_layer.
    Recommends: lr / 10 (concrete), a decaying schedule, gradient clipping.
    """

    id = "oscillating_loss"
    kind = "oscillating_loss"
    reads = ("steps.loss", "steps.input_mean", "steps.input_std", "optimizers", "steps.loss_nonfinite")
    amplitude: float = 2.5
    back_to_start: float = 0.5
    around_course: float = 0.5
    min_steps: int = 20
    grace_steps: int = GRACE_STEPS

    def check(self, ev: Evidence) -> list[Finding]:
        steps, loss = col(ev.steps, "step"), col(ev.steps, "loss")
        keep = grace_mask(steps, self.grace_steps) & np.isfinite(loss)
        s, v = steps[keep], loss[keep]
        if len(v) < self.min_steps:
            return []
        trend = loss_trend(ev, self.grace_steps, min_steps=self.min_steps)
        late = v[len(v) // 2:]
        lo, hi = np.percentile(late, [10, 90])
        amp, level = float(hi - lo), float(np.median(np.abs(late)))
        # A curve still falling smoothly spans a wide range without oscillating: most of the spread
        # must be left around the best falling course, not taken up by it.
        resid_lo, resid_hi = np.percentile(late - _falling_course(late), [10, 90])
        around = float(resid_hi - resid_lo)
        start = abs(trend.start) if trend else abs(float(np.median(v[:3])))
        if not (amp >= self.amplitude * level and hi >= self.back_to_start * start and amp > 0
                and around >= self.around_course * amp):
            return []
        jumps = np.flatnonzero(np.diff(v) > 0.5 * amp)
        first = int(s[jumps[0] + 1]) if len(jumps) else int(s[len(v) // 2])
        scale = input_scale(ev)
        causes = ["learning_rate_too_high"]
        if scale > 10:
            causes.append("unnormalized_inputs")
        causes.append("missing_normalization_layer")
        improving = trend is not None and trend.improving
        recs = lower_lr(ev) + [
            best_practice("Decay the learning rate over the run.",
                          f"torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max={int(np.max(s)) + 1})"),
            clip_grad(),
        ]
        if scale > 10:
            recs.insert(1, fix(f"Standardize the inputs (mean/std reach {g(scale)}).",
                               "x = (x - x.mean(0)) / (x.std(0) + 1e-8)"))
        return [self.finding(
            severity="medium" if improving else "high", confidence=0.75, location=None, step=first,
            message=(f"The loss oscillates: in the second half of the run it spans {g(lo)} to {g(hi)} (10th-90th "
                     f"percentile), a swing of {g(amp / max(level, 1e-12))}x its median {g(level)}"
                     + (f"; it started at {g(start)}." if trend else ".")),
            evidence={"p10": float(lo), "p90": float(hi), "median": level, "start": start,
                      "swing_over_median": amp / max(level, 1e-12)},
            causes=causes, recommendations=recs,
        )]
