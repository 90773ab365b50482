"""Qualified module names from a traceback alone, at any step (before any model is watched).

The frames of a crash in a forward pass hold ``self`` of every module whose forward is running;
the outermost of them is the model the script called (or a part of it: ``model.encoder(x)``). A
module held by the script's own frames (the training loop's locals, the script's globals, the
attributes of a trainer object) that contains it is the whole model. Its ``named_modules()``
name the failing module by identity: ``stages.2.conv1``, not ``Conv2d``.
"""

from __future__ import annotations

from types import FrameType
from typing import Any, Iterable

MAX_CANDIDATES = 32  # modules held by the script's frames that are looked into
MAX_MODULES = 100_000  # modules walked per candidate (a model this large is still named)


def names_from_frames(frames: list[FrameType]) -> dict[int, str]:
    """``id(module or parameter) -> qualified name`` for the models the frames reach.

    ``frames`` run outermost first; the first is the frame that caught the exception (still
    running: its locals are not read, only its globals).
    """
    from torch import nn

    from modeldebug.diagnose.parse import module_names_of

    outer = next((f.f_locals.get("self") for f in frames[1:] if isinstance(f.f_locals.get("self"), nn.Module)), None)
    held = _held_modules(frames, outer)
    if outer is not None:
        containing = [m for m in held if m is not outer and _contains(m, outer)]
        root = max(containing, key=_size, default=outer)
        return module_names_of(_unwrapped(root))
    # Raised outside any forward (backward, the loss): name the parameters of every model held.
    roots = [m for m in held if not any(o is not m and _contains(o, m) for o in held)]
    if len(roots) == 1:
        return module_names_of(_unwrapped(roots[0]))
    return {}


def _held_modules(frames: list[FrameType], outer: Any) -> list[Any]:
    """The modules the script's frames hold: their locals (the catching frame's excepted), the
    globals of the script's modules, and one level into a local ``self`` (a Trainer's ``model``)."""
    from torch import nn

    from modeldebug.diagnose.parse import is_torch_file

    out: list[Any] = []
    seen: set[int] = set()

    def add(values: Iterable[Any]) -> None:
        for v in values:
            if len(out) >= MAX_CANDIDATES:
                return
            if isinstance(v, nn.Module) and id(v) not in seen:
                seen.add(id(v))
                out.append(v)

    globals_seen: set[int] = set()
    for i, frame in enumerate(frames):
        if is_torch_file(frame.f_code.co_filename):
            continue
        this = frame.f_locals.get("self") if i else None
        if isinstance(this, nn.Module) and outer is not None:
            break  # inside the model: its own frames hold parts of it, not the whole
        if id(frame.f_globals) not in globals_seen:
            globals_seen.add(id(frame.f_globals))
            add(list(frame.f_globals.values()))
        if i == 0 and len(frames) > 1:
            continue  # still running: reading its f_locals would snapshot (and keep alive) its locals
        add(list(frame.f_locals.values()))
        if this is not None and not isinstance(this, nn.Module):
            add(list(getattr(this, "__dict__", {}).values()))
    return out


def _contains(root: Any, module: Any) -> bool:
    for i, m in enumerate(root.modules()):
        if m is module:
            return True
        if i >= MAX_MODULES:
            return False
    return False


def _size(module: Any) -> int:
    return sum(1 for _ in module.modules())


def _unwrapped(module: Any) -> Any:
    """A torch.compile'd model is named as the collector names it: by its original module."""
    return getattr(module, "_orig_mod", module)
