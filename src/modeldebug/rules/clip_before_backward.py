"""clip_before_backward: gradient clipping called before backward(), where it never clips."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.events import GradientClip
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, col, fix, flag, g
from modeldebug.types import Finding


@register
@dataclass
class ClipBeforeBackward(Rule):
    """``clip_grad_norm_``/``clip_grad_value_`` called with no backward since the last
    ``zero_grad()`` or optimizer step: it clips the zeroed (or last step's) gradients, and the
    gradients ``optimizer.step()`` uses are never clipped.

    Reads: steps.clip_calls and steps.clips_before_backward (calls made before any backward of
    their step), steps.grad_norm and steps.grad_nonfinite / loss_nonfinite (what the unclipped
    gradients did), the ``gradient_clip`` events (the clipping threshold).
    Fires: at least ``min_calls`` clipping calls, ``min_fraction`` = half of them before backward
    (no threshold otherwise: a misplaced clip never works). Severity: high when the gradient norm
    the optimizer used exceeded the clipping threshold (clipping would have acted), or the loss or
    gradients became non-finite; else medium. Cause: clipping_misplaced.
    Recommends: clipping after ``loss.backward()`` and before ``optimizer.step()``.
    """

    id = "clip_before_backward"
    kind = "clip_before_backward"
    reads = ("steps.clip_calls", "steps.clips_before_backward", "steps.grad_norm", "steps.grad_nonfinite",
             "steps.loss_nonfinite", "events.gradient_clip")
    min_calls: int = 3
    min_fraction: float = 0.5

    def check(self, ev: Evidence) -> list[Finding]:
        t = ev.steps
        calls = np.nan_to_num(col(t, "clip_calls"))
        early = np.nan_to_num(col(t, "clips_before_backward"))
        n_calls, n_early = int(calls.sum()), int(early.sum())
        if n_calls < self.min_calls or n_early < self.min_fraction * n_calls:
            return []
        steps = col(t, "step")
        first = int(steps[np.flatnonzero(early > 0)[0]])
        clip = next((e for e in ev.events_of(GradientClip) if e.before_backward), None)
        function = clip.function if clip else "clip_grad_norm_"
        limit = clip.max_value if clip else None
        gn = col(t, "grad_norm")
        finite = gn[np.isfinite(gn)]
        nonfinite = bool((flag(t, "grad_nonfinite") | flag(t, "loss_nonfinite")).any())
        above = 0
        if limit is not None and function == "clip_grad_norm_" and len(finite):
            above = int((finite > limit).sum())
        evidence = {"clip_calls": n_calls, "clips_before_backward": n_early, "function": function,
                    "max_value": limit, "first_step": first, "steps_above_limit": above,
                    "max_grad_norm": float(finite.max()) if len(finite) else None, "nonfinite": nonfinite}
        effect = ""
        if above:
            effect = (f" The gradient norm the optimizer used exceeded max_norm={g(limit)} on {above} steps "
                      f"(up to {g(float(finite.max()))}).")
        if nonfinite:
            effect += " The loss or gradients became NaN/Inf."
        return [self.finding(
            severity="high" if above or nonfinite else "medium",
            message=(f"{n_early} of {n_calls} {function}() calls came before backward() (no backward since the last "
                     "zero_grad() or optimizer step): they clip gradients that are zero or a step old, and the "
                     f"gradients optimizer.step() applies are never clipped.{effect}"),
            confidence=0.9,
            step=first,
            evidence=evidence,
            causes=["clipping_misplaced"],
            recommendations=[fix(f"Call {function}() after loss.backward() and before optimizer.step() (with AMP, "
                                 "after scaler.unscale_(optimizer)).",
                                 "optimizer.zero_grad()\nloss = criterion(model(x), y)\nloss.backward()\n"
                                 f"torch.nn.utils.{function}(model.parameters(), max_norm)\noptimizer.step()")],
        )]
