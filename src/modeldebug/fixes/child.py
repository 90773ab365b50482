"""In the watched script of a `modeldebug fix` re-run: the candidate fix, the window's end, the seeds.

``collect/autopatch`` calls :func:`before_collector` once torch is imported and before the
collector starts, and :func:`after_collector` once it runs, so that a candidate's optimizer
hooks sit on the right side of the collector's: a clip happens before the collector reads the
gradients (as a user's own clip would), and a scaled learning rate is restored only after the
collector has recorded it (the run shows the rate that was used). Nothing here edits the user's
code; every hook is guarded and switches itself off on an internal failure.

Imports only the standard library at module level (it is imported at every watched start).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable

ENV_FIX = "MODELDEBUG_FIX"  # JSON: the candidate to apply ({"kind": ..., its parameters})
ENV_STOP = "MODELDEBUG_STOP_AFTER"  # end the script cleanly once this many optimizer steps have closed
ENV_SEED = "MODELDEBUG_SEED"  # seed torch and random at import: every re-run starts alike

_off = False  # an internal failure switched every hook of this module off


def _guarded(hook: Callable) -> Callable:
    def run(*args, **kwargs):
        global _off
        if _off:
            return None
        try:
            return hook(*args, **kwargs)
        except Exception as exc:  # never into the user's code: the candidate stops applying
            _off = True
            sys.stderr.write(f"modeldebug fix: the candidate stopped applying ({type(exc).__name__}: {exc})\n")
            return None

    return run


def _spec() -> dict[str, Any] | None:
    text = os.environ.pop(ENV_FIX, None)
    try:
        spec = json.loads(text) if text else None
    except ValueError:
        return None
    return spec if isinstance(spec, dict) else None


_candidate: dict[str, Any] | None = None
_stop_after = 0


def before_collector() -> None:
    """Seeds, and the hooks that must run before the collector's."""
    _guarded(_before_collector)()


def after_collector(debugger: Any) -> None:
    """The hooks that must run after the collector's (it closes the step in its post hook)."""
    _guarded(_after_collector)(debugger)


def _before_collector() -> None:
    global _candidate, _stop_after
    import torch

    seed = os.environ.pop(ENV_SEED, None)
    if seed is not None and seed.isdigit():
        import random

        random.seed(int(seed))
        torch.manual_seed(int(seed))
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed(int(seed))
    stop = os.environ.pop(ENV_STOP, "")
    _stop_after = int(stop) if stop.isdigit() else 0
    _candidate = _spec()
    kind = (_candidate or {}).get("kind")
    from modeldebug.fixes import sites

    try:
        sites.install()  # where the probe saw the lines its diffs change (fixes/patch.py)
    except Exception:  # no sites, no diffs: the window and the candidate still apply
        pass
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    if _lr_factor() != 1.0:  # (an lr_scale candidate, or another one with the rate retuned for it)
        register_optimizer_step_pre_hook(_guarded(_scale_lr))
    if kind == "clip_grad_norm":
        register_optimizer_step_pre_hook(_guarded(_clip))
    elif kind == "weight_decay_scale":
        _scale_weight_decay(float(_candidate["factor"]))
    elif kind in MODULE_KINDS:
        _on_modules(kind, _candidate)
    elif kind == "keep_module":
        from modeldebug.fixes import modules

        modules.keep_modules([str(m) for m in _candidate.get("modules") or []], _guarded)


# Candidates applied to the model, its inputs or its ops (fixes/modules.py), before the collector's
# hooks so that it sees the fixed calls.
MODULE_KINDS = ("standardize_inputs", "reinit", "loss_input", "leaky_relu", "module_mode", "stable_op")


def _on_modules(kind: str, spec: dict[str, Any]) -> None:
    from modeldebug.fixes import modules

    if kind == "stable_op":
        modules.stable_ops([str(op) for op in spec.get("ops") or []], float(spec.get("eps", 1e-7)))
        return
    top = modules.TopLevel(_guarded)
    if kind == "standardize_inputs":
        top.pre_calls.append(modules.standardize_inputs())
    elif kind == "reinit":
        top.first_calls.append(modules.reinit(str(spec.get("scheme", "kaiming"))))
    elif kind == "loss_input":
        top.first_calls.append(modules.loss_input(str(spec["layer"]), str(spec.get("loss", ""))))
    elif kind == "leaky_relu":
        top.first_calls.append(modules.leaky_relu(float(spec.get("negative_slope", 0.01))))
    elif kind == "module_mode":
        pre, post = modules.module_mode(bool(spec.get("train", True)))
        top.pre_calls.append(pre)
        top.post_calls.append(post)


def _after_collector(debugger: Any) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    if _lr_factor() != 1.0:
        register_optimizer_step_post_hook(_guarded(_restore_lr))
    if (_candidate or {}).get("kind") == "zero_grad":
        register_optimizer_step_post_hook(_guarded(_stepped))
        _zero_before_backward()
    if (_candidate or {}).get("kind") == "clip_after_backward":
        from modeldebug.fixes import modules

        modules.clip_after_backward(_guarded)
    if (_candidate or {}).get("kind") == "move_zero_grad":
        from modeldebug.fixes import modules

        modules.move_zero_grad(_guarded)
    if (_candidate or {}).get("kind") == "unscale_before_clip":
        from modeldebug.fixes import modules

        modules.unscale_before_clip(_guarded)
    if (_candidate or {}).get("kind") == "scheduler_per_epoch":
        from modeldebug.fixes import modules

        modules.scheduler_per_epoch()
    if (_candidate or {}).get("kind") in ("train_params", "keep_module") and debugger is not None:
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        register_optimizer_step_pre_hook(_guarded(_train_params(debugger)))
    if _stop_after > 0:
        register_optimizer_step_post_hook(_window_end(debugger))


# ---------------------------------------------------------------- the window's end


def _window_end(debugger: Any) -> Callable:
    """A post-step hook that ends the script (SystemExit(0): its finally blocks and the collector's
    exit run, so the run is closed and written) once ``_stop_after`` steps have closed. Counts the
    collector's steps; its own optimizer steps when the collector watches nothing."""
    seen = [0]

    def hook(optimizer, args, kwargs):
        seen[0] += 1
        try:
            closed = debugger.step_count if debugger is not None and debugger.watched.models else seen[0]
        except Exception:
            closed = seen[0]
        if closed >= _stop_after:
            raise SystemExit(0)

    return hook


# ---------------------------------------------------------------- the candidates


_saved_lrs: dict[int, list[Any]] = {}


def _lr_factor() -> float:
    """The rate's factor: an lr_scale candidate's, or ``lr_factor`` of a candidate whose change
    alters the step size the script's rate was tuned for (fixes/candidates.py: retuned)."""
    spec = _candidate or {}
    value = spec.get("factor") if spec.get("kind") == "lr_scale" else spec.get("lr_factor")
    return float(value) if value is not None else 1.0  # (a bad value: the guard switches the candidate off)


def _scale_lr(optimizer, args, kwargs) -> None:
    """Every group steps at ``factor`` times the rate its schedule gives it; the rate is put back
    after the step, so schedulers (absolute or chained) keep computing from the script's values."""
    factor = _lr_factor()
    key = _groups_key(optimizer)
    if key in _saved_lrs:  # a wrapper (accelerate's) stepping the optimizer whose groups it shares
        return
    _saved_lrs[key] = [g.get("lr") for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        if g.get("lr") is not None:
            g["lr"] = g["lr"] * factor


def _scale_weight_decay(factor: float) -> None:
    """Each param group's weight_decay scaled as it joins its optimizer (its constructor calls
    ``add_param_group``), so the run records the rate used from the start."""
    import torch

    add = torch.optim.Optimizer.add_param_group

    def scaled(group: dict) -> None:
        if isinstance(group.get("weight_decay"), (int, float)):
            group["weight_decay"] = group["weight_decay"] * factor

    guarded = _guarded(scaled)

    @functools.wraps(add)
    def add_param_group(self, param_group):
        result = add(self, param_group)
        if self.param_groups:
            guarded(self.param_groups[-1])
        return result

    torch.optim.Optimizer.add_param_group = add_param_group


def _groups_key(optimizer) -> int:
    groups = optimizer.param_groups
    return id(groups[0]) if groups else id(optimizer)


def _restore_lr(optimizer, args, kwargs) -> None:
    saved = _saved_lrs.pop(_groups_key(optimizer), None)
    if saved is not None and len(saved) == len(optimizer.param_groups):
        for g, lr in zip(optimizer.param_groups, saved):
            if lr is not None:
                g["lr"] = lr


def _clip(optimizer, args, kwargs) -> None:
    """Clip the gradient norm of the parameters the optimizer steps, once the backward calls of
    the step are done (its pre-step hook), through the same function a script would call."""
    import torch

    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if params:
        torch.nn.utils.clip_grad_norm_(params, float(_candidate.get("max_norm", 1.0)))


_to_zero: dict[int, Any] = {}  # optimizers that stepped since the last backward


def _stepped(optimizer, args, kwargs) -> None:
    _to_zero[id(optimizer)] = optimizer


def _zero_before_backward() -> None:
    """``optimizer.zero_grad()`` before the first backward after each step (backward calls of one
    step still accumulate, as a script that accumulates on purpose needs). Wraps the backward
    functions the collector has wrapped (``modules.before_each_backward``)."""
    from modeldebug.fixes import modules

    def zero() -> None:
        while _to_zero:
            _, optimizer = _to_zero.popitem()
            optimizer.zero_grad()

    modules.before_each_backward(_guarded(zero))


def _train_params(debugger: Any) -> Callable:
    """At the first step of an optimizer that trains a watched model: the parameters the finding
    named (by their qualified names in the run) require gradients again, and those the optimizer
    does not hold are added to it as one more group (its defaults). They train from the next step."""
    names = set(_candidate.get("params") or [])
    done = [False]

    def hook(optimizer, args, kwargs) -> None:
        if done[0] or not debugger.watched.owns(optimizer):
            return
        done[0] = True
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = []
        for name, p in list(debugger.watched.params):
            if name not in names:
                continue
            if not p.requires_grad and p.is_floating_point():
                p.requires_grad_(True)
            if id(p) not in held:
                missing.append(p)
                held.add(id(p))
        if missing:
            optimizer.add_param_group({"params": missing})

    return hook
