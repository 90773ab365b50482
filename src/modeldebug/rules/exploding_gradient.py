"""exploding_gradient: the gradient norm blows up (or crosses the user's alert threshold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    REFERENCE_READS,
    GRACE_STEPS,
    Rule,
    clip_grad,
    col,
    fix,
    g,
    grace_mask,
    impact_severity,
    init_scales,
    input_scale,
    layer_order,
    loss_trend,
    lower_lr,
    lr_is_high,
    param_module,
    per_group_median,
)
from modeldebug.types import Finding


def climbing(v: np.ndarray, k: int) -> float | None:
    """The growth per step of the last ``k`` values when they climb by an order of magnitude or more
    (the last vs the least of the first four), up on 2 steps of 3, to about the highest value so
    far (half of it: noise): a blow-up still under way (else None)."""
    tail = v[-k:]
    low = float(np.min(tail[:4])) if len(tail) >= k else 0.0
    if not low > 0 or tail[-1] < 10 * low or tail[-1] < 0.5 * np.max(v) or (np.diff(tail) > 0).mean() < 2 / 3:
        return None
    return float((tail[-1] / low) ** (1 / (k - 1)))


@register
@dataclass
class ExplodingGradient(Rule):
    """Gradient norms that grow by orders of magnitude.

    Reads: steps.grad_norm (global), param_stats.grad_norm (which parameter, and the first/last
    layer ratio), steps.loss (does it hurt?), optimizers (lr), steps.input_* (scale),
    config.alert_thresholds.gradient_norm.
    Fires: (a) the global gradient norm exceeds ``growth`` = 100 x its running minimum so far and
    10x the first steps' level (a blow-up by two orders of magnitude; fault suite); (b) the median
    ratio of first-layer to last-layer gradient norm exceeds ``layer_ratio`` = 70 (AUTOTRAINER);
    (c) the norm exceeds the user's ``alert_thresholds.gradient_norm``; (d) the gradient is huge
    in absolute terms from the start: its RMS per trainable weight (global norm / sqrt(count))
    reaches ``rms_limit`` = 10 (healthy networks sit around 1e-4..1e-1; at 10 a single SGD step
    with lr 0.01 moves every weight by ~0.1), which no growth test sees when step 0 is already
    blown up by the init.
    Severity: high when the loss diverges or stalls, low when the loss still improves
    (AUTOTRAINER: a symptom that does not hurt is a hint); medium for a user alert alone. Early
    warning: (a) is at least medium while the norm still climbs 10x or more over the last
    ``climb_steps`` = 16 finite norms (rising on 2 of 3 steps, to about the peak so far): the live
    diagnosis says where the run is going before its loss shows it.
    Causes: lr above its optimizer's usual range -> learning_rate_too_high first; inputs far from
    normalized -> unnormalized_inputs; initial weights above ``init_scale`` x 1/sqrt(fan_in) ->
    bad_weight_init; otherwise lr, then bad_weight_init, missing normalization.
    Recommends: lr / 10 for this optimizer, gradient clipping, normalization layers.
    """

    id = "exploding_gradient"
    kind = "exploding_gradient"
    reads = ("steps.grad_norm", "steps.loss", "param_stats.grad_norm", "optimizers",
             "config.alert_thresholds.gradient_norm", "layers", "param_stats.norm", "params",
             "steps.input_mean", "steps.input_std", "steps.loss_nonfinite") + REFERENCE_READS  # severity by harm
    growth: float = 100.0
    layer_ratio: float = 70.0
    grace_steps: int = GRACE_STEPS
    init_scale: float = 3.0  # weight RMS x sqrt(fan_in) above ~2x Kaiming's 1.4 points at the init
    rms_limit: float = 10.0
    climb_steps: int = 16

    def check(self, ev: Evidence) -> list[Finding]:
        steps, gn = col(ev.steps, "step"), col(ev.steps, "grad_norm")
        ok = np.isfinite(gn)
        trend = loss_trend(ev, self.grace_steps)
        findings = []

        # (a) blow-up relative to the smallest norm seen so far (running min works for fast blow-ups).
        first = None
        if ok.sum() >= 3:
            s, v = steps[ok], gn[ok]
            runmin = np.minimum.accumulate(np.maximum(v, 1e-12))
            # ...and above the first steps' level too: a noisy batch late in a converged run is no blow-up.
            head = np.maximum.accumulate(np.concatenate([v[:3], np.full(max(len(v) - 3, 0), -np.inf)]))
            hit = np.flatnonzero((v[1:] > self.growth * runmin[:-1]) & (v[1:] > 10 * head[:-1])) + 1
            if len(hit):
                i = hit[0]
                first, peak, base = int(s[i]), float(v[i:].max()), float(runmin[i - 1])
                loc, pname = self._loudest_param(ev, first)
                causes = self._causes(ev)
                severity = impact_severity(trend)
                climb = climbing(v, self.climb_steps)
                if climb is not None and severity == "low":
                    # Early warning: still rising by orders of magnitude at the last step seen, the
                    # run is heading for overflow though its loss has not shown it yet.
                    severity = "medium"
                findings.append(self.finding(
                    severity=severity, confidence=0.9 if not (trend and trend.improving) else 0.5,
                    location=loc, step=first,
                    message=(f"The gradient norm rose to {g(v[i])} at step {first} (peak {g(peak)}), "
                             f"{g(v[i] / base)}x its earlier minimum {g(base)}"
                             + (f"; the largest gradient is in {pname}." if pname else ".")
                             + (f" It is still climbing, {g(climb)}x a step over its last {self.climb_steps} "
                                f"steps (step {int(s[-1])}): at this rate the run overflows to inf/NaN."
                                if climb is not None else self._loss_note(trend))),
                    evidence={"grad_norm": float(v[i]), "peak_grad_norm": peak, "baseline": base,
                              "param": pname, "loss_start": trend and trend.start, "loss_end": trend and trend.end,
                              "climbing_per_step": climb},
                    causes=causes, recommendations=self._recs(ev, causes),
                ))

        # (d) huge from the very first steps (the init): no growth to see.
        count = sum(p.numel for p in ev.params.values() if p.requires_grad)
        if first is None and ok.any() and count:
            rms = gn / np.sqrt(count)
            over = ok & (rms >= self.rms_limit)
            if over.any():
                i = int(np.flatnonzero(over)[0])
                first = int(steps[i])
                loc, pname = self._loudest_param(ev, first)
                causes = self._causes(ev)
                findings.append(self.finding(
                    severity=impact_severity(trend), confidence=0.85, location=loc, step=first,
                    message=(f"The gradient norm is {g(gn[i])} at step {first}: {g(rms[i])} per weight on average "
                             f"over {count} trainable weights, where healthy training sits far below 1"
                             + (f"; the largest gradient is in {pname}." if pname else ".")
                             + self._loss_note(trend)),
                    evidence={"grad_norm": float(gn[i]), "rms_grad": float(rms[i]), "trainable": count,
                              "param": pname, "loss_start": trend and trend.start, "loss_end": trend and trend.end},
                    causes=causes, recommendations=self._recs(ev, causes),
                ))

        # (b) AUTOTRAINER: first layer's gradient much larger than the last layer's.
        if first is None:
            findings += self._layer_ratio(ev, trend)

        # (c) the user's alert threshold.
        limit = ev.config.alert_thresholds.gradient_norm
        if limit is not None and ok.any() and np.nanmax(gn) > limit and first is None:
            i = int(np.flatnonzero(gn > limit)[0])
            findings.append(self.finding(
                severity="medium", confidence=0.9, location=None, step=int(steps[i]),
                message=(f"The gradient norm {g(gn[i])} at step {int(steps[i])} crossed your alert threshold "
                         f"{g(limit)} (max {g(np.nanmax(gn))})."),
                evidence={"grad_norm": float(gn[i]), "alert_threshold": limit, "max_grad_norm": float(np.nanmax(gn)),
                          "steps_over": int((gn > limit).sum())},
                causes=self._causes(ev), recommendations=[clip_grad(limit)] + lower_lr(ev, 3),
            ))
        return findings

    def _layer_ratio(self, ev: Evidence, trend) -> list[Finding]:
        t = ev.param_stats
        if len(t) == 0:
            return []
        keep = grace_mask(col(t, "step"), self.grace_steps) & np.isfinite(col(t, "grad_norm"))
        med = per_group_median(t["param"][keep], col(t, "grad_norm")[keep])
        ordered = sorted((layer_order(ev, param_module(ev, p)), p) for p in med if p.endswith("weight"))
        ordered = [(o, p) for o, p in ordered if o >= 0]
        if len(ordered) < 2:
            return []
        if _last_layer_shares_its_weight(ev):
            return []
        first_p, last_p = ordered[0][1], ordered[-1][1]
        ratio = med[first_p] / max(med[last_p], 1e-30)
        if ratio <= self.layer_ratio:
            return []
        causes = ["bad_weight_init", "missing_normalization_layer", "learning_rate_too_high"]
        return [self.finding(
            severity=impact_severity(trend, hurt="medium"), confidence=0.6,
            location=param_module(ev, first_p), step=int(np.min(col(t, "step")[keep])),
            message=(f"The first layer's gradient norm ({first_p}, median {g(med[first_p])}) is {g(ratio)}x the "
                     f"last layer's ({last_p}, {g(med[last_p])}); above {g(self.layer_ratio)}x gradients grow "
                     f"as they flow back." + self._loss_note(trend)),
            evidence={"first_param": first_p, "last_param": last_p, "ratio": ratio,
                      "first_grad_norm": med[first_p], "last_grad_norm": med[last_p]},
            causes=causes, recommendations=self._recs(ev, causes),
        )]

    def _loudest_param(self, ev: Evidence, step: int) -> tuple[str | None, str | None]:
        """Module and parameter with the largest gradient at the first sampled step at or after ``step``."""
        t = ev.param_stats
        if len(t) == 0:
            return None, None
        s, gn = col(t, "step"), col(t, "grad_norm")
        later = (s >= step) & np.isfinite(gn)
        if not later.any():
            later = np.isfinite(gn)
            if not later.any():
                return None, None
            at = np.max(s[later])
        else:
            at = np.min(s[later])
        rows = np.flatnonzero(later & (s == at))
        p = str(t["param"][rows[np.argmax(gn[rows])]])
        return param_module(ev, p), p

    def _causes(self, ev: Evidence) -> list[str]:
        scale = input_scale(ev)
        if lr_is_high(ev):
            return ["learning_rate_too_high", "bad_weight_init", "missing_normalization_layer"]
        if max(init_scales(ev).values(), default=0.0) > self.init_scale:
            return ["bad_weight_init", "learning_rate_too_high", "missing_normalization_layer"]
        if scale > 10:
            return ["unnormalized_inputs", "learning_rate_too_high", "bad_weight_init"]
        return ["learning_rate_too_high", "bad_weight_init", "missing_normalization_layer"]

    def _recs(self, ev: Evidence, causes: list[str]):
        recs = []
        if causes[0] == "unnormalized_inputs":
            recs.append(fix("Standardize the inputs (per feature mean 0, std 1) before training.",
                            "x = (x - x.mean(0)) / (x.std(0) + 1e-8)"))
        recs += lower_lr(ev) + [clip_grad()]
        if "missing_normalization_layer" in causes:
            recs.append(fix("Add normalization layers (BatchNorm/LayerNorm) between the layers.",
                            "nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU())"))
        return recs

    @staticmethod
    def _loss_note(trend) -> str:
        if trend is None:
            return ""
        if trend.improving:
            return f" The loss still improves ({g(trend.start)} -> {g(trend.end)}), so this is a warning."
        return f" The loss went {g(trend.start)} -> {g(trend.end)}."


def _last_layer_shares_its_weight(ev: Evidence) -> bool:
    """The last layer with parameters owns none of the watched ones: its weight is another layer's (a
    language model's head tied to the token embedding), so the first layer's gradient holds the
    head's and the last one is not measured."""
    layers = [info for info in ev.layers_in_order() if info.parameters]
    if not layers:
        return False
    last = layers[-1].name
    return not any(param_module(ev, p) == last for p in ev.params)
