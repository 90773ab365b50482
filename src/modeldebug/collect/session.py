"""The Debugger: watches models and optimizers during training and writes what it sees to the run store.

Every step it keeps the loss, the global gradient norm, the learning rate, the step time split
(data, forward, backward, optimizer) and memory. On sampled steps (a schedule, adaptive by
default) it also keeps per-layer output and output-gradient statistics and per-parameter
statistics. See DESIGN.md, "Monitoring cost", for why it is built the way it is:

* Only two hooks stay installed all run: a forward pre-hook and a forward hook on each watched
  root module. Per-layer hooks are installed for a sampled step and removed when it closes.
* Statistics are reduced on the device into small vectors and copied to the host once per
  sampled step; on CUDA the per-step scalars are copied in batches, not every step.
* Nothing is written onto the user's modules or tensors and no tensor of the user's graph is
  kept past the step.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from modeldebug.collect import patches
from modeldebug.collect.memory import RssReader, cuda_memory, cuda_total_memory
from modeldebug.records import EventRecord, LayerRecord, ParamRecord, StepRecord, ValidationRecord
from modeldebug.collect.schedule import Adaptive, Every
from modeldebug.collect.stats import SATURATING, Reduced, Transfer, first_float_tensor, reduce, summarize_many
from modeldebug.config import DebuggingConfig
from modeldebug.records import LayerInfo, OptimizerInfo, ParamInfo
from modeldebug.types import (
    DebugMetrics,
    GradientStats,
    LayerMetrics,
    ModelInfo,
    MonitorOverhead,
    OutputStats,
    PerformanceMetrics,
    Report,
    RunInfo,
)

log = logging.getLogger(__name__)

# Parameters larger than this are compared on a subset for |Δw|/|w| (bounded memory and time):
# UPDATE_CHUNKS contiguous runs of UPDATE_SAMPLE / UPDATE_CHUNKS values spread over the tensor.
UPDATE_SAMPLE = 65536
UPDATE_CHUNKS = 16
# Backward passes seen without any optimizer step before each one counts as its own iteration.
MAX_ACCUMULATION = 64
_CLASS_TARGET_LOSSES = {"cross_entropy", "nll_loss", "multi_margin_loss"}


def _now() -> float:
    return time.perf_counter()


def _guarded(hook):
    """The monitor must never break training: a failure inside one of its hooks is logged once,
    recorded, and switches the monitor off for the rest of the run (the script goes on)."""

    @functools.wraps(hook)
    def guarded(self, *args, **kwargs):
        if self._broken or self._replaying:
            return None
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:
            self._broken = True
            self._state = None
            log.exception("modeldebug stopped watching after an internal error in %s", hook.__name__)
            try:
                self._event("monitor_error", {"hook": hook.__name__, "type": type(exc).__name__, "message": str(exc)[:500]})
            except Exception:
                pass
            return None

    return guarded


@dataclass
class _Step:
    """What one training step has gathered so far (device tensors until the step closes)."""

    index: int
    sampled: bool
    start: float
    data_s: float = 0.0
    data_seen: bool = False
    forward_s: float = 0.0
    backward_s: float = 0.0
    optimizer_s: float = 0.0
    forward_calls: int = 0
    backward_calls: int = 0
    optimizer_stepped: bool = False
    stepped: set[int] = field(default_factory=set)  # ids of the optimizers that stepped
    fwd_start: float | None = None
    opt_start: float | None = None
    monitor_s: float = 0.0
    end_event: Any = None  # CUDA: recorded as the step closes
    after_pause: bool = False  # the device time since the last step's end includes a pause
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0
    grad_norm: torch.Tensor | None = None
    stale_grad_norm: torch.Tensor | None = None
    input_range: tuple[torch.Tensor, torch.Tensor] | None = None  # CUDA: the batch's min and max
    input_vec: Reduced | None = None  # the batch, on sampled steps
    input_ref: torch.Tensor | None = None  # CPU batch, checked only if the loss turns non-finite
    replay: tuple | None = None  # (root, args, kwargs, rng state): to find a NaN's origin (CPU)
    layer_start: dict[str, float] = field(default_factory=dict)
    layer_vecs: dict[str, tuple[Reduced, float]] = field(default_factory=dict)  # output, forward time
    grad_vecs: dict[str, Reduced] = field(default_factory=dict)  # gradient of the output
    class_counts: torch.Tensor | None = None  # targets per class, on sampled steps
    param_pre: dict[str, Any] | None = None
    param_post: dict[str, Any] | None = None


@dataclass
class _Watched:
    module: nn.Module
    name: str
    prefix: str  # "" for a single model; "Name." when several are watched


class Debugger:
    """Watches training; use through :func:`watch` or ``modeldebug run``.

    ``store`` is a RunStore, a path to its SQLite file, or None to use the config's path
    (``config.store_path``; a store_path of None keeps the run in memory).
    """

    def __init__(
        self,
        config: DebuggingConfig | None = None,
        *,
        store: Any = None,
        command: Sequence[str] | None = None,
        run_id: str | None = None,
        existing_run: bool = False,
    ):
        from modeldebug.store import RunStore

        self.config = config or DebuggingConfig()
        if store is None:
            store = RunStore(self.config.store_path)
        elif isinstance(store, (str, os.PathLike)):
            store = RunStore(Path(store))
        self.store = store
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.command = list(command or [])
        self._existing_run = existing_run  # created by the `modeldebug run` parent process

        cfg = self.config
        if cfg.every is not None:
            self.schedule = Every(cfg.every, warmup=cfg.warmup_steps)
        elif cfg.target_overhead is None:
            self.schedule = Every(1)
        else:
            self.schedule = Adaptive(cfg.target_overhead, warmup=cfg.warmup_steps)
        self._bins = cfg.histogram_bins if cfg.histograms else 0

        self._models: list[_Watched] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._primary: torch.optim.Optimizer | None = None  # the first to step: its lr is recorded
        self._newest_adopted: torch.optim.Optimizer | None = None
        self._params: list[tuple[str, torch.nn.Parameter]] = []
        self._param_ids: set[int] = set()
        self._layers: list[tuple[str, nn.Module, Any, Any]] = []  # name, module, pre-hook, post-hook
        self.layer_info: dict[str, LayerInfo] = {}
        self._compiled: list[str] = []

        self._root_handles: list[Any] = []
        self._layer_handles: list[Any] = []
        self._opt_handles: list[Any] = []
        self._started = False
        self._stopped = False
        self._manual_steps = False

        self.step_count = 0
        self._state: _Step | None = None
        self._pending_backward: list[_Step] = []  # backward-only iterations awaiting an optimizer step
        self._backward_driven = False
        self._force_sample = False
        self._nonfinite_looks = 0
        self._in_eval = False
        self._val_sum: torch.Tensor | None = None
        self._val_count = 0
        self._val_hits: torch.Tensor | None = None  # correct class predictions in evaluation
        self._val_seen = 0
        self._class_counts: dict[int, int] = {}
        self._layer_order = 0

        self._device: torch.device | None = None
        self._resolve_every = 1
        self._unresolved: list[tuple[StepRecord, torch.Tensor | list[float], _Step]] = []
        self._inflight: deque[tuple[Transfer, list, _Step | None, bool]] = deque()  # sent, not yet arrived
        self._nan: torch.Tensor | None = None  # CUDA: stands for a step's missing scalars
        self._last_end_event: Any = None  # CUDA: the previous step's end on the device
        self._resumed = False
        self._device_plain: deque[float] = deque(maxlen=50)  # CUDA: device seconds of unsampled steps
        self._recent = deque(maxlen=256)  # StepRecords for metrics (bounded)
        self._latest_layers: dict[str, LayerRecord] = {}
        self._last_norms: dict[str, float] = {}
        self._samples = 0

        self._t0 = 0.0
        self._last_step_end: float | None = None  # when the previous step closed
        self._pending_data_s = 0.0  # data wait seen before the step it belongs to began
        self._wall_end: float | None = None
        self._monitor_s = 0.0
        self._held_bytes = 0
        self._peak_bytes = 0
        self._rss = None
        self._broken = False  # set when one of the monitor's own hooks failed
        self._paused = False
        self._paused_at = 0.0
        self._paused_s = 0.0
        self._entry_missing = False  # steps begin at backward: no watched root module is called
        self._prepared = False  # layer hooks installed ahead for the next (sampled) step
        self._root_seen = False  # a training forward of a watched root module was seen
        self._origin_budget = 3  # NaN-origin replays per run
        self._replaying = False  # our own replay of a step runs: its hooks are not the user's steps
        self._dist = None  # RankWatch when this process is one rank of several (collect/distributed.py)

    # ------------------------------------------------------------------ attaching

    def attach(self, model: nn.Module, name: str | None = None) -> "Debugger":
        """Watch a model (a root module). Attaching the same module twice is a no-op."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}")
        if any(w.module is model for w in self._models):
            return self
        compiled = hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule"
        inner = model._orig_mod if compiled else model
        name = name or type(inner).__name__
        watched = _Watched(model, name, "")
        self._models.append(watched)
        if compiled:
            # Hooks inside a compiled graph force recompiles or graph breaks: watch it from outside.
            self._compiled.append(name)
            log.info("%s is torch.compile'd: watching loss, gradients and parameters, not layer by layer", name)
        if len(self._models) == 1:
            self._register_model(watched, inner, layers=not compiled)
        else:  # several models: qualify every name by its model's
            taken: set[str] = set()
            for w in self._models:
                w.prefix, n = w.name + ".", 1
                while w.prefix in taken:
                    n += 1
                    w.prefix = f"{w.name}{n}."
                taken.add(w.prefix)
            self._rebuild_names()
        if self._started:
            self._hook_root(watched)
        return self

    def _rebuild_names(self) -> None:
        self._params, self._param_ids, self._layers, self.layer_info = [], set(), [], {}
        for w in self._models:
            inner = getattr(w.module, "_orig_mod", w.module)
            self._register_model(w, inner, layers=w.name not in self._compiled)

    def _register_model(self, watched: _Watched, inner: nn.Module, layers: bool) -> None:
        for pname, p in inner.named_parameters():
            if id(p) not in self._param_ids:
                self._param_ids.add(id(p))
                self._params.append((watched.prefix + pname, p))
            if self._device is None:
                self._set_device(p.device)
        if not layers:
            return
        for mname, module in inner.named_modules():
            # Leaf modules, and modules holding parameters of their own (nn.MultiheadAttention).
            has_children = next(iter(module.children()), None) is not None
            if not mname or (has_children and not module._parameters):
                continue
            qual = watched.prefix + mname
            bounds = SATURATING.get(type(module).__name__)
            self._layers.append(
                (qual, module, partial(self._layer_pre, qual), partial(self._layer_post, qual, bounds))
            )
            self.layer_info[qual] = LayerInfo(
                name=qual,
                type=type(module).__name__,
                order=-1,
                parameters=sum(p.numel() for p in module.parameters(recurse=False)),
                description=_describe(module),
                model=watched.name,
            )

    def _set_device(self, device: torch.device) -> None:
        self._device = device
        self._resolve_every = 16 if device.type == "cuda" else 1
        if self._started:  # a model found after start (zero-code runs find it at the first backward)
            self._device_event()

    def _device_event(self) -> None:
        """The device's name and total memory, once: memory_pressure measures against it."""
        if self._device is not None and self._device.type == "cuda":
            self._event("device", {"type": "cuda", "name": torch.cuda.get_device_name(self._device),
                                   "total_memory": cuda_total_memory(self._device)})

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> "Debugger":
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"Expected `optimizer` to be a torch.optim.Optimizer but got {type(optimizer).__name__}"
            )
        if all(o is not optimizer for o in self._optimizers):
            self._optimizers.append(optimizer)
        return self

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Debugger":
        if self._started:
            return self
        self._rss = RssReader()
        self._t0 = _now()
        if self._existing_run:
            self.store.update_run(self.run_id, status="running")
        else:
            self.store.create_run(
                RunInfo(id=self.run_id, command=self.command, status="running", started_at=time.time()),
                self.config,
            )
        try:
            self._install_hooks()
            self._device_event()
        except BaseException:
            self._remove_hooks()
            raise
        self._started = True
        from modeldebug.collect.distributed import RankWatch

        self._dist = RankWatch.for_process(self)
        return self

    def _install_hooks(self) -> None:
        patches.add_listener(self)
        self._opt_handles = [
            register_optimizer_step_pre_hook(self._optimizer_pre),
            register_optimizer_step_post_hook(self._optimizer_post),
        ]
        for watched in self._models:
            self._hook_root(watched)

    def pause(self) -> None:
        """Stop watching for a while (every hook removed, at no cost); :meth:`resume` goes on.

        A step in progress is closed first. The schedule keeps what it learned.
        """
        if not self._started or self._stopped or self._paused:
            return
        if self._state is not None and (self._state.backward_calls or self._state.optimizer_stepped):
            self._close_step()
        self._state = None
        self._remove_hooks()
        self._paused = True
        self._paused_at = _now()

    def resume(self) -> None:
        if self._paused and not self._stopped:
            self._paused = False
            self._paused_s += _now() - self._paused_at  # not part of the run's watched time
            self._last_step_end = None  # the pause is not part of the next step's time
            self._resumed = True
            self._install_hooks()

    def _hook_root(self, watched: _Watched) -> None:
        m = watched.module
        self._root_handles += [
            m.register_forward_pre_hook(self._root_pre, with_kwargs=True),
            m.register_forward_hook(self._root_post, always_call=True),
        ]

    def _remove_hooks(self) -> None:
        for h in self._layer_handles + self._root_handles + self._opt_handles:
            h.remove()
        self._layer_handles, self._root_handles, self._opt_handles = [], [], []
        self._prepared = False
        patches.remove_listener(self)

    def stop(self, status: str = "completed", exit_code: int | None = None, error: BaseException | None = None):
        """Remove every hook, write what is left, and close the run. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._remove_hooks()
        finally:
            self._wall_end = _now()
            try:
                if self._state is not None and (self._state.backward_calls or self._state.optimizer_stepped):
                    self._close_step()
                self._flush_pending_backward(as_steps=True)
                self._resolve(all_pending=True)
                self._flush_validation()
                if self._device is not None and self._device.type == "cuda":
                    # A step that ran out of memory never closes: the allocator's peak tells it.
                    allocated, reserved, peak = cuda_memory(self._device)
                    self._event("memory_at_stop", {"cuda_allocated": allocated, "cuda_reserved": reserved,
                                                   "cuda_peak": peak})
                if error is not None:
                    self._event("exception", {"type": type(error).__name__, "message": str(error)[:2000]})
                    self._diagnose(error)
                if self._dist is not None:
                    self._dist.on_stop(status, error)
                self._write_meta()
                self.store.update_run(
                    self.run_id,
                    status=status,
                    exit_code=exit_code,
                    steps=self.step_count,
                    duration_s=self._wall_end - self._t0,
                    models=self.model_infos(),
                    monitor_overhead=self.monitor_overhead(),
                    device=str(self._device) if self._device else None,
                )
                self.store.flush()
                self._rss.close()
            except Exception:  # never mask the user's exception, nor end their script with ours
                log.exception("modeldebug could not finish writing run %s", self.run_id)

    def _diagnose(self, error: BaseException) -> None:
        """Explain the exception in this process, while its traceback's frames still exist."""
        if isinstance(error, KeyboardInterrupt):
            return
        try:
            from modeldebug.diagnose import diagnose_exception, module_names_of

            names = module_names_of(*[(w.prefix, getattr(w.module, "_orig_mod", w.module)) for w in self._models])
            finding = diagnose_exception(error, module_names=names, step=self.step_count)
        except Exception:  # the rule falls back to the exception's text
            log.exception("modeldebug could not diagnose the exception")
            return
        self._event("runtime_error", finding.model_dump(mode="json"))

    def __enter__(self) -> "Debugger":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.stop("completed")
        elif isinstance(exc, KeyboardInterrupt):
            self.stop("interrupted", error=exc)
        else:
            self.stop("crashed", error=exc)
        return False

    # ------------------------------------------------------------------ steps

    @_guarded
    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Mark the end of a training step by hand (for loops whose optimizer the debugger cannot see).

        Once called, steps are counted only by this method; optimizer steps still give gradient
        and parameter statistics.
        """
        t = _now()
        self._manual_steps = True
        st = self._state or (self._adopt_pending(t) if self._pending_backward else self._begin_step(t))
        if loss is not None and st.loss_count == 0:
            value = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
            st.loss_sum, st.loss_count = value.reshape(()), 1
        self._monitor_s += _now() - t
        self._close_step()

    def _begin_step(self, t: float) -> _Step:
        self._flush_validation()
        if self._prepared:  # layer hooks already installed when the previous step closed
            sampled, self._prepared = True, False
        else:
            sampled = self._force_sample or self.schedule(self.step_count)
            if sampled:
                self._install_layer_hooks()
        self._force_sample = False
        st = _Step(index=self.step_count, sampled=sampled, start=t)
        if self._pending_data_s:
            st.data_s, st.data_seen, self._pending_data_s = self._pending_data_s, True, 0.0
        self._state = st
        return st

    def _install_layer_hooks(self) -> None:
        if self.config.monitoring_config.layer_outputs:
            for _, module, pre, post in self._layers:
                self._layer_handles.append(module.register_forward_pre_hook(pre))
                self._layer_handles.append(module.register_forward_hook(post))

    def _prepare_next(self) -> None:
        """For models whose root module is never called (a loop that calls ``model.encoder`` and
        ``model.head``, or slices ``model[:2]``), a step can only begin at its backward, too late
        for its forward: install the layer hooks of a sampled next step now, as this one closes."""
        if self._force_sample or self.schedule(self.step_count):
            self._install_layer_hooks()
            self._prepared = True

    def _close_step(self) -> None:
        t = _now()
        st = self._state
        self._state = None
        for h in self._layer_handles:
            h.remove()
        self._layer_handles = []
        if st is None:
            return
        st.replay = None
        if st.sampled and st.param_pre is None and st.backward_calls and self.config.monitoring_config.gradients:
            st.param_pre = self._param_snapshot(subsets=False)  # a step without optimizer.step()
        end = _now()
        rec = StepRecord(
            step=st.index,
            data_s=st.data_s if st.data_seen else math.nan,
            forward_s=st.forward_s if st.forward_calls else math.nan,
            backward_s=st.backward_s if st.backward_calls else math.nan,
            optimizer_s=st.optimizer_s if st.optimizer_stepped else math.nan,
            step_s=end - (self._last_step_end if self._last_step_end is not None else st.start),
            optimizer_stepped=st.optimizer_stepped,
            backward_calls=st.backward_calls,
            forward_calls=st.forward_calls,
            sampled=st.sampled,
            lr=self._lr(),
        )
        self._last_step_end = end
        if self.config.monitoring_config.memory:
            self._memory(rec)
        self.step_count += 1
        loss = st.loss_sum if st.loss_count == 1 else (st.loss_sum / st.loss_count if st.loss_count else None)
        parts = (loss, st.grad_norm, st.stale_grad_norm, *(st.input_range or (None, None)))
        if self._resolve_every == 1:
            # CPU: reading a scalar costs no sync, and four reads are cheaper than building a tensor.
            scalars = [math.nan if x is None else float(x) for x in parts]
        else:  # CUDA: stacked on the device, copied to the host in batches of steps
            # The step's end on the device's clock: what a sampled step costs the device (its
            # reductions run there, invisible to host timers) is read from these when they arrive.
            st.end_event = torch.cuda.Event(enable_timing=True)
            st.end_event.record()
            st.after_pause, self._resumed = self._resumed, False
            nan = self._nan
            if nan is None or nan.device != self._device:
                nan = self._nan = torch.full((), math.nan, device=self._device)
            scalars = torch.stack([(nan if x is None else x.to(nan.device, torch.float32)) for x in parts])
        self._unresolved.append((rec, scalars, st))
        st.monitor_s += _now() - t
        self._monitor_s += st.monitor_s
        if st.sampled or len(self._unresolved) >= self._resolve_every:
            self._resolve()
        elif self._inflight:
            self._collect()
        if self._entry_missing and not self._root_seen and not self._stopped:
            self._prepare_next()
        if self._dist is not None and not self._stopped:
            self._dist.on_step(rec)  # every N steps: the cross-rank gather (all ranks close the same steps)

    def _resolve(self, all_pending: bool = False) -> None:
        """Send pending step scalars (and a sampled step's statistics) to the host, and write the
        records of every transfer that has arrived; with ``all_pending``, wait for all of them."""
        if self._unresolved:
            self._launch()
        self._collect(wait=all_pending)

    def _collect(self, wait: bool = False) -> None:
        """Write the records of the transfers that have arrived (all of them with ``wait``)."""
        t = _now()
        while self._inflight and (wait or self._inflight[0][0].ready()):
            self._arrive(*self._inflight.popleft())
        self._monitor_s += _now() - t

    def _launch(self) -> None:
        """One transfer for the pending steps: on CUDA, once per sampled step or per batch of
        unsampled steps, and never waited for (see ``Transfer``). A sampled step always closes
        a batch: it is sent at once."""
        t = _now()
        pending, self._unresolved = self._unresolved, []
        on_device = not isinstance(pending[0][1], list)
        sampled = pending[-1][2] if pending[-1][2].sampled else None
        items, extra = self._sampled_parts(sampled) if sampled is not None else ([], [])
        if on_device:
            extra.insert(0, torch.stack([scalars for _, scalars, _ in pending]).reshape(-1))
        if not items and not extra:  # CPU, unsampled: the scalars are already on the host
            self._arrive(None, pending, None, False)
        else:
            self._inflight.append((Transfer(items, extra), pending, sampled, on_device))
        self._monitor_s += _now() - t

    def _arrive(self, transfer: Transfer | None, pending: list, sampled: _Step | None, on_device: bool) -> None:
        t = _now()
        host, extra_host = transfer.result() if transfer is not None else ([], [])
        copy_s = _now() - t
        values = extra_host.pop(0).reshape(-1, 5).tolist() if on_device else [sc for _, sc, _ in pending]
        for (rec, _, st), (loss, grad_norm, stale, lo, hi) in zip(pending, values):
            rec.loss, rec.grad_norm, rec.stale_grad_norm = loss, grad_norm, stale
            rec.loss_nonfinite = st.loss_count > 0 and not math.isfinite(rec.loss)
            rec.grad_nonfinite = st.grad_norm is not None and not math.isfinite(rec.grad_norm)
            # Checked on CUDA only (min and max of the batch; both NaN where not checked).
            rec.input_nonfinite = st.input_range is not None and not (math.isfinite(lo) and math.isfinite(hi))
            if (rec.loss_nonfinite or rec.grad_nonfinite) and st.input_ref is not None:
                rec.input_nonfinite = not bool(torch.isfinite(st.input_ref).all())
            st.input_ref = None
            if (rec.loss_nonfinite or rec.grad_nonfinite) and self._nonfinite_looks < 3:
                # Look closer at the next steps; a run that stays non-finite is not sampled forever.
                self._force_sample = True
                self._nonfinite_looks += 1
            written = _now()
            if st is sampled:
                self._samples += 1
                self._write_sampled(st, rec, host, extra_host)
                written -= copy_s
            self.store.add(self.run_id, rec)
            self._recent.append(rec)
            # The schedule sees everything a step cost the monitor, its host-side summaries included.
            cost, step_s = st.monitor_s + _now() - written, rec.step_s
            device = self._device_step_s(st)
            if device is not None:
                # On CUDA the host's clocks see launches, not the reductions: a sampled step's
                # cost is its device time beyond an ordinary step's (also counted as the
                # monitor's time), and steps last as long as the device says.
                step_s = max(step_s, device)
                if st.sampled and self._device_plain:
                    extra = max(0.0, device - sorted(self._device_plain)[len(self._device_plain) // 2])
                    cost = max(cost, extra)
                    self._monitor_s += extra
                elif not st.sampled:
                    self._device_plain.append(device)
            self.schedule.observe(rec.step, step_s, st.sampled, cost)

    def _device_step_s(self, st: _Step) -> float | None:
        """Seconds between this step's end and the previous step's on the device (both done:
        the transfer that brought this step's numbers was recorded after them)."""
        prev, self._last_end_event = self._last_end_event, st.end_event
        if prev is None or st.end_event is None or st.after_pause:
            return None
        return prev.elapsed_time(st.end_event) / 1e3

    def _lr(self) -> float:
        opt = self._primary or (self._optimizers[0] if self._optimizers else None)
        if opt is None or not opt.param_groups:
            return math.nan
        lr = opt.param_groups[0].get("lr", math.nan)
        return float(lr.item() if isinstance(lr, torch.Tensor) else lr)

    def _memory(self, rec: StepRecord) -> None:
        rec.rss_bytes = float(self._rss())
        if self._device is not None and self._device.type == "cuda":
            rec.cuda_allocated, rec.cuda_reserved, rec.cuda_peak = map(float, cuda_memory(self._device))

    # ------------------------------------------------------------------ root module hooks

    @_guarded
    def _root_pre(self, module, args, kwargs):
        t = _now()
        if not torch.is_grad_enabled() or not module.training:
            self._in_eval = True
            return None
        self._in_eval = False
        self._root_seen = True
        st = self._state
        if st is None:
            st = self._begin_step(t)
            if not st.data_seen and self._last_step_end is not None:
                # No DataLoader: the time from the last step to this forward is spent getting the batch.
                st.data_s, st.data_seen = t - self._last_step_end, True
        if st.forward_calls == 0:
            # The batch: its first floating tensor, else the first tensor (token ids).
            x = first_float_tensor((args, kwargs))
            if x is None:
                x = first_float_tensor((args, kwargs), floating=False)
            if x is not None:
                self._input_stats(st, x)
            if self._origin_budget and self._device is not None and self._device.type == "cpu":
                st.replay = (module, args, kwargs, torch.get_rng_state())
        st.forward_calls += 1
        st.fwd_start = _now()
        st.monitor_s += st.fwd_start - t
        return None

    @_guarded
    def _root_post(self, module, args, output):
        t = _now()
        st = self._state
        if st is not None and st.fwd_start is not None and not self._in_eval:
            st.forward_s += t - st.fwd_start
            st.fwd_start = None
            st.monitor_s += _now() - t
        return None

    def _input_stats(self, st: _Step, x: torch.Tensor) -> None:
        x = x.detach()
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

    @_guarded
    def _layer_pre(self, name, module, args):
        st = self._state
        if st is None and self._prepared and torch.is_grad_enabled() and module.training:
            st = self._begin_step(_now())  # the first training forward of a prepared step
            x = first_float_tensor(args)
            if x is None:
                x = first_float_tensor(args, floating=False)
            if x is not None:  # the first layer to run receives the batch
                self._input_stats(st, x)
        if st is not None:
            st.layer_start[name] = _now()

    @_guarded
    def _layer_post(self, name, bounds, module, args, output):
        t = _now()
        st = self._state
        if st is None or not st.sampled or name in st.layer_vecs or self._in_eval:
            return None
        x = first_float_tensor(output)
        if x is not None:
            fwd = t - st.layer_start.get(name, t)
            st.layer_vecs[name] = (reduce(x, units=True), fwd)
            info = self.layer_info[name]
            if info.order < 0:
                info.order = self._layer_order
                self._layer_order += 1
            if self.config.monitoring_config.gradients and x.requires_grad:
                x.register_hook(partial(self._output_grad, name, st))
        st.monitor_s += _now() - t
        return None

    @_guarded
    def _output_grad(self, name, st, grad):
        t = _now()
        if grad is not None and name not in st.grad_vecs and grad.is_floating_point():
            st.grad_vecs[name] = reduce(grad)
        st.monitor_s += _now() - t
        return None

    # ------------------------------------------------------------------ backward (patched)

    @_guarded
    def before_backward(self, tensor) -> None:
        if not self._models:
            return
        if self._state is None and self._root_seen:
            return  # no forward of a watched model since the last step: someone else's backward
        t = _now()
        if self._state is None:
            self._entry_missing = True  # steps begin here: the root module is not what gets called
        st = self._state or self._begin_step(t)
        if st.backward_calls == 0 and st.sampled and self.config.monitoring_config.gradients:
            grads = [p.grad for _, p in self._params if p.grad is not None and not p.grad.is_sparse]
            st.stale_grad_norm = _total_norm(grads) if grads else torch.zeros((), device=self._device)
        st.monitor_s += _now() - t

    @_guarded
    def after_backward(self, tensor, elapsed_s: float, failed: bool) -> None:
        st = self._state
        if st is None:
            return
        t = _now()
        st.backward_s += elapsed_s
        st.backward_calls += 1
        if isinstance(tensor, torch.Tensor) and tensor.numel() == 1 and tensor.is_floating_point():
            value = tensor.detach().reshape(()).float()
            st.loss_sum = value if st.loss_sum is None else st.loss_sum + value
            st.loss_count += 1
        st.monitor_s += _now() - t
        if self._manual_steps or failed or st.opt_start is not None:
            return  # (a backward inside optimizer.step(closure), as LBFGS does, belongs to that step)
        if self._primary is None:
            self._check_nonfinite(st)  # no optimizer step will come to check it
        if self._primary is None:
            # No optimizer has stepped yet: either gradient accumulation before the first step, or
            # a loop that never steps. Hold the iterations back until it is clear which.
            self._state = None
            for h in self._layer_handles:
                h.remove()
            self._layer_handles = []
            if st.sampled and self.config.monitoring_config.gradients:
                st.param_pre = self._param_snapshot(subsets=False)
            self._pending_backward.append(st)
            self.step_count += 1
            if self._entry_missing and not self._root_seen:
                self._prepare_next()
            if self._backward_driven or len(self._pending_backward) >= MAX_ACCUMULATION:
                self._backward_driven = True
                self._flush_pending_backward(as_steps=True)

    def _adopt_pending(self, t: float) -> _Step:
        """A step ends after held-back backward passes: they were its gradient accumulation."""
        self._state = _Step(index=self.step_count, sampled=self._pending_backward[0].sampled, start=t)
        self._flush_pending_backward(as_steps=False)
        return self._state

    def _flush_pending_backward(self, as_steps: bool) -> None:
        """Write held-back backward-only iterations as steps of their own, or merge them into the
        current step (they were gradient accumulation before the first optimizer step)."""
        pending, self._pending_backward = self._pending_backward, []
        if not pending:
            return
        self.step_count -= len(pending)
        if as_steps:
            current = self._state
            for st in pending:
                self._state = st
                st.index = self.step_count
                self._close_step()
            self._state = current
            if current is not None:
                current.index = self.step_count
            return
        st = self._state
        if st is None:
            return
        first = pending[0]
        for p in pending:
            st.forward_s += p.forward_s
            st.backward_s += p.backward_s
            st.forward_calls += p.forward_calls
            st.backward_calls += p.backward_calls
            st.data_s += p.data_s
            st.data_seen = st.data_seen or p.data_seen
            st.monitor_s += p.monitor_s
            if p.loss_sum is not None:
                st.loss_sum = p.loss_sum if st.loss_sum is None else st.loss_sum + p.loss_sum
                st.loss_count += p.loss_count
        # The first held iteration's sampled statistics stand for the merged step.
        st.sampled = st.sampled or first.sampled
        for attr in ("layer_vecs", "grad_vecs", "input_vec", "stale_grad_norm", "input_range", "param_pre", "replay",
                     "class_counts"):
            mine = getattr(st, attr)
            if (mine is None or (isinstance(mine, dict) and not mine)) and getattr(first, attr) is not None:
                setattr(st, attr, getattr(first, attr))
        st.start = first.start
        st.index = self.step_count

    def _check_nonfinite(self, st: _Step) -> None:
        """Before the weights change: if this step's loss or gradients are non-finite, replay it to
        find where the first NaN/Inf came from (CPU, where reading the flag costs no sync)."""
        if st.replay is None or not self._origin_budget:
            return
        values = [v for v in (st.grad_norm, st.loss_sum) if v is not None]
        if not values or all(math.isfinite(float(v)) for v in values):
            return
        from modeldebug.collect.nan_origin import locate

        self._origin_budget -= 1
        root, args, kwargs, rng = st.replay
        st.replay = None
        watched = next((w for w in self._models if w.module is root), None)
        prefix = watched.prefix if watched else ""
        inner = getattr(root, "_orig_mod", root)
        names = {id(m): (prefix + n).rstrip(".") for n, m in inner.named_modules()}
        self._replaying = True
        try:
            origin = locate(root, args, kwargs, names=names, rng_state=rng)
        finally:
            self._replaying = False
        self._event("nonfinite_origin", {"step": st.index, **origin.to_dict()})

    # ------------------------------------------------------------------ optimizer hooks

    @_guarded
    def _optimizer_pre(self, optimizer, args, kwargs):
        if not self._owns(optimizer):
            return None
        t = _now()
        st = self._state
        if st is None:
            st = self._adopt_pending(t) if self._pending_backward else self._begin_step(t)
        if st.grad_norm is None:
            if st.sampled and self.config.monitoring_config.gradients:
                # The snapshot's per-parameter gradient norms give the global one too (one pass).
                st.param_pre = self._param_snapshot()
                dense = st.param_pre["dense_grad_norms"]
                if dense:
                    st.grad_norm = torch.linalg.vector_norm(torch.stack(_same_device(dense)).float())
            else:
                grads = [p.grad for _, p in self._params if p.grad is not None and not p.grad.is_sparse]
                if grads:
                    st.grad_norm = _total_norm(grads)
            self._check_nonfinite(st)
        st.opt_start = _now()
        st.monitor_s += st.opt_start - t
        return None

    @_guarded
    def _optimizer_post(self, optimizer, args, kwargs):
        if not self._owns(optimizer):
            return None
        t = _now()
        st = self._state
        if st is None:
            return None
        if self._primary is None:
            self._primary = optimizer
            self._backward_driven = False
        if st.opt_start is not None:
            st.optimizer_s += t - st.opt_start
            st.opt_start = None
        st.optimizer_stepped = True
        st.stepped.add(id(optimizer))
        closes = not self._manual_steps and (
            all(id(o) in st.stepped for o in self._optimizers) or optimizer is self._newest_adopted
        )
        if closes and st.param_pre is not None and st.param_post is None:
            st.param_post = self._param_after(st.param_pre)
        st.monitor_s += _now() - t
        if closes:
            self._close_step()
        return None

    def _owns(self, optimizer) -> bool:
        if any(o is optimizer for o in self._optimizers):
            return True
        return self._adopt_optimizer(optimizer)

    def _adopt_optimizer(self, optimizer) -> bool:
        """Optimizers not given to the debugger are watched when they update a watched model.

        A step closes once every watched optimizer has stepped in it (a GAN's discriminator and
        generator steps make one step). An optimizer adopted later is taken to be the last one
        of the cycle, so that from the second iteration on a step is one whole iteration.
        """
        for group in optimizer.param_groups:
            if any(id(p) in self._param_ids for p in group["params"]):
                self._optimizers.append(optimizer)
                self._newest_adopted = optimizer
                return True
        return False

    # ------------------------------------------------------------------ parameter statistics

    def _param_snapshot(self, subsets: bool = True) -> dict[str, Any]:
        """Norms and gradient moments of every parameter; with ``subsets``, a copy of a bounded
        subset of each parameter's values to measure the coming update against. Foreach ops
        where torch has them: a sampled step pays per op dispatched, not per value."""
        params = [p.detach() for _, p in self._params]
        with torch.no_grad():
            norms = torch._foreach_norm(params)
            # _foreach_mul copies the strided views in one op (the values must outlive the step).
            copies = torch._foreach_mul([_subset(p) for p in params], 1.0) if subsets else []
            has_grad, grads, sparse = [], [], []
            for _, p in self._params:
                g = p.grad
                has_grad.append(g is not None)
                if g is not None:
                    sparse.append(g.is_sparse)
                    if g.is_sparse:
                        g = g.coalesce().values()
                    grads.append(g.detach().float())
            grad_stats, dense_norms = None, []
            if grads:
                grad_norms = torch._foreach_norm(grads)
                dense_norms = [n for n, sp in zip(grad_norms, sparse) if not sp]
                grad_stats = torch.cat([torch.stack(_same_device(grad_norms)),
                                        torch.stack(_same_device([g.sum() for g in grads]))])
        held = sum(c.numel() * c.element_size() for c in copies)
        self._track_bytes(held)
        return {"norms": norms, "subsets": copies, "has_grad": has_grad, "grad_stats": grad_stats,
                "dense_grad_norms": dense_norms, "held": held}

    def _param_after(self, pre: dict[str, Any]) -> dict[str, Any]:
        params = [p for _, p in self._params]
        with torch.no_grad():
            post_norms = torch._foreach_norm([p.detach() for p in params])
            deltas = torch._foreach_sub([_subset(p) for p in params], pre["subsets"])
            delta_norms = torch._foreach_norm(deltas)
            subset_norms = torch._foreach_norm(pre["subsets"])
            # One row each: norms after the step, |update| and |values before| of the subsets.
            stats = torch.stack([*post_norms, *delta_norms, *subset_norms]).float()
        self._held_bytes -= pre["held"]
        pre["subsets"] = None
        return {"stats": stats}

    def _track_bytes(self, n: int) -> None:
        self._held_bytes += n
        self._peak_bytes = max(self._peak_bytes, self._held_bytes)

    # ------------------------------------------------------------------ writing sampled statistics

    def _sampled_parts(self, st: _Step) -> tuple[list[Reduced], list[torch.Tensor]]:
        """What a sampled step sends to the host: its reduced tensors, then its parameter rows."""
        items = [st.layer_vecs[n][0] for n in st.layer_vecs] + list(st.grad_vecs.values())
        if st.input_vec is not None:
            items.append(st.input_vec)
        pre, post = st.param_pre, st.param_post
        extra: list[torch.Tensor] = []
        if st.class_counts is not None:
            extra.append(st.class_counts)
        if pre is not None:
            extra.append(torch.stack(pre["norms"]))
            if pre["grad_stats"] is not None:
                extra.append(pre["grad_stats"])
            if post is not None:
                extra.append(post["stats"])
        return items, extra

    def _write_sampled(self, st: _Step, step_rec: StepRecord, host: list, extra_host: list) -> None:
        """Records of a sampled step from its parts on the host (``_sampled_parts``, then a ``Transfer``)."""
        layer_names = list(st.layer_vecs)
        grad_names = list(st.grad_vecs)
        pre, post = st.param_pre, st.param_post
        if st.class_counts is not None:
            counts = extra_host.pop(0)
            for cls in np.flatnonzero(counts).tolist():
                self._class_counts[cls] = self._class_counts.get(cls, 0) + int(counts[cls])
        n_layers = len(layer_names)
        outs = summarize_many(host[:n_layers], self._bins, [SATURATING.get(self.layer_info[n].type) for n in layer_names])
        plain = summarize_many(host[n_layers:])
        rows: dict[str, LayerRecord] = {}
        for name, s in zip(layer_names, outs):
            reduced, fwd = st.layer_vecs[name]
            numel = reduced.numel
            rec = LayerRecord(
                step=st.index, layer=name, numel=numel, fwd_time_s=fwd, mean=s["mean"], std=s["std"],
                min=s["min"], max=s["max"], zero_frac=s["zero_frac"], dead_frac=s["dead_frac"],
                sat_frac=s["sat_frac"], nonfinite=s["nonfinite"],
            )
            if s["hist"] is not None:
                rec.hist, rec.hist_lo, rec.hist_hi = s["hist"].tobytes(), s["hist_lo"], s["hist_hi"]
            rows[name] = rec
        if st.input_vec is not None:
            s = plain.pop()
            step_rec.input_mean, step_rec.input_std, step_rec.input_min, step_rec.input_max = (
                s["mean"], s["std"], s["min"], s["max"])
            step_rec.input_nonfinite = step_rec.input_nonfinite or s["nonfinite"] > 0
        for name, s in zip(grad_names, plain):
            rec = rows.get(name) or LayerRecord(step=st.index, layer=name, numel=st.grad_vecs[name].numel)
            rec.grad_mean, rec.grad_std, rec.grad_norm = s["mean"], s["std"], s["norm"]
            rec.grad_max_abs, rec.grad_zero_frac, rec.grad_nonfinite = s["max_abs"], s["zero_frac"], s["nonfinite"]
            rows[name] = rec
        self.store.add_many(self.run_id, rows.values())
        for rec in rows.values():
            self._latest_layers[rec.layer] = rec
        if pre is None:
            return
        params_n = len(self._params)
        norms = extra_host[0]
        graded = sum(pre["has_grad"])
        grad_norms = grad_sums = ()
        if graded:
            grad_norms, grad_sums = extra_host[1][:graded], extra_host[1][graded:]
        if post is not None:
            stats = extra_host[-1]
            post_norms, deltas, subset_norms = stats[:params_n], stats[params_n : 2 * params_n], stats[2 * params_n :]
        grad_at = {}  # parameter index -> its row in grad_norms / grad_sums
        for i, has in enumerate(pre["has_grad"]):
            if has:
                grad_at[i] = len(grad_at)
        records = []
        for i, (pname, p) in enumerate(self._params):
            rec = ParamRecord(step=st.index, param=pname, norm=float(norms[i]))
            j = grad_at.get(i)
            if j is not None:
                n = p.numel()
                rec.has_grad = True
                rec.grad_norm = float(grad_norms[j])
                rec.grad_mean = float(grad_sums[j]) / n
                rec.grad_std = math.sqrt(max(rec.grad_norm**2 / n - rec.grad_mean**2, 0.0))
            if post is not None:
                base = float(subset_norms[i])
                rec.update_ratio = float(deltas[i]) / base if base > 0 else (0.0 if deltas[i] == 0 else math.inf)
                rec.changed = bool(deltas[i] > 0 or post_norms[i] != norms[i])
            else:  # no optimizer step to measure: did it change since the last look?
                rec.changed = pname in self._last_norms and self._last_norms[pname] != rec.norm
            self._last_norms[pname] = float(post_norms[i]) if post is not None else rec.norm
            records.append(rec)
        self.store.add_many(self.run_id, records)

    # ------------------------------------------------------------------ losses and data (patched)

    @_guarded
    def on_loss(self, name: str, input, target, output) -> None:
        if not self._models or not isinstance(output, torch.Tensor):
            return
        t = _now()
        if self._in_eval or not torch.is_grad_enabled():
            if output.numel() == 1:
                value = output.detach().float().reshape(())
                self._val_sum = value if self._val_sum is None else self._val_sum + value
                self._val_count += 1
                if name in _CLASS_TARGET_LOSSES and _class_scores(input, target):
                    hits = (input.detach().argmax(1) == target).sum()
                    self._val_hits = hits if self._val_hits is None else self._val_hits + hits
                    self._val_seen += target.numel()
        else:
            st = self._state
            if (
                st is not None
                and st.sampled
                and name in _CLASS_TARGET_LOSSES
                and isinstance(target, torch.Tensor)
                and not target.is_floating_point()
            ):
                st.class_counts = _class_counts(input, target, st.class_counts)
        self._monitor_s += _now() - t

    @_guarded
    def on_zero_grad(self, optimizer) -> None:
        # An optimizer that zeroes gradients but never steps is still the model's optimizer.
        if self._models:
            self._owns(optimizer)

    @_guarded
    def on_batch(self, elapsed_s: float) -> None:
        st = self._state
        # A batch fetched after the previous step closed belongs to the next step.
        if st is None:
            self._pending_data_s += elapsed_s
        else:
            st.data_s += elapsed_s
            st.data_seen = True

    def _flush_validation(self) -> None:
        if self._val_count:
            loss = float(self._val_sum.item()) / self._val_count
            acc = float(self._val_hits.item()) / self._val_seen if self._val_seen else math.nan
            self.store.add(
                self.run_id,
                ValidationRecord(step=self.step_count, loss=loss, batches=self._val_count, accuracy=acc),
            )
            self._val_sum, self._val_count, self._val_hits, self._val_seen = None, 0, None, 0

    # ------------------------------------------------------------------ meta, metrics, report

    def _event(self, type: str, data: dict) -> None:
        self.store.add(self.run_id, EventRecord(step=self.step_count, type=type, data=data))

    def _write_meta(self) -> None:
        in_opt: dict[int, float | None] = {}
        optimizers = []
        for opt in self._optimizers:
            groups = []
            for g in opt.param_groups:
                lr = g.get("lr")
                lr = float(lr.item() if isinstance(lr, torch.Tensor) else lr) if lr is not None else None
                for p in g["params"]:
                    in_opt[id(p)] = lr
                groups.append(
                    {k: _jsonable(v) for k, v in g.items() if k != "params"} | {"params": len(g["params"])}
                )
            optimizers.append(OptimizerInfo(type=type(opt).__name__, param_groups=groups))
        owner = {}
        for w in self._models:
            inner = getattr(w.module, "_orig_mod", w.module)
            for mname, module in inner.named_modules():
                for pname, _ in module.named_parameters(recurse=False):
                    owner[w.prefix + (f"{mname}.{pname}" if mname else pname)] = (w.prefix + mname).rstrip(".")
        params = {
            name: ParamInfo(
                name=name,
                module=owner.get(name, ""),
                shape=list(p.shape),
                numel=p.numel(),
                requires_grad=p.requires_grad,
                in_optimizer=id(p) in in_opt,
                lr=in_opt.get(id(p)),
                model=next((w.name for w in self._models if name.startswith(w.prefix)), ""),
            )
            for name, p in self._params
        }
        self.store.set_meta(
            self.run_id,
            layers=self.layer_info,
            params=params,
            optimizers=optimizers,
            class_counts=self._class_counts,
        )

    def model_infos(self) -> list[ModelInfo]:
        out = []
        for w in self._models:
            ps = list(w.module.parameters())
            out.append(
                ModelInfo(
                    name=w.name,
                    parameters=sum(p.numel() for p in ps),
                    trainable=sum(p.numel() for p in ps if p.requires_grad),
                )
            )
        return out

    def monitor_overhead(self) -> MonitorOverhead:
        wall = (self._wall_end or _now()) - self._t0 - self._paused_s if self._t0 else 0.0
        return MonitorOverhead(
            time_fraction=self._monitor_s / wall if wall > 0 else 0.0,
            peak_memory_bytes=int(self._peak_bytes),
            monitor_time_s=self._monitor_s,
            sampled_steps=self._samples,
        )

    @property
    def metrics(self) -> DebugMetrics:
        """The latest figures, in the product spec's DebugMetrics shape (cheap: no store read)."""
        recent = list(self._recent)
        layers = []
        for name, rec in self._latest_layers.items():
            info = self.layer_info.get(name)
            layers.append(
                LayerMetrics(
                    name=name,
                    type=info.type if info else "",
                    step=rec.step,
                    output_stats=OutputStats(mean=rec.mean, std=rec.std, min=rec.min, max=rec.max)
                    if not math.isnan(rec.mean)
                    else None,
                    gradient_stats=GradientStats(norm=rec.grad_norm, mean=rec.grad_mean, std=rec.grad_std)
                    if not math.isnan(rec.grad_norm)
                    else None,
                    zero_fraction=_opt(rec.zero_frac),
                    dead_fraction=_opt(rec.dead_frac),
                    saturated_fraction=_opt(rec.sat_frac),
                )
            )
        return DebugMetrics(
            layer_metrics=sorted(layers, key=lambda m: self.layer_info[m.name].order if m.name in self.layer_info else 0),
            performance_metrics=performance_metrics(recent),
            steps=self.step_count,
            loss=recent[-1].loss if recent else None,
            grad_norm=recent[-1].grad_norm if recent else None,
            learning_rates=[
                float(g["lr"]) for o in self._optimizers[:1] for g in o.param_groups if "lr" in g
            ],
        )

    def evidence(self):
        """Everything collected so far, as the rules read it."""
        self._resolve(all_pending=True)
        self.store.flush()
        return self.store.load_evidence(self.run_id)

    def report(self, rules=None) -> Report:
        """Diagnose the run: the rules' findings, the run's summary and the metrics plots draw from."""
        from modeldebug.pipeline import diagnose

        return diagnose(self.store, self.run_id, evidence=self.evidence(), rules=rules, save=self._stopped).report


# ---------------------------------------------------------------------- helpers


def watch(
    model: nn.Module | Iterable[nn.Module],
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    *,
    config: DebuggingConfig | None = None,
    store: Any = None,
) -> Debugger:
    """Watch training of ``model`` (one module or several) stepped by ``optimizer``.

    Use as a context manager; hooks are removed on exit, also when training raises::

        with md.watch(model, optimizer) as dbg:
            ...train...
        report = dbg.report()
    """
    dbg = Debugger(config, store=store)
    models = [model] if isinstance(model, nn.Module) else list(model)
    if not models:
        raise ValueError("Expected at least one model to watch but got none")
    for m in models:
        dbg.attach(m)
    if optimizer is not None:
        for opt in [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer):
            dbg.attach_optimizer(opt)
    return dbg


def _class_scores(input, target) -> bool:
    """Class scores [N, C, ...] with integer class targets [N, ...] (accuracy can be measured)."""
    return (
        isinstance(input, torch.Tensor)
        and isinstance(target, torch.Tensor)
        and not target.is_floating_point()
        and input.dim() == target.dim() + 1
        and input.shape[0] == target.shape[0]
    )


def _class_counts(input: torch.Tensor, target: torch.Tensor, counts: torch.Tensor | None) -> torch.Tensor | None:
    """Targets per class of a batch, on the device without a sync (``bincount`` and boolean
    indexing both wait for the device to know their output's size); ``ignore_index`` targets
    (negative) are left out."""
    if not _class_scores(input, target):
        return counts
    n = input.shape[1]
    labels = target.detach().reshape(-1)
    valid = ((labels >= 0) & (labels < n)).float()
    batch = torch.zeros(n, device=labels.device).index_add_(0, labels.clamp(0, n - 1), valid)
    return batch if counts is None else counts + batch


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    norms = torch._foreach_norm([t.detach() for t in tensors])
    return torch.linalg.vector_norm(torch.stack(_same_device(norms)).float())


def _same_device(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Model parallel: norms from several devices are brought to the host to be combined."""
    return [t.cpu() for t in tensors] if len({t.device for t in tensors}) > 1 else tensors


def _subset(p: torch.Tensor) -> torch.Tensor:
    """A view of at most UPDATE_SAMPLE values of a parameter: all of a small one, else
    UPDATE_CHUNKS contiguous runs spread evenly over it (a strided subset would touch every cache
    line of the tensor, as costly as the whole; contiguous runs read only what they keep)."""
    flat = p.detach().reshape(-1)
    n = flat.numel()
    if n <= UPDATE_SAMPLE:
        return flat
    size = UPDATE_SAMPLE // UPDATE_CHUNKS
    return flat.unfold(0, size, (n - size) // (UPDATE_CHUNKS - 1))[:UPDATE_CHUNKS]


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else x


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    return str(v)


def _describe(module: nn.Module) -> str:
    extra = module.extra_repr()
    return f"{type(module).__name__}({extra})" if "\n" not in extra else type(module).__name__


def performance_metrics(records: list[StepRecord]) -> PerformanceMetrics | None:
    """Medians of the step time split, and the peak memory (CUDA allocated on GPU runs, else RSS)."""
    import numpy as np

    if not records:
        return None
    arr = np.array(
        [
            (r.data_s, r.forward_s, r.backward_s, r.optimizer_s, r.step_s,
             r.cuda_peak if not math.isnan(r.cuda_peak) else r.rss_bytes)
            for r in records
        ],
        dtype=float,
    )

    def med(i):
        col = arr[:, i][~np.isnan(arr[:, i])]
        return float(np.median(col)) if len(col) else 0.0

    data, fwd, bwd, opt, step = (med(i) for i in range(5))
    busy = fwd + bwd + opt
    return PerformanceMetrics(
        forward_time=fwd,
        backward_time=bwd,
        optimizer_time=opt,
        data_time=data,
        step_time=step,
        memory_usage=float(np.nanmax(arr[:, 5])) if np.isfinite(arr[:, 5]).any() else 0.0,
        device_utilization=min(1.0, busy / step) if step > 0 else 0.0,
    )
