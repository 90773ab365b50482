"""Device -> host: closed steps' scalars (and a sampled step's statistics) on their way to the host,
and the CUDA clock that says what a sampled step cost the device.

On the CPU a step's scalars are read at once (no sync there); on CUDA they are stacked on the
device and copied in batches of steps, never waited for while training runs (``stats.Transfer``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from time import perf_counter as _now
from typing import TYPE_CHECKING, Any

import torch

from modeldebug.collect.spikes import SpikeWatch
from modeldebug.collect.stats import Transfer
from modeldebug.records import StepRecord

if TYPE_CHECKING:
    from modeldebug.collect.steps import MonitorCost, Step, Steps
    from modeldebug.collect.watched import Watched
    from modeldebug.collect.writer import Writer

CUDA_BATCH = 16  # unsampled steps whose scalars travel together on CUDA


@dataclass(slots=True)
class Closed:
    """A closed step whose numbers are not on the host yet: its loss, gradient norm, stale gradient
    norm, batch min and max and GradScaler scale, as floats read at once (CPU) or stacked on the device (CUDA: the
    queue's ``on_device``), to be copied with others."""

    record: StepRecord
    scalars: list[float] | torch.Tensor
    step: "Step"


def _parts(st: "Step") -> tuple:
    """The numbers a step sends to the host: loss, gradient norm, stale norm, batch min and max, loss scale."""
    return st.mean_loss(), st.grad_norm, st.stale_grad_norm, *(st.input_range or (None, None)), st.loss_scale


@dataclass
class InFlight:
    """Steps sent to the host in one transfer (None: CPU scalars already there, nothing to copy)."""

    transfer: Transfer | None
    steps: list[Closed]
    sampled: "Step | None"  # the sampled step whose statistics travel with them

    def ready(self) -> bool:
        return self.transfer is None or self.transfer.ready()


class HostQueue:
    def __init__(self, writer: "Writer", watched: "Watched", schedule, cost: "MonitorCost"):
        self.writer = writer
        self.watched = watched
        self.schedule = schedule
        self.cost = cost
        self.steps: "Steps | None" = None  # told when a step's numbers arrive
        self.on_device = False  # CUDA: scalars stay on the device until a batch of them is copied
        self.resumed = False  # set by resume: the next device interval includes the pause
        self._batch = 1
        self._closed: list[Closed] = []
        self._inflight: deque[InFlight] = deque()  # sent, not yet arrived
        self._nan: torch.Tensor | None = None  # CUDA: stands for a step's missing scalars
        self._last_end_event: Any = None  # CUDA: the previous step's end on the device
        self._device_plain: deque[float] = deque(maxlen=50)  # CUDA: device seconds of unsampled steps
        self.spikes = SpikeWatch()  # the batch of a loss far above its running level (rules/loss_spike.py)

    def set_device(self, device: torch.device) -> None:
        self.on_device = device.type == "cuda"
        self._batch = CUDA_BATCH if self.on_device else 1

    def writes_at_once(self, st: "Step") -> bool:
        """CPU, an unsampled step, nothing sent before it waiting: its numbers are written as it closes."""
        return not self.on_device and not st.sampled and not self._closed and not self._inflight

    @staticmethod
    def host_scalars(st: "Step") -> list[float]:
        """CPU: the step's numbers as floats (reading a scalar costs no sync, and six reads are
        cheaper than building a tensor). The NaN check read the loss and the norm already: the same
        tensors are not read twice (each read is a dispatch, on every step)."""
        loss, norm, read = st.mean_loss(), st.grad_norm, st.read
        loss_f = read[3] if read is not None and loss is read[2] else math.nan if loss is None else float(loss)
        norm_f = read[1] if read is not None and norm is read[0] else math.nan if norm is None else float(norm)
        rest = (st.stale_grad_norm, *(st.input_range or (None, None)), st.loss_scale)
        return [loss_f, norm_f, *[math.nan if x is None else float(x) for x in rest]]

    def add(self, rec: StepRecord, st: "Step") -> None:
        if not self.on_device:
            scalars = self.host_scalars(st)
            if self.writes_at_once(st):
                self._write(rec, st, scalars, None, (), (), 0.0)  # nothing to send or wait for
                return
        else:
            parts = _parts(st)
            # The step's end on the device's clock: what a sampled step costs the device (its
            # reductions run there, invisible to host timers) is read from these when they arrive.
            st.end_event = torch.cuda.Event(enable_timing=True)
            st.end_event.record()
            st.after_pause, self.resumed = self.resumed, False
            nan = self._nan
            device = self.watched.device
            if nan is None or nan.device != device:
                nan = self._nan = torch.full((), math.nan, device=device)
            scalars = torch.stack([(nan if x is None else x.to(nan.device, torch.float32).reshape(()) if isinstance(x, torch.Tensor)
                                   else torch.full((), float(x), device=nan.device)) for x in parts])
        self._closed.append(Closed(rec, scalars, st))

    def closed(self, sampled: bool) -> None:
        """A step closed: send what is due, write what has arrived."""
        if not self._closed and not self._inflight:
            return  # (written as it closed)
        if not sampled and not self.on_device and not self._inflight:
            # CPU, unsampled: the scalars are on the host already, nothing to send (the hot path).
            t = _now()
            closed, self._closed = self._closed, []
            for c in closed:
                self._write(c.record, c.step, c.scalars, None, (), (), 0.0)
            self.cost.seconds += _now() - t
            return
        if sampled or len(self._closed) >= self._batch:
            self.resolve()
        elif self._inflight:
            self.collect()

    def resolve(self, all_pending: bool = False) -> None:
        """Send pending step scalars (and a sampled step's statistics) to the host, and write the
        records of every transfer that has arrived; with ``all_pending``, wait for all of them."""
        if self._closed:
            self._launch()
        self.collect(wait=all_pending)

    def collect(self, wait: bool = False) -> None:
        """Write the records of the transfers that have arrived (all of them with ``wait``)."""
        t = _now()
        while self._inflight and (wait or self._inflight[0].ready()):
            self._arrive(self._inflight.popleft())
        self.cost.seconds += _now() - t

    def _launch(self) -> None:
        """One transfer for the pending steps: on CUDA, once per sampled step or per batch of
        unsampled steps, and never waited for (see ``Transfer``). A sampled step always closes
        a batch: it is sent at once."""
        t = _now()
        closed, self._closed = self._closed, []
        sampled = closed[-1].step if closed[-1].step.sampled else None
        items, extra = sampled.sampled_parts() if sampled is not None else ([], [])
        if self.on_device:
            extra.insert(0, torch.stack([c.scalars for c in closed]).reshape(-1))
        if not items and not extra:  # CPU, unsampled: the scalars are already on the host
            self._arrive(InFlight(None, closed, None))
        else:
            self._inflight.append(InFlight(Transfer(items, extra), closed, sampled))
        self.cost.seconds += _now() - t

    def _arrive(self, batch: InFlight) -> None:
        t = _now()
        host, extra_host = batch.transfer.result() if batch.transfer is not None else ([], [])
        copy_s = _now() - t
        if self.on_device:
            values = extra_host.pop(0).reshape(-1, 6).tolist()
        else:
            values = [c.scalars for c in batch.steps]
        for c, scalars in zip(batch.steps, values):
            self._write(c.record, c.step, scalars, batch.sampled, host, extra_host, copy_s)

    def _write(self, rec: StepRecord, st: "Step", scalars: list[float], sampled: "Step | None", host, extra_host,
               copy_s: float) -> None:
        """One step's record, its numbers on the host (and ``sampled``'s statistics, if it is that step)."""
        rec.loss, rec.grad_norm, rec.stale_grad_norm, _, _, rec.loss_scale = scalars
        rec.loss_nonfinite, rec.grad_nonfinite, rec.input_nonfinite = self.judge(rec.step, st, scalars)
        written = _now()
        if st is sampled:
            self.cost.samples += 1
            self.writer.sampled(st, rec, host, extra_host, self.watched)
            written -= copy_s
        self.writer.step(rec)
        # The schedule sees everything a step cost the monitor, its host-side summaries included.
        self.observe(st, rec.step, rec.step_s, st.monitor_s + _now() - written)

    def judge(self, step: int, st: "Step", scalars: list[float]) -> tuple[bool, bool, bool]:
        """A step's numbers on the host: whether its loss, gradients and batch are non-finite; the batch
        of a loss far above its running level recorded; the step machine told."""
        loss, grad_norm, _, lo, hi, _ = scalars
        loss_nonfinite = st.loss_count > 0 and not math.isfinite(loss)
        grad_nonfinite = st.grad_norm is not None and not math.isfinite(grad_norm)
        # Checked on CUDA only (min and max of the batch; both NaN where not checked).
        input_nonfinite = st.input_range is not None and not (math.isfinite(lo) and math.isfinite(hi))
        if (loss_nonfinite or grad_nonfinite) and st.input_ref is not None:
            input_nonfinite = not bool(torch.isfinite(st.input_ref).all())
        spikes = self.spikes
        level = spikes.level
        if spikes.flags(loss):
            self.writer.event(spikes.identity(step, loss, level, st.batch, st.input_ref))
        st.input_ref = None
        self.steps.arrived(loss_nonfinite, grad_nonfinite)
        return loss_nonfinite, grad_nonfinite, input_nonfinite

    def observe(self, st: "Step", step: int, step_s: float, cost: float) -> None:
        """The schedule learns what the step took and what it cost the monitor."""
        device = self._device_step_s(st) if self.on_device else None
        if device is not None:
            # On CUDA the host's clocks see launches, not the reductions: a sampled step's
            # cost is its device time beyond an ordinary step's (also counted as the
            # monitor's time), and steps last as long as the device says.
            step_s = max(step_s, device)
            if st.sampled and self._device_plain:
                extra = max(0.0, device - sorted(self._device_plain)[len(self._device_plain) // 2])
                cost = max(cost, extra)
                self.cost.seconds += extra
            elif not st.sampled:
                self._device_plain.append(device)
        self.schedule.observe(step, step_s, st.sampled, cost)

    def _device_step_s(self, st: "Step") -> float | None:
        """Seconds between this step's end and the previous step's on the device (both done:
        the transfer that brought this step's numbers was recorded after them)."""
        prev, self._last_end_event = self._last_end_event, st.end_event
        if prev is None or st.end_event is None or st.after_pause:
            return None
        return prev.elapsed_time(st.end_event) / 1e3
