"""Outputs returned next to others and dropped: which modules' results the loss may never see.

On one sampled training step every module of the watched models (containers too) gets a forward
hook that keeps the tensors it returned. When the step closes, a module whose output an enclosing
module returns among two tensors or more (a BERT backbone's pooled output beside its sequence
output) is listed: a head that uses only one of them leaves the other module without a gradient by
design, which is a hint, not a cut graph. Identity of tensor objects, held until the step closes
(so no id is reused); the hooks are removed with the step's layer hooks. One step per run.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from modeldebug.events import ReturnedOutputs


def returned_tensors(output: Any) -> list[torch.Tensor]:
    """The tensors a module returns: itself, or a tuple/list/dict's items, one level nested deep."""
    if isinstance(output, torch.Tensor):
        return [output]
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, (tuple, list)):
            out += [t for t in item if isinstance(t, torch.Tensor)]
    return out


class OutputFlow:
    def __init__(self):
        self.done = False
        self.handles: list[Any] = []
        self.outputs: dict[str, list[torch.Tensor]] = {}

    def install(self, models, hook) -> None:
        """``hook(name, module, args, output)``: the caller's guarded callback, which calls ``record``."""
        for m in models:
            if m.compiled:
                continue
            for name, module in m.inner.named_modules():
                qual = (m.prefix + name) if name else m.prefix.rstrip(".")
                self.handles.append(module.register_forward_hook(partial(hook, qual)))

    def record(self, name: str, output: Any) -> None:
        if name not in self.outputs:
            self.outputs[name] = returned_tensors(output)

    def settle(self) -> ReturnedOutputs | None:
        """Remove the hooks; the modules whose output an ancestor returns among several tensors."""
        for h in self.handles:
            h.remove()
        self.handles = []
        outputs, self.outputs = self.outputs, {}
        if not outputs:
            return None
        self.done = True
        several = {name: {id(t) for t in ts} for name, ts in outputs.items() if len(ts) >= 2}
        found = []
        for name, tensors in outputs.items():
            ancestors = [a for a in several if a != name and (a == "" or name.startswith(a + "."))]
            if tensors and any(id(t) in several[a] for a in ancestors for t in tensors):
                found.append(name)
        return ReturnedOutputs(modules=sorted(found)) if found else None
