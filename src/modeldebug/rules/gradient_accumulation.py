"""gradient_accumulation: gradients are never zeroed, so every step adds to all the previous ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, col, first_true, fix, g, loss_trend
from modeldebug.types import Finding


def _rank_corr(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation with numpy only (ties broken by order: fine for float series)."""
    if len(x) < 3:
        return 0.0
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    c = np.corrcoef(rx, ry)[0, 1]
    return float(c) if np.isfinite(c) else 0.0


@register
@dataclass
class GradientAccumulation(Rule):
    """Stale gradients carried from step to step.

    Reads: steps.stale_grad_norm (norm of .grad already present before a backward, over the
    parameters an optimizer holds, the smallest of the step's backward calls: several backward
    calls into one step by design, as a GAN's, and gradients on parameters left out of the
    optimizer on purpose are not stale), steps.grad_norm, steps.loss.
    Fires: (a) when at least ``stale_fraction`` = 50% of the steps after the first start with a
    stale gradient larger than ``rel_eps`` = 1e-6 x that step's gradient norm (a correct loop
    starts every step at zero or None: no threshold from the literature is needed); (b) when
    stale_grad_norm is missing, when the gradient norm grows step after step: Spearman
    correlation with the step >= ``min_corr`` = 0.95 and a last/first ratio >= ``min_growth`` = 10
    over at least ``min_steps`` steps (fault suite: summed gradients grow linearly).
    Severity: high (medium while the loss still improves, or on growth alone).
    Cause: missing_zero_grad.
    Recommends: optimizer.zero_grad(set_to_none=True) at the top of each step; for intentional
    accumulation, zero after each optimizer.step().
    """

    id = "gradient_accumulation"
    kind = "gradient_accumulation"
    reads = ("steps.stale_grad_norm", "steps.grad_norm", "steps.loss", "steps.loss_nonfinite")
    stale_fraction: float = 0.5
    rel_eps: float = 1e-6
    min_corr: float = 0.95
    min_growth: float = 10.0
    min_steps: int = 10

    def check(self, ev: Evidence) -> list[Finding]:
        s = ev.steps
        if len(s) < 2:
            return []
        steps, stale, gn = col(s, "step"), col(s, "stale_grad_norm"), col(s, "grad_norm")
        after_first = steps > np.nanmin(steps)
        known = after_first & np.isfinite(stale)
        trend = loss_trend(ev)
        improving = trend is not None and trend.improving
        if known.sum() >= 1:
            is_stale = known & (stale > self.rel_eps * np.nan_to_num(gn, nan=0.0) + 1e-12)
            frac = is_stale.sum() / known.sum()
            if frac < self.stale_fraction:
                return []
            first = first_true(is_stale, steps)
            return [self._finding(
                "high" if not improving else "medium", 0.95, first,
                f"{g(100 * frac)}% of steps start with a gradient left from the previous step (first at step "
                f"{first}: stale gradient norm {g(stale[steps == first][0])}); gradients are never zeroed.",
                {"stale_fraction": frac, "first_stale_norm": float(stale[steps == first][0]),
                 "median_stale_norm": float(np.median(stale[is_stale]))},
            )]
        ok = np.isfinite(gn) & (gn > 0)
        if ok.sum() < self.min_steps:
            return []
        x, y = steps[ok], gn[ok]
        k = max(1, len(y) // 10)
        growth = float(np.median(y[-k:]) / np.median(y[:k]))
        corr = _rank_corr(x, y)
        if corr < self.min_corr or growth < self.min_growth:
            return []
        return [self._finding(
            "medium", 0.5, int(x[0]),
            f"The gradient norm grows step after step ({g(np.median(y[:k]))} -> {g(np.median(y[-k:]))}, "
            f"{g(growth)}x, rank correlation with the step {g(corr)}), as when gradients are never zeroed.",
            {"growth": growth, "rank_corr": corr},
        )]

    def _finding(self, severity, confidence, step, msg, evidence) -> Finding:
        return self.finding(
            severity=severity, confidence=confidence, location=None, step=step, message=msg, evidence=evidence,
            causes=["missing_zero_grad"],
            recommendations=[
                fix("Zero the gradients at the start of every training step.",
                    "optimizer.zero_grad(set_to_none=True)\nloss = criterion(model(x), y)\nloss.backward()\n"
                    "optimizer.step()"),
                fix("If you accumulate on purpose, divide the loss by the number of micro-batches and zero the "
                    "gradients right after each optimizer.step().",
                    "(loss / accum_steps).backward()\nif (i + 1) % accum_steps == 0:\n    optimizer.step()\n"
                    "    optimizer.zero_grad(set_to_none=True)"),
            ],
        )
