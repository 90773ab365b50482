"""grad_scaler_misuse: ``optimizer.step()`` called directly after ``scaler.scale(loss).backward()``."""

from __future__ import annotations

from dataclasses import dataclass

from modeldebug.events import ScaledOptimizerSteps
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, fix, g
from modeldebug.types import Finding

# Optimizers whose update divides by a running gradient magnitude: a constant scale nearly cancels.
ADAPTIVE = frozenset({"Adam", "AdamW", "Adamax", "NAdam", "RAdam", "Adagrad", "Adadelta", "RMSprop", "SparseAdam",
                      "Adafactor"})


@register
@dataclass
class ScalerStepBypassed(Rule):
    """The optimizer stepped on gradients a GradScaler had scaled: ``scaler.step(optimizer)`` (which
    unscales them, and skips a step whose gradients hold inf/NaN) was not called, nor
    ``scaler.unscale_(optimizer)``.

    Reads: the ``scaled_optimizer_steps`` event (the collector sees the scaled backward, no
    ``unscale_``, and the optimizer's own step outside ``scaler.step``).
    Fires: on ``min_steps`` = 3 such steps, or on every step of a shorter run (no threshold on a
    size: the gradients are the scale times too large whatever they are).
    Severity: high for an optimizer whose update is proportional to the gradient (SGD: the update
    is ``scale`` times too large, 65536 by default); medium for an adaptive one (Adam: the scale
    nearly cancels, but its epsilon shrinks by the scale and overflowed steps are applied, not
    skipped). Cause: scaler_step_bypassed.
    Recommends: ``scaler.step(optimizer)`` and ``scaler.update()`` in place of ``optimizer.step()``.
    """

    id = "scaler_step_bypassed"
    kind = "grad_scaler_misuse"
    reads = ("events.scaled_optimizer_steps",)
    min_steps: int = 3

    def check(self, ev: Evidence) -> list[Finding]:
        found = ev.events_of(ScaledOptimizerSteps)
        if not found:
            return []
        first = found[0]
        steps = sum(e.steps for e in found)
        total = max(e.optimizer_steps for e in found)
        if steps < min(self.min_steps, max(total, 1)):
            return []
        scale = first.scale
        adaptive = first.optimizer in ADAPTIVE
        times = f"{g(scale)} times" if scale is not None else "the loss scale times"
        msg = (f"{steps} of {total} {first.optimizer} steps used gradients still multiplied by the GradScaler's "
               f"loss scale ({g(scale) if scale is not None else 'unknown'}): optimizer.step() was called directly "
               f"after scaler.scale(loss).backward(), not scaler.step(optimizer), so nothing unscaled them and "
               f"steps with inf/NaN gradients were applied instead of skipped.")
        if first.grad_norm is not None:
            msg += (f" At step {first.first_step} the gradient norm was {g(first.grad_norm)}; the optimizer applied "
                    f"{g(first.grad_norm * scale) if scale is not None else 'a scaled one'}.")
        msg += (f" {first.optimizer} divides by the gradients' running size, so the scale mostly cancels, but its "
                f"epsilon is {times} smaller than intended." if adaptive else
                f" With {first.optimizer} every update is {times} the intended one.")
        return [self.finding(
            severity="medium" if adaptive else "high", confidence=0.95, step=first.first_step, message=msg,
            evidence={"steps": steps, "optimizer_steps": total, "first_step": first.first_step, "scale": scale,
                      "optimizer": first.optimizer, "grad_norm": first.grad_norm,
                      "applied_grad_norm": first.grad_norm * scale if first.grad_norm is not None and scale else None},
            causes=["scaler_step_bypassed"],
            recommendations=[fix("Step through the scaler: scaler.step(optimizer) unscales the gradients (and skips "
                                 "a step whose gradients overflowed), then scaler.update() adjusts the scale.",
                                 "scaler.scale(loss).backward()\nscaler.step(optimizer)  # not optimizer.step()\n"
                                 "scaler.update()")],
        )]
