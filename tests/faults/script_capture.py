"""Run a fault-suite script in this process until its training loop is under way, then take its objects.

The scripts are plain PyTorch (no modeldebug in them) and stay as they are. :func:`capture` executes
one (``exec`` of its code with a fresh ``__main__`` namespace, the torch RNG forked so the caller's
stream is untouched) and stops it with a private exception raised from ``torch.autograd.backward``
at the second backward call, i.e. at the start of the second training step: the first optimizer
step has run, so the optimizer holds real state (momentum, Adam moments) that a caller can check
is left alone. A script that never steps stops at its second backward all the same.

The objects are then picked out of the script's globals by type, never by name:

- the optimizer: the ``torch.optim.Optimizer`` in the globals;
- the model: the ``nn.Module`` (not a loss) holding the most of the optimizer's parameters, the
  largest on a tie (the root, not one of its submodules);
- the loss: the ``nn.modules.loss._Loss`` instance the script called on the model's output;
- the data: the script's ``DataLoader`` when it has one; otherwise the tensors it indexes batches
  from (the global tensors whose rows the first batch and its targets are), wrapped in a
  ``DataLoader`` of the script's batch size; otherwise the first batch itself.

To know the first batch and its target, every top-level module call before the stop is recorded
(a global forward pre-hook; calls nested inside another module's forward are skipped). The model's
first input is that of the first top-level call to the model, or to a module made of the model's
parameters (``model[:2](x)``, a slice of a Sequential, is a new module over the same layers).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class _Stop(BaseException):
    """Raised inside the script to end it; a BaseException so that no `except Exception` in it swallows it."""


@dataclass
class Captured:
    path: Path
    globals: dict[str, Any]
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    loss_fn: nn.Module | None = None
    data: Any = None
    data_kind: str = "none"  # loader | tensors | batch | none
    batch: tuple | None = None  # (inputs, target) of the first training step
    backward_calls: int = 0
    optimizer_steps: int = 0
    problems: list[str] = field(default_factory=list)  # why something could not be picked


def capture(path: str | Path, *, stop_at_backward: int = 2, seed: int = 0) -> Captured:
    path = Path(path)
    code = compile(path.read_text(), str(path), "exec")
    scope: dict[str, Any] = {"__name__": "__main__", "__file__": str(path), "__builtins__": __builtins__}
    calls: list[tuple[nn.Module, tuple]] = []
    depth = [0]
    counts = {"backward": 0, "step": 0}

    def pre(module, args):
        if depth[0] == 0:
            calls.append((module, args))
        depth[0] += 1

    def post(module, args, output):
        depth[0] -= 1

    original_backward = torch.autograd.backward

    def stopping_backward(*args, **kwargs):
        counts["backward"] += 1
        if counts["backward"] >= stop_at_backward:
            raise _Stop
        return original_backward(*args, **kwargs)

    def count_step(optimizer, args, kwargs):
        counts["step"] += 1

    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handles = []
    threads = torch.get_num_threads()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda), contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(seed)
        try:
            handles.append(register_module_forward_pre_hook(pre))
            handles.append(register_module_forward_hook(post, always_call=True))
            handles.append(register_optimizer_step_pre_hook(count_step))
            torch.autograd.backward = stopping_backward  # Tensor.backward calls torch.autograd.backward
            try:
                exec(code, scope)
            except _Stop:
                pass
        finally:
            torch.autograd.backward = original_backward
            for h in handles:
                h.remove()
            torch.set_num_threads(threads)
    cap = Captured(path=path, globals=scope, backward_calls=counts["backward"], optimizer_steps=counts["step"])
    _pick(cap, calls)
    return cap


# --- picking objects by type -------------------------------------------------------------------------


def _values(scope: dict[str, Any]) -> list[Any]:
    return [v for k, v in scope.items() if not k.startswith("__")]


def _pick(cap: Captured, calls: list[tuple[nn.Module, tuple]]) -> None:
    values = _values(cap.globals)
    optimizers = [v for v in values if isinstance(v, torch.optim.Optimizer)]
    if len(optimizers) != 1:
        cap.problems.append(f"{len(optimizers)} optimizers in the globals")
        return
    cap.optimizer = opt = optimizers[0]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    losses = [v for v in values if isinstance(v, nn.modules.loss._Loss)]
    modules = [v for v in values if isinstance(v, nn.Module) and not isinstance(v, nn.modules.loss._Loss)]
    if not modules:
        cap.problems.append("no nn.Module in the globals")
        return

    def score(m):
        params = list(m.parameters())
        return sum(id(p) in in_opt for p in params), len(params)

    cap.model = model = max(modules, key=score)
    held = score(model)[0]
    if held < len(in_opt) and held < score_of_all(modules, in_opt):
        cap.problems.append("the optimizer's parameters are spread over several top-level modules")
    own = {id(p) for p in model.parameters()}

    first = None
    for i, (m, args) in enumerate(calls):
        ps = {id(p) for p in m.parameters()}
        if m is model or (ps and ps <= own):
            first = i
            break
    if first is None:
        cap.problems.append("the model was never called at top level")
        return
    inputs = calls[first][1]
    target = None
    for m, args in calls[first + 1:]:
        if isinstance(m, nn.modules.loss._Loss) and len(args) >= 2:
            cap.loss_fn = m
            target = args[1]
            break
        if m is model:
            break
    if cap.loss_fn is None and len(losses) == 1:
        cap.problems.append("a loss module exists but was not called on the model's output")
    if cap.loss_fn is None:
        cap.problems.append("no loss module called on the model's output (the loss is computed inline)")
    x = inputs[0] if len(inputs) == 1 else inputs
    cap.batch = (x, target)

    loaders = [v for v in values if isinstance(v, DataLoader)]
    if loaders:
        # the training loader: the one whose batches have the first input's shape (a validation loader may not)
        fits = [l for l in loaders if isinstance(x, torch.Tensor) and l.batch_size == x.shape[0]] or loaders
        cap.data, cap.data_kind = fits[0], "loader"
        if target is not None and target is x:  # criterion(model(xb), xb): the input is the target
            cap.data = InputAsTarget(fits[0])
        return
    tensors = _source_tensors(values, x, target)
    if tensors is not None:
        cap.data = DataLoader(TensorDataset(*tensors), batch_size=int(x.shape[0]), shuffle=True)
        cap.data_kind = "tensors"
        return
    cap.data = x if target is None else (x, target)
    cap.data_kind = "batch"


class InputAsTarget:
    """The batches ``(x,)`` of a loader as ``(x, x)``, for a script whose loss compares the output with the input."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            yield x, x

    def __len__(self):
        return len(self.loader)


def score_of_all(modules, in_opt) -> int:
    return len({id(p) for m in modules for p in m.parameters() if id(p) in in_opt})


def _source_tensors(values: list[Any], x: Any, target: Any) -> tuple | None:
    """The global tensors the batch was indexed from: X with every row of x among its rows, y with y[rows] == target."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        return None
    tensors = [v for v in values if isinstance(v, torch.Tensor) and v.dim() >= 1]
    flat_x = x.detach().reshape(len(x), -1)
    best = None
    for t in sorted(tensors, key=len, reverse=True):
        if t.dtype != x.dtype or t.shape[1:] != x.shape[1:] or len(t) < len(x):
            continue
        flat_t = t.detach().reshape(len(t), -1)
        rows = []
        for row in flat_x:
            hit = ((flat_t == row) | (flat_t.isnan() & row.isnan())).all(1).nonzero()
            if len(hit) == 0:
                break
            rows.append(int(hit[0]))
        else:
            best = (t, torch.tensor(rows))
            break
    if best is None:
        return None
    X, rows = best
    if target is None:
        return (X,)
    for t in tensors:
        if len(t) == len(X) and t.dtype == target.dtype and t.shape[1:] == target.shape[1:]:
            if torch.equal(t[rows], target):
                return (X, t)
    return None
