"""dead_relu: ReLU units that never fire, so no gradient flows through them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    REFERENCE_READS,
    GRACE_STEPS,
    Rule,
    attr_path,
    col,
    fix,
    g,
    grace_mask,
    impact_severity,
    layer_order,
    layers_of,
    loss_trend,
    lower_lr,
    lr_is_high,
    per_group_median,
    previous_weighted,
)
from modeldebug.types import Finding

_RELUS = {"ReLU", "ReLU6", "RReLU", "Threshold"}


def dying(dead: np.ndarray, steps: np.ndarray, samples: int, rise: float, reach: float,
          steady: float = 0.25) -> tuple[float, float] | None:
    """(first, last) dead fraction of the last ``samples`` samples when units died between every two
    of them, by ``rise`` or more in all, to ``reach`` or more: units still dying (else None).
    Between every two samples the units must die at ``steady`` of the window's mean rate per step
    or faster: a layer that lost half its units in one burst and then held (a plateau that creeps
    up by a unit now and then) is not still dying, however the sparse samples fall around it."""
    ok = np.isfinite(dead)
    d, s = dead[ok][-samples:], steps[ok][-samples:].astype(float)
    if len(d) < samples or d[-1] - d[0] < rise or d[-1] < reach:
        return None
    rates = np.diff(d) / np.maximum(np.diff(s), 1.0)
    mean_rate = (d[-1] - d[0]) / max(s[-1] - s[0], 1.0)
    if np.any(rates < steady * mean_rate):
        return None
    return float(d[0]), float(d[-1])


@register
@dataclass
class DeadReLU(Rule):
    """ReLU layers where most units are never positive.

    Reads: layer_stats.dead_frac (units never positive over the batch), layer_stats.grad_zero_frac,
    layers (types and forward order), steps.loss, optimizers (lr).
    Fires: on a ReLU layer whose median dead fraction over the sampled steps after the grace
    steps is >= ``dead_frac`` = 0.5 (SageMaker: > 50% of a layer's units dead), or whose output
    gradients are >= ``grad_zero_frac`` = 0.7 zero (AUTOTRAINER's dying-ReLU check, used when
    dead_frac is missing). One finding per layer.
    Severity: high when >= 90% are dead and the loss stalls, medium when the loss stalls, low
    when the loss still improves (AUTOTRAINER), except that >= 90% dead stays medium (a layer that
    lost nine tenths of its units costs accuracy; fault suite: 97% dead with the loss falling).
    Early warning: a layer whose dead fraction grew at each of its last ``dying_samples`` = 4
    samples, by ``dying_rise`` = 0.3 or more, to 0.5 or more fires though its median is lower, at
    least medium (``evidence.dying``: first and last of them): the units are still dying. Between
    every two of those samples the units must die at a quarter of the window's mean rate per step
    or faster (a burst then a plateau is not still dying; CI's sparser samples of a healthy fp16 MLP
    that lost half a layer at step 40 and held read 0.8% -> 54.7% "at every sample").
    Causes: dead from the first sample -> bad_weight_init first; died during training (or lr
    above the usual range) -> learning_rate_too_high first.
    Recommends: LeakyReLU for that layer, Kaiming init with zero bias for the layer before, lower lr.
    """

    id = "dead_relu"
    kind = "dead_relu"
    reads = ("layer_stats.dead_frac", "layer_stats.grad_zero_frac", "layers", "steps.loss", "optimizers",
             "steps.loss_nonfinite") + REFERENCE_READS  # severity by harm
    level = "detailed"
    dead_frac: float = 0.5
    grad_zero_frac: float = 0.7
    grace_steps: int = GRACE_STEPS
    dying_samples: int = 4
    dying_rise: float = 0.3

    def check(self, ev: Evidence) -> list[Finding]:
        t = ev.layer_stats
        if len(t) == 0:
            return []
        names = t["layer"]
        relu = np.isin(names, layers_of(ev, _RELUS))
        if not relu.any():
            return []
        steps = col(t, "step")
        late = grace_mask(steps, self.grace_steps) & relu
        dead, gz = col(t, "dead_frac"), col(t, "grad_zero_frac")
        med_dead = per_group_median(names[late], dead[late])
        med_gz = per_group_median(names[late], gz[late])
        trend = loss_trend(ev, self.grace_steps)
        findings = []
        for name in sorted(set(med_dead) | set(med_gz), key=lambda n: layer_order(ev, n)):
            frac = med_dead.get(name, np.nan)
            by_grad = not np.isfinite(frac)
            rows = names == name
            growing = None if by_grad else dying(dead[rows], steps[rows], self.dying_samples, self.dying_rise,
                                                  self.dead_frac)
            if by_grad:
                frac = med_gz.get(name, np.nan)
                if not frac >= self.grad_zero_frac:
                    continue
            elif frac < self.dead_frac and growing is None:
                continue
            findings.append(self._finding(ev, name, float(frac), by_grad, trend, steps[rows], dead[rows], growing))
        return findings

    def _finding(self, ev, name, frac, by_grad, trend, s, d, growing) -> Finding:
        over = np.flatnonzero(np.isfinite(d) & (d >= self.dead_frac))
        first = int(s[over[0]]) if len(over) else int(s[0])
        dead_at_start = len(d) and np.isfinite(d[0]) and d[0] >= self.dead_frac
        if dead_at_start and not lr_is_high(ev):
            causes = ["bad_weight_init", "learning_rate_too_high", "missing_normalization_layer"]
        else:
            causes = ["learning_rate_too_high", "bad_weight_init", "missing_normalization_layer"]
        hurt = "high" if frac >= 0.9 else "medium"
        prev = previous_weighted(ev, name)
        recs = [fix(f"Use a LeakyReLU at {name} so negative units keep a gradient.",
                    f"{attr_path(name)} = nn.LeakyReLU(0.01)")]
        if causes[0] == "learning_rate_too_high":
            recs = lower_lr(ev) + recs
        if prev:
            recs.append(fix(f"Initialize {prev} (the layer before) with Kaiming init and a zero bias.",
                            f"nn.init.kaiming_normal_({attr_path(prev)}.weight, nonlinearity='relu'); "
                            f"nn.init.zeros_({attr_path(prev)}.bias)"))
        what = "of its output gradients are zero" if by_grad else "of its units never fire (output <= 0 on every sample)"
        msg = f"{g(100 * frac)}% {what} in {name} (median over sampled steps, first at step {first})."
        if growing is not None:
            msg += (f" More die at every sample: {g(100 * growing[0])}% -> {g(100 * growing[1])}% over the last "
                    f"{self.dying_samples} samples (to step {int(s[np.isfinite(d)][-1])}).")
        if trend is not None:
            msg += f" The loss went {g(trend.start)} -> {g(trend.end)}."
        severity = impact_severity(trend, hurt=hurt)
        if severity == "low" and (frac >= 0.9 or growing is not None):
            # 90% of a layer gone costs capacity even while the loss still falls; units still dying
            # at every sample are where the run is going (early warning).
            severity = "medium"
        return self.finding(
            severity=severity, confidence=0.85 if not by_grad else 0.6,
            location=name, step=first, message=msg,
            evidence={"dead_frac" if not by_grad else "grad_zero_frac": frac, "dead_at_start": bool(dead_at_start),
                      "previous_layer": prev, "dying": list(growing) if growing is not None else None},
            causes=causes, recommendations=recs,
        )
