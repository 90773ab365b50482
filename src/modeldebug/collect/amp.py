"""Mixed precision and framework loss units: what a ``GradScaler`` (and accelerate's ``backward``)
do to the numbers the monitor records, undone.

* ``scaler.scale(loss).backward()`` backpropagates ``loss * scale`` (65536 by default): the step's
  loss is the tensor the scaler was given, and the scale it used is kept as the step's
  ``loss_scale``.
* ``clip_grad_norm_`` before ``scaler.unscale_(optimizer)`` clips the scaled gradients (counted as
  ``clips_scaled``; the norm recorded is divided by the scale).
* ``scaler.step(optimizer)`` skips ``optimizer.step()`` when the gradients hold inf/NaN (and halves
  the scale in ``update()``): such a step is still a step, written with ``scaler_skipped`` (its
  gradient norm is not measured: an overflow the scaler handles is not a NaN bug).
* accelerate's ``Accelerator.backward(loss)`` backpropagates ``loss / gradient_accumulation_steps``
  (scaled, under fp16): the step's loss is the ``loss`` it was given.

The wrappers are installed with the other patches (``collect/patches.py``: while a Debugger
watches) and call each listener's ``amp`` (an :class:`AmpWatch`). Gradient norms read at
``optimizer.step()`` need no correction: ``scaler.step`` unscales the gradients before it.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable

import torch

from modeldebug.collect.steps import now

if TYPE_CHECKING:
    from modeldebug.collect.hooks import Hooks
    from modeldebug.collect.steps import Step

ACCELERATOR_MODULE = "accelerate.accelerator"
# FSDP's ShardedGradScaler overrides scale and unscale_ (without calling GradScaler's): wrapped too,
# when its module is imported (only ever explicitly, by the script).
SHARDED_SCALER_MODULE = "torch.distributed.fsdp.sharded_grad_scaler"


class _Local(threading.local):
    loss = None  # (a default in every thread: a missing attribute costs an AttributeError each backward)


_local = _Local()  # the loss of the Accelerator.backward call in progress


class AmpWatch:
    """One Debugger's view of the scalers and accelerate backward calls of its run."""

    def __init__(self, hooks: "Hooks"):
        self.hooks = hooks
        self.guard = hooks.guard
        # (weakref to the scaled loss, the loss, the scale): until the backward of the scaled loss
        self._scaled: tuple[Any, torch.Tensor, Any] | None = None
        self._grads_scale: Any = None  # the scale the gradients carry until unscale_ (or step)
        self.scaled_steps = 0  # optimizer steps on gradients still scaled (scaler.step bypassed)
        self._first_scaled: tuple | None = None  # (step, scale, optimizer class, its unscaled gradient norm)

    # ------------------------------------------------------------------ the loss in the user's units

    def loss_value(self, tensor: torch.Tensor, st: "Step") -> torch.Tensor:
        """What the tensor given to ``backward`` stands for (detached): the loss before the scaler
        and accelerate's division by the accumulation steps, else the tensor itself. A scaled
        loss's scale becomes the step's ``loss_scale``."""
        scaled, self._scaled = self._scaled, None
        ours = scaled is not None and scaled[0]() is tensor
        if ours:
            self._grads_scale = scaled[2]
            if st.loss_scale is None:
                st.loss_scale = scaled[2]
        user = getattr(_local, "loss", None)
        if user is not None:
            return user
        return scaled[1] if ours else tensor.detach()

    def on_scale(self, scaler, loss, scaled) -> None:
        if self.guard.broken or self.guard.replaying:
            return
        try:
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or scaled is loss:
                return
            scale = getattr(scaler, "_scale", None)
            if isinstance(scale, torch.Tensor):
                # (the scale lives on the device and update() changes it in place: a copy, no sync)
                scale = scale.detach().clone() if scale.is_cuda else float(scale)
            else:
                scale = None
            self._scaled = (weakref.ref(scaled), loss.detach(), scale)
        except Exception as exc:
            self.guard.fail("on_scale", exc)

    def gradient_scale(self) -> Any:
        """The scale the gradients are still multiplied by (a scaled backward, no ``unscale_`` yet), or None."""
        return self._grads_scale

    def on_unscale(self) -> None:
        self._grads_scale = None

    def stepping_scaled(self, optimizer, st: "Step") -> None:
        """``optimizer.step()`` on gradients still multiplied by the loss scale (no ``unscale_``, not
        through ``scaler.step``): counted, and the step's gradient norm recorded in the gradients'
        own units (the update applied is the scale times larger, for SGD)."""
        scale, self._grads_scale = self._grads_scale, None
        self.scaled_steps += 1
        if st.grad_norm is not None and scale is not None:
            st.grad_norm = st.grad_norm / scale
        if self._first_scaled is None:
            self._first_scaled = (st.index, scale, type(optimizer).__name__, st.grad_norm)

    def finish(self) -> None:
        """At stop: the steps taken on scaled gradients, if any (event ``scaled_optimizer_steps``)."""
        if self._first_scaled is None:
            return
        from modeldebug.events import ScaledOptimizerSteps

        (step, scale, optimizer, norm), self._first_scaled = self._first_scaled, None
        count, self.scaled_steps = self.scaled_steps, 0
        try:
            steps = self.hooks.steps
            steps.writer.event(ScaledOptimizerSteps(
                steps=count, optimizer_steps=steps.count, first_step=step, optimizer=optimizer,
                scale=float(scale) if scale is not None else None, grad_norm=float(norm) if norm is not None else None))
        except Exception as exc:  # (at stop: the rest of the run is still written)
            self.guard.fail("scaled_optimizer_steps", exc)

    # ------------------------------------------------------------------ skipped steps

    def before_scaler_step(self, optimizer) -> list[bool] | None:
        """A flag set if ``optimizer.step()`` runs inside ``scaler.step`` (then it was not skipped)."""
        self._grads_scale = None  # (step unscales them first)
        if self.guard.broken or self.guard.replaying or not isinstance(optimizer, torch.optim.Optimizer):
            return None
        ran = [False]
        try:
            handle = optimizer.register_step_post_hook(lambda *_: ran.__setitem__(0, True))
        except Exception:
            return None
        ran.append(handle)
        return ran

    def after_scaler_step(self, optimizer, token) -> None:
        if token is None:
            return
        token[1].remove()
        if token[0] or self.guard.broken:
            return
        try:
            self._skipped(optimizer)
        except Exception as exc:
            self.guard.fail("scaler_step", exc)

    def _skipped(self, optimizer) -> None:
        """``scaler.step`` skipped ``optimizer.step()``: the iteration closes as a skipped step."""
        from modeldebug.collect.hooks import step_closes

        hooks = self.hooks
        if not hooks.watched.owns(optimizer):
            return
        steps = hooks.steps
        if steps.state is None and not steps.pending_backward:
            return  # no backward of a watched model since the last step
        t = now()
        st = steps.current(t)
        st.scaler_skipped = True
        st.stepped.add(id(optimizer))
        hooks.backward_seen = False
        st.monitor_s += now() - t
        if not steps.manual and step_closes(hooks.watched, optimizer, st.stepped):
            steps.close()


# ---------------------------------------------------------------------- the wrappers


def install(replace: Callable[[Any, str, Callable], None], listeners: list) -> None:
    """Wrap ``GradScaler.scale`` and ``.step``, and ``Accelerator.backward`` (now, or once
    accelerate has defined it), with ``replace`` (patches' reference-counted replacement)."""
    from torch.amp.grad_scaler import GradScaler

    _wrap_scaler(GradScaler, replace, listeners)
    replace(GradScaler, "step", lambda original: _wrap_step(original, listeners))
    if not _patch_accelerator(replace, listeners):
        _waiting.append(_WhenDefined(replace, listeners))
        sys.meta_path.insert(0, _waiting[-1])
    def sharded() -> None:
        try:
            _wrap_scaler(getattr(sys.modules.get(SHARDED_SCALER_MODULE), "ShardedGradScaler", None), replace, listeners)
        except Exception:  # (runs at the end of the script's own import: it must not fail there)
            pass

    if SHARDED_SCALER_MODULE in sys.modules:
        sharded()
    else:
        from modeldebug.collect.autopatch import _AfterImport

        _waiting.append(_AfterImport(SHARDED_SCALER_MODULE, sharded))
        sys.meta_path.insert(0, _waiting[-1])


def _wrap_scaler(cls, replace, listeners) -> None:
    """``scale`` and ``unscale_`` of a scaler class that defines them itself."""
    for name, wrap in (("scale", _wrap_scale), ("unscale_", _wrap_unscale)):
        if cls is not None and name in vars(cls):
            replace(cls, name, lambda original, wrap=wrap: wrap(original, listeners))


def uninstall() -> None:
    while _waiting:
        finder = _waiting.pop()
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)


def _patch_accelerator(replace, listeners) -> bool:
    """Wrap ``Accelerator.backward`` if accelerate has defined it; False if not yet."""
    cls = getattr(sys.modules.get(ACCELERATOR_MODULE), "Accelerator", None)
    if cls is None or not callable(getattr(cls, "backward", None)):
        return False
    if not getattr(cls.backward, "_modeldebug_wrapped", False):
        replace(cls, "backward", lambda original: _wrap_accelerator_backward(original, listeners))
    return True


_waiting: list[Any] = []  # import finders of ours still waiting for their module


class _WhenDefined:
    """A meta path finder that finds nothing: at the imports of accelerate's modules it looks whether
    ``Accelerator`` is defined yet (a zero-code run starts inside accelerate's own ``import torch``,
    before the class exists) and wraps its ``backward`` then."""

    def __init__(self, replace, listeners):
        self.replace, self.listeners = replace, listeners

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("accelerate") and self in sys.meta_path:
            try:
                if _patch_accelerator(self.replace, self.listeners):
                    sys.meta_path.remove(self)
            except Exception:  # (an import of the user's must never fail for us)
                pass
        return None


def _watches(listeners: list) -> list[AmpWatch]:
    return [w for w in (getattr(listener, "amp", None) for listener in list(listeners)) if w is not None]


def _user_error(exc: BaseException) -> None:
    """The user's exception goes on without our wrapper frames in its traceback."""
    from modeldebug.collect.patches import hide_our_frames

    hide_our_frames(exc, __file__)


def _wrap_scale(original, listeners):
    def scale(self, outputs):
        try:
            scaled = original(self, outputs)
        except BaseException as exc:
            _user_error(exc)
            raise
        if listeners and isinstance(outputs, torch.Tensor):
            for watch in _watches(listeners):
                watch.on_scale(self, outputs, scaled)
        return scaled

    return scale


def _wrap_unscale(original, listeners):
    def unscale_(self, optimizer):
        try:
            result = original(self, optimizer)
        except BaseException as exc:
            _user_error(exc)
            raise
        if listeners:
            for watch in _watches(listeners):
                watch.on_unscale()
        return result

    return unscale_


def _wrap_step(original, listeners):
    def step(self, optimizer, *args, **kwargs):
        watches = _watches(listeners) if listeners and getattr(self, "_enabled", False) else []
        tokens = [w.before_scaler_step(optimizer) for w in watches]
        try:
            result = original(self, optimizer, *args, **kwargs)
        except BaseException as exc:
            for token in tokens:
                if token is not None:
                    token[1].remove()
            _user_error(exc)
            raise
        for watch, token in zip(watches, tokens):
            watch.after_scaler_step(optimizer, token)
        return result

    return step


def _wrap_accelerator_backward(original, listeners):
    def backward(self, loss, *args, **kwargs):
        outer = listeners and getattr(_local, "loss", None) is None and isinstance(loss, torch.Tensor) \
            and loss.numel() == 1
        if outer:
            _local.loss = loss.detach()
        try:
            return original(self, loss, *args, **kwargs)
        except BaseException as exc:
            _user_error(exc)
            raise
        finally:
            if outer:
                _local.loss = None

    backward._modeldebug_wrapped = True
    return backward
