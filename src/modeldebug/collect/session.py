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

The Debugger is a facade over rooms of its own: ``watched`` (models, parameters, optimizers),
``hooks`` (the callbacks), ``steps`` (the step state machine), ``transfer`` (device -> host),
``params`` (parameter snapshots) and ``writer`` (records, events, meta).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from modeldebug.collect.hooks import Guard, Hooks
from modeldebug.collect.memory import RssReader, cuda_memory, cuda_total_memory
from modeldebug.collect.schedule import Adaptive, Every
from modeldebug.collect.steps import MAX_ACCUMULATION, MonitorCost, Steps, now  # noqa: F401  (re-exported)
from modeldebug.collect.transfer import HostQueue
from modeldebug.collect.watched import Watched
from modeldebug.collect.writer import Validation, Writer
from modeldebug.config import DebuggingConfig
from modeldebug.events import Device, Event, MemoryAtStop, MonitorError, RuntimeErrorDiagnosis, ScriptException
from modeldebug.records import LayerInfo, StepRecord
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

        self.config = cfg = config or DebuggingConfig()
        if store is None:
            store = RunStore(cfg.store_path)
        elif isinstance(store, (str, os.PathLike)):
            store = RunStore(Path(store))
        self.store = store
        self.run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.command = list(command or [])
        self._existing_run = existing_run  # created by the `modeldebug run` parent process
        if cfg.every is not None:
            self.schedule = Every(cfg.every, warmup=cfg.warmup_steps)
        elif cfg.target_overhead is None:
            self.schedule = Every(1)
        else:
            self.schedule = Adaptive(cfg.target_overhead, warmup=cfg.warmup_steps)

        self.cost = MonitorCost()
        self.watched = Watched()
        self.writer = Writer(store, self.run_id, lambda: self.steps.count, cfg.histogram_bins if cfg.histograms else 0)
        self.guard = Guard(self._internal_error)
        # The project's settings for the diagnosis (rule options, suppressions): set by watch().
        self.diagnose_with: dict[str, Any] = {}
        self.live = None  # findings while it runs (modeldebug.live_diagnosis), when asked for
        self.queue = HostQueue(self.writer, self.watched, self.schedule, self.cost)
        validation = Validation()
        self.steps = Steps(cfg, self.schedule, self.watched, self.writer, validation, self.queue, self.guard, self.cost)
        self.hooks = Hooks(cfg, self.watched, self.steps, validation, self.guard, self.cost)
        self.steps.hooks, self.queue.steps = self.hooks, self.steps
        self.watched.on_device = self._found_device
        self.watched.on_change = lambda: self.writer.meta_so_far(self.watched, changed=True)
        self.dist = None  # RankWatch when this process is one rank of several (collect/distributed.py)
        self._started = self._stopped = self._paused = False
        self._t0 = self._paused_at = self._paused_s = 0.0
        self._wall_end: float | None = None

    # ------------------------------------------------------------------ attaching

    def attach(self, model: nn.Module, name: str | None = None) -> "Debugger":
        """Watch a model (a root module). Attaching the same module twice is a no-op."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected `model` to be a torch.nn.Module but got {type(model).__name__}")
        # Records already written keep their names: a model found later gets its own prefix only.
        added = self.watched.add(model, name, keep_names=self.steps.count > 0)
        if added is not None and self._started:
            self.hooks.hook_root(added)
        return self

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> "Debugger":
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"Expected `optimizer` to be a torch.optim.Optimizer but got {type(optimizer).__name__}"
            )
        self.watched.add_optimizer(optimizer)
        return self

    def _found_device(self, device: torch.device) -> None:
        self.queue.set_device(device)
        if self._started:  # a model found after start (zero-code runs find it at the first backward)
            self._device_event()

    def _device_event(self) -> None:
        """The device's name and total memory, once: memory_pressure measures against it."""
        device = self.watched.device
        if device is not None and device.type == "cuda":
            self.event(Device(type="cuda", name=torch.cuda.get_device_name(device),
                              total_memory=cuda_total_memory(device)))

    @property
    def layer_info(self) -> dict[str, LayerInfo]:
        return self.watched.layer_info

    @property
    def step_count(self) -> int:
        return self.steps.count

    # ------------------------------------------------------------------ extension points

    def event(self, event: Event) -> None:
        """Write one event to the run (at the current step)."""
        self.writer.event(event)

    def add_monitor_time(self, seconds: float) -> None:
        """Time spent by a part of the monitor outside the hooks (the cross-rank gather)."""
        self.cost.seconds += seconds

    def disable_replay(self) -> None:
        """No NaN-origin replay in this process (a DDP rank: replaying would run collectives alone)."""
        self.steps.replay_budget = 0

    def resolve_all(self) -> None:
        """Bring every closed step's numbers to the host and write them (a sync on CUDA)."""
        self.queue.resolve(all_pending=True)

    def _internal_error(self, hook: str, exc: Exception) -> None:
        self.steps.state = None
        self.hooks.eager.leave()  # compiled models run compiled again for the rest of the run
        self.event(MonitorError(hook=hook, type=type(exc).__name__, message=str(exc)[:500]))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Debugger":
        if self._started:
            return self
        self.steps.rss = RssReader()
        self._t0 = now()
        if self._existing_run:
            self.store.update_run(self.run_id, status="running")
        else:
            self.store.create_run(
                RunInfo(id=self.run_id, command=self.command, status="running", started_at=time.time()),
                self.config,
            )
        self.writer.meta_so_far(self.watched, changed=True)  # what was given to watch (read while it runs)
        try:
            self.hooks.install()
            self._device_event()
        except BaseException:
            self.hooks.remove()
            raise
        self._started = True
        from modeldebug.collect.distributed import RankWatch

        self.dist = self.steps.dist = RankWatch.for_process(self)
        return self

    def pause(self) -> None:
        """Stop watching for a while (every hook removed, at no cost); :meth:`resume` goes on.

        A step in progress is closed first. The schedule keeps what it learned.
        """
        if not self._started or self._stopped or self._paused:
            return
        self.steps.close_open()
        self.steps.state = None
        self.hooks.remove()
        self._paused = True
        self._paused_at = now()

    def resume(self) -> None:
        if self._paused and not self._stopped:
            self._paused = False
            self._paused_s += now() - self._paused_at  # not part of the run's watched time
            self.steps.last_end = None  # the pause is not part of the next step's time
            self.queue.resumed = True
            self.hooks.install()

    def stop(self, status: str = "completed", exit_code: int | None = None, error: BaseException | None = None):
        """Remove every hook, write what is left, and close the run. Safe to call twice."""
        if self._stopped:
            return
        if not self._started:  # never started: no hook in, no run in the store, nothing to write
            self._stopped = self.steps.stopped = True
            log.warning("modeldebug: this Debugger was never started, so nothing was recorded; use "
                        "`with md.watch(model, optimizer) as dbg:` or call dbg.start() before training")
            return
        self._stopped = self.steps.stopped = True
        if self.live is not None:
            from modeldebug.live_diagnosis import detach

            detach(self.live)
        try:
            self.hooks.remove()
        finally:
            self._wall_end = now()
            try:
                steps, device = self.steps, self.watched.device
                crashed_in = steps.state.index if steps.state is not None else steps.count  # the step an error ended
                steps.close_open()
                steps.flush_pending(as_steps=True)
                self.queue.resolve(all_pending=True)
                steps.validation.flush(self.writer, steps.count)
                overlap = self.hooks.fingerprints.summary()
                if overlap is not None:
                    self.event(overlap)
                if device is not None and device.type == "cuda":
                    # A step that ran out of memory never closes: the allocator's peak tells it.
                    allocated, reserved, peak = cuda_memory(device)
                    self.event(MemoryAtStop(cuda_allocated=allocated, cuda_reserved=reserved, cuda_peak=peak))
                if error is not None:
                    self.event(ScriptException(type=type(error).__name__, message=str(error)[:2000]))
                    self._diagnose(error, crashed_in)
                if self.dist is not None:
                    self.dist.on_stop(status, error)
                self.writer.meta(self.watched)
                self.store.update_run(
                    self.run_id,
                    status=status,
                    exit_code=exit_code,
                    steps=steps.count,
                    duration_s=self._wall_end - self._t0,
                    models=self.model_infos(),
                    monitor_overhead=self.monitor_overhead(),
                    device=str(device) if device else None,
                )
                self.store.flush()
                steps.rss.close()
            except Exception:  # never mask the user's exception, nor end their script with ours
                log.exception("modeldebug could not finish writing run %s", self.run_id)

    def _diagnose(self, error: BaseException, step: int | None = None) -> None:
        """Explain the exception in this process, while its traceback's frames still exist."""
        if isinstance(error, KeyboardInterrupt):
            return
        try:
            from modeldebug.diagnose import diagnose_exception, module_names_of, run_facts

            names = module_names_of(*self.watched.module_names())
            facts = run_facts(self.watched.module_names(), self.last_forward_grad())
            finding = diagnose_exception(error, module_names=names, step=self.steps.count if step is None else step,
                                         facts=facts)
        except Exception:  # the rule falls back to the exception's text
            log.exception("modeldebug could not diagnose the exception")
            return
        self.event(RuntimeErrorDiagnosis(finding=finding.model_dump(mode="json")))

    def last_forward_grad(self) -> bool | None:
        """Whether the last forward of a watched model ran with grad on (None: none was seen)."""
        if self.hooks.in_eval:  # an evaluation forward: eval mode with grad on, or grad off
            return self.hooks.maybe_training
        return True if self.steps.root_seen else None

    def __enter__(self) -> "Debugger":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> bool:
        from modeldebug.live_diagnosis import StopTraining, stopped_by_text

        if exc is None:
            self.stop("completed")
        elif isinstance(exc, StopTraining):  # stop_on: a finding ended the run, not a bug of the script
            self.stop("stopped")
            self.store.update_run(self.run_id, stopped_by=stopped_by_text(exc.finding))
        elif isinstance(exc, KeyboardInterrupt):
            self.stop("interrupted", error=exc)
        else:
            self.stop("crashed", error=exc)
        return False

    # ------------------------------------------------------------------ steps

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Mark the end of a training step by hand (for loops whose optimizer the debugger cannot see).

        Once called, steps are counted only by this method; optimizer steps still give gradient
        and parameter statistics.
        """
        self.hooks.step(loss)

    # ------------------------------------------------------------------ metrics, report

    def model_infos(self) -> list[ModelInfo]:
        return self.watched.model_infos()

    def monitor_overhead(self) -> MonitorOverhead:
        wall = (self._wall_end or now()) - self._t0 - self._paused_s if self._t0 else 0.0
        cost = self.cost
        return MonitorOverhead(
            time_fraction=cost.seconds / wall if wall > 0 else 0.0,
            peak_memory_bytes=int(cost.peak_bytes),
            monitor_time_s=cost.seconds,
            sampled_steps=cost.samples,
        )

    @property
    def metrics(self) -> DebugMetrics:
        """The latest figures, in the product spec's DebugMetrics shape (cheap: no store read)."""
        recent = list(self.writer.recent)
        info_of = self.watched.layer_info
        layers = []
        for name, rec in self.writer.latest_layers.items():
            info = info_of.get(name)
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
            layer_metrics=sorted(layers, key=lambda m: info_of[m.name].order if m.name in info_of else 0),
            performance_metrics=performance_metrics(recent),
            steps=self.steps.count,
            loss=recent[-1].loss if recent else None,
            grad_norm=recent[-1].grad_norm if recent else None,
            learning_rates=self.watched.learning_rates(),
        )

    def evidence(self):
        """Everything collected so far, as the rules read it."""
        self.queue.resolve(all_pending=True)
        self.store.flush()
        return self.store.load_evidence(self.run_id)

    @property
    def findings(self) -> list:
        """The findings so far: the live diagnosis' latest, or the rules on the evidence now."""
        if self.live is not None and self.live.passes and not self._stopped:
            return list(self.live.findings)
        return self.report().findings

    def report(self, rules=None) -> Report:
        """Diagnose the run: the rules' findings, the run's summary and the metrics plots draw from."""
        from modeldebug.pipeline import diagnose

        return diagnose(self.store, self.run_id, evidence=self.evidence(), rules=rules, save=self._stopped,
                        **self.diagnose_with).report


# ---------------------------------------------------------------------- helpers


def watch(
    model: nn.Module | Iterable[nn.Module],
    optimizer: torch.optim.Optimizer | Iterable[torch.optim.Optimizer] | None = None,
    *,
    config: DebuggingConfig | None = None,
    store: Any = None,
    rules: Sequence[Any] = (),
    on_finding: Any = None,
    stop_on: Any = None,
    alerts: Any = None,
) -> Debugger:
    """Watch training of ``model`` (one module or several) stepped by ``optimizer``.

    Use as a context manager; hooks are removed on exit, also when training raises::

        with md.watch(model, optimizer) as dbg:
            ...train...
        report = dbg.report()

    ``rules``: your own Rule classes (or instances), run with the built-in ones at ``report()``. The
    project's configuration file (modeldebug.project_config) applies too: without ``config``, its
    level, sampling budget and store; always, its rule settings and suppressions. A bad file raises
    ConfigError here, before training starts.

    Findings while it trains (modeldebug.live_diagnosis; the rules in a background thread, about 1%
    of the time): ``on_finding(event, finding)`` is called from that thread for each finding as it
    first holds (``"new"``) and when its severity changes (``"changed"``); ``alerts`` appends them as
    JSON lines to a file; ``stop_on`` (``"high"``, ``"medium"`` or kinds) raises StopTraining at
    the next ``optimizer.step()`` once such a finding appears (the run's status: ``stopped``).
    ``dbg.findings`` is what was found so far.
    """
    from modeldebug.project_config import diagnosis_settings, resolve

    project = resolve({})
    if config is None:
        config = DebuggingConfig(analysis_level=project["level"], every=project["every"],
                                 target_overhead=project["sampling-budget"], store_path=project["store"])
    diagnose_with = diagnosis_settings(project)
    if rules:
        from modeldebug.rules import validate_rule
        from modeldebug.rules.user import RuleOptions

        for rule in rules:
            validate_rule(rule if isinstance(rule, type) else type(rule))

        options = diagnose_with.setdefault("options", RuleOptions())
        options.extra.extend(rules)
    dbg = Debugger(config, store=store)
    dbg.diagnose_with = diagnose_with
    if on_finding is not None or stop_on is not None or alerts is not None:
        from modeldebug.live_diagnosis import attach

        dbg.live = attach(dbg, on_finding=on_finding, stop_on=stop_on, alerts=alerts,
                          **({"budget": project["live-budget"]} if project["live-budget"] else {}))
    models = [model] if isinstance(model, nn.Module) else list(model)
    if not models:
        raise ValueError("Expected at least one model to watch but got none")
    for m in models:
        dbg.attach(m)
    if optimizer is not None:
        for opt in [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer):
            dbg.attach_optimizer(opt)
    return dbg


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else x


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
