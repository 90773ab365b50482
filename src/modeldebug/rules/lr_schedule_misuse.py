"""lr_schedule_misuse: the learning rate collapses towards 0 early in the run and stays there."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.events import LrScheduler
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, col, fix, flag, g
from modeldebug.types import Finding

# Schedules whose length is usually counted in epochs (step_size, T_max, milestones, gamma per call).
EPOCH_SCHEDULES = {"StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "MultiplicativeLR",
                   "PolynomialLR", "ReduceLROnPlateau", "ConstantLR", "LinearLR"}


@register
@dataclass
class LrScheduleMisuse(Rule):
    """The learning rate falls below ``collapse_ratio`` = 1e-3 of its peak before ``early_fraction``
    = half of the optimizer steps, and never climbs back above ``recover_ratio`` = 1e-2 of it.

    Schedules in common use (cosine or linear decay to ~0, OneCycle, warmup then decay, StepLR by
    10x every 30 of 90 epochs) reach 1e-3 of their peak only in the last steps, if at all; an lr
    that small for half the run leaves the weights where they were.
    Reads: steps.lr (the first param group of the optimizer that steps first),
    steps.optimizer_stepped, steps.scheduler_steps (``lr_scheduler.step()`` calls per step) and
    the ``lr_scheduler`` events (class and settings of each scheduler). When the scheduler is
    stepped about once per optimizer step and is a schedule counted in epochs (StepLR,
    ExponentialLR, CosineAnnealingLR...), the message says it is stepped every batch.
    Fires: at least ``min_steps`` optimizer steps with a recorded lr, and the collapse above.
    Severity: high (the lr is ~0 for at least half of the run). Cause: scheduler_misuse.
    Recommends: stepping the scheduler once per epoch (or sizing it in batches); else a slower decay.
    """

    id = "lr_schedule_misuse"
    kind = "lr_schedule_misuse"
    reads = ("steps.lr", "steps.optimizer_stepped", "steps.scheduler_steps", "events.lr_scheduler")
    collapse_ratio: float = 1e-3
    recover_ratio: float = 1e-2
    early_fraction: float = 0.5
    min_steps: int = 20

    def check(self, ev: Evidence) -> list[Finding]:
        t = ev.steps
        stepped = flag(t, "optimizer_stepped")
        lr, steps = col(t, "lr")[stepped], col(t, "step")[stepped]
        ok = np.isfinite(lr)
        lr, steps = lr[ok], steps[ok]
        n = len(lr)
        if n < self.min_steps:
            return []
        peak_at = int(np.argmax(lr))
        peak = float(lr[peak_at])
        if peak <= 0:
            return []
        low = np.flatnonzero(lr[peak_at:] < self.collapse_ratio * peak)
        if not len(low):
            return []
        at = peak_at + int(low[0])
        if at > self.early_fraction * n or float(lr[at:].max()) >= self.recover_ratio * peak:
            return []
        calls = float(np.nansum(col(t, "scheduler_steps")))
        per_step = calls / n
        schedulers = ev.events_of(LrScheduler)
        epoch_style = [s for s in schedulers if s.type in EPOCH_SCHEDULES]
        every_batch = per_step >= 0.5 and bool(epoch_style)
        why = ""
        if every_batch:
            s = epoch_style[0]
            settings = ", ".join(f"{k}={v}" for k, v in s.settings.items() if k in ("step_size", "gamma", "T_max",
                                                                                   "total_iters", "factor"))
            why = (f" {s.type}({settings}) counts epochs but is stepped every batch "
                   f"({int(calls)} scheduler.step() calls in {n} optimizer steps).")
        evidence = {"peak_lr": peak, "collapsed_lr": float(lr[at]), "final_lr": float(lr[-1]),
                    "collapse_step": int(steps[at]), "optimizer_steps": n,
                    "collapsed_fraction": round(1 - at / n, 3), "scheduler_calls": int(calls),
                    "scheduler_calls_per_step": round(per_step, 3),
                    "schedulers": [{"type": s.type, **s.settings} for s in schedulers]}
        recs = [fix("Step the scheduler once per epoch, after the batch loop; or, to step it every batch, give "
                    "it its length in batches (step_size, T_max, milestones times len(loader)).",
                    "for epoch in range(epochs):\n    for x, y in loader:\n        ...\n        optimizer.step()\n"
                    "    scheduler.step()  # once per epoch")] if every_batch else [
            fix("Slow the schedule down so that the lr stays within 1-2 orders of magnitude of its peak for most "
                "of the run (a smaller decay per call, or fewer scheduler.step() calls).")]
        return [self.finding(
            severity="high",
            message=(f"The learning rate fell from {g(peak)} to {g(float(lr[at]))} by step {int(steps[at])} "
                     f"({at / n:.0%} into the run) and stayed below {g(float(lr[at:].max()))}: the last "
                     f"{n - at} of {n} steps barely move the weights.{why}"),
            confidence=0.9 if every_batch else 0.75,
            step=int(steps[at]),
            evidence=evidence,
            causes=["scheduler_misuse"],
            recommendations=recs,
        )]
