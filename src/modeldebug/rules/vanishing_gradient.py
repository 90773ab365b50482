"""vanishing_gradient: gradients too small to move the early layers."""

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
    family,
    fix,
    g,
    grace_mask,
    impact_severity,
    init_scales,
    layer_order,
    lower_lr,
    loss_trend,
    param_module,
    per_group_median,
    thrown_early,
)
from modeldebug.types import Finding

_SATURATING = {"Sigmoid", "Tanh", "Hardtanh", "Softsign", "Hardsigmoid", "LogSigmoid"}
_NORMS = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d",
          "InstanceNorm2d", "RMSNorm", "SyncBatchNorm"}


@register
@dataclass
class VanishingGradient(Rule):
    """Early layers receive (almost) no gradient.

    Reads: param_stats.grad_norm per weight (ordered by its module's forward position),
    params (numel, shape), steps.grad_norm, steps.loss, layers (types), param_stats.update_ratio
    (early updates, for the cause).
    Fires: (a) AUTOTRAINER: median first-layer / last-layer gradient norm < ``ratio`` = 1e-3
    with the first layer's norm < ``first_norm`` = 1e-4; (b) SageMaker: the root-mean-square
    gradient of the whole model (or of the first layer) < ``tiny`` = 1e-7.
    Severity: high when the loss stalls, low when it still improves (AUTOTRAINER).
    Causes: sigmoid/tanh in the model -> saturating_activation_choice first; first-layer weights
    far below the Kaiming scale -> bad_weight_init first; else early updates above a tenth of the
    weights (``thrown_early``: an lr far too high, a collapsed network) -> learning_rate_too_high;
    no normalization layer -> missing_normalization_layer.
    Recommends: ReLU/GELU instead of the saturating activation, Kaiming init for the first
    layer (by name), normalization layers, residual connections.
    """

    id = "vanishing_gradient"
    kind = "vanishing_gradient"
    reads = ("param_stats.grad_norm", "params", "layers", "steps.grad_norm", "steps.loss",
             "param_stats.norm", "param_stats.update_ratio", "steps.loss_nonfinite", "optimizers",
             "steps.lr") + REFERENCE_READS  # severity by harm; the lr to lower
    level = "detailed"
    ratio: float = 1e-3
    first_norm: float = 1e-4
    tiny: float = 1e-7
    grace_steps: int = GRACE_STEPS

    def check(self, ev: Evidence) -> list[Finding]:
        trend = loss_trend(ev, self.grace_steps)
        t = ev.param_stats
        med: dict[str, float] = {}
        first_step = None
        if len(t):
            keep = grace_mask(col(t, "step"), self.grace_steps) & np.isfinite(col(t, "grad_norm"))
            if keep.any():
                med = per_group_median(t["param"][keep], col(t, "grad_norm")[keep])
                first_step = int(np.min(col(t, "step")[keep]))
        # Weights of layers that ran, in forward order (biases and unused layers tell nothing here).
        ordered = sorted((layer_order(ev, param_module(ev, p)), p) for p in med
                         if p.endswith("weight") and med[p] > 0 and layer_order(ev, param_module(ev, p)) >= 0)
        if len(ordered) >= 2:
            first_p, last_p = ordered[0][1], ordered[-1][1]
            ratio = med[first_p] / max(med[last_p], 1e-30)
            rms = med[first_p] / np.sqrt(max(self._numel(ev, first_p), 1))
            if (ratio < self.ratio and med[first_p] < self.first_norm) or rms < self.tiny:
                return [self._finding(ev, trend, first_p, first_step, {
                    "first_param": first_p, "last_param": last_p, "first_grad_norm": med[first_p],
                    "last_grad_norm": med[last_p], "ratio": ratio, "first_grad_rms": rms},
                    f"The gradient norm of {first_p} (first layer, median {g(med[first_p])}) is {g(ratio)}x that of "
                    f"{last_p} (last layer, {g(med[last_p])}): the early layers barely learn.")]
        return self._global(ev, trend)

    def _global(self, ev: Evidence, trend) -> list[Finding]:
        """Without per-layer data: the whole model's RMS gradient below SageMaker's 1e-7."""
        steps, gn = col(ev.steps, "step"), col(ev.steps, "grad_norm")
        keep = grace_mask(steps, self.grace_steps) & np.isfinite(gn) & (gn > 0)
        numel = sum(p.numel for p in ev.params.values() if p.requires_grad)
        if keep.sum() < 3 or numel == 0:
            return []
        rms = float(np.median(gn[keep])) / np.sqrt(numel)
        if rms >= self.tiny:
            return []
        return [self._finding(ev, trend, None, int(steps[keep][0]),
                              {"grad_norm": float(np.median(gn[keep])), "grad_rms": rms, "parameters": numel},
                              f"The model's gradient is tiny: median norm {g(np.median(gn[keep]))} over "
                              f"{numel} parameters (RMS {g(rms)} < {g(self.tiny)}).")]

    def _finding(self, ev, trend, first_p, step, evidence, msg) -> Finding:
        types = {family(info) for info in ev.layers.values()}
        saturating = sorted(types & _SATURATING)
        causes = []
        init_small = first_p is not None and init_scales(ev).get(first_p, 1.0) < 0.1
        if init_small:
            causes.append("bad_weight_init")
        thrown = thrown_early(ev)
        if thrown is not None and not init_small:
            causes.append("learning_rate_too_high")  # a collapse after huge early updates starves the first layers
        if saturating:
            causes.append("saturating_activation_choice")
        if not types & _NORMS:
            causes.append("missing_normalization_layer")
        if "bad_weight_init" not in causes:
            causes.append("bad_weight_init")
        recs = []
        if thrown is not None and not init_small:
            msg += (f" Early steps moved the weights by {g(thrown)}x themselves (median update ratio |dW|/|W|):"
                    " the learning rate threw the network into a state whose first layers get no gradient.")
            recs += lower_lr(ev)
        if saturating:
            recs.append(fix(f"Replace {', '.join('nn.' + s for s in saturating)} with nn.ReLU() or nn.GELU() in the "
                            "hidden layers (keep a sigmoid only at the output, or fold it into the loss).",
                            "nn.ReLU()"))
        if first_p is not None:
            recs.append(fix(f"Initialize {first_p} at the Kaiming scale.",
                            f"nn.init.kaiming_normal_({attr_path(first_p)}, nonlinearity='relu')"))
        recs.append(fix("Add normalization layers (BatchNorm/LayerNorm) or residual connections between layers.",
                        "nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.ReLU())"))
        if trend is not None:
            msg += f" The loss went {g(trend.start)} -> {g(trend.end)}."
        return self.finding(
            severity=impact_severity(trend), confidence=0.8 if not (trend and trend.improving) else 0.4,
            location=param_module(ev, first_p) if first_p else None, step=step, message=msg,
            evidence=evidence, causes=causes, recommendations=recs,
        )

    @staticmethod
    def _numel(ev: Evidence, p: str) -> int:
        info = ev.params.get(p)
        return info.measured_numel if info else 1
