"""poor_weight_init: weights that start far from a sensible scale (or all equal)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from modeldebug.events import CLASS_LOSSES, LossCall
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    REFERENCE_READS,
    WEIGHTED,
    Rule,
    attr_path,
    col,
    family,
    fix,
    g,
    impact_severity,
    layer_family,
    loss_trend,
    param_module,
)
from modeldebug.rules.reference import classes_scored, loss_in_fn_units
from modeldebug.types import Finding

# Layers whose weights are not scaled by fan-in (embeddings start at N(0, 1), norms at 1).
_SKIP = {"Embedding", "EmbeddingBag", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm",
         "RMSNorm", "InstanceNorm1d", "InstanceNorm2d", "SyncBatchNorm"}
_SATURATING = {"Sigmoid", "Tanh"}
_OUTPUT_LAYERS = {"Linear", "Conv1D", "Conv1d", "Conv2d", "Conv3d", "Bilinear"}


@register
@dataclass
class PoorWeightInit(Rule):
    """Weight matrices initialized far off the usual scale.

    Reads: param_stats.norm at the first sampled step (which must be within ``first_steps`` of
    the start), params (shape, numel), layers (types), steps.loss.
    Fires: on a weight (2+ dims, not an embedding or norm layer; a built-in layer's or one named as a
    weight, ``weight``/``W``/``w1``/``kernel``, not a positional embedding or class token added to
    the activations, which has no fan-in and may start at zero) whose variance is above
    ``max_var`` = 10 (DeepDiagnosis: weight variance outside [1e-5, 10]) or whose scale
    RMS x sqrt(fan_in) is outside [``min_scale``, ``max_scale``] = [0.05, 10] (PyTorch's default
    init gives ~0.58, Kaiming ~1.4: 10x off either way; fault suite). DeepDiagnosis' lower bound
    1e-5 is replaced by the scale test because wide layers (fan_in > 30k) legitimately go below it.
    Also fires on a classifier whose first loss (cross-entropy / NLL over K classes, before any
    update) is ``max_initial_ratio`` = 2x ln K or more, the loss of a model that knows nothing:
    its logits start far too large (no weight flagged above, inputs not off scale: data_issue's
    test). Located at the last Linear-like layer (the logits'). Fault suite: healthy classifiers
    start at 0.84-1.48x ln K, a GPT-2 with initializer_range 1.0 at 2.8x.
    Severity: high when the loss diverges, medium when it stalls, low when it improves.
    Cause: bad_weight_init.
    Recommends: Kaiming (ReLU nets) or Xavier (tanh/sigmoid nets) init for the named weight.
    """

    id = "poor_weight_init"
    kind = "poor_weight_init"
    reads = ("param_stats.norm", "params", "layers", "steps.loss", "steps.loss_nonfinite", "steps.input_mean",
             "steps.input_std") + REFERENCE_READS  # severity by harm; the first loss, the loss call
    level = "detailed"
    max_var: float = 10.0
    min_scale: float = 0.05
    max_scale: float = 10.0
    first_steps: int = 10
    max_initial_ratio: float = 2.0

    def check(self, ev: Evidence) -> list[Finding]:
        return self._weights(ev) or self._initial_logits(ev)

    def _weights(self, ev: Evidence) -> list[Finding]:
        """Weights whose initial variance or fan-in scale is far off."""
        t = ev.param_stats
        if len(t) == 0 or not ev.params:
            return []
        steps, norm = col(t, "step"), col(t, "norm")
        start = np.nanmin(steps)
        if start > self.first_steps:
            return []  # the first sample came too late to show the initial weights
        at = (steps == start) & np.isfinite(norm)
        names, norms = t["param"][at], norm[at]
        info = [ev.params.get(str(n)) for n in names]
        shape_ok = np.array([i is not None and len(i.shape) >= 2 and i.numel > 0
                             and layer_family(ev, i.module) not in _SKIP and _multiplies(ev, str(n), i)
                             for n, i in zip(names, info)], dtype=bool)
        if not shape_ok.any():
            return []
        names, norms = names[shape_ok], norms[shape_ok]
        numel = np.array([i.measured_numel for i, ok in zip(info, shape_ok) if ok], dtype=float)
        fan_in = np.array([_fan_in(ev, i) for i, ok in zip(info, shape_ok) if ok], dtype=float)
        var = norms ** 2 / numel  # second moment: the variance for zero-mean weights
        scale = np.sqrt(var * fan_in)
        bad = (var > self.max_var) | (scale < self.min_scale) | (scale > self.max_scale)
        trend = loss_trend(ev)
        hurt = "high" if trend is not None and trend.diverged else "medium"
        types = {family(info) for info in ev.layers.values()}
        findings = []
        for i in np.flatnonzero(bad):
            p = str(names[i])
            too = "large" if scale[i] > self.max_scale or var[i] > self.max_var else "small"
            if too == "small" and norms[i] == 0:
                what = "all zero: every unit computes the same thing and gets the same gradient"
            else:
                what = f"too {too}: RMS {g(np.sqrt(var[i]))}, {g(scale[i])}x 1/sqrt(fan_in={int(fan_in[i])})"
            init = ("xavier_uniform_" if types & _SATURATING and "ReLU" not in types
                    else "kaiming_normal_")
            code = f"nn.init.{init}({attr_path(p)}" + (", nonlinearity='relu')" if init == "kaiming_normal_" else ")")
            msg = f"{p} starts {what} (variance {g(var[i])}; a sensible range is about [1e-5, 10] with scale ~0.5-1.4)."
            if trend is not None:
                msg += f" The loss went {g(trend.start)} -> {g(trend.end)}."
            findings.append(self.finding(
                severity=impact_severity(trend, hurt=hurt), confidence=0.8 if norms[i] else 0.9,
                location=param_module(ev, p), step=int(start), message=msg,
                evidence={"param": p, "variance": float(var[i]), "scale": float(scale[i]),
                          "fan_in": int(fan_in[i]), "norm": float(norms[i])},
                causes=["bad_weight_init"],
                recommendations=[fix(f"Re-initialize {p} at the {init.split('_')[0].title()} scale.", code)],
            ))
        return findings

    def _initial_logits(self, ev: Evidence) -> list[Finding]:
        """A classifier whose first loss is far above ln K: logits that start too large."""
        from modeldebug.rules.data_issue import DataIssue

        calls = [c for c in ev.events_of(LossCall) if c.name in CLASS_LOSSES]
        classes = classes_scored(ev, calls[0]) if calls and len(ev.steps) else None
        if classes is None:
            return []
        # The loss function's own output (per item for a sum); else the step's loss where it is that
        # loss in its units (a sum over items, or several losses added, would read as too large)
        fn, units = col(ev.steps, "loss_fn_value"), loss_in_fn_units(ev)
        first = fn[0] if len(fn) and np.isfinite(fn[0]) else units[0] if units is not None else np.nan
        uniform = float(np.log(classes))
        if not (np.isfinite(first) and first >= self.max_initial_ratio * uniform) or DataIssue().off_scale(ev):
            return []
        layers = [info for info in ev.layers_in_order() if info.type in _OUTPUT_LAYERS or family(info) in _OUTPUT_LAYERS]
        if not layers:
            return []
        out = layers[-1].name
        trend = loss_trend(ev)
        hurt = "high" if trend is not None and trend.diverged else "medium"
        msg = (f"The loss at the first step, {g(first)}, is {g(first / uniform)}x ln({classes}) = {g(uniform)}, the "
               f"loss of a model that knows nothing: the logits start far too large, from the weights of {out} "
               f"(and the layers feeding it) initialised too large.")
        if trend is not None:
            msg += f" The loss went {g(trend.start)} -> {g(trend.end)}."
        return [self.finding(
            severity=impact_severity(trend, hurt=hurt), confidence=0.7, location=out,
            step=int(col(ev.steps, "step")[0]), message=msg,
            evidence={"first_loss": float(first), "uniform_loss": uniform, "classes": classes,
                      "ratio": float(first / uniform)},
            causes=["bad_weight_init"],
            recommendations=[fix(f"Initialise {out} (and the layers before it) at a small scale, so that the first "
                                 f"loss is near ln({classes}): e.g. std 0.02 for a transformer, Xavier/Kaiming "
                                 "elsewhere, or scale the output layer's weights down.",
                                 f"nn.init.normal_({attr_path(out + '.weight')}, std=0.02)")],
        )]


# A hand-written layer's weight by its name: ``weight``, ``in_proj_weight``, ``W``, ``w1``, ``W_q``, ``kernel``.
_WEIGHT_NAME = re.compile(r"weight|kernel|^w(\d+|_\w*)?$", re.IGNORECASE)


def _multiplies(ev: Evidence, name: str, info) -> bool:
    """A layer's weight, which multiplies its input: the fan-in scale and the symmetry of an all-zero
    start apply to it. A parameter added to the activations (a positional embedding, a class token,
    a learned query: ``nn.Parameter(torch.zeros(1, n, d))`` or ``torch.randn``) has no fan-in, and
    zeros there break no symmetry: each position still gets its own gradient."""
    return layer_family(ev, info.module) in WEIGHTED or bool(_WEIGHT_NAME.search(name.rsplit(".", 1)[-1]))


def _fan_in(ev: Evidence, info) -> int:
    """Inputs per output: a weight's values over its first dimension (torch's [out, in, ...]); a
    transformers ``Conv1D`` (GPT-2's linear layers) stores [in, out], so its first dimension."""
    layer = ev.layers.get(info.module)
    if layer is not None and layer.type == "Conv1D" and len(info.shape) == 2:
        return int(info.shape[0])
    return info.numel // info.shape[0]
