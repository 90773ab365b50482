"""Mixed precision: a GradScaler whose loss scale collapses (loss_scale_collapse), and gradients
clipped while still scaled (clip_of_scaled_gradients)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.events import GradientClip
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, autocast_code, best_practice, col, device_type, fix, flag, g, lower_lr
from modeldebug.rules.nan_or_inf import NanOrInf
from modeldebug.types import Finding

FP16_MAX = 65504.0


@register
@dataclass
class LossScaleCollapse(Rule):
    """Mixed precision whose loss scale collapses.

    Reads: steps.loss_scale (the scale a GradScaler used for the step's loss), steps.scaler_skipped
    (it skipped ``optimizer.step()``: inf/NaN in the gradients), steps.loss_nonfinite, steps.loss,
    steps.grad_norm; layer_stats.nonfinite (the first layer with non-finite outputs).
    Why: a GradScaler halves its scale at every skipped step and doubles it after
    ``growth_interval`` (2000) clean ones. Healthy runs skip a few steps at the start, while the scale
    comes down from its initial 65536 to what the gradients allow, and then one now and then, when
    the scale has grown once too often: the scale settles. Those skips are not a fault (and the
    other rules leave them out: a skipped step's inf gradients are the scaler's working).
    Fires: when the scale keeps falling after the first applied step: ``halvings`` = 8 or more net
    halvings below the scale of the first applied step (256x; a settled scale moves within 2-4x),
    or when no step was applied at all in ``halvings`` skipped steps or more. A scale below 1 says
    the values overflow float16 even unscaled.
    Severity: high when at least half the steps of the run's last quarter (``halvings`` steps at
    least) were skipped (the weights all but stopped changing), else medium.
    Causes: numerically_unstable_op (float16 overflow: the forward pass when the loss itself turned
    inf/NaN on skipped steps, else the backward), then learning_rate_too_high; unnormalized_inputs
    first when the input batches themselves go beyond float16's range (sampled steps' min and max).
    Recommends: bfloat16 autocast (float32's range, no scaler needed), values in a range float16
    holds (scaled targets and inputs), the overflowing layer in float32, a lower lr.
    """

    id = "loss_scale_collapse"
    kind = "nan_or_inf"
    reads = ("steps.loss_scale", "steps.scaler_skipped", "steps.loss_nonfinite", "steps.loss", "steps.grad_norm",
             "steps.step", "layer_stats.nonfinite", "layer_stats.grad_nonfinite", "layers", "optimizers", "steps.lr",
             "steps.input_min", "steps.input_max")
    halvings: int = 8

    def check(self, ev: Evidence) -> list[Finding]:
        s = ev.steps
        if len(s) == 0:
            return []
        scale, skipped = col(s, "loss_scale"), flag(s, "scaler_skipped")
        if not skipped.any() or not np.isfinite(scale).any():
            return []
        steps = col(s, "step")
        applied = np.flatnonzero(~skipped & np.isfinite(scale))
        later = np.isfinite(scale)
        if len(applied):
            start = applied[0]
            settled = scale[start]
            later[:start] = False
            fall = np.log2(settled / max(np.nanmin(np.where(later, scale, np.nan)), 1e-300))
            if fall < self.halvings:
                return []
        elif skipped.sum() < self.halvings:
            return []
        tail = _trailing(skipped)
        late = skipped[-max(self.halvings, len(s) // 4):]
        stopped = float(late.mean()) >= 0.5
        bad_loss = flag(s, "loss_nonfinite") & skipped
        low = float(np.nanmin(scale))
        first_skip = int(steps[np.flatnonzero(skipped & later)[0]]) if (skipped & later).any() else int(steps[0])
        n_skip = int(skipped.sum())
        if len(applied):
            msg = (f"The GradScaler's loss scale collapsed: {n_skip} of {len(s)} steps were skipped for inf/NaN "
                   f"gradients and the scale fell from {g(settled)} (step {int(steps[applied[0]])}, the first "
                   f"applied step) to {g(low)}")
        else:
            msg = (f"The GradScaler skipped every step ({n_skip}) for inf/NaN gradients; its loss scale fell "
                   f"to {g(low)}")
        msg += "; each skip halves it, and it never settled."
        if stopped:
            msg += (f" In the last {len(late)} steps {int(late.sum())} were skipped" +
                    (f", the last {tail} in a row: the weights stopped changing." if tail >= self.halvings else "."))
        if low < 1:
            msg += (f" A scale below 1 means values overflow float16 (largest {g(FP16_MAX)}) even unscaled: "
                    "they are beyond its range, not a scaling problem.")
        location, origin = NanOrInf()._origin(ev)
        forward = bool(bad_loss.any())
        if forward:
            at = int(steps[np.flatnonzero(bad_loss)[0]])
            msg += f" The loss itself is inf/NaN from step {at}: the forward pass overflows"
            msg += f", first in {location} ({origin[0]})." if location and origin[1] == "outputs" else "."
        elif location:
            msg += f" The first layer with non-finite {origin[1]} is {location} ({origin[0]})."
        causes = ["numerically_unstable_op", "learning_rate_too_high"]
        reach = np.nanmax(np.abs(np.concatenate([col(s, "input_min"), col(s, "input_max")])), initial=0.0)
        if reach > FP16_MAX:
            msg += f" The inputs themselves reach {g(reach)}: beyond float16 before the first layer."
            causes = ["unnormalized_inputs", "numerically_unstable_op"]
        return [self.finding(
            severity="high" if stopped else "medium",
            confidence=0.85 if stopped else 0.6,
            location=location, step=first_skip, message=msg,
            evidence={"skipped_steps": n_skip, "steps": len(s), "trailing_skipped": tail,
                      "late_skipped_fraction": float(late.mean()), "min_loss_scale": low,
                      "settled_loss_scale": float(settled) if len(applied) else None,
                      "loss_nonfinite_steps": int(bad_loss.sum())},
            causes=causes,
            recommendations=self._fixes(ev, location),
        )]

    @staticmethod
    def _fixes(ev: Evidence, location: str | None):
        device = device_type(ev) or "cuda"
        where = f"{location}'s" if location else "the overflowing layer's"
        return [
            fix("Train in bfloat16 autocast: it has float32's range (no GradScaler needed), so nothing overflows.",
                autocast_code(ev, "loss = criterion(model(x), y)") + "\nloss.backward()\noptimizer.step()"),
            fix("Keep values in a range float16 holds: standardize the inputs and targets (and undo it on the "
                "predictions).", "y_scaled = (y - y_mean) / y_std"),
            best_practice(f"Or run {where} computation in float32.",
                          f"with torch.autocast(device_type='{device}', enabled=False):\n    out = layer(x.float())"),
        ] + lower_lr(ev, 3)


def _trailing(mask: np.ndarray) -> int:
    """How many of the last entries are True in a row."""
    falses = np.flatnonzero(~mask)
    return int(len(mask) - 1 - falses[-1]) if len(falses) else int(len(mask))


@register
@dataclass
class ClipOfScaledGradients(Rule):
    """Gradient clipping before ``scaler.unscale_(optimizer)``: the clip sees the gradients still
    multiplied by the loss scale (65536 by default), so it clips nearly always, and the gradients
    ``scaler.step`` applies after unscaling are ``max_norm / scale`` at most: training all but stops.

    Reads: steps.clip_calls and steps.clips_scaled (clip calls on gradients a GradScaler has not
    unscaled yet), steps.grad_norm (the unscaled norm), steps.loss_scale, the ``gradient_clip``
    events (max_norm).
    Fires: at least ``min_calls`` such calls, half of the clip calls or more (no threshold
    otherwise: the clip is in the wrong place whatever it does).
    Severity: high when the clip shrank the applied gradients 10x or more on the median step
    (max_norm / (norm x scale) <= 0.1), else medium. Cause: clipping_misplaced.
    Recommends: ``scaler.unscale_(optimizer)`` before clipping.
    """

    id = "clip_of_scaled_gradients"
    kind = "clip_before_backward"
    reads = ("steps.clip_calls", "steps.clips_scaled", "steps.grad_norm", "steps.loss_scale", "steps.step",
             "events.gradient_clip")
    min_calls: int = 3
    shrink: float = 0.1

    def check(self, ev: Evidence) -> list[Finding]:
        t = ev.steps
        calls, scaled = np.nan_to_num(col(t, "clip_calls")), np.nan_to_num(col(t, "clips_scaled"))
        n_calls, n_scaled = int(calls.sum()), int(scaled.sum())
        if n_scaled < self.min_calls or n_scaled < 0.5 * n_calls:
            return []
        steps = col(t, "step")
        first = int(steps[np.flatnonzero(scaled > 0)[0]])
        clip = next((e for e in ev.events_of(GradientClip) if not e.before_backward), None)
        function = clip.function if clip else "clip_grad_norm_"
        limit = clip.max_value if clip else None
        on = scaled > 0
        seen = (col(t, "grad_norm") * col(t, "loss_scale"))[on]  # what the clip measured
        seen = seen[np.isfinite(seen) & (seen > 0)]
        factor = float(np.median(np.minimum(1.0, limit / seen))) if limit and function == "clip_grad_norm_" \
            and len(seen) else None
        msg = (f"{n_scaled} of {n_calls} {function}() calls clipped gradients still multiplied by the GradScaler's "
               "loss scale (before scaler.unscale_(optimizer)): the clip compares the scaled norm with the limit.")
        if factor is not None:
            msg += (f" It measured a median norm of {g(float(np.median(seen)))} against max_norm={g(limit)}, so the "
                    f"gradients applied after unscaling were {g(factor)}x their size.")
        return [self.finding(
            severity="high" if factor is not None and factor <= self.shrink else "medium",
            confidence=0.9, step=first, message=msg,
            evidence={"clip_calls": n_calls, "clips_scaled": n_scaled, "function": function, "max_value": limit,
                      "applied_fraction": factor},
            causes=["clipping_misplaced"],
            recommendations=[fix(f"Unscale the gradients before clipping them: scaler.unscale_(optimizer), then "
                                 f"{function}(), then scaler.step(optimizer).",
                                 "scaler.scale(loss).backward()\nscaler.unscale_(optimizer)\n"
                                 f"torch.nn.utils.{function}(model.parameters(), max_norm)\n"
                                 "scaler.step(optimizer)\nscaler.update()")],
        )]
