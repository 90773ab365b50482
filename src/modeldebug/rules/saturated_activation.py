"""saturated_activation: sigmoid/tanh outputs stuck near their bounds, where the gradient is ~0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    ADVERSARIAL_READS,
    REFERENCE_READS,
    GRACE_STEPS,
    Rule,
    adversarial,
    attr_path,
    col,
    family,
    fix,
    g,
    grace_mask,
    impact_severity,
    input_scale,
    layer_arg,
    layer_order,
    layers_of,
    loss_trend,
    lr_is_high,
    per_group_median,
    previous_weighted,
)
from modeldebug.types import Finding

_BOUNDED = {"Sigmoid", "Tanh", "Hardtanh", "Softsign", "Hardsigmoid"}


@register
@dataclass
class SaturatedActivation(Rule):
    """Bounded activations whose outputs sit at their bounds.

    Reads: layer_stats.sat_frac (fraction of outputs within 1% of a bound: |x| > ~4.6 into a
    sigmoid, |x| > ~2.6 into tanh), layers (types, forward order), steps.input_* and steps.loss.
    Fires: on a sigmoid/tanh layer whose median saturated fraction over the sampled steps after
    the grace steps is >= ``sat_frac`` = 0.5 (SageMaker's saturated-activation rule: more than
    half the units saturated; its ±9.5 tanh input bound is coarser than our 1% output band).
    Not on a model's output layer while the loss improves, nor on a GAN's (adversarial players:
    rules/base.adversarial): a discriminator is confident by design.
    Severity: medium when the loss stalls, low while it still improves (AUTOTRAINER).
    Causes: inputs far from normalized -> unnormalized_inputs; saturated from the first sample ->
    bad_weight_init; saturated later -> learning_rate_too_high; always saturating_activation_choice
    and missing_normalization_layer after.
    Recommends: normalize inputs, a LayerNorm before the activation (sized from the layer
    before), Xavier init, ReLU/GELU in hidden layers.
    """

    id = "saturated_activation"
    kind = "saturated_activation"
    reads = ("layer_stats.sat_frac", "layers", "steps.input_mean", "steps.input_std", "steps.loss",
             "optimizers", "steps.loss_nonfinite") + REFERENCE_READS + ADVERSARIAL_READS  # severity by harm
    level = "detailed"
    sat_frac: float = 0.5
    grace_steps: int = GRACE_STEPS

    def check(self, ev: Evidence) -> list[Finding]:
        t = ev.layer_stats
        if len(t) == 0:
            return []
        names, steps, sat = t["layer"], col(t, "step"), col(t, "sat_frac")
        bounded = np.isin(names, layers_of(ev, _BOUNDED))
        late = grace_mask(steps, self.grace_steps) & bounded & np.isfinite(sat)
        med = per_group_median(names[late], sat[late])
        trend = loss_trend(ev, self.grace_steps)
        order = ev.layers_in_order()
        last = order[-1].name if order else None
        outputs = {info.model: info.name for info in order}.values()  # each model's last layer
        findings = []
        for name in sorted(med, key=lambda n: layer_order(ev, n)):
            if med[name] < self.sat_frac:
                continue
            if name in outputs and (name == last and trend is not None and trend.improving or adversarial(ev)):
                continue  # a confident output sigmoid in a run that learns (or a GAN's discriminator) is the goal
            rows = (names == name) & np.isfinite(sat)
            s, v = steps[rows], sat[rows]
            first = int(s[np.flatnonzero(v >= self.sat_frac)[0]]) if (v >= self.sat_frac).any() else int(s[0])
            at_start = v[0] >= self.sat_frac
            findings.append(self._finding(ev, name, med[name], first, bool(at_start), trend))
        return findings

    def _finding(self, ev, name, frac, first, at_start, trend) -> Finding:
        typ = family(ev.layers[name])
        scale = input_scale(ev)
        causes = []
        if scale > 10:
            causes.append("unnormalized_inputs")
        causes.append("bad_weight_init" if at_start or not lr_is_high(ev) else "learning_rate_too_high")
        causes += ["saturating_activation_choice", "missing_normalization_layer"]
        prev = previous_weighted(ev, name)
        width = None
        if prev:
            width = layer_arg(ev, prev, "out_features") or layer_arg(ev, prev, "out_channels") \
                or layer_arg(ev, prev, "hidden_size")
        recs = []
        if causes[0] == "unnormalized_inputs":
            recs.append(fix(f"Standardize the inputs (largest input mean/std seen: {g(scale)}).",
                            "x = (x - x.mean(0)) / (x.std(0) + 1e-8)"))
        if width:
            recs.append(fix(f"Normalize before {name}: add a LayerNorm({width}) after {prev}.",
                            f"nn.Sequential({attr_path(prev)}, nn.LayerNorm({width}), nn.{typ}())"))
        if prev:
            recs.append(fix(f"Initialize {prev} with Xavier init (suited to {typ}).",
                            f"nn.init.xavier_uniform_({attr_path(prev)}.weight)"))
        recs.append(fix(f"Use nn.ReLU() or nn.GELU() instead of nn.{typ}() in hidden layers.",
                        f"{attr_path(name)} = nn.GELU()"))
        msg = (f"{g(100 * frac)}% of {name}'s {typ} outputs are within 1% of a bound (median over sampled steps, "
               f"first at step {first}), where its gradient is nearly zero.")
        if trend is not None:
            msg += f" The loss went {g(trend.start)} -> {g(trend.end)}."
        return self.finding(
            severity=impact_severity(trend, hurt="medium"), confidence=0.8,
            location=name, step=first, message=msg,
            evidence={"sat_frac": frac, "saturated_at_start": at_start, "previous_layer": prev,
                      "input_scale": float(scale)},
            causes=causes, recommendations=recs,
        )
