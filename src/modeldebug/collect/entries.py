"""Where a training step enters a watched model whose root module is never called.

A LightningModule whose ``training_step`` calls ``self.backbone(x)``, a loop that calls
``model.encoder`` and ``model.head``: the root's hooks never run, so nothing keeps the batch for
the NaN-origin replay. Once a step has closed without a call of its root, the root's direct
children that hold parameters get a forward pre-hook and a forward hook (two C-level calls each per call, installed
only for such models), and the first training call made at the top level of a step is kept for
the replay. Only while it is the step's only top-level call: a replay of ``model.encoder`` alone
cannot tell whether ``model.head`` produced the NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from modeldebug.collect.watched import Model


class Entries:
    def __init__(self) -> None:
        self.handles: list[Any] = []
        self.prefix: dict[int, str] = {}  # id(child) -> its qualified name + "." (the replay's module names)
        self._depth = 0
        self._first: tuple | None = None  # (child, args, kwargs, rng state)
        self._calls = 0  # training calls at the top level since the step began

    def install(self, models: list["Model"], pre, post) -> None:
        if self.handles:
            return
        for model in models:
            if model.compiled or _compiled(model.module) or _compiled(model.inner):
                continue  # (hooks inside a compiled graph would break or recompile it)
            for name, child in model.inner.named_children():
                if _compiled(child) or next(child.parameters(), None) is None:
                    continue  # (a loss or metric module called after the model is not a second entry)
                self.prefix[id(child)] = model.prefix + name + "."
                self.handles += [child.register_forward_pre_hook(pre, with_kwargs=True),
                                 child.register_forward_hook(post, always_call=True)]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.prefix, self._depth = [], {}, 0
        self.reset()

    def enter(self, module, args, kwargs, keep: bool) -> None:
        """A child's forward begins; ``keep``: a training call whose batch may be replayed."""
        top = self._depth == 0
        self._depth += 1
        if top and torch.is_grad_enabled() and module.training:
            self._calls += 1
            if self._calls == 1 and keep:
                self._first = (module, args, kwargs, torch.get_rng_state())

    def leave(self) -> None:
        self._depth = max(0, self._depth - 1)

    def replay(self) -> tuple | None:
        """The step's one top-level call, to replay; None when there were several or none."""
        return self._first if self._calls == 1 else None

    def reset(self) -> None:
        """A step closed: the next one keeps its own call (the batch is not held past its step)."""
        self._first, self._calls = None, 0


def _compiled(module) -> bool:
    """``module.compile()`` was called: its own call runs compiled."""
    return getattr(module, "_compiled_call_impl", None) is not None
