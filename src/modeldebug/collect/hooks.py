"""The callbacks: root-module, per-layer, output-gradient and optimizer hooks, and the patched
calls (backward, losses, DataLoader, zero_grad); each turns what it sees into step state.

Only two hooks stay installed all run: a forward pre-hook and a forward hook on each watched root
module. Per-layer hooks are installed for a sampled step and removed when it closes. Every callback
runs under the :class:`Guard`: the monitor must never break training.
"""

from __future__ import annotations

import functools
import logging
import sys
import types
from functools import partial
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from modeldebug.collect import patches
from modeldebug.collect.amp import AmpWatch
from modeldebug.collect.compiled import CompiledCall, EagerWindow, compiled_in_place, compiling
from modeldebug.collect.entries import Entries
from modeldebug.collect.eval_losses import EvalLosses
from modeldebug.collect.flow import OutputFlow
from modeldebug.collect.fingerprints import TRAIN_STEPS, Fingerprints, dataset_size, source_of
from modeldebug.collect.params import grad_norm, same_device, total_norm
from modeldebug.collect.stats import first_float_tensor, reduce
from modeldebug.collect.spikes import BatchCounter
from modeldebug.collect.steps import MonitorCost, Step, Steps, now
from modeldebug.collect.writer import Validation, class_counts
from modeldebug.events import GradientClip, LrScheduler, StepsOnClearedGradients

if TYPE_CHECKING:
    from modeldebug.collect.watched import Model, Watched
    from modeldebug.config import DebuggingConfig

log = logging.getLogger(__name__)

# The callbacks held by the user's modules (their hook dicts): what a pickled module carries instead.
_ON_MODULES = ("_root_pre", "_root_post", "_layer_pre", "_layer_post", "_flow_post", "_entry_pre", "_entry_post")
# A no-op from the standard library that takes any positional arguments and returns None (an audit
# event nobody listens to, at the cost of a C call).
_DETACHED = partial(sys.audit, "modeldebug.unwatched")


class Guard:
    """Switches the monitor off for the rest of the run after an internal error in one of its
    callbacks (logged once, and reported through ``on_error``); the script goes on."""

    def __init__(self, on_error: Callable[[str, Exception], None]):
        self.broken = False
        self.replaying = False  # our own replay of a step runs: its hooks are not the user's steps
        self._on_error = on_error

    def fail(self, hook: str, exc: Exception) -> None:
        """Called from inside the ``except`` block that caught ``exc``."""
        self.broken = True
        log.exception("modeldebug stopped watching after an internal error in %s", hook)
        try:
            self._on_error(hook, exc)
        except Exception:
            pass


# compiled.compiling() inlined where every callback pays it (two Python frames there, one here):
# dynamo folds is_dynamo_compiling() to True while it traces; torch.export sets the flag.
_dynamo_compiling = getattr(torch.compiler, "is_dynamo_compiling", None) or compiling
_export_flag = torch.compiler if hasattr(torch.compiler, "_is_compiling_flag") else types.SimpleNamespace(
    _is_compiling_flag=False)


def guarded(hook):
    """A callback of an object with a ``guard``: skipped once the monitor is off, and never raises."""

    @functools.wraps(hook)
    def run(self, *args, **kwargs):
        if _dynamo_compiling() or _export_flag._is_compiling_flag:  # traced: trace to nothing
            return None
        guard = self.guard
        if guard.broken or guard.replaying:
            return None
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:
            guard.fail(hook.__name__, exc)
            return None

    return run


class Hooks:
    """Every callback of one Debugger, and the handles that install them (the patches' listener)."""

    def __init__(self, config: "DebuggingConfig", watched: "Watched", steps: Steps, validation: Validation,
                 guard: Guard, cost: MonitorCost):
        self.monitoring = config.monitoring_config
        self.watched = watched
        self.steps = steps
        self.validation = validation
        self.guard = guard
        self.cost = cost
        self.in_eval = False
        # The last root forward outside training: was the root in train mode (an evaluation pass
        # in train mode), and was grad on (an eval-mode forward that a backward may prove to be training)?
        self.eval_in_train_mode = False
        self.maybe_training = False
        self.backward_seen = False  # a backward since the last zero_grad() or optimizer step
        # Optimizers whose zero_grad() ran after a backward, with no backward since: their next
        # step finds the gradients cleared (counted; written at stop as steps_on_cleared_gradients).
        self.cleared: set[int] = set()
        self.steps_on_cleared = 0
        self._first_cleared: tuple[int, str] | None = None
        self._clips_logged: set[bool] = set()
        self._schedulers_seen: set[int] = set()
        self._layer_order = 0
        self.flow = OutputFlow()  # once: which modules return an output next to others
        self.entries = Entries()  # a root never called: the children a step calls (NaN replay)
        self.fingerprints = Fingerprints()  # training and evaluation samples: validation_overlap
        self.amp = AmpWatch(self)  # GradScaler and accelerate: losses in the user's units, skipped steps
        self.eval_losses = EvalLosses(validation, guard)  # validation losses computed by hand
        self._loader_dataset: Any = None  # the dataset of the DataLoader batch fetched since the last forward
        self.batches = BatchCounter()
        self.batch: tuple[int, int] | None = None  # (epoch, position) of that batch
        self._root_handles: list[Any] = []
        self.layer_handles: list[Any] = []  # per-layer hooks of a sampled (or prepared) step
        self.eager = EagerWindow()  # compiled models run eagerly while the layer hooks are in
        self._opt_handles: list[Any] = []

    def __reduce__(self):
        # Pickled (or deep-copied) with a user's module, whose hook dicts hold these callbacks: a
        # namespace of standard-library objects stands in, so nothing of ours is saved with the model
        # and the copy runs unwatched. Unpickled, the callbacks are no-ops; deep-copied (copy binds
        # our functions to the stand-in), a switched-off guard makes them return at once.
        off = types.SimpleNamespace(broken=True, replaying=False)
        return types.SimpleNamespace, (), {"guard": off, **{name: _DETACHED for name in _ON_MODULES}}

    # ------------------------------------------------------------------ installing

    def install(self) -> None:
        patches.add_listener(self)
        self._opt_handles = [
            register_optimizer_step_pre_hook(self._optimizer_pre),
            register_optimizer_step_post_hook(self._optimizer_post),
        ]
        for model in self.watched.models:
            self.hook_root(model)

    def hook_root(self, model: "Model") -> None:
        m = model.module
        if compiled_in_place(m):  # its hooks would run inside its graph: ours go around its compiled call
            self._root_handles.append(CompiledCall(m, self._root_pre, self._root_post))
            return
        self._root_handles += [
            m.register_forward_pre_hook(self._root_pre, with_kwargs=True),
            m.register_forward_hook(self._root_post, always_call=True),
        ]

    def install_layers(self) -> None:
        if self.monitoring.layer_outputs:
            if any(m.compiled or compiled_in_place(m.module) for m in self.watched.models):
                self.eager.enter()  # the compiled graph ignores or would trace hooks added now
            for layer in self.watched.layers:
                self.layer_handles.append(layer.module.register_forward_pre_hook(partial(self._layer_pre, layer.name)))
                self.layer_handles.append(layer.module.register_forward_hook(partial(self._layer_post, layer.name)))
            if not self.flow.done and not self.flow.handles:
                self.flow.install(self.watched.models, self._flow_post)

    def remove_layers(self) -> None:
        for h in self.layer_handles:
            h.remove()
        self.layer_handles = []
        self.eager.leave()
        if self.flow.handles:
            returned = self.flow.settle()
            if returned is not None:
                self.steps.writer.event(returned)

    def remove(self) -> None:
        self.flow.settle()
        for h in self.layer_handles + self._root_handles + self._opt_handles:
            h.remove()
        self.entries.remove()
        self.layer_handles, self._root_handles, self._opt_handles = [], [], []
        self.eager.leave()
        self.steps.prepared = False
        self.eval_losses.end()
        self.amp.finish()
        self._finish_cleared()
        patches.remove_listener(self)

    def _finish_cleared(self) -> None:
        if self._first_cleared is None:
            return
        (step, optimizer), self._first_cleared = self._first_cleared, None
        try:
            self.steps.writer.event(StepsOnClearedGradients(
                steps=self.steps_on_cleared, optimizer_steps=self.steps.count, first_step=step, optimizer=optimizer))
        except Exception as exc:  # (at stop: the rest of the run is still written)
            self.guard.fail("steps_on_cleared_gradients", exc)

    def step_closed(self) -> None:
        """No watched root was called in training so far: watch where the steps enter the model."""
        self.entries.reset()
        if not self.steps.stopped and not self.entries.handles:
            self.entries.install(self.watched.models, self._entry_pre, self._entry_post)

    @guarded
    def _entry_pre(self, module, args, kwargs):
        device = self.watched.device
        keep = self.steps.replay_budget > 0 and device is not None and device.type == "cpu"
        self.entries.enter(module, args, kwargs, keep)
        return None

    @guarded
    def _entry_post(self, module, args, output):
        self.entries.leave()
        return None

    # ------------------------------------------------------------------ steps marked by hand

    @guarded
    def step(self, loss: torch.Tensor | float | None = None) -> None:
        t = now()
        steps = self.steps
        steps.manual = True
        st = steps.current(t)
        if loss is not None:  # the caller's loss, in its units (the tensor backward saw may be scaled)
            value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
            st.loss_sum, st.loss_count = value.reshape(()), 1
        if st.optimizer_stepped and st.param_pre is not None and st.param_post is None:
            steps.measure_update(st)  # (the optimizer's hook leaves that to the close of a marked step)
        self.cost.seconds += now() - t
        steps.close()

    # ------------------------------------------------------------------ root module hooks

    @guarded
    def _root_pre(self, module, args, kwargs):
        t = now()
        steps = self.steps
        grad = torch.is_grad_enabled()
        if not grad or not (module.training or steps.trains_in_eval):
            self.in_eval = True
            self.eval_in_train_mode = module.training
            self.maybe_training = grad
            self._fingerprint_eval(args, kwargs)
            self.eval_losses.forward_begins()
            return None
        self.in_eval = self.maybe_training = False
        steps.root_seen = True
        st = steps.state
        if st is None:
            st = steps.begin(t)
            if not st.data_seen and steps.last_end is not None:
                # No DataLoader: the time from the last step to this forward is spent getting the batch.
                st.data_s, st.data_seen = t - steps.last_end, True
        if not module.training:
            st.eval_mode = True
        if st.forward_calls == 0:
            # The batch: its first floating tensor, else the first tensor (token ids); the usual
            # first argument is checked without the walk over the arguments.
            x = args[0] if args else None
            if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() > 0):
                x = first_float_tensor((args, kwargs))
            if x is None:
                x = first_float_tensor((args, kwargs), floating=False)
            if x is not None:
                self._input_stats(st, x)
                if st.sampled or steps.count < TRAIN_STEPS:  # (no call on the other steps: hot path)
                    ds = self._loader_dataset
                    self.fingerprints.add_train(x, source_of(x, ds), dataset_size(ds) if ds is not None else None, ds)
            self._loader_dataset = None
            device = self.watched.device
            if steps.replay_budget and device is not None and device.type == "cpu":
                st.replay = (module, args, kwargs, torch.default_generator.get_state())  # = get_rng_state(), one frame less
        st.forward_calls += 1
        st.fwd_start = now()
        st.monitor_s += st.fwd_start - t
        return None

    @guarded
    def _root_post(self, module, args, output):
        t = now()
        st = self.steps.state
        if st is not None and st.fwd_start is not None and not self.in_eval:
            st.forward_s += t - st.fwd_start
            st.fwd_start = None
            st.monitor_s += now() - t
        elif st is None and self.in_eval and not self.maybe_training:
            self.eval_losses.forward_done(output, self.eval_in_train_mode)
        return None

    def _fingerprint_eval(self, args, kwargs) -> None:
        """An evaluation batch's samples, for validation_overlap (bounded, see collect/fingerprints.py)."""
        ds, self._loader_dataset = self._loader_dataset, None
        if not self.fingerprints.wants_eval():
            return
        x = first_float_tensor((args, kwargs))
        if x is None:
            x = first_float_tensor((args, kwargs), floating=False)
        if x is not None:
            self.fingerprints.add_eval(x, source_of(x, ds))

    def _input_stats(self, st: Step, x: torch.Tensor) -> None:
        if x.requires_grad:  # (a batch that needs no gradient is held as it is: one op less a step)
            x = x.detach()
        if st.batch is None:
            st.batch, self.batch = self.batch, None
        if st.sampled:
            st.input_vec = reduce(x)
        elif x.is_cuda:
            # On CUDA the whole-batch check is cheap next to the step: min and max in one kernel
            # (NaN and Inf show there; isfinite().all() is five); on CPU it waits for a bad loss
            # (the batch is held, not copied, until the step closes).
            if x.is_floating_point():
                st.input_range = torch.aminmax(x.reshape(-1))
        else:
            st.input_ref = x

    # ------------------------------------------------------------------ per-layer hooks (sampled steps)

    @guarded
    def _layer_pre(self, name, module, args):
        steps = self.steps
        st = steps.state
        if st is None and steps.prepared and torch.is_grad_enabled() and module.training:
            st = steps.begin(now())  # the first training forward of a prepared step
            x = first_float_tensor(args)
            if x is None:
                x = first_float_tensor(args, floating=False)
            if x is not None:  # the first layer to run receives the batch
                self._input_stats(st, x)
        if st is not None:
            st.layer_start[name] = now()

    @guarded
    def _layer_post(self, name, module, args, output):
        t = now()
        st = self.steps.state
        if st is None or not st.sampled or name in st.layer_vecs or self.in_eval:
            return None
        x = first_float_tensor(output)
        if x is not None:
            fwd = t - st.layer_start.get(name, t)
            st.layer_vecs[name] = (reduce(x, units=True), fwd)
            info = self.watched.layer_info[name]
            if info.order < 0:
                info.order = self._layer_order
                self._layer_order += 1
            if self.monitoring.gradients and x.requires_grad:
                x.register_hook(partial(self._output_grad, name, st))
        st.monitor_s += now() - t
        return None

    @guarded
    def _flow_post(self, name, module, args, output):
        if not self.in_eval and torch.is_grad_enabled():
            self.flow.record(name, output)
        return None

    @guarded
    def _output_grad(self, name, st, grad):
        t = now()
        if grad is not None and name not in st.grad_vecs and grad.is_floating_point():
            st.grad_vecs[name] = reduce(grad)
        st.monitor_s += now() - t
        return None

    # ------------------------------------------------------------------ backward (patched)

    @guarded
    def before_backward(self, tensor) -> None:
        watched, steps = self.watched, self.steps
        if watched.finder is not None and not watched.models:
            watched.finder(None)
        if not watched.models:
            return
        trains_in_eval = steps.state is None and self.maybe_training
        if steps.state is None and steps.root_seen and not trains_in_eval:
            return  # no forward of a watched model since the last step: someone else's backward
        t = now()
        if self.maybe_training:
            self.validation.discard_tentative()  # a loss with a graph that is backpropagated is not validation
            self.maybe_training = False
        if trains_in_eval:
            # The forward ran in eval mode, and its loss is trained on: a training step whatever the
            # mode, and so are the eval-mode forwards that follow.
            steps.trains_in_eval = steps.root_seen = True
            self.in_eval = False
        elif steps.state is None:
            steps.entry_missing = True  # steps begin here: the root module is not what gets called
        st = steps.state or steps.begin(t)
        st.eval_mode = st.eval_mode or trains_in_eval
        if st.sampled and self.monitoring.gradients:
            self._measure_stale(st)
        st.monitor_s += now() - t

    def _measure_stale(self, st: Step) -> None:
        """The gradient already present before this backward, per optimizer over the parameters it
        holds; the step keeps each optimizer's smallest. Zeroed before any of the step's backward
        calls (a GAN's discriminator step after the generator's backward) is not accumulation, and
        gradients on parameters no optimizer holds never reach an update."""
        watched = self.watched
        held = [(id(o), [p for g in o.param_groups for p in g["params"]]) for o in watched.optimizers]
        for key, params in held or [(0, watched.tensors())]:
            grads = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
            norm = total_norm(grads) if grads else torch.zeros((), device=watched.device)
            low = st.stale_mins.get(key)
            st.stale_mins[key] = norm if low is None else torch.minimum(low, norm.to(low.device))
        self._settle_stale(st)

    @staticmethod
    def _settle_stale(st: Step) -> None:
        """The step's stale norm: the largest over the optimizers that stepped in it (all, before one has)."""
        mins = [v for k, v in st.stale_mins.items() if k in st.stepped] or list(st.stale_mins.values())
        if mins:
            st.stale_grad_norm = mins[0] if len(mins) == 1 else torch.stack(same_device(mins)).max()

    @guarded
    def after_backward(self, tensor, elapsed_s: float, failed: bool) -> None:
        steps = self.steps
        st = steps.state
        if st is None:
            return
        self.backward_seen = self.backward_seen or not failed
        if self.cleared:
            self.cleared.clear()
        t = now()
        st.backward_s += elapsed_s
        st.backward_calls += 1
        if isinstance(tensor, torch.Tensor) and tensor.numel() == 1 and tensor.is_floating_point():
            # (any shape of one value, any float dtype: transfer reads it as one float), in the user's
            # units: before a GradScaler's scale and accelerate's division by the accumulation steps
            value = self.amp.loss_value(tensor, st)
            st.loss_sum = value if st.loss_sum is None else st.loss_sum.float() + value.float()
            st.loss_count += 1
        st.monitor_s += now() - t
        if steps.manual or failed or st.opt_start is not None:
            return  # (a backward inside optimizer.step(closure), as LBFGS does, belongs to that step)
        if self.watched.primary is None:
            steps.check_nonfinite(st)  # no optimizer step will come to check it
            steps.hold_back(st)

    # ------------------------------------------------------------------ losses and data (patched)

    @guarded
    def on_loss(self, name: str, input, target, output, options: dict | None = None) -> None:
        if not self.watched.models or not isinstance(output, torch.Tensor):
            return
        t = now()
        grad = torch.is_grad_enabled()
        if self.in_eval or not grad:
            # A loss with a graph, after an eval-mode forward, is validation unless a backward follows.
            self.validation.add(name, input, target, output, train_mode=self.eval_in_train_mode,
                                tentative=grad and output.requires_grad, options=options)
        else:
            st = self.steps.state
            if st is not None and st.sampled:
                st.class_counts = class_counts(name, input, target, st.class_counts)
            self.steps.writer.label_mix.training_call(name, input, target)
            self.steps.writer.loss_calls.training_call(st, name, input, target, output, options)
        self.cost.seconds += now() - t

    @guarded
    def on_zero_grad(self, optimizer) -> None:
        # An optimizer that zeroes gradients but never steps is still the model's optimizer.
        if self.watched.models and self.watched.owns(optimizer):
            if self.backward_seen:  # after a backward, before any step: what that backward made is gone
                self.cleared.add(id(optimizer))
            self.backward_seen = False

    @guarded
    def on_clip(self, function: str, max_value) -> None:
        """Gradient clipping, counted for the step it precedes; before any backward it never clips."""
        if not self.watched.models:
            return
        steps, before = self.steps, not self.backward_seen
        steps.clip_calls += 1
        steps.clips_before_backward += before
        st = steps.state or (steps.pending_backward[0] if steps.pending_backward else None)  # (accumulating)
        if not before and st is not None and st.unclipped_norm is None:
            # Norms after clipping would hide gradients that explode (the HF Trainer clips at 1.0).
            st.unclipped_norm = grad_norm(self.watched.tensors(), self.watched.small_tensors)
        scale = self.amp.gradient_scale()
        if scale is not None:  # clipping gradients a GradScaler has not unscaled: a misplaced clip
            steps.clips_scaled += 1
            if st is not None and st.unclipped_norm is not None:
                st.unclipped_norm = st.unclipped_norm / scale  # (in the gradients' own units)
        if before not in self._clips_logged:
            self._clips_logged.add(before)
            value = float(max_value) if isinstance(max_value, (int, float)) else None
            steps.writer.event(GradientClip(function=function, max_value=value, before_backward=before))

    @guarded
    def on_scheduler_step(self, scheduler) -> None:
        steps = self.steps
        steps.scheduler_steps += 1
        if id(scheduler) not in self._schedulers_seen:
            self._schedulers_seen.add(id(scheduler))
            settings = {k: v for k, v in vars(scheduler).items()
                        if not k.startswith("_") and isinstance(v, (int, float, str, bool)) and k not in ("verbose", "last_epoch")}
            steps.writer.event(LrScheduler(type=type(scheduler).__name__, settings=settings))

    @guarded
    def on_batch(self, elapsed_s: float, iterator=None) -> None:
        self._loader_dataset = getattr(iterator, "_dataset", None)  # where the next forward's batch comes from
        self.batch = self.batches.seen(iterator)
        steps = self.steps
        st = steps.state
        # A batch fetched after the previous step closed belongs to the next step.
        if st is None:
            steps.pending_data_s += elapsed_s
        else:
            st.data_s += elapsed_s
            st.data_seen = True

    # ------------------------------------------------------------------ optimizer hooks

    @guarded
    def _optimizer_pre(self, optimizer, args, kwargs):
        if not self.watched.owns(optimizer):
            return None
        t = now()
        st = self.steps.current(t)
        if self.cleared and id(optimizer) in self.cleared:
            self.steps_on_cleared += 1
            if self._first_cleared is None:
                self._first_cleared = (st.index, type(optimizer).__name__)
        closure = patches.closure_of(args, kwargs)
        if closure is None:
            self._read_gradients(st)
            if self.amp.gradient_scale() is not None:  # stepped outside scaler.step, on scaled gradients
                self.amp.stepping_scaled(optimizer, st)
        st.opt_start = now()
        st.monitor_s += st.opt_start - t
        if closure is None:
            return None
        # step(closure) runs forward and backward inside: the step's gradients exist once it returns.
        wrapped = patches.watch_closure(closure, self._closure_enter, self._closure_leave)
        return patches.with_closure(args, kwargs, wrapped)

    @guarded
    def _closure_enter(self):
        st = self.steps.state
        return None if st is None else (now(), st, st.loss_sum, st.loss_count)

    @guarded
    def _closure_leave(self, token, calls: int) -> None:
        if token is None or token[1] is not self.steps.state:
            return
        start, st, loss_sum, loss_count = token
        t = now()
        if calls:  # the optimizer evaluates again (a line search): the step's loss is its first evaluation
            st.loss_sum, st.loss_count = loss_sum, loss_count
        else:  # before the weights change, as without a closure
            self._read_gradients(st)
        if st.opt_start is not None:
            st.opt_start += now() - start  # forward and backward are not the optimizer's time
        st.monitor_s += now() - t

    def _read_gradients(self, st: Step) -> None:
        """The step's gradient norm (and on sampled steps the parameter snapshot), then the NaN check."""
        steps = self.steps
        if st.grad_norm is None:
            if st.sampled:
                renewed = self.watched.new_parameters()
                if renewed is not None:
                    steps.writer.event(renewed)
            if st.sampled and self.monitoring.gradients:
                # The snapshot's per-parameter gradient norms give the global one too (one pass).
                st.param_pre = steps.snapshot()
                dense = st.param_pre.dense_grad_norms
                if dense:
                    st.grad_norm = torch.linalg.vector_norm(torch.stack(same_device(dense)).float())
                if st.unclipped_norm is not None:
                    st.grad_norm = st.unclipped_norm
            elif st.unclipped_norm is not None:
                st.grad_norm = st.unclipped_norm
            else:
                watched = self.watched
                st.grad_norm = grad_norm(watched.tensors(), watched.small_tensors)
            if steps.dist is not None:  # sharded parameters (FSDP): the norm of the whole gradient
                st.grad_norm = steps.dist.global_grad_norm(st.grad_norm)
            steps.check_nonfinite(st)

    @guarded
    def _optimizer_post(self, optimizer, args, kwargs):
        watched = self.watched
        if not watched.owns(optimizer):
            return None
        t = now()
        steps = self.steps
        st = steps.state
        if st is None:
            return None
        if watched.primary is None:
            watched.primary = optimizer
            steps.backward_driven = False
        if st.opt_start is not None:
            st.optimizer_s += t - st.opt_start
            st.opt_start = None
        st.optimizer_stepped = True
        self.backward_seen = False
        st.stepped.add(id(optimizer))
        closes = not steps.manual and step_closes(watched, optimizer, st.stepped)
        if closes and st.param_pre is not None and st.param_post is None:
            steps.measure_update(st)
        if closes and len(st.stale_mins) > 1:
            self._settle_stale(st)
        st.monitor_s += now() - t
        if closes:
            steps.close()
        return None


def step_closes(watched: "Watched", optimizer, stepped: set[int]) -> bool:
    """Whether the step closes once ``optimizer`` has stepped (or been skipped by a GradScaler)."""
    return optimizer is watched.newest_adopted or _all_stepped(watched.optimizers, stepped)


def _all_stepped(optimizers: list, stepped: set[int]) -> bool:
    for o in optimizers:
        if id(o) not in stepped:
            return False
    return True
