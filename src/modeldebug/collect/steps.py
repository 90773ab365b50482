"""The step state machine: when a step begins and closes, gradient accumulation held back until it
is clear what a step is, and the replay of a step whose loss or gradients turned non-finite."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from modeldebug.collect import params as param_stats
from modeldebug.collect.memory import cuda_memory
from modeldebug.collect.stats import Reduced
from modeldebug.events import NonfiniteOrigin
from modeldebug.records import StepRecord, row_maker

if TYPE_CHECKING:
    from modeldebug.collect.hooks import Guard, Hooks
    from modeldebug.collect.transfer import HostQueue
    from modeldebug.collect.watched import Watched
    from modeldebug.collect.writer import Validation, Writer
    from modeldebug.config import DebuggingConfig

# Backward passes seen without any optimizer step before each one counts as its own iteration.
MAX_ACCUMULATION = 64
NONFINITE_LOOKS = 3  # steps sampled after a non-finite one (a run that stays non-finite is not sampled forever)
REPLAYS = 3  # NaN-origin replays per run
# Memory is read on every step of the first MEMORY_EVERY_STEP, then on every MEMORY_EVERY-th and every
# sampled one: a leak still rises at every reading and a peak is a running maximum on CUDA, while
# a short step does not pay a /proc read (or the allocator's counters) each time.
MEMORY_EVERY_STEP = 256
MEMORY_EVERY = 4

# How a field of a held-back iteration merges into the step it turns out to belong to (its
# gradient accumulation): "sum" over all of them, "any" of them, "first": the first held
# iteration's value where the step has none (its sampled statistics stand for the merged step),
# "earliest": the first held iteration's.
SUM, ANY, FIRST, EARLIEST = ({"merge": k} for k in ("sum", "any", "first", "earliest"))


NAN = math.nan
NO_MEMORY = (NAN, NAN, NAN, NAN)  # (rss, CUDA allocated, reserved, peak) on a step that does not read them
NO_SCALARS = (NAN,) * 6  # a step whose numbers are on their way to the host (transfer._parts)
NO_FLAGS = (False, False, False)
# An unsampled step's row, made without a StepRecord; the fields in the order close() gives them.
STEP_ROW = row_maker(StepRecord, (
    "step", "loss", "grad_norm", "lr", "data_s", "forward_s", "backward_s", "optimizer_s", "step_s",
    "rss_bytes", "cuda_allocated", "cuda_reserved", "cuda_peak", "loss_nonfinite", "grad_nonfinite",
    "input_nonfinite", "stale_grad_norm", "optimizer_stepped", "backward_calls", "forward_calls", "sampled",
    "eval_mode", "scheduler_steps", "clip_calls", "clips_before_backward", "loss_calls", "loss_scale",
    "scaler_skipped", "clips_scaled",
))

# The clock itself, not a function around it: read ~15 times a step, a Python frame each would cost more.
now = time.perf_counter


@dataclass
class MonitorCost:
    """What watching costs: the monitor's seconds, bytes it holds, steps it sampled."""

    seconds: float = 0.0
    held_bytes: int = 0
    peak_bytes: int = 0
    samples: int = 0

    def hold(self, n: int) -> None:
        self.held_bytes += n
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)


@dataclass(slots=True)
class Step:
    """What one training step has gathered so far (device tensors until the step closes)."""

    index: int
    sampled: bool = field(metadata=FIRST)
    start: float = field(metadata=EARLIEST)
    data_s: float = field(default=0.0, metadata=SUM)
    data_seen: bool = field(default=False, metadata=ANY)
    forward_s: float = field(default=0.0, metadata=SUM)
    backward_s: float = field(default=0.0, metadata=SUM)
    optimizer_s: float = 0.0
    forward_calls: int = field(default=0, metadata=SUM)
    backward_calls: int = field(default=0, metadata=SUM)
    optimizer_stepped: bool = False
    eval_mode: bool = field(default=False, metadata=ANY)  # a root trained in eval mode
    stepped: set[int] = field(default_factory=set)  # ids of the optimizers that stepped
    fwd_start: float | None = None
    opt_start: float | None = None
    monitor_s: float = field(default=0.0, metadata=SUM)
    end_event: Any = None  # CUDA: recorded as the step closes
    after_pause: bool = False  # the device time since the last step's end includes a pause
    loss_sum: torch.Tensor | None = field(default=None, metadata=SUM)
    loss_count: int = field(default=0, metadata=SUM)
    grad_norm: torch.Tensor | None = None
    unclipped_norm: torch.Tensor | None = field(default=None, metadata=FIRST)  # before a clip call: the step's grad_norm
    stale_grad_norm: torch.Tensor | None = field(default=None, metadata=FIRST)
    stale_mins: dict[int, torch.Tensor] = field(default_factory=dict, metadata=FIRST)  # per optimizer id
    input_range: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, metadata=FIRST)  # CUDA: batch min, max
    input_vec: Reduced | None = field(default=None, metadata=FIRST)  # the batch, on sampled steps
    input_ref: torch.Tensor | None = None  # CPU batch, checked only if the loss turns non-finite
    batch: tuple[int, int] | None = field(default=None, metadata=FIRST)  # (epoch, position) in a DataLoader
    replay: tuple | None = field(default=None, metadata=FIRST)  # (root, args, kwargs, rng state): NaN origin (CPU)
    layer_start: dict[str, float] = field(default_factory=dict)
    layer_vecs: dict[str, tuple[Reduced, float]] = field(default_factory=dict, metadata=FIRST)  # output, fwd time
    grad_vecs: dict[str, Reduced] = field(default_factory=dict, metadata=FIRST)  # gradient of the output
    class_counts: torch.Tensor | None = field(default=None, metadata=FIRST)  # targets per class, sampled steps
    loss_calls: int = field(default=0, metadata=SUM)  # training calls of a torch loss function
    loss_probe: torch.Tensor | None = field(default=None, metadata=FIRST)  # collect/loss_calls.py, sampled steps
    loss_targets: torch.Tensor | None = field(default=None, metadata=FIRST)  # a few rows of regression targets
    param_pre: param_stats.Snapshot | None = field(default=None, metadata=FIRST)
    param_post: torch.Tensor | None = None  # update_stats of param_pre
    loss_scale: torch.Tensor | float | None = field(default=None, metadata=FIRST)  # GradScaler (collect/amp.py)
    scaler_skipped: bool = False  # the GradScaler skipped optimizer.step()
    # CPU: the gradient norm and loss tensors the NaN check read, and their floats (read once a step)
    read: tuple | None = None

    def mean_loss(self) -> torch.Tensor | None:
        if self.loss_count == 1:
            return self.loss_sum
        return self.loss_sum / self.loss_count if self.loss_count else None

    def sampled_parts(self) -> tuple[list[Reduced], list[torch.Tensor]]:
        """What a sampled step sends to the host: its reduced tensors, then its parameter rows."""
        items = [v[0] for v in self.layer_vecs.values()] + list(self.grad_vecs.values())
        if self.input_vec is not None:
            items.append(self.input_vec)
        extra: list[torch.Tensor] = []
        if self.class_counts is not None:
            extra.append(self.class_counts)
        extra += [t for t in (self.loss_probe, self.loss_targets) if t is not None]
        pre = self.param_pre
        if pre is not None:
            extra.append(torch.stack(pre.norms))
            if pre.grad_stats is not None:
                extra.append(pre.grad_stats)
            if self.param_post is not None:
                extra.append(self.param_post)
        return items, extra


_MERGES = [(f.name, f.metadata["merge"]) for f in fields(Step) if "merge" in f.metadata]


def _empty(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, dict) and not value)


def merge(step: Step, held: list[Step]) -> None:
    """Merge held-back iterations into ``step``, each field as its ``merge`` metadata says."""
    first = held[0]
    for name, how in _MERGES:
        mine = getattr(step, name)
        if how == "sum":
            for other in held:
                value = getattr(other, name)
                if value is not None:
                    mine = value if mine is None else mine + value
        elif how == "any":
            mine = mine or any(getattr(other, name) for other in held)
        elif how == "earliest" or (how == "first" and _empty(mine) and getattr(first, name) is not None):
            mine = getattr(first, name)
        setattr(step, name, mine)


class Steps:
    """The step in progress, the iterations held back, and the step count."""

    def __init__(self, config: "DebuggingConfig", schedule, watched: "Watched", writer: "Writer",
                 validation: "Validation", queue: "HostQueue", guard: "Guard", cost: MonitorCost):
        self.monitoring = config.monitoring_config
        self.schedule = schedule
        self.watched = watched
        self.writer = writer
        self.validation = validation
        self.queue = queue
        self.guard = guard
        self.cost = cost
        self.hooks: "Hooks | None" = None  # installs the per-layer hooks of sampled steps
        self.dist = None  # RankWatch when this process is one rank of several (collect/distributed.py)
        self.rss = None  # RssReader while the run is watched

        self.count = 0
        self.state: Step | None = None
        self.pending_backward: list[Step] = []  # backward-only iterations awaiting an optimizer step
        self.backward_driven = False
        self.force_sample = False
        self.manual = False  # steps are marked by Debugger.step()
        self.stopped = False
        self.prepared = False  # layer hooks installed ahead for the next (sampled) step
        self.entry_missing = False  # steps begin at backward: no watched root module is called
        self.root_seen = False  # a training forward of a watched root module was seen
        self.trains_in_eval = False  # a backward followed an eval-mode forward: such forwards are training
        # The losses of a step's backward calls add up to its loss: each was divided for gradient
        # accumulation already (the HF Trainer's are, integrations/transformers.py).
        self.losses_add_up = False
        # Calls seen since the last step closed, written with the next step that closes.
        self.scheduler_steps = 0
        self.clip_calls = 0
        self.clips_before_backward = 0
        self.clips_scaled = 0  # clip calls on gradients a GradScaler has not unscaled yet
        self.replay_budget = REPLAYS
        self.last_end: float | None = None  # when the previous step closed
        self.pending_data_s = 0.0  # data wait seen before the step it belongs to began
        self._nonfinite_looks = 0

    # ------------------------------------------------------------------ begin and close

    def begin(self, t: float) -> Step:
        self.validation.flush(self.writer, self.count)
        if self.prepared:  # layer hooks already installed when the previous step closed
            sampled, self.prepared = True, False
        else:
            sampled = self.force_sample or self.schedule(self.count)
            if sampled:
                self.hooks.install_layers()
        self.force_sample = False
        st = Step(self.count, sampled, t)  # (index, sampled, start: positional, ~15% cheaper than by name)
        if self.pending_data_s:
            st.data_s, st.data_seen, self.pending_data_s = self.pending_data_s, True, 0.0
        self.state = st
        return st

    def prepare_next(self) -> None:
        """For models whose root module is never called (a loop that calls ``model.encoder`` and
        ``model.head``, or slices ``model[:2]``), a step can only begin at its backward, too late
        for its forward: install the layer hooks of a sampled next step now, as this one closes."""
        if self.force_sample or self.schedule(self.count):
            self.hooks.install_layers()
            self.prepared = True

    def close(self) -> None:
        t = now()
        st = self.state
        self.state = None
        if self.hooks.layer_handles:
            self.hooks.remove_layers()
        if st is None:
            return
        st.replay = None
        if st.sampled and st.param_pre is None and st.backward_calls and self.monitoring.gradients:
            st.param_pre = self.snapshot(subsets=False)  # a step without optimizer.step()
        end = now()
        step_s = end - (self.last_end if self.last_end is not None else st.start)
        memory = (self._memory() if self.monitoring.memory and (
            st.index < MEMORY_EVERY_STEP or st.index % MEMORY_EVERY == 0 or st.sampled) else NO_MEMORY)
        self.count += 1
        if self.losses_add_up and st.loss_count > 1:
            st.loss_count = 1  # (mean_loss then is their sum)
        queue = self.queue
        # The hot path (CPU, unsampled, nothing waiting): the numbers are read now and the step is
        # written as a row; otherwise a StepRecord travels with the step until they arrive.
        at_once = self.dist is None and queue.writes_at_once(st)
        scalars = queue.host_scalars(st) if at_once else NO_SCALARS
        flags = queue.judge(st.index, st, scalars) if at_once else NO_FLAGS
        row = STEP_ROW(
            self.writer.run_id, st.index, scalars[0], scalars[1], self.watched.lr(),
            st.data_s if st.data_seen else NAN, st.forward_s if st.forward_calls else NAN,
            st.backward_s if st.backward_calls else NAN, st.optimizer_s if st.optimizer_stepped else NAN, step_s,
            *memory, *flags, scalars[2], st.optimizer_stepped, st.backward_calls, st.forward_calls, st.sampled,
            st.eval_mode, self.scheduler_steps, self.clip_calls, self.clips_before_backward, st.loss_calls,
            scalars[5], st.scaler_skipped, self.clips_scaled,
        )
        self.scheduler_steps = self.clip_calls = self.clips_before_backward = self.clips_scaled = 0
        if at_once:
            self.writer.step_row(row, flags[0] or flags[1])
            queue.observe(st, st.index, step_s, st.monitor_s)
        else:
            rec = StepRecord(*row[1:])
            queue.add(rec, st)
        st.monitor_s += now() - t
        self.cost.seconds += st.monitor_s
        queue.closed(st.sampled)
        # The next step's time (and its data wait, without a DataLoader) starts after our own work
        # here: a sampled step's statistics written at its close are not the loop waiting for data.
        self.last_end = now()
        if not self.root_seen:
            self.hooks.step_closed()
        if self.entry_missing and not self.root_seen and not self.stopped:
            self.prepare_next()
        if self.dist is not None and not self.stopped:
            self.dist.on_step(rec)  # every N steps: the cross-rank gather (all ranks close the same steps)

    def close_open(self) -> None:
        """Close the step in progress if it did anything (at pause and stop)."""
        if self.state is not None and (self.state.backward_calls or self.state.optimizer_stepped):
            self.close()

    def _memory(self) -> tuple[float, float, float, float]:
        """RSS, and on CUDA the allocator's allocated, reserved and peak bytes."""
        device = self.watched.device
        if device is not None and device.type == "cuda":
            return (float(self.rss()), *map(float, cuda_memory(device)))
        return float(self.rss()), NAN, NAN, NAN

    def snapshot(self, subsets: bool = True) -> param_stats.Snapshot:
        snap = param_stats.snapshot([p for _, p in self.watched.params], subsets)
        self.cost.hold(snap.held)
        return snap

    def measure_update(self, st: Step) -> None:
        # (only the parameters of the snapshot: a model found during the step is not in it)
        params = [p for _, p in self.watched.params][: len(st.param_pre.has_grad)]
        st.param_post = param_stats.update_stats(params, st.param_pre)
        self.cost.held_bytes -= st.param_pre.held

    def arrived(self, loss_nonfinite: bool, grad_nonfinite: bool) -> None:
        """A step's numbers reached the host: look closer at the next steps after a non-finite one."""
        if (loss_nonfinite or grad_nonfinite) and self._nonfinite_looks < NONFINITE_LOOKS:
            self.force_sample = True
            self._nonfinite_looks += 1

    # ------------------------------------------------------------------ gradient accumulation

    def hold_back(self, st: Step) -> None:
        """No optimizer has stepped yet: either gradient accumulation before the first step, or a
        loop that never steps. Hold the iteration back until it is clear which."""
        self.state = None
        self.hooks.remove_layers()
        if st.sampled and self.monitoring.gradients:
            st.param_pre = self.snapshot(subsets=False)
        self.pending_backward.append(st)
        self.count += 1
        if not self.root_seen:
            self.hooks.step_closed()
        if self.entry_missing and not self.root_seen:
            self.prepare_next()
        if self.backward_driven or len(self.pending_backward) >= MAX_ACCUMULATION:
            self.backward_driven = True
            self.flush_pending(as_steps=True)

    def current(self, t: float) -> Step:
        """The step in progress; one that begins now, after held-back backward passes when there are
        some (they were its gradient accumulation)."""
        if self.state is not None:
            return self.state
        if not self.pending_backward:
            return self.begin(t)
        self.state = Step(index=self.count, sampled=self.pending_backward[0].sampled, start=t)
        self.flush_pending(as_steps=False)
        return self.state

    def flush_pending(self, as_steps: bool) -> None:
        """Write held-back backward-only iterations as steps of their own, or merge them into the
        current step (they were gradient accumulation before the first optimizer step)."""
        pending, self.pending_backward = self.pending_backward, []
        if not pending:
            return
        self.count -= len(pending)
        if as_steps:
            current = self.state
            for st in pending:
                self.state = st
                st.index = self.count
                self.close()
            self.state = current
            if current is not None:
                current.index = self.count
            return
        if self.state is not None:
            merge(self.state, pending)
            self.state.index = self.count

    # ------------------------------------------------------------------ where a NaN came from

    def check_nonfinite(self, st: Step) -> None:
        """Before the weights change: if this step's loss or gradients are non-finite, replay it to
        find where the first NaN/Inf came from (CPU, where reading the flag costs no sync)."""
        entries = self.hooks.entries
        replay = st.replay or entries.replay()  # (a root its loop never calls: the child it called)
        if replay is None or not self.replay_budget:
            return
        norm, loss = st.grad_norm, st.loss_sum
        norm_f = NAN if norm is None else float(norm)
        loss_f = NAN if loss is None else float(loss)
        st.read = (norm, norm_f, loss, loss_f)
        if (norm is None or math.isfinite(norm_f)) and (loss is None or math.isfinite(loss_f)):
            return
        from modeldebug.collect.compiled import EagerWindow
        from modeldebug.collect.nan_origin import locate

        self.replay_budget -= 1
        root, args, kwargs, rng = replay
        st.replay = None
        entries.reset()
        model = self.watched.model_of(root)
        prefix = model.prefix if model else entries.prefix.get(id(root), "")
        inner = getattr(root, "_orig_mod", root)
        names = {id(m): (prefix + n).rstrip(".") for n, m in inner.named_modules()}
        self.guard.replaying = True  # our own replay: its hooks are not the user's steps
        try:
            with EagerWindow():  # a compiled root: replayed eagerly, its graph left as it is
                origin = locate(inner, args, kwargs, names=names, rng_state=rng)  # (parameter names as watched)
        finally:
            self.guard.replaying = False
        self.writer.event(NonfiniteOrigin(step=st.index, **origin.to_dict()))
