"""A candidate fix as a unified diff of the user's script, at the lines the probe saw (``fixes/sites.py``).

One function per candidate kind (``PATCHERS``, keyed by the spec's ``"kind"``) returns the edits
of its change or says in a few words why none can be made (the line is in a library, the
expression cannot be rewritten safely); :func:`make` turns the edits into a diff that `git apply`
takes (paths relative to the directory the fix ran in) and checks that the result still parses.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
from pathlib import Path
from typing import Any, Callable

from modeldebug.fixes.patch_layers import leaky_relu, loss_input, reinit
from modeldebug.fixes.source import Edit, NoPatch, Sites, Source, apply_edits, last_name, number

__all__ = ["PATCHERS", "NoPatch", "Sites", "make"]


# ---------------------------------------------------------------- one patcher per candidate kind


def _lr_scale(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    factor = float(spec["factor"])
    edits: list[Edit] = []
    try:
        built = sites.optimizers()
    except NoPatch as exc:  # the Hugging Face Trainer builds it from its arguments
        built = [o for o in sites.data.get("optimizers") or [] if "transformers" in o["file"]]
        if not built:
            raise
        return _framework_argument(sites, ("TrainingArguments",), "learning_rate", factor=factor,
                                   default=built[0].get("default_lr"), why=str(exc))
    for optimizer in built:
        src = sites.source(optimizer["file"])
        call = sites.constructor(optimizer)
        edits += _scale_argument(src, call, "lr", 1, factor, optimizer.get("default_lr"))
        edits += _scale_groups(src, call, "lr", factor)
        edits += _scale_schedulers(sites, optimizer, factor)
    return edits


def _weight_decay_scale(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    factor = float(spec["factor"])
    edits: list[Edit] = []
    for optimizer in sites.optimizers():
        call = sites.constructor(optimizer)
        src = sites.source(optimizer["file"])
        edits += _scale_argument(src, call, "weight_decay", None, factor, optimizer.get("default_weight_decay"))
        edits += _scale_groups(src, call, "weight_decay", factor)
    return edits


def _scale_argument(src: Source, call: ast.Call, name: str, position: int | None, factor: float,
                    default: float | None) -> list[Edit]:
    """The argument ``name`` (or at ``position``) scaled; the optimizer's default given scaled when absent."""
    given = next((k.value for k in call.keywords if k.arg == name), None)
    if given is None and position is not None and len(call.args) > position \
            and not any(isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        given = call.args[position]
    if given is not None:
        return [_scaled(src, given, factor)]
    if any(k.arg is None for k in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args):
        raise NoPatch(f"the {name} is passed through *args/**kwargs")
    if not isinstance(default, (int, float)) or isinstance(default, bool):
        raise NoPatch(f"the optimizer's default {name} is not known")
    return [src.keyword(call, name, number(default * factor))]


def _scale_groups(src: Source, call: ast.Call, name: str, factor: float) -> list[Edit]:
    """Per-group values in a literal list of groups (``[{"params": ..., "lr": 1e-3}, ...]``)."""
    groups = call.args[0] if call.args else None
    if not isinstance(groups, (ast.List, ast.Tuple)):
        return []
    return [_scaled(src, value, factor) for d in groups.elts if isinstance(d, ast.Dict)
            for key, value in zip(d.keys, d.values) if isinstance(key, ast.Constant) and key.value == name]


# schedulers that set the rate themselves (the optimizer's lr is overwritten): their arguments scale
SCHEDULER_RATES = {"OneCycleLR": (("max_lr", 1),), "CyclicLR": (("base_lr", 1), ("max_lr", 2))}


def _scale_schedulers(sites: Sites, optimizer: dict[str, Any], factor: float) -> list[Edit]:
    edits = []
    for scheduler in sites.data.get("schedulers") or []:
        rates = SCHEDULER_RATES.get(scheduler["class"])
        if not rates or scheduler.get("optimizer") != optimizer.get("id"):
            continue
        if not scheduler["user"]:
            raise NoPatch(f"the {scheduler['class']} that sets the rate is built inside a library")
        src = sites.source(scheduler["file"])
        calls = src.calls_at(scheduler["line"], (scheduler["class"],))
        if not calls:
            raise NoPatch(f"the call building {scheduler['class']} is not at its line")
        for name, position in rates:
            given = next((k.value for k in calls[0].keywords if k.arg == name), None)
            if given is None and len(calls[0].args) > position:
                given = calls[0].args[position]
            if given is None:
                raise NoPatch(f"the {scheduler['class']}'s {name} is not given in its call")
            edits.append(_scaled(src, given, factor))
    return edits


def _scaled(src: Source, node: ast.expr, factor: float) -> Edit:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        text = number(node.value * factor)
    elif isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call)):
        text = f"{src.segment(node)} * {factor:g}"
    else:
        text = f"({src.segment(node)}) * {factor:g}"
    start, end = src.span(node)
    return Edit(src.file, start, end, text)


def _zero_grad(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    backward, step, several = sites.loop()
    optimizer = sites.optimizer_expr(step)
    if several:  # backward runs several times a step (accumulation): zero once, after the step
        if step is None:
            raise NoPatch("backward() runs several times a step and the step's line is not in the script")
        src = sites.source(step["file"])
        return [src.after(src.statement(step["line"]), f"{optimizer}.zero_grad()")]
    src = sites.source(backward["file"])
    return [src.before(src.statement(backward["line"]), f"{optimizer}.zero_grad()")]


def _clip_grad_norm(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    max_norm = float(spec.get("max_norm", 1.0))
    try:
        backward, step, several = sites.loop()
    except NoPatch as exc:  # Lightning's and the Hugging Face Trainer's own clipping, where the script sets it up
        if "(lightning)" in str(exc):
            return _framework_argument(sites, ("Trainer",), "gradient_clip_val", value=max_norm, why=str(exc))
        if "transformers" in json.dumps(sites.data.get("optimizers")):
            return _framework_argument(sites, ("TrainingArguments",), "max_grad_norm", value=max_norm, why=str(exc))
        raise
    src = sites.source(backward["file"])
    optimizer = sites.optimizer_expr(step)
    clip = f"{_clip_function(src, backward['line'])}({_params_expr(sites, optimizer)}, {number(max_norm)})"
    lines = [clip]
    scaler = _scaler(src, backward["line"])
    if scaler is not None:
        if "unscale_(" in src.text:
            raise NoPatch("the script unscales its gradients itself: clip after its unscale_()")
        lines.insert(0, f"{scaler}.unscale_({optimizer})")
    if several or scaler is not None:  # once a step, just before it
        if step is None:
            raise NoPatch("the optimizer's step is not called in the script")
        return [src.before(src.statement(step["line"]), *lines)]
    return [src.after(src.statement(backward["line"]), *lines)]


def _clip_function(src: Source, line: int) -> str:
    """``accelerator.clip_grad_norm_`` after ``accelerator.backward(loss)`` (it unscales under mixed
    precision), torch's otherwise."""
    for call in src.calls_at(line, ("backward",)):
        if isinstance(call.func, ast.Attribute) and call.args:
            return f"{src.segment(call.func.value)}.clip_grad_norm_"
    return src.torch_name("nn.utils.clip_grad_norm_")


def _framework_argument(sites: Sites, callees: tuple[str, ...], name: str, *, value: float | None = None,
                        factor: float | None = None, default: float | None = None, why: str) -> list[Edit]:
    """``name=`` of the one framework call the script makes (``L.Trainer(...)``, ``TrainingArguments(...)``):
    set to ``value``, or scaled by ``factor`` (``default`` given scaled when absent)."""
    found = [(sites.source(f), c) for f in sites.files() for c in ast.walk(sites.source(f).tree)
             if isinstance(c, ast.Call) and last_name(c.func) in callees]
    if len(found) != 1:
        raise NoPatch(why)
    src, call = found[0]
    if factor is not None:
        return _scale_argument(src, call, name, None, factor, default)
    given = next((k.value for k in call.keywords if k.arg == name), None)
    if given is not None:
        start, end = src.span(given)
        return [Edit(src.file, start, end, number(value))]
    if any(k.arg is None for k in call.keywords):
        raise NoPatch(f"{why}; its {callees[0]} takes **kwargs")
    return [src.keyword(call, name, number(value))]


def _scaler(src: Source, line: int) -> str | None:
    """``scaler`` in ``scaler.scale(loss).backward()``: a GradScaler's gradients are scaled."""
    for call in src.calls_at(line, ("scale",)):
        if isinstance(call.func, ast.Attribute):
            return src.segment(call.func.value)
    return None


def _params_expr(sites: Sites, optimizer: str) -> str:
    """``model.parameters()`` when the one optimizer was built from it, else its groups' parameters."""
    try:
        built = sites.optimizers()
    except NoPatch:  # built in a library: its groups still hold the parameters
        built = []
    if len(built) == 1:
        src = sites.source(built[0]["file"])
        calls = src.calls_at(built[0]["line"], (built[0]["class"],))
        first = calls[0].args[0] if calls and calls[0].args else None
        if isinstance(first, ast.Call) and last_name(first.func) == "parameters" and not first.args:
            return src.segment(first)
    return f'[p for group in {optimizer}.param_groups for p in group["params"]]'


def _train_params(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """Delete the lines that froze the named parameters; after a line that replaced their module once
    the optimizer was built, add its parameters to the optimizer."""
    names = [n for n in spec.get("params") or [] if isinstance(n, str)]
    edits: list[Edit] = []
    for file in sites.files():
        src = sites.source(file)
        for stmt in ast.walk(src.tree):
            if isinstance(stmt, ast.stmt) and _freezes(stmt, names) and src.alone(stmt):
                edits.append(_delete(src, stmt))
        edits += _rejoin(sites, src, names)
    if not edits:
        raise NoPatch("no line of the script freezes these parameters or replaces their module")
    return edits


def _path(node: ast.AST) -> str | None:
    """``model.encoder.layers[0]`` -> ``encoder.layers.0`` (the attribute path below the root name)."""
    parts = []
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
        elif isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int):
            parts.append(str(node.slice.value))
        else:
            return None
        node = node.value
    return ".".join(reversed(parts)) if isinstance(node, ast.Name) and parts else None


def _names_under(path: str | None, names: list[str]) -> bool:
    return bool(path) and any(n == path or n.startswith(path + ".") for n in names)


def _is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _freezes(stmt: ast.stmt, names: list[str]) -> bool:
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "requires_grad_":
        return _is_false(call.args[0] if call.args else None) and _names_under(_path(call.func.value), names)
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute) \
            and stmt.targets[0].attr == "requires_grad" and _is_false(stmt.value):
        return _names_under(_path(stmt.targets[0].value), names)
    if isinstance(stmt, ast.For) and isinstance(stmt.iter, ast.Call) and isinstance(stmt.iter.func, ast.Attribute) \
            and stmt.iter.func.attr == "parameters" and len(stmt.body) == 1 and not stmt.orelse:
        inner = stmt.body[0]
        return _names_under(_path(stmt.iter.func.value), names) and _freezes_loop_variable(inner, stmt.target)
    return False


def _freezes_loop_variable(stmt: ast.stmt, target: ast.expr) -> bool:
    if not isinstance(target, ast.Name):
        return False
    own = lambda node: isinstance(node, ast.Name) and node.id == target.id  # noqa: E731
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "requires_grad_":
        return own(call.func.value) and _is_false(call.args[0] if call.args else None)
    return isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute) \
        and stmt.targets[0].attr == "requires_grad" and own(stmt.targets[0].value) and _is_false(stmt.value)


def _delete(src: Source, stmt: ast.stmt) -> Edit:
    parent = src.parents.get(id(stmt))
    alone_in_block = any(getattr(parent, f, None) == [stmt] for f in ("body", "orelse", "finalbody"))
    text = f"{src.indent(stmt.lineno)}pass\n" if alone_in_block else ""
    return Edit(src.file, (stmt.lineno, 0), (stmt.end_lineno + 1, 0), text)


def _rejoin(sites: Sites, src: Source, names: list[str]) -> list[Edit]:
    """``model.head = nn.Linear(...)`` after the optimizer was built: its parameters join the optimizer."""
    built = [o for o in sites.data.get("optimizers") or [] if o["user"] and o["file"] == src.file]
    if not built:
        return []
    first = min(o["line"] for o in built)
    edits = []
    for stmt in ast.walk(src.tree):
        if isinstance(stmt, ast.Assign) and stmt.lineno > first and len(stmt.targets) == 1 \
                and isinstance(stmt.targets[0], ast.Attribute) and _names_under(_path(stmt.targets[0]), names) \
                and src.alone(stmt):
            optimizer = sites.optimizer_expr(None)
            edits.append(src.after(stmt, f'{optimizer}.add_param_group({{"params": {src.segment(stmt.targets[0])}'
                                         f'.parameters()}})'))
    return edits


def _block_of(src: Source, stmt: ast.stmt) -> list[ast.stmt]:
    """The statements of the block ``stmt`` is in (its parent's body, else or finally)."""
    parent = src.parents.get(id(stmt))
    return next((getattr(parent, f) for f in ("body", "orelse", "finalbody")
                 if stmt in (getattr(parent, f, None) or [])), [])


def _clip_after_backward(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """The script's clipping calls before backward() in the loop's block move to just before the
    step (after backward() when the step is not in the script)."""
    backward, step, _ = sites.loop()
    src = sites.source(backward["file"])
    after = src.statement(backward["line"])
    block = _block_of(src, after)
    function = str(spec.get("function") or "clip_grad_norm_")
    moved = [stmt for stmt in block[:block.index(after)] if isinstance(stmt, ast.Expr)
             and isinstance(stmt.value, ast.Call) and last_name(stmt.value.func) == function and src.alone(stmt)]
    if not moved:
        raise NoPatch(f"no {function}() call before backward() in the loop's block")
    target = src.statement(step["line"]) if step is not None and step["file"] == src.file else None
    code = [src.segment(stmt) for stmt in moved]
    edits = [Edit(src.file, (stmt.lineno, 0), (stmt.end_lineno + 1, 0), "") for stmt in moved]
    if target is not None and target in block:
        return edits + [src.before(target, *code)]
    return edits + [src.after(after, *code)]


def _move_zero_grad(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """The script's zero_grad() calls that the probe saw between backward() and the step move to
    just before the loop's backward() (after the step when backward runs several times a step)."""
    backward, step, several = sites.loop()
    src = sites.source(backward["file"])
    target = src.statement(backward["line"])
    seen = [z for z in sites.data.get("zero_grad") or [] if z["user"] and z["file"] == src.file]
    moved = []
    for z in seen:
        stmt = src.statement(z["line"])
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                and last_name(stmt.value.func) == "zero_grad"):
            raise NoPatch(f"the zero_grad() at {Path(src.file).name}:{z['line']} is part of a larger statement")
        if stmt not in moved:
            moved.append(stmt)
    if not moved:
        raise NoPatch("the probe saw no zero_grad() between backward() and step() in the script")
    # (a block left empty keeps a `pass`)
    edits = [src.replace(stmt, *(("pass",) if len(_block_of(src, stmt)) == 1 else ())) for stmt in moved]
    code = [src.segment(stmt) for stmt in moved]
    if several:  # backward runs several times a step (accumulation): zero once, after the step
        if step is None or step["file"] != src.file:
            raise NoPatch("backward() runs several times a step and the step's line is not in the script")
        return edits + [src.after(src.statement(step["line"]), *code)]
    return edits + [src.before(target, *code)]


def _unscale_before_clip(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """``scaler.unscale_(optimizer)`` before the first clipping call after the scaled backward()."""
    backward, step, _ = sites.loop()
    src = sites.source(backward["file"])
    scaler = _scaler(src, backward["line"])
    if scaler is None:
        raise NoPatch("the GradScaler's scale() is not called on the backward() line")
    if "unscale_(" in src.text:
        raise NoPatch("the script already calls unscale_(): put it before the clipping call")
    after = src.statement(backward["line"])
    block = _block_of(src, after)
    function = str(spec.get("function") or "clip_grad_norm_")
    clips = [stmt for stmt in block[block.index(after) + 1:] if any(
        isinstance(c, ast.Call) and last_name(c.func) == function for c in ast.walk(stmt))]
    if not clips:
        raise NoPatch(f"no {function}() call after backward() in the loop's block")
    return [src.before(clips[0], f"{scaler}.unscale_({sites.optimizer_expr(step)})")]


def _scheduler_per_epoch(spec: dict[str, Any], sites: Sites) -> list[Edit]:
    """``scheduler.step()`` in the loop over batches moves after it, into the loop over epochs."""
    edits = []
    for scheduler in sites.data.get("schedulers") or []:
        if not scheduler["user"]:
            continue
        src = sites.source(scheduler["file"])
        built = src.statement(scheduler["line"])
        if not (isinstance(built, ast.Assign) and len(built.targets) == 1):
            continue
        name = src.segment(built.targets[0])
        for stmt in ast.walk(src.tree):
            inner = src.parents.get(id(stmt))
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and last_name(stmt.value.func) == "step" \
                    and isinstance(stmt.value.func, ast.Attribute) and src.segment(stmt.value.func.value) == name \
                    and isinstance(inner, ast.For) and stmt in inner.body \
                    and isinstance(src.parents.get(id(inner)), ast.For) and src.alone(stmt):
                edits += [Edit(src.file, (stmt.lineno, 0), (stmt.end_lineno + 1, 0), ""),
                          src.after(inner, src.segment(stmt))]
    if not edits:
        raise NoPatch("no scheduler.step() in a loop over batches inside a loop over epochs")
    return edits


def _not_at_a_line(why: str) -> Callable[[dict[str, Any], Sites], list[Edit]]:
    def patcher(spec: dict[str, Any], sites: Sites) -> list[Edit]:
        raise NoPatch(why)

    return patcher


PATCHERS: dict[str, Callable[[dict[str, Any], Sites], list[Edit]]] = {
    "lr_scale": _lr_scale,
    "zero_grad": _zero_grad,
    "clip_grad_norm": _clip_grad_norm,
    "train_params": _train_params,
    "weight_decay_scale": _weight_decay_scale,
    "clip_after_backward": _clip_after_backward,
    "move_zero_grad": _move_zero_grad,
    "unscale_before_clip": _unscale_before_clip,
    "leaky_relu": leaky_relu,
    "reinit": reinit,
    "loss_input": loss_input,
    "standardize_inputs": _not_at_a_line("the inputs' statistics come from the data: standardise them where it is loaded"),
    "module_mode": _not_at_a_line("the lines that switch the model's mode are not recorded"),
    "stable_op": _not_at_a_line("the unstable op's line in the script is not recorded"),
    "scheduler_per_epoch": _scheduler_per_epoch,
    "keep_module": _not_at_a_line("build the module once in __init__ (nn.LazyLinear and the other lazy modules "
                                  "size themselves at the first call)"),
}


# ---------------------------------------------------------------- edits -> diff


def make(spec: dict[str, Any], sites: Sites | None, root: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """The unified diff of ``spec``'s change (paths relative to ``root``, default the current
    directory) and "" , or None and why no diff can be made."""
    patcher = PATCHERS.get(str(spec.get("kind")))
    if patcher is None:
        return None, "no diff for this kind of change"
    if sites is None:
        return None, "the probe recorded no lines of the script"
    try:
        edits = patcher(spec, sites)
        if spec.get("lr_factor") and spec.get("kind") != "lr_scale":  # a fix with the rate retuned for it
            edits += _lr_scale({"kind": "lr_scale", "factor": float(spec["lr_factor"])}, sites)
        return _diff(sites, edits, Path(root or os.getcwd())), ""
    except NoPatch as exc:
        return None, str(exc)
    except Exception as exc:  # a diff not made never fails the fix session
        return None, f"the diff could not be made ({type(exc).__name__})"


def _diff(sites: Sites, edits: list[Edit], root: Path) -> str:
    out = []
    for file in dict.fromkeys(e.file for e in edits):
        src = sites.source(file)
        text = apply_edits(src, [e for e in edits if e.file == file])
        try:
            compile(text, file, "exec", dont_inherit=True)
        except SyntaxError:
            raise NoPatch("the changed script would not parse") from None
        rel = os.path.relpath(file, root).replace(os.sep, "/")
        out += difflib.unified_diff(src.lines, text.splitlines(keepends=True), f"a/{rel}", f"b/{rel}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out)
