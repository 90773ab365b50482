"""Validation losses a script computes by hand from the model's output (``((model(x) - y) ** 2).mean()``,
``-(y * logp).sum(1).mean()``), which no torch loss function sees.

After a watched model's forward with grad off (an evaluation pass), a torch function mode follows
the tensors computed from its output until the next forward: it is pushed when the forward returns
and popped when the next forward begins (so the model's own ops are never intercepted), and gone
once training resumes. Training steps never run under it; their only cost is the check that it is
not pushed.

What is recorded, per evaluation batch: the first value that (1) is one number, (2) comes from the
output through floating-point ops only, (3) met a tensor that is not the output's on the way (the
labels or targets it is compared with: a sample's mean, a mean confidence, an output norm never
do), and (4) the script keeps: reads it (``.item()``, ``float()``,
``tolist()``, ``numpy()``, printing) or adds it to a value of another batch (``total += err``).
Accuracy and counts go through a comparison or ``argmax`` (boolean or integer tensors) and are never
followed; rounding ops end the chain too. Derived values stand for the number they come from
through copies and views, and weighted by a whole count (``err * len(x)`` records ``err``); any
other function of it is the number kept (``-mean``, ``mse.sqrt()``), so a loss written the same way in training and
validation has the same units. A batch whose loss a torch loss function (or a framework's callback)
recorded in the same evaluation pass is left to it. A pass with a negative value records none (a
loss is not below zero: that is a log-likelihood the script negates in Python, after reading it).
A value may still be a metric that is not a loss (a mean absolute error beside an MSE training
loss): the rules read it as the validation loss (``loss_fn`` "computed").
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from modeldebug.collect.compiled import compiling

if TYPE_CHECKING:
    from modeldebug.collect.hooks import Guard
    from modeldebug.collect.writer import Validation

_T = torch.Tensor
READS = frozenset({_T.item, _T.tolist, _T.numpy, _T.__float__, _T.__format__, _T.__repr__})
# Floating-point results that are not differentiable in the output: the chain ends there.
STOPS = frozenset({"round", "round_", "floor", "floor_", "ceil", "ceil_", "trunc", "trunc_", "fix", "sign",
                   "sgn", "frac", "histc", "histogram", "heaviside", "signbit"})
# Ops after which one number is still the same number, and those that weight it by a whole count.
SAME = frozenset({"detach", "detach_", "cpu", "cuda", "to", "clone", "float", "double", "half", "bfloat16", "type",
                  "contiguous", "view", "reshape", "squeeze", "unsqueeze", "flatten", "sum", "mean", "__getitem__",
                  "requires_grad_", "__get__"})
SCALES = frozenset({"mul", "__mul__", "__rmul__", "__imul__", "mul_"})
MAX_BATCHES = 100_000  # evaluation batches kept per evaluation pass


class _Batch:
    __slots__ = ("train_mode", "value")

    def __init__(self, train_mode: bool):
        self.train_mode = train_mode
        self.value: torch.Tensor | None = None


class _Follow(TorchFunctionMode):
    def __init__(self, owner: "EvalLosses"):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        owner = self.owner
        if owner.batch is not None and not owner.guard.broken and not compiling():
            try:
                owner.saw(func, args, kwargs, out)
            except Exception as exc:  # never into the script: this part switches off
                owner.fail(exc)
        return out


class EvalLosses:
    """Per evaluation pass: the batches, the tensors followed, the mode while it is pushed."""

    def __init__(self, validation: "Validation", guard: "Guard"):
        self.validation = validation
        self.guard = guard
        self.batch: _Batch | None = None  # the batch whose output is followed
        self.batches: list[_Batch] = []
        self._followed = WeakIdKeyDictionary()  # tensor -> (batch, the number it stands for or None)
        self._mode: _Follow | None = None
        self._thread: int | None = None
        self._pending = False  # batches not yet given to validation
        self._seen_at_forward = 0  # validation losses recorded when the last forward began
        self._seen_before = 0  # ... when the pass's first forward began
        self.off = False

    # ------------------------------------------------------------------ the hooks' calls

    def forward_begins(self) -> None:
        """A watched model's forward (any): its ops run without the mode; the followed batch ends."""
        if self._mode is not None:
            self._pop()
        self.batch = None
        self._seen_at_forward = self.validation.batches

    def forward_done(self, output: Any, train_mode: bool) -> None:
        """An evaluation forward with grad off returned: follow its output until the next forward."""
        if self.off or len(self.batches) >= MAX_BATCHES:
            return
        seeds = [t for t in _tensors(output) if t.is_floating_point()]
        if not seeds:
            return
        if not self.batches:
            self._seen_before = self._seen_at_forward
        self.batch = _Batch(train_mode)
        self.batches.append(self.batch)
        for t in seeds:
            self._followed[t] = (self.batch, None, False)
        if not self._pending:
            self._pending = True
            self.validation.pending = self.end
        if self._mode is None:
            self._push()

    def end(self) -> None:
        """The evaluation pass is over (training resumes, the run stops): its losses go to validation."""
        try:
            self.forward_begins()
            # A torch loss function or the framework (Lightning's logged val_loss, the HF Trainer's
            # eval_loss) recorded this pass's loss: theirs is the one.
            theirs = self.validation.batches != self._seen_before
            kept = [b for b in self.batches if b.value is not None] if not theirs else []
            # A loss is not below zero: a negative number is the script's log-likelihood, negated
            # in Python after it was read (``-logp.mean().item()``), so not in the loss's units.
            if kept and torch.stack([b.value.float().reshape(()) for b in kept]).min().item() >= 0:
                for b in kept:
                    self.validation.add_computed(b.value, b.train_mode)
        except Exception as exc:
            self.fail(exc)
        self.batches, self.batch, self._pending = [], None, False
        self._followed = WeakIdKeyDictionary()
        self.validation.pending = None

    def fail(self, exc: Exception) -> None:
        self.off = True
        self.batch = None
        if self._mode is not None:
            self._pop()

    # ------------------------------------------------------------------ the mode's calls

    def saw(self, func, args: tuple, kwargs: dict | None, out: Any) -> None:
        followed = self._followed
        if func in READS:
            info = followed.get(args[0]) if args and isinstance(args[0], _T) else None
            if info is not None and info[1] is not None:
                _keep(*info)
            return
        current, earlier, loose, target = [], [], False, False
        for t in _inputs(args, kwargs):
            info = followed.get(t)
            if info is None:
                loose = loose or t.numel() == 1  # an accumulator of the script's own
                target = target or t.numel() > 1  # what the output is compared with (labels, targets)
            elif info[0] is self.batch:
                current.append(info)
            else:
                earlier.append(info)
        if not current and not earlier:
            return
        if earlier or loose:  # a value of this batch added to another batch's, or to a total
            for info in current + earlier:
                if info[1] is not None:
                    _keep(*info)
        name = getattr(func, "__name__", "")
        if earlier or name in STOPS:
            return
        origins = {id(o): o for _, o, _ in current if o is not None}
        one = next(iter(origins.values())) if len(origins) == 1 else None
        target = target or any(met for _, _, met in current)
        for r in _tensors(out):
            if not r.is_floating_point() or name.endswith("_") and r is args[0] and r in followed:
                continue  # (an in-place op on a followed tensor keeps what it stood for)
            if r.numel() != 1:
                origin = one
            elif one is not None and (name in SAME or name in SCALES and _whole_number(args)):
                origin = one  # the same number (a copy, a view), or weighted by a count (a batch size)
            else:
                origin = r  # a reduction of the output, a function of one number, or a sum of several
            followed[r] = (self.batch, origin, target)

    # ------------------------------------------------------------------ the mode on torch's stack

    def _push(self) -> None:
        self._mode = _Follow(self)
        self._thread = threading.get_ident()
        torch._C._push_on_torch_function_stack(self._mode)

    def _pop(self) -> None:
        """Take our mode off this thread's stack, putting back any the script pushed above it."""
        mode, self._mode = self._mode, None
        if self._thread != threading.get_ident():
            self.batch = None  # (another thread's stack: the mode stays there, idle)
            return
        above = []
        while torch._C._len_torch_function_stack():
            top = torch._C._pop_torch_function_stack()
            if top is mode:
                break
            above.append(top)
        for m in reversed(above):
            torch._C._push_on_torch_function_stack(m)


def _keep(batch: _Batch, origin: torch.Tensor, target: bool) -> None:
    # Only a number that compared the output with something else (the labels, the targets) is a
    # loss: a generator's sample statistics, a mean confidence or an output norm are not.
    if batch.value is None and target:
        batch.value = origin.detach()


def _whole_number(args: tuple) -> bool:
    return any(isinstance(a, int) and not isinstance(a, bool) for a in args)


def _inputs(args: tuple, kwargs: dict | None):
    for a in (*args, *(kwargs or {}).values()):
        if isinstance(a, _T):
            yield a
        elif isinstance(a, (list, tuple)):
            for b in a:
                if isinstance(b, _T):
                    yield b


def _tensors(out: Any):
    """The tensors of an output: itself, or those of a tuple, list or dict (a ``ModelOutput``)."""
    if isinstance(out, _T):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, _T):
                yield o
    elif isinstance(out, dict):
        for o in out.values():
            if isinstance(o, _T):
                yield o
