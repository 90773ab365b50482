"""Candidate fixes for a probe's root findings, each applied in the re-run without editing the script.

A candidate is a small JSON spec that ``fixes/child.py`` applies in the watched script through
optimizer hooks and the backward functions the collector already wraps. The mapping goes from
what the rules say caused a finding (its ``causes``) and from the finding's kind, so a candidate
is tried for every root finding its mechanism can address, whatever the script.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from modeldebug.types import Finding

CLIP_MAX_NORM = 1.0  # the conventional default of clip_grad_norm_ recipes


@dataclass
class Candidate:
    spec: dict[str, Any]  # what fixes/child.py applies (its "kind" and parameters)
    change: str  # what it changes, in words
    addresses: list[str] = field(default_factory=list)  # the root finding kinds it is tried for
    # Judged on the validation loss: the change alters what the training loss measures (dropout on)
    by_validation: bool = False
    # Treats the finding's symptom, not a cause the rules name (clipping, LeakyReLU): second to a
    # verified fix of the same finding's cause (verify.py)
    mitigation: bool = False
    # The change alters the step size the script's rate was tuned for (gradients no longer summed
    # over steps, inputs no longer 100x their scale): tried again with the rate times this
    # (``retuned``) when it alone did not verify
    retune_lr: float | None = None

    @property
    def key(self) -> str:
        return repr(sorted(self.spec.items()))


def lr_scale(factor: float) -> Candidate:
    return Candidate({"kind": "lr_scale", "factor": factor},
                     f"learning rate x{factor:g}: every optimizer step uses {factor:g} times the rate the "
                     f"script (and its scheduler) set")


def zero_grad() -> Candidate:
    # (summed gradients made every step larger: a rate tuned on them is too low without them)
    return Candidate({"kind": "zero_grad"},
                     "optimizer.zero_grad() before the first backward() after each optimizer.step() "
                     "(gradients no longer carry over from one step to the next)", retune_lr=10.0)


def move_zero_grad() -> Candidate:
    return Candidate({"kind": "move_zero_grad"},
                     "the script's optimizer.zero_grad() calls made between backward() and optimizer.step() are "
                     "made before backward() instead (the step then applies this batch's gradients)")


def clip_grad_norm(max_norm: float = CLIP_MAX_NORM) -> Candidate:
    return Candidate({"kind": "clip_grad_norm", "max_norm": max_norm},
                     f"torch.nn.utils.clip_grad_norm_(parameters, {max_norm:g}) after backward(), before "
                     f"each optimizer.step()", mitigation=True)


def train_params(finding: Finding) -> Candidate | None:
    """Train the parameters the finding names (its evidence's ``params``): frozen ones require
    gradients again, and those the optimizer was not given are added to it."""
    names = [n for n in finding.evidence.get("params") or [] if isinstance(n, str)]
    if not names or _renewed(finding):
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return Candidate({"kind": "train_params", "params": names},
                     f"train {shown}: requires_grad_(True) on the frozen ones and add the ones the optimizer "
                     f"lacks to it (optimizer.add_param_group), from the second step")


def _renewed(finding: Finding) -> bool:
    """The parameters are new objects at every step looked at: a module built inside forward()."""
    return int(finding.evidence.get("renewed_steps") or 0) >= 2


def keep_module(finding: Finding) -> Candidate | None:
    """For parameters renewed at every step (``self.head = nn.Linear(...)`` inside forward): the
    first module assigned to that attribute is kept, later ones of the same shape are not set, and
    its parameters join the optimizer if it lacks them: the module built once."""
    names = [n for n in finding.evidence.get("params") or [] if isinstance(n, str) and "." in n]
    if not names or not _renewed(finding):
        return None
    modules = sorted({n.rsplit(".", 1)[0] for n in names})
    return Candidate({"kind": "keep_module", "modules": modules, "params": names},
                     f"build {', '.join(modules)} once: the first module forward() assigns there is kept (later "
                     f"ones of the same shape are not set) and trained by the optimizer")


def lr_raise(finding: Finding, probe: dict[str, Any]) -> Candidate | None:
    """Up to the typical rate of the optimizer's family (the rules' table), by a power of ten, x10
    at least; only when the rules name a too-low rate first (they list it last as a fallback)."""
    if finding.causes[:1] != ["learning_rate_too_low"]:
        return None
    lr, typical = probe.get("lr"), probe.get("typical_lr")
    factor = 10.0
    if isinstance(lr, float) and isinstance(typical, float) and 0 < lr < typical:
        factor = max(10.0, 10.0 ** round(math.log10(typical / lr)))
    return lr_scale(factor)


WEIGHT_DECAY_SHRINK = 1e-3  # per step at most: the weights' half-life to decay alone ~700 steps


def weight_decay_scale(finding: Finding) -> Candidate:
    """Weight decay scaled by a power of ten that brings the shrink per step the rule measured to
    WEIGHT_DECAY_SHRINK or below (x0.1 at least)."""
    shrink = finding.evidence.get("shrink_per_step")
    factor = 0.1
    if isinstance(shrink, (int, float)) and shrink > 0:
        factor = min(0.1, 10.0 ** math.floor(math.log10(WEIGHT_DECAY_SHRINK / shrink)))
    return Candidate({"kind": "weight_decay_scale", "factor": factor},
                     f"weight decay x{factor:g}: every optimizer param group's weight_decay scaled by {factor:g} "
                     f"where the optimizer is built")


def standardize_inputs(finding: Finding, probe: dict[str, Any] | None = None) -> Candidate:
    # A first layer's step moves its output by the input's scale (and, under SGD, its gradient
    # grows with it too): inputs brought from a scale of s to 1 want the rate raised if s > 1.
    scale = (probe or {}).get("input_std")
    retune = None if not isinstance(scale, float) or not scale > 0 else 10.0 if scale > 1 else 0.1
    return Candidate({"kind": "standardize_inputs"},
                     "standardise the model's input: (x - mean) / std per feature (per channel for images), "
                     "the statistics taken from the first batch and used for every batch after it",
                     retune_lr=retune)


def retuned(candidate: Candidate) -> Candidate | None:
    """``candidate`` with the learning rate scaled by its ``retune_lr``: what an engineer does after
    a fix that changes the step size the script's rate was tuned around."""
    if not candidate.retune_lr:
        return None
    factor = candidate.retune_lr
    return Candidate({**candidate.spec, "lr_factor": factor},
                     f"{candidate.change}; and the learning rate x{factor:g}, retuned for the change",
                     list(candidate.addresses), candidate.by_validation, candidate.mitigation)


def reinit(finding: Finding, probe: dict[str, Any]) -> Candidate:
    from modeldebug.fixes.modules import init_scheme

    scheme = init_scheme(probe.get("layer_types") or [])
    how = ("Kaiming-normal (fan_in, ReLU)" if scheme == "kaiming" else "Xavier-uniform")
    return Candidate({"kind": "reinit", "scheme": scheme},
                     f"re-initialise the model's Linear/Conv layers with {how} weights and zero biases "
                     f"(recurrent weights orthogonal, norm layers reset) before its first training forward")


def loss_input(finding: Finding) -> Candidate | None:
    """The layer the rule names as the last to run, a softmax/sigmoid feeding a loss that expects
    logits (dropped) or log-probabilities (made a log_softmax)."""
    layer, loss = finding.location, finding.evidence.get("loss_function")
    if not layer or not isinstance(loss, str):
        return None
    what = "replace it by log_softmax" if loss == "nll_loss" else "drop it (the loss takes the logits)"
    return Candidate({"kind": "loss_input", "layer": layer, "loss": loss},
                     f"the probability layer {layer} that feeds {loss}: {what}")


def leaky_relu(finding: Finding, slope: float = 0.01) -> Candidate:
    return Candidate({"kind": "leaky_relu", "negative_slope": slope},
                     f"every nn.ReLU of the model computes LeakyReLU(negative_slope={slope:g})", mitigation=True)


def module_mode(finding: Finding) -> Candidate | None:
    if "eval_mode_steps" in finding.evidence:
        return Candidate({"kind": "module_mode", "train": True},
                         "model.train() before every forward pass that runs with gradients on", by_validation=True)
    if "train_mode_eval_batches" in finding.evidence:
        return Candidate({"kind": "module_mode", "train": False},
                         "model.eval() for every forward pass under torch.no_grad(), model.train() after it",
                         by_validation=True)
    return None


STABLE_EPS = 1e-7
_UNSTABLE = (("log", "log"), ("sqrt", "sqrt"), ("division", "div"), ("1/x", "div"))
LOSS_OPS = ["log", "sqrt", "div"]  # the unstable ops a hand-written loss computes


def stable_op(finding: Finding) -> Candidate | None:
    """The op the NaN origin names (its cause, forward or backward: "log of 0", "the gradient of
    sqrt at 0 is infinite", "division by 0"), computed with an eps at its singular point; when the
    origin is the loss computation outside the model (no op named), its log, sqrt and division."""
    origin = finding.evidence.get("origin") or {}
    cause = str(origin.get("cause") or "")
    ops = sorted({name for word, name in _UNSTABLE if word in cause})
    if not ops and origin.get("phase") == "loss":
        ops = LOSS_OPS
    if not ops:
        return None
    shown = {"log": f"torch.log(x) as torch.log(x.clamp_min({STABLE_EPS:g}))",
             "sqrt": f"torch.sqrt(x) as torch.sqrt(x.clamp_min({STABLE_EPS:g}))",
             "div": f"a / b with |b| at least {STABLE_EPS:g} (b's sign kept)"}
    return Candidate({"kind": "stable_op", "ops": ops, "eps": STABLE_EPS},
                     "eps for the unstable ops: " + "; ".join(shown[op] for op in ops))


def scheduler_per_epoch(finding: Finding) -> Candidate | None:
    if finding.evidence.get("scheduler_calls_per_step", 0) < 0.5:
        return None
    return Candidate({"kind": "scheduler_per_epoch"},
                     "the learning-rate scheduler stepped once per epoch (the script's scheduler.step() "
                     "calls of one pass over the DataLoader count once)")


def clip_after_backward(finding: Finding) -> Candidate:
    """Clipping where it acts: after backward() (the rule saw it before), or, where it clipped the
    GradScaler's scaled gradients (``clips_scaled``), after ``scaler.unscale_(optimizer)``."""
    function = str(finding.evidence.get("function") or "clip_grad_norm_")
    if finding.evidence.get("clips_scaled"):
        return Candidate({"kind": "unscale_before_clip", "function": function},
                         f"scaler.unscale_(optimizer) before the script's {function}() calls on gradients the "
                         f"GradScaler still scales (scaler.step() then applies the unscaled, clipped gradients)")
    return Candidate({"kind": "clip_after_backward", "function": function},
                     f"the script's {function}() calls made before backward() are made after it instead, "
                     f"just before optimizer.step() (same arguments)")


# What the rules name as a finding's cause, and the kinds whose mechanism a candidate targets;
# each maker is given the finding and what the probe saw (``probe_facts``) and may find nothing to
# change (None).
BY_CAUSE = {
    "learning_rate_too_high": (lambda f, t: lr_scale(0.1), lambda f, t: lr_scale(0.01)),
    "learning_rate_too_low": (lr_raise,),
    "missing_zero_grad": (lambda f, t: zero_grad(),),
    "zero_grad_misplaced": (lambda f, t: move_zero_grad(),),
    "frozen_parameters": (lambda f, t: train_params(f),),
    "parameters_not_in_optimizer": (lambda f, t: train_params(f), lambda f, t: keep_module(f)),
    "unnormalized_inputs": (standardize_inputs,),
    "bad_weight_init": (reinit,),
    "wrong_module_mode": (lambda f, t: module_mode(f),),
    "scheduler_misuse": (lambda f, t: scheduler_per_epoch(f),),
    "weight_decay_too_high": (lambda f, t: weight_decay_scale(f),),
    "numerically_unstable_op": (lambda f, t: stable_op(f),),
    "clipping_misplaced": (lambda f, t: clip_after_backward(f),),
}
BY_KIND = {
    "gradient_accumulation": (lambda f, t: zero_grad(),),
    "exploding_gradient": (lambda f, t: clip_grad_norm(),),
    "loss_spike": (lambda f, t: clip_grad_norm(),),
    "wrong_loss_input": (lambda f, t: loss_input(f),),
    "dead_relu": (lambda f, t: leaky_relu(f) if "ReLU" in (t.get("layer_types") or []) else None,),
}


def build(roots: list[Finding], limit: int, probe: dict[str, Any] | None = None) -> list[Candidate]:
    """The candidates for ``roots`` (most severe first, as the stories are), each once, with the
    kinds of every root it addresses; at most ``limit``: those of every root's first cause and its
    kind first, then those of the causes the rules list after (less likely), the first roots'
    first. ``probe``: what the probe run saw (:func:`probe_facts`): its layer classes (the init
    scheme, ReLUs to make leaky), its learning rate and the typical one of its optimizer."""
    facts = probe or {}
    found: dict[str, Candidate] = {}
    rank: dict[str, tuple[int, int]] = {}
    for order, finding in enumerate(roots):
        makers = [(0 if i == 0 else i + 1, m) for i, cause in enumerate(finding.causes)
                  for m in BY_CAUSE.get(cause, ())]
        makers += [(1, m) for m in BY_KIND.get(finding.kind, ())]
        for priority, make in makers:
            candidate = make(finding, facts)
            if candidate is None:
                continue
            kept = found.setdefault(candidate.key, candidate)
            rank[candidate.key] = min(rank.get(candidate.key, (priority, order)), (priority, order))
            if finding.kind not in kept.addresses:
                kept.addresses.append(finding.kind)
    if any("scheduler_misuse" in f.causes for f in roots):
        # a rate too low because the schedule collapsed it is the schedule's doing: not raised
        found = {k: c for k, c in found.items() if not (c.spec["kind"] == "lr_scale" and c.spec["factor"] > 1)}
    ordered = sorted(found, key=lambda key: rank[key])  # (stable: a maker's order kept within a rank)
    return [found[key] for key in ordered][:max(0, limit)]


def probe_facts(evidence: Any) -> dict[str, Any]:
    """From the probe's evidence: ``layer_types`` (built-in torch.nn classes), ``lr`` (the rate it
    trained with), ``typical_lr`` (the rules' usual rate for its optimizer family) and
    ``input_std`` (the median of the model input's standard deviation on the sampled steps)."""
    from modeldebug.rules.base import current_lr, lr_bounds, optimizer_type

    import numpy as np

    lr = current_lr(evidence)
    std = np.asarray(evidence.steps["input_std"], dtype=float) if "input_std" in evidence.steps else np.zeros(0)
    std = std[np.isfinite(std)]
    return {"layer_types": sorted({layer.family or layer.type for layer in evidence.layers.values()}),
            "lr": float(lr) if lr is not None else None,
            "typical_lr": float(lr_bounds(optimizer_type(evidence))[1]),
            "input_std": float(np.median(std)) if len(std) else None}
