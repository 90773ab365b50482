"""Scoped interception of the few torch calls that hooks cannot see.

``loss.backward()`` (the loss tensor and the backward time), loss functions of
``torch.nn.functional`` (evaluation losses and class targets; ``nn`` loss modules call these too),
the DataLoader iterator's ``__next__`` (time waiting for data), ``Optimizer.zero_grad`` (finds
an optimizer that never steps), gradient clipping (called before ``backward()`` it never clips) and
``LRScheduler.step`` (a per-epoch schedule stepped every batch); the closure of
``optimizer.step(closure)`` is wrapped for that one call (forward and backward run inside it). The
patches are installed while at least one listener is registered and the originals restored when
the last one leaves, so debuggers may nest and exit in any order. Nothing is patched at import time.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler
from torch.utils.data import dataloader

LOSS_FUNCTIONS = (
    "cross_entropy",
    "nll_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "kl_div",
    "poisson_nll_loss",
    "gaussian_nll_loss",
    "soft_margin_loss",
    "multilabel_soft_margin_loss",
    "multi_margin_loss",
    "hinge_embedding_loss",
    "cosine_embedding_loss",
    "margin_ranking_loss",
    "triplet_margin_loss",
    "ctc_loss",
)
# name -> what it does. clip_grads_with_norm_(params, max_norm, total_norm) is the second half of
# clip_grad_norm_, which accelerate >= 1.16 (and so the HF Trainer) calls after its own total norm.
CLIP_FUNCTIONS = {"clip_grad_norm_": "clip_grad_norm_", "clip_grad_value_": "clip_grad_value_",
                  "clip_grads_with_norm_": "clip_grad_norm_"}


class Listener(Protocol):
    def before_backward(self, tensor: torch.Tensor) -> None: ...
    def after_backward(self, tensor: torch.Tensor, elapsed_s: float, failed: bool) -> None: ...
    def on_loss(self, name: str, input: Any, target: Any, output: Any, options: dict[str, Any]) -> None: ...
    def on_batch(self, elapsed_s: float, iterator: Any = None) -> None: ...
    def on_zero_grad(self, optimizer: Any) -> None: ...
    def on_clip(self, function: str, max_value: Any) -> None: ...
    def on_scheduler_step(self, scheduler: Any) -> None: ...


_lock = threading.Lock()
_listeners: list[Listener] = []
_originals: list[tuple[Any, str, Any]] = []
_local = threading.local()  # re-entrancy: Tensor.backward calls torch.autograd.backward


def add_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            return
        if not _listeners:
            _install()
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener not in _listeners:
            return
        _listeners.remove(listener)
        if not _listeners:
            _uninstall()


def _replace(owner: Any, name: str, make_wrapper) -> None:
    original = getattr(owner, name)
    _originals.append((owner, name, original))
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(owner, name, wrapper)


def _install() -> None:
    _replace(torch.Tensor, "backward", _wrap_backward)
    _replace(torch.autograd, "backward", _wrap_autograd_backward)
    _replace(dataloader._BaseDataLoaderIter, "__next__", _wrap_next)
    _replace(torch.optim.Optimizer, "zero_grad", _wrap_zero_grad)
    for name in LOSS_FUNCTIONS:
        if hasattr(F, name):
            _replace(F, name, functools.partial(_wrap_loss, name))
    for owner in (torch.nn.utils, torch.nn.utils.clip_grad):
        for name, does in CLIP_FUNCTIONS.items():
            if hasattr(owner, name):
                _replace(owner, name, functools.partial(_wrap_clip, does))
    # Schedulers that override step() are patched too; re-entrant calls (a SequentialLR's) count once.
    for cls in {lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau, lr_scheduler.CosineAnnealingWarmRestarts}:
        if "step" in vars(cls):
            _replace(cls, "step", _wrap_scheduler_step)
    from modeldebug.collect import amp  # GradScaler and Accelerator.backward: the loss in the user's units

    amp.install(_replace, _listeners)


def _uninstall() -> None:
    from modeldebug.collect import amp

    amp.uninstall()
    while _originals:
        owner, name, original = _originals.pop()
        setattr(owner, name, original)


def _busy() -> bool:
    return getattr(_local, "busy", False)


def hide_our_frames(exc: BaseException, ours: str = __file__) -> None:
    """Take the wrapper frames of the module at ``ours`` (this one by default) out of ``exc``'s
    traceback, before a bare ``raise`` passes it on (which adds no frame): the user's traceback and
    the crash report show their own line, and the exception object is the one raised."""
    try:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == ours:
            tb = tb.tb_next
        if tb is None:
            return  # raised in our own code: nothing of the user's to show instead
        exc.__traceback__ = tb
        while tb is not None:
            nxt = tb.tb_next
            while nxt is not None and nxt.tb_frame.f_code.co_filename == ours:
                nxt = nxt.tb_next
            tb.tb_next = nxt
            tb = nxt
    except Exception:  # a traceback we cannot edit is shown as it is
        pass


def _run_backward(original, loss, args, kwargs):
    if _busy() or not _listeners:
        return original(*args, **kwargs)
    listeners = list(_listeners)
    for listener in listeners:
        listener.before_backward(loss)
    _local.busy = True
    failed = True
    start = time.perf_counter()
    try:
        result = original(*args, **kwargs)
        failed = False
        return result
    finally:
        elapsed = time.perf_counter() - start
        _local.busy = False
        for listener in listeners:
            listener.after_backward(loss, elapsed, failed)


def _wrap_backward(original):
    def backward(self, *args, **kwargs):
        try:
            return _run_backward(original, self, (self, *args), kwargs)
        except BaseException as exc:
            hide_our_frames(exc)
            raise

    return backward


def _wrap_autograd_backward(original):
    def backward(tensors, *args, **kwargs):
        try:
            first = tensors if isinstance(tensors, torch.Tensor) else next(iter(tensors), None)
            return _run_backward(original, first, (tensors, *args), kwargs)
        except BaseException as exc:
            hide_our_frames(exc)
            raise

    return backward


def _wrap_next(original):
    def __next__(self):
        start = time.perf_counter()
        try:
            batch = original(self)
        except BaseException as exc:
            hide_our_frames(exc)
            raise
        if not _listeners:
            return batch
        elapsed = time.perf_counter() - start
        for listener in list(_listeners):
            listener.on_batch(elapsed, self)
        return batch

    return __next__


def _wrap_zero_grad(original):
    def zero_grad(self, *args, **kwargs):
        if _listeners:
            for listener in list(_listeners):
                listener.on_zero_grad(self)
        try:
            return original(self, *args, **kwargs)
        except BaseException as exc:
            hide_our_frames(exc)
            raise

    return zero_grad


def _wrap_clip(name, original):
    def clip(parameters, *args, **kwargs):
        if _listeners:
            max_value = args[0] if args else kwargs.get("max_norm", kwargs.get("clip_value"))
            for listener in list(_listeners):
                listener.on_clip(name, max_value)
        try:
            return original(parameters, *args, **kwargs)
        except BaseException as exc:
            hide_our_frames(exc)
            raise

    return clip


def _wrap_scheduler_step(original):
    def step(self, *args, **kwargs):
        # The constructor's own first step() (_step_count 0) is not the user's call.
        if _listeners and not getattr(_local, "scheduling", False) and getattr(self, "_step_count", 1) > 0:
            for listener in list(_listeners):
                listener.on_scheduler_step(self)
        outer = not getattr(_local, "scheduling", False)
        _local.scheduling = True
        try:
            return original(self, *args, **kwargs)
        except BaseException as exc:
            hide_our_frames(exc)
            raise
        finally:
            if outer:
                _local.scheduling = False

    return step


def closure_of(args: tuple, kwargs: dict) -> Any:
    """The closure handed to ``Optimizer.step`` (``args`` begin with the optimizer), or None."""
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    return closure if callable(closure) else None


def with_closure(args: tuple, kwargs: dict, closure: Any) -> tuple[tuple, dict]:
    """``Optimizer.step``'s arguments with its closure replaced."""
    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs


def watch_closure(closure, enter, leave):
    """``closure`` for ``optimizer.step(closure)`` with ``enter()`` before each call and
    ``leave(token, calls)`` after each return (``token`` is what ``enter`` gave, ``calls`` how many
    returned before). The closure runs once per call as given and what it raises passes through;
    ``enter`` and ``leave`` are guarded callbacks that never raise."""
    calls = 0

    def closure_watched(*args, **kwargs):
        nonlocal calls
        token = enter()
        try:
            result = closure(*args, **kwargs)
        except BaseException as exc:
            hide_our_frames(exc)
            raise
        leave(token, calls)
        calls += 1
        return result

    return closure_watched


def _wrap_loss(name, original):
    def loss_fn(*args, **kwargs):
        # Under a torch function mode (``with torch.device(...)``, eval_losses.py) the original calls
        # this wrapper again through the mode: only the outer call is the script's.
        outer = not getattr(_local, "in_loss", False)
        _local.in_loss = True
        try:
            output = original(*args, **kwargs)
        except BaseException as exc:
            hide_our_frames(exc)
            raise
        finally:
            _local.in_loss = not outer
        if outer and _listeners and not _busy():
            input = args[0] if args else kwargs.get("input")
            target = args[1] if len(args) > 1 else kwargs.get("target")
            for listener in list(_listeners):
                listener.on_loss(name, input, target, output, kwargs)
        return output

    return loss_fn
