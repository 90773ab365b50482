"""Root cause over symptoms: which findings of a run follow from which, and one story across them.

A post-pass over the rules' findings (called from ``analysis.find``), not a rule: it adds no
finding and changes no severity (``--fail-on`` still counts every finding). It

1. names every finding (``Finding.id``: its kind, ``kind@location`` when the kind occurs twice);
2. links a consequence to the finding it follows from (``Finding.caused_by``) when the pair is in
   :data:`LINKS` (a plausible mechanism) and the evidence agrees: the consequence starts at or
   after the root's step, and the pair's own check holds (the same cause named by both rules, the
   dead units died during training, the loss rose, ...); a verdict over the whole run
   (``loss_not_decreasing``) follows a root that began in the run's first half;
3. makes the causes agree: a consequence names its root's cause first and drops causes (and the
   recommendations that serve them) that contradict it; across the whole report one learning-rate
   direction survives, the one the most severe finding stands on.

A new finding kind joins with one line in :data:`LINKS`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules.base import lr_is_high, lr_is_low
from modeldebug.types import SEVERITY_ORDER, Finding, Recommendation

Check = Callable[[Finding, Finding, Evidence], bool]
log = logging.getLogger(__name__)


def always(root: Finding, cons: Finding, ev: Evidence) -> bool:
    return True


def both_name(*causes: str) -> Check:
    """Root and consequence both name one of ``causes``: two rules reached the same cause from their own evidence."""
    def check(root: Finding, cons: Finding, ev: Evidence) -> bool:
        return any(c in root.causes and c in cons.causes for c in causes)
    return check


def root_names(*causes: str) -> Check:
    def check(root: Finding, cons: Finding, ev: Evidence) -> bool:
        return any(c in root.causes for c in causes)
    return check


def names_root_cause(root: Finding, cons: Finding, ev: Evidence) -> bool:
    """The consequence's own rule lists the root's first cause among its causes."""
    return bool(root.causes) and root.causes[0] in cons.causes


def evidence_is(key: str, *values: object) -> Check:
    """The consequence's evidence ``key`` is one of ``values``."""
    def check(root: Finding, cons: Finding, ev: Evidence) -> bool:
        return cons.evidence.get(key, object()) in values
    return check


def same_location(root: Finding, cons: Finding, ev: Evidence) -> bool:
    return root.location is not None and root.location == cons.location


def loss_rose(root: Finding, cons: Finding, ev: Evidence) -> bool:
    change = cons.evidence.get("rel_change")
    return isinstance(change, (int, float)) and change > 0


def upstream_layer(root: Finding, cons: Finding, ev: Evidence) -> bool:
    """The root's layer (or its parameter's module) runs at or before the consequence's layer."""
    def order(name: str | None) -> int | None:
        if not name:
            return None
        info = ev.layers.get(name)
        if info is None and name in ev.params:
            info = ev.layers.get(ev.params[name].module or "")
        return info.order if info is not None else None
    r, c = order(root.location), order(cons.location)
    return r is None or c is None or r <= c


def all_of(*checks: Check) -> Check:
    def check(root: Finding, cons: Finding, ev: Evidence) -> bool:
        return all(c(root, cons, ev) for c in checks)
    return check


def any_of(*checks: Check) -> Check:
    def check(root: Finding, cons: Finding, ev: Evidence) -> bool:
        return any(c(root, cons, ev) for c in checks)
    return check


@dataclass(frozen=True)
class Link:
    root: str  # kind of the finding the other follows from
    consequence: str  # kind that follows
    why: str  # how the one gives the other, for the consequence's message
    check: Check = always
    # Causes of the consequence the root explains away (dropped with the advice that serves them),
    # unless the run's own evidence shows them (INDEPENDENT) or, for the others, the consequence's
    # rule ranks them first.
    explains: tuple[str, ...] = ()


_SUMMED = "gradients summed over every step make each update larger than the last"
_ACC = ("learning_rate_too_high",)  # the summed gradients act as a growing step size: not the lr's fault
_OVERFLOW = ("numerically_unstable_op",)  # values that grew until they overflowed: no op to blame
_LR = "steps too large for the loss surface"
_DEAD = "dead units pass no gradient"
_FLAT = "the weights it names barely learn"

# Plausible cause -> consequence pairs (the literature's usual chains; AUTOTRAINER, DeepDiagnosis).
LINKS: tuple[Link, ...] = (
    Link("gradient_accumulation", "loss_not_decreasing", _SUMMED, explains=_ACC),
    Link("gradient_accumulation", "oscillating_loss", _SUMMED, explains=_ACC),
    Link("gradient_accumulation", "exploding_gradient", _SUMMED, explains=_ACC),
    Link("gradient_accumulation", "nan_or_inf", _SUMMED + ", until they overflow", explains=_ACC + _OVERFLOW),
    Link("gradient_accumulation", "dead_relu", _SUMMED + ", which push units dead",
         evidence_is("dead_at_start", False), explains=_ACC),
    Link("exploding_gradient", "nan_or_inf", "the gradients grew until they overflowed", explains=_OVERFLOW),
    Link("exploding_gradient", "loss_not_decreasing", "the oversized updates make the loss diverge", loss_rose),
    Link("exploding_gradient", "oscillating_loss", _LR, both_name("learning_rate_too_high")),
    Link("exploding_gradient", "dead_relu", "oversized updates push units dead",
         evidence_is("dead_at_start", False)),
    Link("exploding_gradient", "loss_spike", "oversized updates throw the loss far up", both_name("learning_rate_too_high")),
    # (not when the NaN's own rule blames an op: a log of 0 after a spike is the op's doing)
    Link("loss_spike", "nan_or_inf", "the loss spiked and never recovered before it overflowed",
         lambda root, cons, ev: root.evidence.get("diverged") is True and cons.causes[:1] == ["learning_rate_too_high"]),
    Link("loss_spike", "loss_not_decreasing", "training never recovered from the loss spike", loss_rose),
    Link("nan_or_inf", "loss_not_decreasing", "a non-finite loss cannot decrease"),
    Link("nan_or_inf", "runtime_error", "the non-finite values raised", evidence_is("cause", "nan_detected")),
    Link("oscillating_loss", "loss_not_decreasing", _LR, both_name("learning_rate_too_high")),
    Link("data_issue", "saturated_activation", "inputs far from normalized drive the units into saturation",
         both_name("unnormalized_inputs")),
    Link("data_issue", "exploding_gradient", "inputs far from normalized give oversized gradients",
         root_names("unnormalized_inputs")),
    Link("data_issue", "oscillating_loss", "inputs far from normalized make the loss surface ill-conditioned",
         both_name("unnormalized_inputs")),
    Link("data_issue", "oscillating_loss", "batches of one class pull the model to each class in turn",
         root_names("unshuffled_data"), explains=("learning_rate_too_high",)),
    Link("data_issue", "exploding_gradient", "each new class's first batches meet a model fit to the last one",
         root_names("unshuffled_data"), explains=("learning_rate_too_high",)),
    Link("data_issue", "loss_not_decreasing", "the data it names keeps the model from learning",
         both_name("unnormalized_inputs", "label_problem")),
    Link("data_issue", "nan_or_inf", "non-finite inputs make everything downstream non-finite",
         evidence_is("what", ["loss"], ["loss", "gradients"], ["loss", "gradients", "weights"])),
    Link("poor_weight_init", "saturated_activation", "weights at the wrong scale drive the units into saturation",
         all_of(upstream_layer, evidence_is("saturated_at_start", True))),
    Link("poor_weight_init", "dead_relu", "weights at the wrong scale leave units dead from the start",
         all_of(upstream_layer, evidence_is("dead_at_start", True))),
    Link("poor_weight_init", "exploding_gradient", "weights at the wrong scale blow the gradients up",
         both_name("bad_weight_init")),
    Link("poor_weight_init", "vanishing_gradient", "weights at the wrong scale shrink the gradients",
         both_name("bad_weight_init")),
    Link("poor_weight_init", "loss_not_decreasing", "weights at the wrong scale keep the model from learning",
         both_name("bad_weight_init")),
    Link("saturated_activation", "vanishing_gradient", "saturated units pass almost no gradient",
         both_name("saturating_activation_choice", "bad_weight_init", "unnormalized_inputs")),
    Link("saturated_activation", "loss_not_decreasing", "saturated units pass almost no gradient", names_root_cause),
    Link("dead_relu", "vanishing_gradient", _DEAD, names_root_cause),
    Link("dead_relu", "loss_not_decreasing", _DEAD, names_root_cause),
    Link("vanishing_gradient", "loss_not_decreasing", "gradients too small to move the early layers",
         names_root_cause),
    Link("unchanged_weights", "loss_not_decreasing", _FLAT,
         both_name("missing_optimizer_step", "detached_graph", "frozen_parameters", "parameters_not_in_optimizer",
                   "zero_grad_misplaced")),
    Link("memory_growth", "memory_pressure", "memory kept growing until the device was nearly full"),
    Link("memory_growth", "runtime_error", "memory kept growing until it ran out", evidence_is("cause", "out_of_memory")),
    Link("memory_pressure", "runtime_error", "the device ran out of memory", evidence_is("cause", "out_of_memory")),
    Link("input_bottleneck", "straggler_rank", "the slow input pipeline holds every step back",
         both_name("slow_data_loading")),
    Link("rank_failure", "uneven_batches", "the rank that failed left the others waiting"),
    # silent bugs (issue 13): each breaks learning in its own way
    Link("wrong_loss_input", "loss_not_decreasing", "the loss is computed on the wrong kind of input",
         explains=("learning_rate_too_low",)),  # squashed gradients look like a small step size
    Link("wrong_loss_input", "oscillating_loss", "the loss is computed on the wrong kind of input"),
    Link("wrong_loss_input", "vanishing_gradient", "the loss is computed on the wrong kind of input"),
    Link("wrong_loss_input", "dead_relu", "targets below zero pull the output ReLU's units under zero for good",
         same_location, explains=("learning_rate_too_high", "bad_weight_init")),
    Link("loss_shape_broadcast", "loss_not_decreasing", "the loss compares every prediction with every target"),
    Link("train_eval_mode", "loss_not_decreasing", "the model trains in the wrong mode"),
    Link("train_eval_mode", "overfitting", "validation runs in the wrong mode"),
    Link("lr_schedule_misuse", "loss_not_decreasing", "the learning rate schedule leaves no useful step size"),
    Link("lr_schedule_misuse", "unchanged_weights", "the learning rate schedule leaves no useful step size"),
    Link("lr_schedule_misuse", "oscillating_loss", "the learning rate schedule leaves no useful step size"),
    Link("labels_unrelated", "loss_not_decreasing", "labels unrelated to the inputs leave nothing to learn"),
    Link("untracked_parameters", "unchanged_weights", "parameters no optimizer holds never change"),
    Link("untracked_parameters", "loss_not_decreasing", "parameters no optimizer holds never change"),
    # An optimizer on a copy: zero_grad() zeroes the copy, so the trained model's gradients pile up.
    Link("untracked_parameters", "exploding_gradient", "the gradients of the model no optimizer holds are never "
         "zeroed and pile up", lambda root, cons, ev: "optimizer_holds" in root.evidence, explains=_ACC),
    Link("untracked_parameters", "gradient_accumulation", "the gradients of the model no optimizer holds are "
         "never zeroed and pile up", lambda root, cons, ev: "optimizer_holds" in root.evidence),
    Link("weight_decay_too_high", "loss_not_decreasing", "weight decay shrinks the weights faster than they learn"),
    Link("weight_decay_too_high", "vanishing_gradient", "weight decay shrinks the weights faster than they learn"),
    Link("clip_before_backward", "exploding_gradient", "the clipping runs before backward(), so it never clips"),
    Link("clip_before_backward", "nan_or_inf", "the clipping runs before backward(), so it never clips"),
    Link("validation_overlap", "overfitting", "validation scores on data the model trained on hide the gap"),
    Link("grad_scaler_misuse", "exploding_gradient", "the optimizer applies gradients still multiplied by the loss scale"),
    Link("grad_scaler_misuse", "nan_or_inf", "the optimizer applies gradients still multiplied by the loss scale"),
    Link("grad_scaler_misuse", "loss_not_decreasing", "the optimizer applies gradients still multiplied by the loss scale"),
)

_BY_PAIR: dict[tuple[str, str], list[Link]] = {}
for _l in LINKS:  # a pair may have several mechanisms, each with its own check
    _BY_PAIR.setdefault((_l.root, _l.consequence), []).append(_l)

# Kinds about how the run is set up (data, init, the loss call, modes, parameters, clipping):
# true from the first step, whichever step their finding first saw it at.
SETUP = frozenset({"data_issue", "poor_weight_init", "wrong_loss_input", "loss_shape_broadcast", "train_eval_mode",
                   "labels_unrelated", "untracked_parameters", "weight_decay_too_high", "clip_before_backward",
                   "validation_overlap", "grad_scaler_misuse"})


# Causes that say opposite things: one story keeps one of each pair.
OPPOSITE = {"learning_rate_too_high": "learning_rate_too_low", "learning_rate_too_low": "learning_rate_too_high"}
# How a recommendation says which cause it serves (the rules' builders word them so: base.lower_lr/raise_lr).
SERVES = {"learning_rate_too_high": ("lower the learning rate", "reduce the learning rate"),
          "learning_rate_too_low": ("raise the learning rate", "increase the learning rate"),
          "numerically_unstable_op": ("use numerically stable ops", "find the op that produced", "keep the argument of",
                                      "add an epsilon", "keep exp in", "the derivative of sqrt")}
# Causes the run's evidence can show on its own: a root never explains these away when it does.
INDEPENDENT: dict[str, Callable[[Evidence], bool]] = {"learning_rate_too_high": lr_is_high,
                                                      "learning_rate_too_low": lr_is_low}


def link_findings(findings: list[Finding], ev: Evidence) -> list[Finding]:
    """``findings`` named, linked to what they follow from, with causes that agree (same order).
    Never raises: on a bug of its own the findings come back as they were, named only."""
    try:
        return _linked(findings, ev)
    except Exception:  # one broken post-pass must not cost the report
        log.exception("linking findings to their root causes failed; the report shows them unlinked")
        out = [f.model_copy(deep=True) for f in findings]
        name(out)
        return out


def _linked(findings: list[Finding], ev: Evidence) -> list[Finding]:
    out = [f.model_copy(deep=True) for f in findings]
    if any(f.id for f in out):
        return out  # linked already (a report read back): linking twice would say everything twice
    name(out)
    parents, links = _parents(out, ev)
    for f in out:
        parent = parents.get(id(f))
        if parent is not None:
            link = links[id(f)]  # (chosen before any message or cause changed: checks read them)
            f.caused_by = parent.id
            f.message = f"{f.message.rstrip()} Follows from {parent.id}: {link.why}."
    for f in out:
        root = _root(f, parents)
        if root is not f:
            _agree(f, root.causes[:1], _explained(f, parents, links, ev))
    _one_lr_direction(out, ev)
    return out


def name(findings: list[Finding]) -> None:
    """Give each finding its ``id``: the kind, qualified by location (then a count) where needed."""
    count: dict[str, int] = {}
    for f in findings:
        count[f.kind] = count.get(f.kind, 0) + 1
    taken: set[str] = set()
    for f in findings:
        base = f.kind if count[f.kind] == 1 else f"{f.kind}@{f.location or 'run'}"
        fid, n = base, 1
        while fid in taken:
            n += 1
            fid = f"{base}#{n}"
        taken.add(fid)
        f.id = fid


def _link(root: Finding, cons: Finding, ev: Evidence) -> Link | None:
    """The first mechanism of the pair whose check holds for these two findings."""
    for link in _BY_PAIR.get((root.kind, cons.kind), ()):
        try:
            if link.check(root, cons, ev):
                return link
        except Exception:  # a check that cannot read its evidence links nothing
            continue
    return None


def _step(f: Finding, as_root: bool = False) -> int:
    if f.step is None or (as_root and f.kind in SETUP):
        return -1  # a whole-run fact comes before any step
    return f.step


# Kinds judged over the whole run (the loss's first window against its last): a root that began in
# the run's first half precedes the verdict, whichever step the finding names as its start.
WHOLE_RUN = frozenset({"loss_not_decreasing"})


def _latest_root_step(cons: Finding, ev: Evidence) -> float:
    """The latest step a root may start at to precede ``cons``."""
    if cons.kind in WHOLE_RUN and len(ev.steps):
        steps = np.asarray(ev.steps["step"], dtype=float)
        return max(_step(cons), float(np.median(steps)))
    return _step(cons)


def _parents(findings: list[Finding], ev: Evidence) -> tuple[dict[int, Finding], dict[int, Link]]:
    """Each consequence's parent: of the findings it may follow from, the one whose cause the
    consequence's own rule ranks highest, then the earliest, then the most severe."""
    parents: dict[int, Finding] = {}
    links: dict[int, Link] = {}
    for cons in findings:
        if cons.source != "rules":
            continue
        candidates = []
        for root in findings:
            if root is cons or root.source != "rules" or _step(root, True) > _latest_root_step(cons, ev):
                continue
            link = _link(root, cons, ev)
            if link is None:
                continue
            rank = cons.causes.index(root.causes[0]) if root.causes and root.causes[0] in cons.causes \
                else len(cons.causes)
            candidates.append((rank, _step(root, True), SEVERITY_ORDER[root.severity], -root.confidence,
                               LINKS.index(link), root, link))
        if candidates:
            best = min(candidates, key=lambda c: c[:5])
            parents[id(cons)], links[id(cons)] = best[5], best[6]
    _break_cycles(findings, parents)
    return parents, links


def _break_cycles(findings: list[Finding], parents: dict[int, Finding]) -> None:
    for f in findings:
        seen = {id(f)}
        p = parents.get(id(f))
        while p is not None:
            if id(p) in seen:
                parents.pop(id(f), None)  # f stands alone rather than in a loop
                break
            seen.add(id(p))
            p = parents.get(id(p))


def _root(f: Finding, parents: dict[int, Finding]) -> Finding:
    while id(f) in parents:
        f = parents[id(f)]
    return f


def _explained(f: Finding, parents: dict[int, Finding], links: dict[int, Link], ev: Evidence) -> set[str]:
    """Causes of ``f`` that the links on its way to the root explain away."""
    out, cons = set(), f
    while id(cons) in parents:
        root = parents[id(cons)]
        out.update(links[id(cons)].explains)
        cons = root
    # The run's evidence decides for the learning rate; for the rest, the consequence's rule decides
    # when it ranked the cause first (a replay that found the op that made the NaN).
    return {c for c in out if (not INDEPENDENT[c](ev) if c in INDEPENDENT else c not in f.causes[:1])}


def _agree(f: Finding, story: list[str], explained: set[str] = frozenset()) -> None:
    """``f`` names the story's causes first and drops those that contradict them or that its root explains."""
    against = {OPPOSITE[c] for c in story if c in OPPOSITE} | (set(explained) - set(story))
    f.causes = story + [c for c in f.causes if c not in story and c not in against]
    f.recommendations = [r for r in f.recommendations if not (_serves(r) & against)]


def _serves(rec: Recommendation) -> set[str]:
    text = rec.description.lower()
    return {cause for cause, phrases in SERVES.items() if any(text.startswith(p) for p in phrases)}


def _one_lr_direction(findings: list[Finding], ev: Evidence) -> None:
    """'lr too high' here and 'lr too low' there: one direction survives. The run's lr decides when
    it is outside its optimizer's usual range; else the direction the most severe, most confident
    finding names as its first cause; else (both only alternatives) neither. A finding never loses
    its only cause."""
    named = {c for f in findings for c in f.causes if c in OPPOSITE}
    if len(named) < 2:
        return
    claims = [f for f in findings if f.causes and f.causes[0] in OPPOSITE]
    if lr_is_high(ev) or lr_is_low(ev):
        keep = {"learning_rate_too_high" if lr_is_high(ev) else "learning_rate_too_low"}
    elif claims:
        keep = {min(claims, key=lambda f: (SEVERITY_ORDER[f.severity], -f.confidence)).causes[0]}
    else:
        keep = set()
    drop = named - keep
    for f in findings:
        rest = [c for c in f.causes if c not in drop]
        if rest and len(rest) < len(f.causes):
            f.causes = rest
            f.recommendations = [r for r in f.recommendations if not (_serves(r) & drop)]


__all__ = ["LINKS", "Link", "link_findings", "name"]
