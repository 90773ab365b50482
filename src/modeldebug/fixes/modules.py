"""Candidates that act on the model, its inputs and its ops in a `modeldebug fix` re-run.

Every one is applied from the outside: global module hooks registered before the collector's (so
the collector sees the fixed call, as it would see the user's own fix), instance ``forward``
overrides on the named layers, or wrappers of torch functions. Imported by ``fixes/child.py`` only
when its candidate needs it; every hook goes through child's guard (an internal failure switches
the candidate off and the script runs on).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_mod

RELU_FAMILY = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish")
SATURATING = ("Tanh", "Sigmoid", "Softsign", "Hardtanh", "Hardsigmoid")
STD_FLOOR = 1e-6  # a constant input feature is centred, not blown up


class TopLevel:
    """The outermost module calls of the script (depth 1 in the module call stack) of modules that
    hold parameters, loss modules excluded: the model as the training loop calls it."""

    def __init__(self, guard: Callable[[Callable], Callable]):
        self.depth = 0
        self.pre_calls: list[Callable] = []  # f(module, args) -> new args or None
        self.first_calls: list[Callable] = []  # f(module), once per module
        self.post_calls: list[Callable] = []  # f(module)
        self._seen: set[int] = set()
        self._guard = guard
        module_mod.register_module_forward_pre_hook(self._pre)
        module_mod.register_module_forward_hook(self._post, always_call=True)

    @staticmethod
    def _is_model(module: nn.Module) -> bool:
        if isinstance(module, nn.modules.loss._Loss):
            return False
        return next(iter(module.parameters()), None) is not None

    def _pre(self, module, args):
        if torch.compiler.is_compiling():
            return None
        self.depth += 1
        if self.depth != 1:
            return None
        return self._guard(self._at_top)(module, args)

    def _at_top(self, module, args):
        if not self._is_model(module):
            return None
        if id(module) not in self._seen:
            self._seen.add(id(module))
            for call in self.first_calls:
                call(module)
        for call in self.pre_calls:
            new = call(module, args)
            if new is not None:
                args = new
        return args

    def _post(self, module, args, output):
        if torch.compiler.is_compiling():
            return None
        self.depth = max(0, self.depth - 1)
        if self.depth == 0 and self.post_calls:
            self._guard(self._at_top_end)(module)
        return None

    def _at_top_end(self, module):
        for call in self.post_calls:
            call(module)


# ---------------------------------------------------------------- inputs


def standardize_inputs() -> Callable:
    """(x - mean) / std of the model's first floating input, with the per-feature statistics of
    the first batch it sees (per channel for images, per last dim for sequences), on every top-level
    call whose input has that batch's per-sample shape (validation included: one transform for all
    the data; a model called in parts gets only the data standardised, not its hidden values)."""
    stats: list[tuple[torch.Size, torch.Tensor, torch.Tensor]] = []

    def pre(module, args):
        if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return None
        x = args[0]
        if x.dim() < 2:
            return None
        if not stats:
            if x.shape[0] < 2:
                return None
            dims = (0, *range(2, x.dim())) if x.dim() in (4, 5) else tuple(range(x.dim() - 1))
            with torch.no_grad():
                mean = x.detach().mean(dims, keepdim=True)
                std = x.detach().std(dims, keepdim=True).clamp_min(STD_FLOOR)
            stats.append((x.shape[1:], mean, std))
        shape, mean, std = stats[0]
        if x.shape[1:] != shape:
            return None
        return ((x - mean) / std, *args[1:])

    return pre


# ---------------------------------------------------------------- weights


def init_scheme(layer_types: list[str]) -> str:
    """Kaiming for a net of ReLU-family activations, Xavier when any saturating one (or none) is seen."""
    if any(t in SATURATING for t in layer_types) or not any(t in RELU_FAMILY for t in layer_types):
        return "xavier"
    return "kaiming"


def reinit(scheme: str) -> Callable:
    """At a model's first training call: its Linear, Conv and recurrent layers re-initialised
    (Kaiming-normal fan-in or Xavier-uniform weights, orthogonal recurrent weights, zero biases),
    norm layers reset; in place, so the optimizer keeps the same tensors."""
    done: set[int] = set()

    def first(module) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        with torch.no_grad():
            for sub in module.modules():
                if id(sub) in done:
                    continue
                done.add(id(sub))
                _reinit_layer(sub, scheme)

    return first


def _is_transposed_linear(layer: nn.Module, weight) -> bool:
    """transformers' ``Conv1D`` (GPT-2's linear layers): a Linear whose weight is stored [in, out]."""
    return (type(layer).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and weight.shape[1] == getattr(layer, "nf", None))


def _reinit_layer(layer: nn.Module, scheme: str) -> None:
    weight = getattr(layer, "weight", None)
    if _is_transposed_linear(layer, weight):
        layer = _Transposed(layer)  # (the init functions read fan-in from dim 1: a view [out, in])
        weight = layer.weight
    if isinstance(layer, (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, _Transposed)):
        if scheme == "kaiming":
            nn.init.kaiming_normal_(weight, nonlinearity="relu")
        else:
            nn.init.xavier_uniform_(weight)
        if getattr(layer, "bias", None) is not None:
            nn.init.zeros_(layer.bias)
    elif isinstance(layer, nn.RNNBase):
        for name, p in layer.named_parameters(recurse=False):
            if name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            elif name.startswith("weight"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("bias"):
                nn.init.zeros_(p)
    elif isinstance(layer, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)):
        if getattr(layer, "weight", None) is not None:
            nn.init.ones_(layer.weight)
        if getattr(layer, "bias", None) is not None:
            nn.init.zeros_(layer.bias)


class _Transposed:
    """A Conv1D seen as a Linear: its weight as the [out, in] view, initialised in place."""

    def __init__(self, layer: nn.Module):
        self.weight, self.bias = layer.weight.t(), getattr(layer, "bias", None)


# ---------------------------------------------------------------- layers


def named_layer(model: nn.Module, name: str) -> nn.Module | None:
    """The layer of ``model`` the run named ``name`` (qualified names may carry a model prefix or a
    compiled wrapper's ``_orig_mod.``)."""
    for qualified, sub in model.named_modules():
        bare = qualified.replace("_orig_mod.", "")
        if bare and (bare == name or name.endswith("." + bare)):
            return sub
    return None


def loss_input(layer: str, loss: str) -> Callable:
    """The probability layer that feeds the loss: dropped (CrossEntropyLoss and BCEWithLogitsLoss
    take the logits), or a softmax made a log_softmax (NLLLoss takes log-probabilities)."""

    def first(module) -> None:
        found = named_layer(module, layer)
        if found is None:
            return
        dim = getattr(found, "dim", None)
        if loss == "nll_loss" and isinstance(found, nn.Softmax):
            found.forward = lambda x: F.log_softmax(x, dim=dim)
        elif isinstance(found, (nn.Softmax, nn.Sigmoid, nn.LogSoftmax)):
            found.forward = lambda x: x

    return first


def leaky_relu(slope: float) -> Callable:
    """Every nn.ReLU of the model replaced by an nn.LeakyReLU (its negative side keeps a gradient),
    as the user would swap the module: the run then sees LeakyReLU layers."""

    def first(module) -> None:
        for parent in list(module.modules()):
            for name, child in list(parent._modules.items()):
                if type(child) is nn.ReLU:
                    parent._modules[name] = nn.LeakyReLU(slope, inplace=child.inplace)

    return first


def module_mode(train: bool) -> tuple[Callable, Callable]:
    """train=True: a forward with gradients on runs the model in train mode (model.train() at each
    training call). train=False: a forward without gradients runs in eval mode, the mode put back
    after the call."""
    restore: list[nn.Module] = []

    def pre(module, args):
        grad = torch.is_grad_enabled()
        if train and grad and not module.training:
            module.train()
        elif not train and not grad and module.training:
            module.eval()
            restore.append(module)
        return None

    def post(module) -> None:
        while restore:
            restore.pop().train()

    return pre, post


# ---------------------------------------------------------------- ops


def stable_ops(ops: list[str], eps: float) -> None:
    """The ops the NaN origin named, made safe at their singular point: log and sqrt of
    ``max(x, eps)``, a division by ``eps`` (with the divisor's sign) where the divisor is within it."""
    for op in ops:
        if op in ("log", "sqrt"):
            for owner in (torch, torch.Tensor):
                setattr(owner, op, _clamped(getattr(owner, op), eps))
        elif op == "div":
            for owner, name in ((torch, "div"), (torch, "true_divide"), (torch.Tensor, "div"),
                                (torch.Tensor, "__truediv__")):
                setattr(owner, name, _safe_divisor(getattr(owner, name), eps))


def _clamped(original: Callable, eps: float) -> Callable:
    @functools.wraps(original)
    def op(x, *args, **kwargs):
        try:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                x = x.clamp_min(eps)
        except Exception:  # (never into the user's code: the op as the script wrote it)
            pass
        return original(x, *args, **kwargs)

    return op


def _safe_divisor(original: Callable, eps: float) -> Callable:
    @functools.wraps(original)
    def op(a, b, *args, **kwargs):
        try:
            if isinstance(b, torch.Tensor) and b.is_floating_point():
                b = torch.where(b.abs() < eps, torch.full_like(b, eps) * torch.where(b < 0, -1.0, 1.0), b)
        except Exception:  # (never into the user's code: the op as the script wrote it)
            pass
        return original(a, b, *args, **kwargs)

    return op


# ---------------------------------------------------------------- schedules


def scheduler_per_epoch() -> None:
    """``scheduler.step()`` called every batch steps once per epoch: a call is passed on only when
    a DataLoader pass began since the scheduler's previous call (the previous call ended an epoch).
    Installed after the collector's wrappers, so the run counts the calls passed on."""
    from torch.optim import lr_scheduler
    from torch.utils.data import DataLoader

    passes = [0]
    last: dict[int, int | None] = {}
    iterate = DataLoader.__iter__

    @functools.wraps(iterate)
    def __iter__(self):
        passes[0] += 1
        return iterate(self)

    DataLoader.__iter__ = __iter__
    step = lr_scheduler.LRScheduler.step

    @functools.wraps(step)
    def per_epoch(self, *args, **kwargs):
        if id(self) not in last:  # the constructor's own first step
            last[id(self)] = None
            return step(self, *args, **kwargs)
        previous, last[id(self)] = last[id(self)], passes[0]
        if previous is None or previous == passes[0]:
            return None
        return step(self, *args, **kwargs)

    lr_scheduler.LRScheduler.step = per_epoch



# ---------------------------------------------------------------- clipping


def before_each_backward(first: Callable[[], None]) -> None:
    """``first()`` before every ``Tensor.backward`` and ``torch.autograd.backward`` call (the first
    calls the second: ``first`` must not mind running twice). Wraps the functions the collector has
    wrapped, so that it sees what ``first`` does before the backward, as a script's own; the
    collector's stop puts the originals back."""
    def wrap(original):
        @functools.wraps(original)
        def backward(*args, **kwargs):
            first()
            return original(*args, **kwargs)

        return backward

    torch.Tensor.backward = wrap(torch.Tensor.backward)
    torch.autograd.backward = wrap(torch.autograd.backward)


def clip_after_backward(guard: Callable[[Callable], Callable]) -> None:
    """A clipping call with no backward since the last optimizer step (or zero_grad) is held and
    made again, with the same arguments, before the step (after the step's backward): the
    clipping the script meant. Installed after the collector's wrappers, so the run sees the call
    where it is made. The held call returns the gradients' norm as it was, unclipped."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    utils = torch.nn.utils
    backward_since = [False]
    held: list[tuple[Callable, list, tuple, dict]] = []

    def seen_backward() -> None:
        backward_since[0] = True

    before_each_backward(seen_backward)

    def hold(original):
        @functools.wraps(original)
        def clip(parameters, *args, **kwargs):
            if backward_since[0]:
                return original(parameters, *args, **kwargs)
            params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
            try:
                grads = [p.grad.detach().flatten().to(torch.float32).cpu() for p in params if p.grad is not None]
                norm = torch.cat(grads).norm() if grads else torch.zeros(())
            except Exception:  # (never into the user's code: the call made where the script made it)
                return original(params, *args, **kwargs)
            held.append((original, params, args, kwargs))
            return norm

        return clip

    for name in ("clip_grad_norm_", "clip_grad_value_"):
        if hasattr(utils, name):
            setattr(utils, name, hold(getattr(utils, name)))

    def before_step(optimizer, args, kwargs) -> None:
        while held:
            original, params, a, k = held.pop(0)
            original(params, *a, **k)

    def after_step(optimizer, args, kwargs) -> None:
        backward_since[0] = False

    register_optimizer_step_pre_hook(guard(before_step))
    register_optimizer_step_post_hook(guard(after_step))


def move_zero_grad(guard: Callable[[Callable], Callable]) -> None:
    """An optimizer's ``zero_grad()`` called after a backward and before that optimizer's step (it
    would clear the gradients the step needs) is held, and made before the next backward instead:
    the order the script meant. Installed after the collector's wrappers, so the collector sees the
    zeroing where it is then made."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    backward_since = [False]
    held: dict[int, torch.optim.Optimizer] = {}
    base = torch.optim.Optimizer.zero_grad

    def zero_held() -> None:
        while held:
            _, optimizer = held.popitem()
            base(optimizer)

    zero = guard(zero_held)

    def before_backward() -> None:
        zero()
        backward_since[0] = True

    before_each_backward(before_backward)

    @functools.wraps(base)
    def zero_grad(self, *args, **kwargs):
        if backward_since[0]:
            held[id(self)] = self  # (its set_to_none choice is the default's: the gradients go)
            return None
        return base(self, *args, **kwargs)

    torch.optim.Optimizer.zero_grad = zero_grad

    def after_step(optimizer, args, kwargs) -> None:
        backward_since[0] = False

    register_optimizer_step_post_hook(guard(after_step))


def unscale_before_clip(guard: Callable[[Callable], Callable]) -> None:
    """Before each clipping call, ``scaler.unscale_(optimizer)`` for every optimizer holding the
    clipped parameters whose gradients the last GradScaler to scale a loss has not unscaled yet
    (the recipe of torch's AMP notes); ``scaler.step`` then skips its own unscale. Installed after
    the collector's wrappers, so the collector sees the clip of unscaled gradients."""
    import weakref

    from torch.amp.grad_scaler import GradScaler, OptState

    optimizers: weakref.WeakSet = weakref.WeakSet()
    scaler_ref: list = [None]
    base_init, base_scale = torch.optim.Optimizer.__init__, GradScaler.scale

    @functools.wraps(base_init)
    def init(self, *args, **kwargs):
        base_init(self, *args, **kwargs)
        optimizers.add(self)

    @functools.wraps(base_scale)
    def scale(self, outputs):
        scaler_ref[0] = weakref.ref(self)
        return base_scale(self, outputs)

    torch.optim.Optimizer.__init__ = init
    GradScaler.scale = scale

    def unscale(params: list) -> None:
        scaler = scaler_ref[0]() if scaler_ref[0] is not None else None
        if scaler is None or not scaler.is_enabled():
            return
        clipped = {id(p) for p in params}
        for optimizer in list(optimizers):
            if not any(id(p) in clipped for group in optimizer.param_groups for p in group["params"]):
                continue
            # (a defaultdict: read only for the optimizers clipped, not made for every one)
            if scaler._per_optimizer_states[id(optimizer)]["stage"] is OptState.READY:
                scaler.unscale_(optimizer)

    def hold(original):
        @functools.wraps(original)
        def clip(parameters, *args, **kwargs):
            params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
            guard(unscale)(params)
            return original(params, *args, **kwargs)

        return clip

    from modeldebug.collect.patches import CLIP_FUNCTIONS

    for owner in (torch.nn.utils, torch.nn.utils.clip_grad):
        for name in CLIP_FUNCTIONS:
            if hasattr(owner, name):
                setattr(owner, name, hold(getattr(owner, name)))


def keep_modules(paths: list[str], guard: Callable[[Callable], Callable]) -> None:
    """``self.<name> = Module(...)`` for the last names of ``paths`` keeps the module already there
    when the new one is of the same class with the same parameter shapes: a head built inside
    forward() is built once (its first instance trains on). Other assignments go through."""
    names = {p.rsplit(".", 1)[-1] for p in paths}
    original = nn.Module.__setattr__

    def shapes(module: nn.Module) -> list:
        return [tuple(t.shape) for t in module.parameters()]

    def same(owner: nn.Module, name: str, value) -> bool:
        old = owner.__dict__.get("_modules", {}).get(name)
        if not isinstance(old, nn.Module) or type(old) is not type(value):
            return False
        kept = shapes(old)
        return bool(kept) and kept == shapes(value)

    @functools.wraps(original)
    def setattr_(self, name, value):
        if name in names and isinstance(value, nn.Module) and guard(same)(self, name, value):
            return
        original(self, name, value)

    nn.Module.__setattr__ = setattr_
