"""loss_shape_broadcast: an elementwise loss got input and target shapes that broadcast ([N, 1]
against [N]), so it compares every prediction with every target of the batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from modeldebug.evidence import Evidence
from modeldebug.events import LossCall
from modeldebug.rules import register
from modeldebug.rules.base import Rule, fix
from modeldebug.rules.reference import READS as REFERENCE_READS
from modeldebug.rules.reference import loss_calls, reference
from modeldebug.types import Finding


def broadcasting_calls(ev: Evidence) -> list[LossCall]:
    """Training loss calls whose input and target broadcast to more elements than either has."""
    return [c for c in loss_calls(ev) if c.broadcast_shape]


@register
@dataclass
class LossShapeBroadcast(Rule):
    """Input and target shapes of a loss that broadcast against each other.

    Reads: events.loss_call (name, input and target shapes of each distinct training call, and the
    shape they broadcast to: host-side, recorded once per distinct pair), the loss reference.
    Fires: when an elementwise loss (MSE, L1, Smooth L1, Huber, BCE, KL, ...) got shapes whose
    broadcast holds more elements than input or target ([64, 1] against [64] -> [64, 64]). The
    loss then averages over every (prediction, target) pair, its minimum is the target variance and
    the model learns to predict the batch mean; PyTorch only warns. Shapes that differ but
    broadcast to the input's size (a target per output repeated over the batch) are left alone.
    Severity: high.
    Causes: loss_shape_mismatch.
    Recommends: making the shapes equal (``squeeze``/``view_as``), with the shapes of this run.
    """

    id = "loss_shape_broadcast"
    kind = "loss_shape_broadcast"
    reads = REFERENCE_READS

    def check(self, ev: Evidence) -> list[Finding]:
        calls = broadcasting_calls(ev)
        if not calls:
            return []
        c = calls[0]
        inp, tgt, wide = (_shape(s) for s in (c.input_shape, c.target_shape, c.broadcast_shape))
        msg = (f"{c.name} got input of shape {inp} and target of shape {tgt}: they broadcast to {wide}, so every "
               f"prediction is compared with every target in the batch ({math.prod(c.broadcast_shape)} pairs "
               f"instead of {max(math.prod(c.input_shape or [1]), math.prod(c.target_shape or [1]))}) and the best "
               "the model can do is predict the targets' mean. PyTorch only warns about it.")
        evidence = {"loss_function": c.name, "input_shape": c.input_shape, "target_shape": c.target_shape,
                    "broadcast_shape": c.broadcast_shape, "distinct_calls": len(calls)}
        ref = reference(ev)
        if ref is not None:
            msg += f" The training {ref.note()}."
            evidence.update(ref.evidence())
        return [self.finding(
            severity="high", confidence=0.95, location=None, step=c.at_step, message=msg, evidence=evidence,
            causes=["loss_shape_mismatch"], recommendations=[_fix(c)],
        )]


def _shape(s) -> str:
    return "[" + ", ".join(str(d) for d in s) + "]" if s is not None else "?"


def _fix(c: LossCall):
    inp, tgt = c.input_shape or [], c.target_shape or []
    if len(inp) == len(tgt) + 1 and inp[-1] == 1:
        code = "pred = model(x).squeeze(-1)  # [N, 1] -> [N], the target's shape\nloss = criterion(pred, y)"
    elif len(tgt) == len(inp) + 1 and tgt[-1] == 1:
        code = "loss = criterion(model(x), y.squeeze(-1))  # target [N, 1] -> [N]"
    else:
        code = "loss = criterion(pred, y.view_as(pred))"
    return fix(f"Give {c.name} input and target of the same shape (now {_shape(inp)} and {_shape(tgt)}).", code)
