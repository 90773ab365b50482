"""unchanged_weights: parameters that should train but never change."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register, untracked_parameters
from modeldebug.rules.base import (
    Rule,
    attr_path,
    col,
    fix,
    flag,
    g,
    layer_family,
    layer_order,
    lr_bounds,
    optimizer_type,
    param_module,
    per_group,
    raise_lr,
)
from modeldebug.events import ReturnedOutputs, StepsOnClearedGradients
from modeldebug.types import Finding

_MSG = {
    "frozen_parameters": "are given to the optimizer but have requires_grad=False, so they never get a gradient",
    "parameters_not_in_optimizer": "get gradients but are not in any optimizer's param_groups",
    "detached_graph": "never receive a gradient although their layers run: the graph is cut "
                      "(.detach(), .data, .item(), torch.no_grad() or a new tensor) between them and the loss",
    "missing_optimizer_step": "get gradients but optimizer.step() is never called",
    "zero_grad_misplaced": "get gradients from loss.backward(), but zero_grad() clears them before optimizer.step() "
                           "applies them ({cleared} of {stepped} steps were taken on gradients cleared so)",
    "learning_rate_too_low": "get gradients and the optimizer steps, but their learning rate is 0 (or too small to move them)",
    "unused": "belong to modules that never run in forward()",
    "returned_unused": "never receive a gradient: their module's output is returned next to another output that "
                       "the loss uses, and is itself never used (a hint: leave it out, or drop it from the optimizer)",
    "frozen_left_out": "are left out of the optimizer and never get a gradient (requires_grad=False, or their "
                       "forward runs without grad): a frozen block kept at its initial or pretrained values, which "
                       "looks deliberate (a hint)",
    "left_out_by_type": "get gradients but are not in any optimizer's param_groups: every {family} layer's "
                        "parameters are left out, which looks deliberate (kept at their initial values)",
}


def cleared_before_step(ev: Evidence) -> StepsOnClearedGradients | None:
    """The run's steps on cleared gradients, when at least half of its optimizer steps were so (one
    such step in a long run is not what kept the weights still)."""
    found = next(iter(ev.events_of(StepsOnClearedGradients)), None)
    if found is None or found.steps < 0.5 * max(found.optimizer_steps, 1):
        return None
    return found


@register
@dataclass
class UnchangedWeights(Rule):
    """Trainable-looking parameters whose values never change over the run.

    Reads: params (requires_grad, in_optimizer, lr, numel), param_stats.changed / has_grad
    (any over the run), steps.optimizer_stepped, steps.lr, layers (did the module run).
    Fires: after at least ``min_steps`` steps, once per cause, grouping the parameters (no
    threshold: any parameter that never changes is suspect; the literature has none).
    Cause (first match): requires_grad False but in the optimizer -> frozen_parameters; left out
    of the optimizer and never a gradient (requires_grad False, or run without grad: the Hugging
    Face way of freezing, ``AdamW(p for p in model.parameters() if p.requires_grad)``) -> ``low``
    hint naming the block, cause other; requires_grad True, gradients, but not in the optimizer ->
    parameters_not_in_optimizer (a param group that skips a block that still gets gradients is
    not told from one forgotten: the fix says to freeze it if intended); in the optimizer,
    its module ran, never a gradient -> detached_graph, unless most optimizer steps followed a
    zero_grad() that ran after that step's backward (events.steps_on_cleared_gradients) ->
    zero_grad_misplaced (also when the cleared gradients were zeros, not None); gradients but no step ever ->
    missing_optimizer_step; gradients, steps, lr 0 (or tiny) -> learning_rate_too_low.
    In the optimizer, never a gradient, and inside a module whose output an enclosing module
    returns next to others while a sibling gets gradients (a BERT pooler beside the sequence
    output a tagging head uses: events.returned_outputs) -> ``low``, cause other. Parameters
    of modules that never ran are reported ``low`` (unused, cause other); so are parameters left
    out of the optimizer by layer type (every parameter of every layer of one family, at least
    two layers, e.g. all BatchNorm affine: a deliberate choice, as in fine-tuning with frozen
    norms), cause parameters_not_in_optimizer.
    Severity: high when the affected parameters are >= ``high_fraction`` = 50% of the trainable
    ones (or optimizer.step() is never called), else medium.
    Recommends the concrete fix for the cause, naming the parameters.
    """

    id = "unchanged_weights"
    kind = "unchanged_weights"
    reads = ("params", "param_stats.changed", "param_stats.has_grad", "steps.optimizer_stepped", "steps.lr",
             "layers", "optimizers", "events.returned_outputs", "events.new_parameters", "steps.scaler_skipped",
             "events.steps_on_cleared_gradients")
    min_steps: int = 3
    high_fraction: float = 0.5

    def check(self, ev: Evidence) -> list[Finding]:
        if not ev.params:
            return []
        t = ev.param_stats
        sampled_steps = np.unique(col(t, "step")) if len(t) else np.empty(0)
        if max(len(ev.steps), len(sampled_steps)) < self.min_steps:
            return []
        names = t["param"] if len(t) else np.empty(0, dtype=object)
        changed = per_group(names, flag(t, "changed"), "any")
        has_grad = per_group(names, flag(t, "has_grad"), "any")
        # (steps a GradScaler skipped called optimizer.step(): loss_scale_collapse says why nothing changed)
        stepped_any = bool((flag(ev.steps, "optimizer_stepped") | flag(ev.steps, "scaler_skipped")).any())             if len(ev.steps) else True
        lr_col = col(ev.steps, "lr")
        lr_zero = bool(len(lr_col) and np.isfinite(lr_col).any() and np.nanmax(np.abs(lr_col)) == 0)

        groups: dict[str, list[str]] = {}
        returned = {m for e in ev.events_of(ReturnedOutputs) for m in e.modules}
        cleared = cleared_before_step(ev)
        explained = untracked_parameters.claimed(ev)  # renewed every step, or an optimizer on a copy
        for p, info in ev.params.items():
            if changed.get(p) or p in explained or not info.measured_numel:  # (an empty shard holds nothing)
                continue
            seen = p in changed  # we have samples of it, so "never changed" is observed
            if not info.requires_grad:
                cause = "frozen_parameters" if info.in_optimizer else "frozen_left_out"
            elif not info.in_optimizer:
                # (no gradient either: run under no_grad, as a frozen feature extractor is)
                cause = "frozen_left_out" if seen and not has_grad.get(p) else "parameters_not_in_optimizer"
            elif not seen:
                cause = None
            elif info.module in ev.layers and layer_order(ev, info.module) < 0 and not has_grad.get(p):
                cause = "unused"
            elif cleared is not None:  # (None at the step, or zeros: either way nothing to apply)
                cause = "zero_grad_misplaced"
            elif not has_grad.get(p):
                cause = "returned_unused" if self._output_unused(ev, info.module, returned, has_grad) else "detached_graph"
            elif not stepped_any:
                cause = "missing_optimizer_step"
            elif lr_zero or info.lr == 0 or self._tiny_lr(info.lr, ev):
                cause = "learning_rate_too_low"
            else:
                cause = None  # gradients and steps but no change: zero gradients, reported elsewhere
            if cause:
                groups.setdefault(cause, []).append(p)
        by_type = self._left_out_by_type(ev, groups.get("parameters_not_in_optimizer", []))
        if by_type:
            groups["left_out_by_type"] = by_type
            groups["parameters_not_in_optimizer"] = [p for p in groups["parameters_not_in_optimizer"] if p not in by_type]
            if not groups["parameters_not_in_optimizer"]:
                del groups["parameters_not_in_optimizer"]

        trainable = sum(i.numel for i in ev.params.values() if i.requires_grad or i.in_optimizer) or 1
        first_step = int(np.nanmin(col(ev.steps, "step"))) if len(ev.steps) else (
            int(sampled_steps[0]) if len(sampled_steps) else None)
        findings = []
        for cause, params in groups.items():
            numel = sum(ev.params[p].numel for p in params)
            frozen = cause == "frozen_left_out"  # (not among the trainable ones: a share of them all)
            frac = numel / (sum(i.numel for i in ev.params.values()) or 1) if frozen else numel / trainable
            if cause in ("unused", "left_out_by_type", "returned_unused", "frozen_left_out"):
                severity = "low"
            elif cause == "missing_optimizer_step" or frac >= self.high_fraction:
                severity = "high"
            else:
                severity = "medium"
            whole_run = cause == "missing_optimizer_step"
            location = None if whole_run else self._location(ev, params)
            shown = ", ".join(params[:5]) + (f" and {len(params) - 5} more" if len(params) > 5 else "")
            what = _MSG[cause].format(family="/".join(sorted({layer_family(ev, param_module(ev, p)) for p in params})),
                                      cleared=cleared.steps if cleared else 0,
                                      stepped=cleared.optimizer_steps if cleared else 0)
            findings.append(self.finding(
                severity=severity, confidence=0.9 if cause != "unused" else 0.6,
                location=location, step=first_step,
                message=(f"{len(params)} parameter(s) ({numel} values, {g(100 * frac)}% of "
                         f"{'all the parameters' if frozen else 'the trainable ones'}) never "
                         f"changed: {shown}. They {what}."),
                evidence={"params": params[:50], "count": len(params), "numel": numel, "fraction": frac,
                          "optimizer_stepped": stepped_any, "lr": self._lr(params, ev)},
                causes=["other"] if cause in ("unused", "returned_unused", "frozen_left_out") else
                ["parameters_not_in_optimizer"] if cause == "left_out_by_type" else [cause],
                recommendations=self._recs(ev, cause, params, location),
            ))
        return findings

    @staticmethod
    def _output_unused(ev: Evidence, module: str, returned: set[str], has_grad: dict) -> bool:
        """The module is (inside) one whose output an enclosing module returns next to others, and
        a sibling output is used: some parameter under the enclosing module gets gradients. (When
        none does, the caller cut the graph to all of them: detached_graph.)"""
        for r in returned:
            if module == r or module.startswith(r + "."):
                parent = r.rsplit(".", 1)[0] if "." in r else ""
                if any(has_grad.get(q) for q in ev.params
                       if not parent or param_module(ev, q) == parent or param_module(ev, q).startswith(parent + ".")):
                    return True
        return False

    @staticmethod
    def _left_out_by_type(ev: Evidence, left_out: list[str]) -> list[str]:
        """The left-out parameters that are all the parameters of every layer of their family (two
        layers or more): chosen by type, not lost by a layer built after the optimizer."""
        if not left_out:
            return []
        by_family: dict[str, list[str]] = {}
        for p in ev.params:
            by_family.setdefault(layer_family(ev, param_module(ev, p)), []).append(p)
        out = set(left_out)
        chosen = []
        for fam, members in by_family.items():
            layers = {param_module(ev, p) for p in members}
            if fam and len(layers) >= 2 and all(p in out for p in members):
                chosen += members
        return chosen

    @staticmethod
    def _tiny_lr(lr: float | None, ev: Evidence) -> bool:
        return lr is not None and 0 < lr < 1e-8

    @staticmethod
    def _lr(params: list[str], ev: Evidence):
        lrs = {ev.params[p].lr for p in params if ev.params[p].lr is not None}
        return sorted(lrs) if lrs else None

    @staticmethod
    def _location(ev: Evidence, params: list[str]) -> str | None:
        modules = sorted({param_module(ev, p) for p in params}, key=lambda m: (layer_order(ev, m), m))
        parts = [m.split(".") for m in modules]
        common = []
        for level in zip(*parts):
            if len(set(level)) > 1:
                break
            common.append(level[0])
        if common:
            return ".".join(common)
        return modules[0] if len(modules) == 1 or modules[0] else (modules[1] if len(modules) > 1 else None)

    @staticmethod
    def _recs(ev: Evidence, cause: str, params: list[str], location: str | None):
        target = attr_path(location) if location else "model"
        if cause == "frozen_parameters":
            return [fix(f"Unfreeze {location or 'them'} if it should train (or leave it out of the optimizer if the "
                        "freeze is intended).", f"{target}.requires_grad_(True)")]
        if cause == "frozen_left_out":
            return [fix(f"If {location or 'this block'} should train (a warm-up freeze that was meant to end), turn its "
                        "gradients on and give it to the optimizer; if it is meant to stay fixed, nothing to do.",
                        f"{target}.requires_grad_(True)\noptimizer.add_param_group({{'params': {target}.parameters()}})")]
        if cause == "left_out_by_type":
            return [fix("If they are meant to stay fixed, turn their gradients off too: it saves the backward work "
                        "and keeps them from piling up gradients.",
                        "for p in params_left_out:\n    p.requires_grad_(False)")]
        if cause == "parameters_not_in_optimizer":
            return [fix("Create the optimizer after the model is complete (all layers added, moved to the device), "
                        f"or add the missing parameters as a param group.",
                        f"optimizer.add_param_group({{'params': {target}.parameters()}})")]
        if cause == "detached_graph":
            return [fix(f"Keep {location or 'these layers'} connected to the loss: remove .detach(), .data, .item(), "
                        "torch.no_grad() or torch.tensor(...) re-wrapping between them and the loss.",
                        "loss = criterion(model(x), y)  # no .detach()/.data on the path to the loss")]
        if cause == "zero_grad_misplaced":
            return [fix("Clear the gradients before loss.backward() (or after optimizer.step()), never between them.",
                        "optimizer.zero_grad()\nloss = criterion(model(x), y)\nloss.backward()\noptimizer.step()")]
        if cause == "missing_optimizer_step":
            return [fix("Call optimizer.step() after loss.backward() in every training step.",
                        "optimizer.zero_grad()\nloss.backward()\noptimizer.step()")]
        if cause == "learning_rate_too_low":
            lrs = {ev.params[p].lr for p in params}
            if lrs == {0.0}:  # one param group at lr 0 (the others may be fine)
                typical = lr_bounds(optimizer_type(ev))[1]
                return [fix(f"Their param group's lr is 0; try {typical:g} (or the lr of the other groups).",
                            f"optimizer.param_groups[i]['lr'] = {typical:g}  # the group holding {params[0]}")]
            return raise_lr(ev)
        return [fix(f"Remove the modules that never run ({location}) or call them in forward().", None)]
