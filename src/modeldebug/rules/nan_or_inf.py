"""nan_or_inf: the loss, a gradient, an activation or a weight became NaN or Inf."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    Rule,
    best_practice,
    clip_grad,
    col,
    first_true,
    fix,
    flag,
    g,
    lower_lr,
    lr_is_high,
    param_module,
)
from modeldebug.types import Finding


@register
@dataclass
class NanOrInf(Rule):
    """Non-finite values anywhere in training.

    Reads: steps.loss_nonfinite, grad_nonfinite, input_nonfinite, loss, grad_norm;
    layer_stats.nonfinite / grad_nonfinite (to name the first layer that produced them, in forward
    order); param_stats.norm (weights that became NaN).
    Fires: at the first step with a non-finite loss or gradient (SageMaker's and AUTOTRAINER's
    NaN check: any NaN is a fault; no threshold). Always ``high``.
    Causes: inputs already non-finite -> ``other`` (bad data; data_issue says more); gradient norm
    growing ``growth``x over the steps before -> ``learning_rate_too_high``; otherwise
    ``numerically_unstable_op`` (log(0), x/0, exp overflow) first.
    Recommends: lower lr (concrete), gradient clipping, the stable op (log_softmax,
    BCEWithLogitsLoss, eps), torch.autograd.detect_anomaly to find the op.
    """

    id = "nan_or_inf"
    kind = "nan_or_inf"
    reads = ("steps.loss_nonfinite", "steps.grad_nonfinite", "steps.grad_norm", "layer_stats.nonfinite",
             "param_stats.norm")
    growth: float = 100.0  # grad norm rise before the NaN that points at the learning rate (fault suite)

    def check(self, ev: Evidence) -> list[Finding]:
        s = ev.steps
        if len(s) == 0:
            return []
        steps = col(s, "step")
        loss, gn = col(s, "loss"), col(s, "grad_norm")
        bad = flag(s, "loss_nonfinite") | flag(s, "grad_nonfinite") | np.isinf(loss) | np.isinf(gn)
        first = first_true(bad, steps)
        weights_bad = self._bad_weights(ev)
        if first is None and not weights_bad:
            return []
        if first is None:
            first = min(step for step, _ in weights_bad.values())
        what = []
        if flag(s, "loss_nonfinite").any() or np.isinf(loss).any():
            what.append("loss")
        if flag(s, "grad_nonfinite").any() or np.isinf(gn).any():
            what.append("gradients")
        if weights_bad:
            what.append("weights")

        location, origin = self._origin(ev)
        inputs_bad = flag(s, "input_nonfinite") & (steps <= first)
        before = gn[(steps < first) & np.isfinite(gn)]
        grew = len(before) >= 2 and before[-1] > self.growth * max(np.min(before), 1e-12)
        if inputs_bad.any():
            causes = ["other", "numerically_unstable_op"]
        elif grew or lr_is_high(ev):
            causes = ["learning_rate_too_high", "numerically_unstable_op", "bad_weight_init"]
        else:
            causes = ["numerically_unstable_op", "learning_rate_too_high"]

        msg = f"The {' and '.join(what) or 'values'} became NaN/Inf at step {first}"
        if origin:
            msg += f"; the first layer in forward order with non-finite {origin[1]} is {location} ({origin[0]})"
        msg += "."
        if inputs_bad.any():
            msg += f" The inputs were already non-finite at step {first_true(inputs_bad, steps)}."
        elif grew:
            msg += f" The gradient norm rose from {g(np.min(before))} to {g(before[-1])} just before."
        recs = []
        if inputs_bad.any():
            recs.append(fix("Drop or repair non-finite samples before they reach the model.",
                            "assert torch.isfinite(x).all(), 'non-finite input batch'"))
        if causes[0] == "learning_rate_too_high":
            recs += lower_lr(ev) + [clip_grad()]
        recs.append(fix(
            "Use numerically stable ops: log_softmax/CrossEntropyLoss instead of log(softmax), "
            "BCEWithLogitsLoss instead of sigmoid+BCELoss, an eps in log/sqrt/division.",
            "torch.log(x.clamp_min(1e-8))  # or x / (y + 1e-8)",
        ))
        if causes[0] != "learning_rate_too_high":
            recs += [clip_grad()]
        recs.append(best_practice("Find the op that produced the first NaN (slow: one run only).",
                                  "with torch.autograd.detect_anomaly():\n    loss.backward()"))
        return [self.finding(
            severity="high", confidence=0.95, location=location, step=first, message=msg,
            evidence={"first_step": first, "nonfinite_steps": int(bad.sum()), "what": what,
                      "last_finite_grad_norm": float(before[-1]) if len(before) else None,
                      "weights": sorted(weights_bad)[:10]},
            causes=causes, recommendations=recs,
        )]

    def _origin(self, ev: Evidence) -> tuple[str | None, tuple[str, str] | None]:
        """First layer in forward order with non-finite outputs (or gradients) at the earliest such step."""
        t = ev.layer_stats
        if len(t) == 0:
            return None, None
        for column, what in (("nonfinite", "outputs"), ("grad_nonfinite", "gradients")):
            bad = np.nan_to_num(col(t, column)) > 0
            if not bad.any():
                continue
            steps = col(t, "step")
            first = np.min(steps[bad])
            names = t["layer"][bad & (steps == first)]
            order = {n: ev.layers[n].order if n in ev.layers and ev.layers[n].order >= 0 else 1 << 30
                     for n in names}
            if what == "gradients":  # backward runs last layer first: the origin is the deepest
                name = max(names, key=lambda n: (order[n] if order[n] < 1 << 30 else -1))
            else:
                name = min(names, key=lambda n: order[n])
            return str(name), (ev.layers[name].type if name in ev.layers else "?", what)
        return None, None

    def _bad_weights(self, ev: Evidence) -> dict[str, tuple[int, str]]:
        t = ev.param_stats
        if len(t) == 0:
            return {}
        norm = col(t, "norm")
        bad = np.isinf(norm) | (np.isnan(norm) & flag(t, "changed"))
        if not bad.any():
            return {}
        steps, names = col(t, "step")[bad], t["param"][bad]
        out: dict[str, tuple[int, str]] = {}
        for st, n in sorted(zip(steps, names)):
            out.setdefault(str(n), (int(st), param_module(ev, str(n))))
        return out
