"""overfitting: validation loss rises while training loss keeps falling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, best_practice, col, fix, g, optimizer_code, current_lr
from modeldebug.types import Finding


@register
@dataclass
class Overfitting(Rule):
    """The gap between training and validation loss opens up.

    Reads: validation.step / loss, steps.step / loss, optimizers (for the weight-decay code).
    Fires: with at least ``min_evals`` = 3 validation points, when the last validation loss is
    ``rise`` = 10% or more above the best one, the best came before the last two evaluations
    (a rise that lasts, not one noisy evaluation), and the training loss fell over the same span
    (median of the training losses around the best evaluation vs the last ones). The 10% rise is
    the fault suite's choice: noise between evaluations of a healthy run stays within a few %.
    Severity: high when validation rose 50% or more above its best, else medium.
    Cause: model_too_large_for_data (the model memorizes a small training set).
    Recommends: stop at the best step (early stopping), weight decay (concrete optimizer code),
    dropout, more or augmented data.
    """

    id = "overfitting"
    kind = "overfitting"
    reads = ("validation.loss", "steps.loss", "optimizers")
    rise: float = 0.10
    min_evals: int = 3

    def check(self, ev: Evidence) -> list[Finding]:
        v = ev.validation
        vl, vs = col(v, "loss"), col(v, "step")
        ok = np.isfinite(vl)
        vl, vs = vl[ok], vs[ok]
        if len(vl) < self.min_evals:
            return []
        best = int(np.argmin(vl))
        if best > len(vl) - 3 or vl[-1] < vl[best] + self.rise * abs(vl[best]) or vl[best] == vl[-1]:
            return []
        tl, ts = col(ev.steps, "loss"), col(ev.steps, "step")
        fine = np.isfinite(tl)
        at_best = tl[fine & (ts <= vs[best])][-20:]
        at_end = tl[fine & (ts > vs[-2]) & (ts <= vs[-1] + 1)][-20:]
        if len(at_best) == 0 or len(at_end) == 0:
            return []
        train_best, train_end = float(np.median(at_best)), float(np.median(at_end))
        if train_end >= train_best:
            return []  # both rising: divergence, not overfitting
        rise = (vl[-1] - vl[best]) / abs(vl[best])
        first = int(vs[best + 1])
        lr = current_lr(ev)
        return [self.finding(
            severity="high" if rise >= 0.5 else "medium", confidence=0.85, location=None, step=first,
            message=(f"Validation loss rose {g(100 * rise)}% from its best {g(vl[best])} at step {int(vs[best])} to "
                     f"{g(vl[-1])} at step {int(vs[-1])}, while training loss fell {g(train_best)} -> {g(train_end)}."),
            evidence={"best_val_loss": float(vl[best]), "best_step": int(vs[best]), "last_val_loss": float(vl[-1]),
                      "train_loss_at_best": train_best, "train_loss_end": train_end, "rise": rise},
            causes=["model_too_large_for_data"],
            recommendations=[
                fix(f"Stop at the best validation step ({int(vs[best])}) and keep that checkpoint (early stopping).",
                    "if val_loss < best: best = val_loss; torch.save(model.state_dict(), 'best.pt')"),
                fix("Add weight decay.", optimizer_code(ev, lr=lr if lr else 1e-3, weight_decay=0.01)),
                best_practice("Add dropout between layers, or get more (or augmented) training data.",
                              "nn.Dropout(p=0.3)"),
            ],
        )]
