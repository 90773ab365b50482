"""torch.compile'd models: what the monitor does around them so that the compiled graph is left as
it is, with no graph break and no recompilation (measured with dynamo's counters in
tests/collect/test_compile.py).

- Hooks added to a module after it was compiled are ignored by the compiled graph (dynamo does not
  guard on per-module hook dicts) or, when the module is compiled in place (``model.compile()``),
  are traced into it: our code would break the graph (``time.perf_counter``) and every value it
  reads would become a guard. So a compiled model gets no hook inside its graph: its root hooks sit
  on the ``OptimizedModule``, which runs them outside the graph; a model compiled in place gets
  them around its compiled call (``CompiledCall``), outside the graph too.
- Sampled steps run eagerly (``torch.compiler.set_stance("force_eager")``) while their per-layer
  hooks are installed: the same weights and batch, per-layer statistics, and the compiled code
  untouched for every other step (measured: no recompile when the stance returns to default).
- Any callback of ours that dynamo traces anyway (a hook on a module the user compiles later, the
  global hooks of zero-code discovery) returns at once while dynamo traces it: it traces to nothing.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def _never() -> bool:
    return False


# True while dynamo traces the calling code (dynamo folds this very call; old torch has none). Every
# callback calls it: the bare torch function, ~0.25 us.
compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or _never


def wrapper_of(module: nn.Module) -> bool:
    """``torch.compile(model)``'s result: an OptimizedModule around the user's ``_orig_mod``."""
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


def compiled_in_place(module: nn.Module) -> bool:
    """``model.compile()``: the module's own ``__call__`` runs compiled, its hooks inside the graph."""
    return getattr(module, "_compiled_call_impl", None) is not None


def is_compiled(module: nn.Module) -> bool:
    return wrapper_of(module) or compiled_in_place(module)


class CompiledCall:
    """The root callbacks of a model compiled in place, around its compiled call (outside the graph):
    its ``_compiled_call_impl`` is wrapped while it is watched. ``nn.Module.__getstate__`` leaves that
    attribute out, so the wrapper is never pickled nor deep-copied with the model."""

    def __init__(self, module: nn.Module, pre: Any, post: Any):
        from modeldebug.collect.patches import hide_our_frames

        self.module, self.compiled = module, module._compiled_call_impl
        compiled = self.compiled

        def call(*args, **kwargs):
            if compiling():  # (a compiled loop calling the model: dynamo traces the model's own call)
                return compiled(*args, **kwargs)
            pre(module, args, kwargs)
            output = None
            try:
                output = compiled(*args, **kwargs)
            except BaseException as exc:
                hide_our_frames(exc, __file__)
                raise
            finally:
                post(module, args, output)
            return output

        self.call = call
        module._compiled_call_impl = call

    def remove(self) -> None:
        if self.module.__dict__.get("_compiled_call_impl") is self.call:
            self.module._compiled_call_impl = self.compiled


class EagerWindow:
    """While open, compiled code runs eagerly (process-wide, as ``torch.compiler.set_stance`` is);
    the stance before it is restored on close. Opening inside a compiled region, or on a torch
    without stances, leaves everything as it is."""

    def __init__(self) -> None:
        self._stance: Any = None

    @property
    def open(self) -> bool:
        return self._stance is not None

    def enter(self) -> None:
        if self._stance is not None or compiling():
            return
        try:
            self._stance = torch.compiler.set_stance("force_eager")  # (set now; __exit__ restores)
        except Exception:  # inside a running compiled region, or no set_stance in this torch
            log.debug("could not run a sampled step eagerly", exc_info=True)
            self._stance = None

    def leave(self) -> None:
        stance, self._stance = self._stance, None
        if stance is not None:
            try:
                stance.__exit__(None, None, None)
            except Exception:
                log.debug("could not restore the compiler's stance", exc_info=True)

    def __enter__(self) -> "EagerWindow":
        self.enter()
        return self

    def __exit__(self, *exc) -> None:
        self.leave()


# torch warns at a compiled model's calls while global module hooks exist: zero-code discovery's are
# ours, not the user's to hear of (the warning says they fire twice: discovery counts a call once).
_GLOBAL_HOOKS_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


def hide_global_hooks_warning() -> Any:
    """Filter torch's warning while our global hooks are installed; returns the filter to drop."""
    warnings.filterwarnings("ignore", message=_GLOBAL_HOOKS_WARNING, category=UserWarning)
    return warnings.filters[0]


def drop_filter(entry: Any) -> None:
    try:
        warnings.filters.remove(entry)
    except ValueError:  # already gone (a catch_warnings block of the script restored the filters)
        return
    mutated = getattr(warnings, "_filters_mutated", None) or getattr(warnings, "_filters_mutated_lock_held", None)
    if mutated is not None:  # (the module's cache of decisions made under the old filters)
        try:
            mutated()
        except Exception:
            pass
