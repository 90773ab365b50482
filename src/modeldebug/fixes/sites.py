"""Where a `modeldebug fix` probe saw the lines a fix changes: the optimizers' and schedulers'
constructions, the ``backward()`` and ``optimizer.step()`` calls, and the ``zero_grad()`` calls made
between a backward and the step (``fixes/patch.py`` turns them into diffs).

Installed by ``fixes/child.py`` in the fix windows only (``MODELDEBUG_FIX_SITES`` names the JSON
file written at exit): nothing of this runs under `modeldebug run`. Each site is the first frame
outside torch and modeldebug, or, when that frame is a library's (accelerate, Lightning), the
first frame of the user's own code whose line names the call; ``user`` says which.
Backward and step calls are recorded until a few steps have closed, then their wrappers go quiet.

Imports only the standard library at module level.
"""

from __future__ import annotations

import atexit
import functools
import json
import linecache
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any, Callable

ENV_SITES = "MODELDEBUG_FIX_SITES"
STEPS_SEEN = 3  # the steps whose backward and step calls are counted (the loop's shape shows by then)
MAX_SITES = 16

_ours = str(Path(__file__).resolve().parents[1])  # the modeldebug package
_libraries = tuple({str(Path(p).resolve()) for k in ("stdlib", "platstdlib", "purelib", "platlib")
                    if (p := sysconfig.get_paths().get(k))})

sites: dict[str, Any] = {"optimizers": [], "schedulers": [], "backward": {}, "step": {}, "zero_grad": {}, "steps": 0}


def is_user_file(filename: str) -> bool:
    """A file of the user's own code: on disk, neither the standard library, an installed package,
    nor modeldebug."""
    if not filename or filename.startswith("<"):
        return False
    path = str(Path(filename).resolve())
    return os.path.isfile(path) and not path.startswith(_ours) and not path.startswith(_libraries) \
        and "site-packages" not in path and "dist-packages" not in path


def _outside_torch(frame) -> bool:
    name = frame.f_code.co_filename
    return not (name.startswith(_ours) or f"{os.sep}torch{os.sep}" in name or name.startswith("<"))


def _site(frame, word: str) -> dict[str, Any] | None:
    """The call's site: the nearest frame outside torch/modeldebug, or the nearest user frame whose
    line holds ``word`` when the nearest is a library's."""
    nearest = None
    while frame is not None:
        if nearest is None and _outside_torch(frame):
            nearest = frame
            if is_user_file(frame.f_code.co_filename):
                break
        if nearest is not None and is_user_file(frame.f_code.co_filename) \
                and word in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
            nearest = frame
            break
        frame = frame.f_back
    if nearest is None:
        return None
    name = nearest.f_code.co_filename
    return {"file": str(Path(name).resolve()), "line": nearest.f_lineno, "user": is_user_file(name)}


def _count(table: dict[str, Any], site: dict[str, Any] | None) -> None:
    if site is None or sites["steps"] >= STEPS_SEEN:
        return
    key = f"{site['file']}:{site['line']}"
    if key in table:
        table[key]["calls"] += 1
    elif len(table) < MAX_SITES:
        table[key] = {**site, "calls": 1, "first_step": sites["steps"]}


def _constructed(kind: str, obj: Any, frame) -> None:
    """Record where ``obj`` (an optimizer or scheduler) was built: the frame above its __init__ chain."""
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is obj:
        frame = frame.f_back
    if frame is None or len(sites[kind]) >= MAX_SITES:
        return
    name = frame.f_code.co_filename
    entry = {"file": str(Path(name).resolve()) if not name.startswith("<") else name, "line": frame.f_lineno,
             "user": is_user_file(name), "class": type(obj).__name__, "module": type(obj).__module__}
    if kind == "optimizers":
        entry["default_lr"] = getattr(obj, "defaults", {}).get("lr")
        entry["default_weight_decay"] = getattr(obj, "defaults", {}).get("weight_decay")
        entry["id"] = id(obj)
    else:
        entry["optimizer"] = id(getattr(obj, "optimizer", None))
    sites[kind].append(entry)


def _guard(fn: Callable) -> Callable:
    def run(*args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception:  # a site not recorded is a diff not made, never a failure of the script
            pass

    return run


def _wrap_init(cls: type, kind: str) -> None:
    original = cls.__init__
    record = _guard(lambda self: _constructed(kind, self, sys._getframe(2)))

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        record(self)

    cls.__init__ = __init__


_inside = [False]  # within a recorded backward call
_backward_since_step = [False]  # a backward ran since the last optimizer step (a zero_grad now clears its gradients)


def _wrap_backward(owner: Any, name: str) -> None:
    original = getattr(owner, name)
    record = _guard(lambda: _count(sites["backward"], _site(sys._getframe(3), "backward")))

    @functools.wraps(original)
    def backward(*args, **kwargs):
        if sites["steps"] >= STEPS_SEEN or _inside[0]:  # Tensor.backward calls autograd.backward: once
            return original(*args, **kwargs)
        record()
        _backward_since_step[0] = True
        _inside[0] = True
        try:
            return original(*args, **kwargs)
        finally:
            _inside[0] = False

    setattr(owner, name, backward)


def _step_pre(optimizer, args, kwargs) -> None:
    if sites["steps"] < STEPS_SEEN:
        _count(sites["step"], _site(sys._getframe(2), "step"))


def _step_post(optimizer, args, kwargs) -> None:
    sites["steps"] += 1
    _backward_since_step[0] = False


def _wrap_zero_grad() -> None:
    """Record the zero_grad() calls made after a backward and before the step (they clear its gradients)."""
    import torch

    original = torch.optim.Optimizer.zero_grad
    record = _guard(lambda: _count(sites["zero_grad"], _site(sys._getframe(3), "zero_grad")))

    @functools.wraps(original)
    def zero_grad(self, *args, **kwargs):
        if _backward_since_step[0] and sites["steps"] < STEPS_SEEN:
            record()
        return original(self, *args, **kwargs)

    torch.optim.Optimizer.zero_grad = zero_grad


def install() -> None:
    """Record the sites of this process and write them at exit (when ``MODELDEBUG_FIX_SITES`` is set)."""
    target = os.environ.pop(ENV_SITES, None)
    if not target:
        return
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    _wrap_init(torch.optim.Optimizer, "optimizers")
    _wrap_init(torch.optim.lr_scheduler.LRScheduler, "schedulers")
    _wrap_backward(torch.Tensor, "backward")
    _wrap_backward(torch.autograd, "backward")
    _wrap_zero_grad()
    register_optimizer_step_pre_hook(_guard(_step_pre))
    register_optimizer_step_post_hook(_guard(_step_post))
    sites["script"] = str(Path(sys.argv[0]).resolve()) if sys.argv and sys.argv[0] else None
    atexit.register(_guard(_write), target)


def _write(target: str) -> None:
    Path(target).write_text(json.dumps({**sites, "backward": list(sites["backward"].values()),
                                        "step": list(sites["step"].values()),
                                        "zero_grad": list(sites["zero_grad"].values())}))
