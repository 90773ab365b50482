"""Candidate fixes for a probe's root findings, each applied in the re-run without editing the script.

A candidate is a small JSON spec that ``fixes/child.py`` applies in the watched script through
optimizer hooks and the backward functions the collector already wraps. The mapping goes from
what the rules say caused a finding (its ``causes``) and from the finding's kind, so a candidate
is tried for every root finding its mechanism can address, whatever the script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modeldebug.types import Finding

CLIP_MAX_NORM = 1.0  # the conventional default of clip_grad_norm_ recipes


@dataclass
class Candidate:
    spec: dict[str, Any]  # what fixes/child.py applies (its "kind" and parameters)
    change: str  # what it changes, in words
    addresses: list[str] = field(default_factory=list)  # the root finding kinds it is tried for

    @property
    def key(self) -> str:
        return repr(sorted(self.spec.items()))


def lr_scale(factor: float) -> Candidate:
    return Candidate({"kind": "lr_scale", "factor": factor},
                     f"learning rate x{factor:g}: every optimizer step uses {factor:g} times the rate the "
                     f"script (and its scheduler) set")


def zero_grad() -> Candidate:
    return Candidate({"kind": "zero_grad"},
                     "optimizer.zero_grad() before the first backward() after each optimizer.step() "
                     "(gradients no longer carry over from one step to the next)")


def clip_grad_norm(max_norm: float = CLIP_MAX_NORM) -> Candidate:
    return Candidate({"kind": "clip_grad_norm", "max_norm": max_norm},
                     f"torch.nn.utils.clip_grad_norm_(parameters, {max_norm:g}) after backward(), before "
                     f"each optimizer.step()")


def train_params(finding: Finding) -> Candidate | None:
    """Train the parameters the finding names (its evidence's ``params``): frozen ones require
    gradients again, and those the optimizer was not given are added to it."""
    names = [n for n in finding.evidence.get("params") or [] if isinstance(n, str)]
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return Candidate({"kind": "train_params", "params": names},
                     f"train {shown}: requires_grad_(True) on the frozen ones and add the ones the optimizer "
                     f"lacks to it (optimizer.add_param_group), from the second step")


# What the rules name as a finding's cause, and the kinds whose mechanism a candidate targets;
# each maker is given the finding and may find nothing to change (None).
BY_CAUSE = {
    "learning_rate_too_high": (lambda f: lr_scale(0.1), lambda f: lr_scale(0.01)),
    "missing_zero_grad": (lambda f: zero_grad(),),
    "frozen_parameters": (train_params,),
    "parameters_not_in_optimizer": (train_params,),
}
BY_KIND = {
    "gradient_accumulation": (lambda f: zero_grad(),),
    "exploding_gradient": (lambda f: clip_grad_norm(),),
    "loss_spike": (lambda f: clip_grad_norm(),),
}


def build(roots: list[Finding], limit: int) -> list[Candidate]:
    """The candidates for ``roots`` (most severe first, as the stories are), each once, with the
    kinds of every root it addresses; at most ``limit``, the first roots' first."""
    found: dict[str, Candidate] = {}
    for finding in roots:
        makers = [m for cause in finding.causes for m in BY_CAUSE.get(cause, ())]
        makers += BY_KIND.get(finding.kind, ())
        for make in makers:
            candidate = make(finding)
            if candidate is None:
                continue
            kept = found.setdefault(candidate.key, candidate)
            if finding.kind not in kept.addresses:
                kept.addresses.append(finding.kind)
    return list(found.values())[:max(0, limit)]
