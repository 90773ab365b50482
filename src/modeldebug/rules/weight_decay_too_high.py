"""weight_decay_too_high: weight decay that shrinks the weights every step far faster than the
gradient moves them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, col, fix, flag, g, loss_trend
from modeldebug.types import Finding

# Optimizers whose weight_decay is decoupled (w -= lr * wd * w); in the others it is an L2 term
# added to the gradient, amplified by momentum like the gradient is.
DECOUPLED = {"AdamW"}
# Coupled L2 in an adaptive optimizer is divided by the gradient's running scale: its pull per step
# is not lr * wd, so only these (and the decoupled ones) are judged.
PLAIN = {"SGD", "ASGD"}


@dataclass
class Group:
    index: int
    weight_decay: float
    peak_lr: float
    momentum: float
    decoupled: bool
    shrink: float  # fraction of each weight decay removes per step at the peak lr
    numel: int


@register
@dataclass
class WeightDecayTooHigh(Rule):
    """Weight decay removes at least ``max_shrink`` = 1% of every weight each step (at the
    group's peak lr: lr * weight_decay for AdamW; lr * weight_decay / (1 - momentum) for SGD,
    whose L2 term momentum amplifies as it does the gradient), for long enough to act: the sum of
    the per-step shrinkage over the steps at that strength is at least ``min_total`` = 3 (the
    decay alone would take the weights to e^-3 = 5% of their size).

    Settings in common use shrink by 1e-6 to 5e-4 a step (AdamW lr 1e-3 with wd 0.01-0.1; SGD lr
    0.1, momentum 0.9, wd 1e-4-5e-4): 1% is 20x the strongest of them; the weights then forget
    within ~100 steps whatever the gradient teaches them, and settle where the gradient balances
    the decay, near zero. Coupled L2 in Adam-like optimizers is not judged.
    Reads: optimizers (param groups: weight_decay, lr, initial_lr, max_lr, momentum), params
    (numel, weight_decay: the share of the weights decayed), steps.lr (the schedule over time),
    param_stats.norm and grad_norm (the weights' size over the run; the L2 pull wd * |w| against
    the gradient), and the loss trend for the severity.
    Fires: the strongest group's shrinkage as above, its groups holding ``min_share`` of the weights.
    Severity: high when the decayed weights end below half their first sampled norm, or the loss
    does not improve; else medium. Cause: weight_decay_too_high.
    Recommends: a weight_decay 20x below the 1% limit or less, biases and norm layers undecayed.
    """

    id = "weight_decay_too_high"
    kind = "weight_decay_too_high"
    reads = ("optimizers", "params", "steps.lr", "steps.optimizer_stepped", "steps.loss", "steps.loss_nonfinite",
             "param_stats.norm", "param_stats.grad_norm")
    max_shrink: float = 1e-2
    min_total: float = 3.0
    min_share: float = 0.3  # of the optimizer's weights (by element count) in the strong groups

    def check(self, ev: Evidence) -> list[Finding]:
        if not ev.optimizers:
            return []
        opt = ev.optimizers[0]
        kind = opt.type.rsplit(".", 1)[-1]
        groups = [gr for i, pg in enumerate(opt.param_groups) if (gr := self._group(i, pg, kind, ev)) is not None]
        strong = [gr for gr in groups if gr.shrink >= self.max_shrink]
        if not strong:
            return []
        total_numel = sum(p.numel for p in ev.params.values() if p.in_optimizer) or 1
        decayed = self._decayed_params(ev, strong)
        share = sum(ev.params[n].numel for n in decayed) / total_numel if decayed else None
        if share is not None and share < self.min_share:
            return []
        schedule = self._schedule(ev)
        top = max(strong, key=lambda gr: gr.shrink)
        per_step = top.shrink * schedule
        strong_steps = per_step >= self.max_shrink
        total = float(per_step[strong_steps].sum())
        if total < self.min_total:
            return []
        shrunk, pull = self._norms(ev, decayed, top)
        trend = loss_trend(ev)
        hurt = (shrunk is not None and shrunk < 0.5) or trend is None or not trend.improving
        half_life = math.log(2) / top.shrink
        how = (f"lr {g(top.peak_lr)} x weight_decay {g(top.weight_decay)}"
               + ("" if top.decoupled else f" / (1 - momentum {g(top.momentum)})"))
        tail = f" The decayed weights ended at {shrunk:.0%} of their first sampled norm." if shrunk is not None else ""
        if pull is not None:
            tail += f" The L2 pull weight_decay * |w| is {g(pull)}x the gradient's norm (median over sampled steps)."
        evidence: dict[str, Any] = {
            "optimizer": kind, "weight_decay": top.weight_decay, "peak_lr": top.peak_lr, "momentum": top.momentum,
            "decoupled": top.decoupled, "shrink_per_step": top.shrink, "half_life_steps": half_life,
            "steps_at_strength": int(strong_steps.sum()), "total_shrinkage": total,
            "decayed_share": share, "norm_end_over_start": shrunk, "decay_to_gradient": pull,
        }
        return [self.finding(
            severity="high" if hurt else "medium",
            message=(f"Weight decay removes {top.shrink:.1%} of every weight each step ({how}): the weights lose half "
                     f"their size every {half_life:.0f} steps to the decay alone, over {int(strong_steps.sum())} "
                     f"steps at that strength, far faster than the gradient builds them up.{tail}"),
            confidence=0.85,
            evidence=evidence,
            causes=["weight_decay_too_high"],
            recommendations=[fix(
                f"Lower weight_decay to about {g(top.weight_decay * self.max_shrink / top.shrink / 20)} or less (common "
                "values: 0.01-0.1 for AdamW, 1e-4-5e-4 for SGD), and leave biases and norm layers undecayed.",
                "decay = [p for n, p in model.named_parameters() if p.dim() > 1]\n"
                "no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]\n"
                f"optimizer = torch.optim.{kind}([{{'params': decay, 'weight_decay': "
                f"{'0.01' if top.decoupled else '5e-4'}}}, {{'params': no_decay, 'weight_decay': 0.0}}], ...)")],
        )]

    def _group(self, index: int, pg: dict[str, Any], kind: str, ev: Evidence) -> Group | None:
        wd = _num(pg.get("weight_decay"))
        decoupled = kind in DECOUPLED or bool(pg.get("decoupled_weight_decay"))
        if not wd or wd <= 0 or not (decoupled or kind in PLAIN):
            return None
        lrs = [_num(pg.get(k)) for k in ("lr", "initial_lr", "max_lr")]
        lr_col = col(ev.steps, "lr")
        lr_col = lr_col[np.isfinite(lr_col)]
        if index == 0 and len(lr_col):
            lrs.append(float(lr_col.max()))
        peak = max((x for x in lrs if x is not None), default=None)
        if not peak or peak <= 0:
            return None
        momentum = _num(pg.get("momentum")) or 0.0
        amplify = 1.0 if decoupled else 1.0 / max(1.0 - momentum, 0.01)
        return Group(index, wd, peak, momentum, decoupled, peak * wd * amplify, int(_num(pg.get("params")) or 0))

    def _schedule(self, ev: Evidence) -> np.ndarray:
        """Each optimizer step's lr over the peak (1 where the lr is not recorded)."""
        t = ev.steps
        lr = col(t, "lr")[flag(t, "optimizer_stepped")]
        peak = np.nanmax(lr) if len(lr) and np.isfinite(lr).any() else math.nan
        if not math.isfinite(peak) or peak <= 0:
            return np.ones(len(lr))
        return np.nan_to_num(lr / peak, nan=1.0)

    @staticmethod
    def _decayed_params(ev: Evidence, strong: list[Group]) -> list[str]:
        limits = {gr.weight_decay for gr in strong}
        return [n for n, p in ev.params.items() if p.in_optimizer and p.weight_decay in limits]

    @staticmethod
    def _norms(ev: Evidence, names: list[str], top: Group) -> tuple[float | None, float | None]:
        """The decayed weights' total norm at the last sample over the first, and the median L2
        pull over the gradient norm (coupled decay only)."""
        ps = ev.param_stats
        if not len(ps) or not names:
            return None, None
        keep = np.isin(ps["param"], names)
        steps, norm, grad = col(ps, "step")[keep], col(ps, "norm")[keep], col(ps, "grad_norm")[keep]
        if not len(steps):
            return None, None
        first, last = np.nanmin(steps), np.nanmax(steps)
        start = math.sqrt(np.nansum(norm[steps == first] ** 2))
        end = math.sqrt(np.nansum(norm[steps == last] ** 2))
        shrunk = end / start if start > 0 and last > first else None
        pull = None
        if not top.decoupled:
            ok = np.isfinite(grad) & (grad > 0) & np.isfinite(norm)
            if ok.any():
                pull = float(np.median(top.weight_decay * norm[ok] / grad[ok]))
        return shrunk, pull


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
