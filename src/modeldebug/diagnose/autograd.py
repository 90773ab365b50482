"""Builders for autograd errors: in-place changes of saved tensors, leaves and views, a second backward,
backward() on a tensor without a graph (``run_facts``: what the watching run knows about it)."""

from __future__ import annotations

import re
from typing import Any, Iterable

from modeldebug.diagnose.context import Context, Diagnosis, ints, shape_str
from modeldebug.findings import best_practice, fix


def inplace_version(ctx: Context, m: re.Match) -> Diagnosis:
    """A tensor saved for backward changed in place: a parameter (or its view) that a step changed
    after the forward, else an in-place operation in the forward."""
    shape, node, have, want = ints(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    if node is None or ctx.changed_parameters:
        return parameter_version(ctx, shape, have, want)
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


def parameter_version(ctx: Context, shape: list[int], have: int, want: int) -> Diagnosis:
    """A parameter saved for backward was changed in place after the forward: an optimizer step
    (or a manual update) between this loss's forward and its backward."""
    named = ", ".join(f"`{n}`" for n in ctx.changed_parameters[:3]) if ctx.changed_parameters else None
    what = f"{named} (saved as {shape_str(shape)})" if named else f"a {shape_str(shape)} tensor with no grad_fn (a parameter)"
    msg = (f"Backward needs {what} as it was when this loss's forward ran, but it was changed in place since "
           f"(version {have}, expected {want}). Parameters change in place at optimizer.step(): this loss's graph "
           f"was built before a step. Usually the graph reaches back into an earlier batch (a hidden state or "
           f"output carried over without .detach()), or a loss built before a step is backpropagated after it "
           f"(a GAN's generator loss through a discriminator that just stepped).")
    if ctx.source and "retain_graph" in ctx.source:
        msg += (" The backward passes retain_graph=True, which keeps the earlier batches' graph alive instead of "
                "failing with 'backward through the graph a second time'.")
    recs = [fix("Detach what is carried from one batch to the next before the next forward, and drop "
                "retain_graph=True: each batch's graph then ends at the carried tensor.",
                "hidden = tuple(h.detach() for h in hidden)  # LSTM (h, c); a GRU/RNN: hidden = hidden.detach()\n"
                "loss.backward()  # not: loss.backward(retain_graph=True)"),
            fix("When one update's loss goes through a model another update changes (GANs, actor-critic), run "
                "every backward that needs the old parameters before that model's optimizer.step(), or "
                "rebuild the loss after the step.",
                "d_loss.backward(); g_loss.backward()  # both before any step\nopt_d.step(); opt_g.step()")]
    return Diagnosis(msg, recs, ["detached_graph", "graph_kept_alive"], 0.85,
                     {"tensor_shape": shape, "version": have, "expected_version": want,
                      "changed_parameters": ctx.changed_parameters or None})


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


def run_facts(models: Iterable[tuple[str, Any]], forward_grad: bool | None) -> dict[str, Any]:
    """What a watching run knows that explains a graph-less loss: each model's parameters and how many
    require grad (``models``: (prefix, module) pairs), and whether the last forward of a watched model
    ran with grad on (None: none was seen)."""
    counted = []
    for prefix, module in models:
        params = list(module.parameters())
        counted.append({"model": prefix.rstrip(".") or type(module).__name__, "parameters": len(params),
                        "trainable": sum(1 for p in params if p.requires_grad)})
    return {"models": counted, "forward_grad": forward_grad}


def no_graph(ctx: Context, m: re.Match) -> Diagnosis:
    """backward() on a tensor without a graph: which of the four ways to get one, from what is known."""
    models = ctx.run.get("models") or []
    total = sum(d["parameters"] for d in models)
    trainable = sum(d["trainable"] for d in models)
    names = ", ".join(f"`{d['model']}`" for d in models[:3])
    forward_grad = ctx.run.get("forward_grad")
    unfreeze = fix("Unfreeze what should train, and give the optimizer only the parameters that require grad.",
                   "for p in model.head.parameters():\n    p.requires_grad_(True)\n"
                   "optimizer = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)")
    train_forward = fix("Run the training forward with grad on: keep `torch.no_grad()` / `torch.inference_mode()` "
                        "for evaluation only.",
                        "model.train()\nloss = criterion(model(x), y)  # not inside `with torch.no_grad():`\nloss.backward()")
    keep_graph = fix("Build the loss from the model's output tensor without leaving autograd: no `.detach()`, `.data`, "
                     "`.item()`/`float()` turned back into a tensor, `torch.tensor(loss)` or a NumPy round trip.",
                     "loss = criterion(output, y)  # not: torch.tensor(criterion(output, y).item())")
    if ctx.loss.get("inference"):
        reason, causes, recs = "inference_mode", ["detached_graph"], [train_forward]
        msg = ("backward() was called on a tensor created under `torch.inference_mode()`: inference tensors never "
               "record a graph.")
    elif models and total and not trainable:
        reason, causes, recs = "frozen", ["other"], [unfreeze]
        msg = (f"No parameter of {names} requires grad (all {total} have requires_grad=False), so the loss has no "
               "graph to backpropagate through: the model is frozen.")
    elif forward_grad is False:
        reason, causes, recs = "no_grad", ["detached_graph"], [train_forward]
        msg = ("The model's last forward ran with grad disabled (under `torch.no_grad()` or "
               "`torch.set_grad_enabled(False)`), so its output and the loss built from it carry no graph.")
    elif models and trainable and forward_grad:
        reason, causes, recs = "detached", ["detached_graph"], [keep_graph]
        msg = (f"{names} has {trainable} parameter(s) that require grad and its last forward ran with grad on, so "
               "the graph was cut between the model's output and the loss: `.detach()`, `.data`, `.item()` or "
               "`float()` turned back into a tensor, `torch.tensor(...)` of a tensor, or a NumPy round trip.")
    else:
        reason, causes, recs = None, ["detached_graph", "other"], [unfreeze, train_forward, keep_graph]
        msg = ("backward() was called on a tensor without a graph: no parameter requires grad (a frozen model), "
               "the forward ran under `torch.no_grad()` / `torch.inference_mode()`, or the loss was detached "
               "from the model's output.")
    if ctx.where:
        msg += f" backward() was called at {ctx.where}."
    evidence = {"detail": "no_graph", "no_graph_reason": reason, "trainable_parameters": trainable if models else None,
                "parameters_total": total if models else None, "forward_grad": forward_grad}
    return Diagnosis(msg, recs, causes, 0.9 if reason else 0.6, evidence)
