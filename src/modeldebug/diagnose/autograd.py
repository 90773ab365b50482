"""Builders for autograd errors: in-place changes of saved tensors, leaves and views, a second backward."""

from __future__ import annotations

import re

from modeldebug.diagnose.context import Context, Diagnosis, ints, shape_str
from modeldebug.findings import best_practice, fix


def inplace_version(ctx: Context, m: re.Match) -> Diagnosis:
    ttype, shape, node, have, want = m.group(1), ints(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5))
    op = node[: -len("Backward0")] if node.endswith("Backward0") else node
    named = op if op == node else f"{op} ({node})"
    msg = (f"A tensor autograd saved for backward was changed in place: the {shape_str(shape)} output of {named} "
           f"is at version {have}, expected {want}.")
    if ctx.in_backward:
        msg += " The error surfaced in backward, which has no forward frame"
        msg += f"; the tensor comes right after `{ctx.near_module}`." if ctx.near_module else "."
    where = f"`{ctx.near_module}`" if ctx.near_module else ctx.name
    recs = [fix(f"Replace in-place operations on the output of {op} (after {where}): `x += ...` with "
                 f"`x = x + ...`, `x.mul_(...)` with `x = x * ...`, and nn.ReLU(inplace=True) with nn.ReLU().",
                 "x = x + residual  # not: x += residual\nnn.ReLU()  # not: nn.ReLU(inplace=True)"),
            best_practice("To find the exact line, rerun one step under anomaly detection.",
                "with torch.autograd.detect_anomaly():\n    loss = criterion(model(x), y)\n    loss.backward()")]
    return Diagnosis(msg, recs, ["other"], 0.9, {"node": node, "tensor_shape": shape, "version": have,
                                                "expected_version": want})


def backward_twice(ctx: Context, m: re.Match) -> Diagnosis:
    msg = ("Backward ran through a graph whose saved tensors were already freed by an earlier backward: "
           "a tensor from a previous step (hidden state, running loss, cached output) is still part of this loss.")
    return Diagnosis(msg, [
        fix("Pass `retain_graph=True` only if you need a second backward; usually the loss is computed from a "
             "tensor kept from an earlier step: `.detach()` it.",
             "hidden = hidden.detach()  # between batches (RNNs)\nrunning = running.detach()"),
        fix("Call backward once per graph: sum the losses first.", "(loss_a + loss_b).backward()"),
    ], ["detached_graph", "graph_kept_alive"], 0.85)


def leaf_inplace(ctx: Context, m: re.Match) -> Diagnosis:
    params = ", ".join(f"`{p['name']}`" for p in ctx.parameters[:4])
    msg = (f"An in-place operation on a parameter (a leaf tensor that requires grad) in {ctx.name}"
           + (f" (parameters {params})" if params else "") + ": autograd cannot record it.")
    return Diagnosis(msg, [
        fix("Update parameters by hand only under torch.no_grad().",
             "with torch.no_grad():\n    self.weight.clamp_(0, 1)"),
        fix(f"Inside forward, use an out-of-place op in {ctx.name}.", "w = self.weight.clamp(0, 1)"),
    ], ["other"], 0.9)


def view_inplace(ctx: Context, m: re.Match) -> Diagnosis:
    msg = f"An in-place operation on a view that autograd cannot track, in {ctx.name}: {m.group(0).strip()}"
    return Diagnosis(msg, [fix("Use the out-of-place op or clone the view first.", "y = x[0].clone()\ny.relu_()"),
                           fix("Replace nn.ReLU(inplace=True) with nn.ReLU() where it follows a view.")],
                     ["other"], 0.85)
