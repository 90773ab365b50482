"""memory_pressure: memory close to the device's limit (or above the user's alert threshold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.events import Device, MemoryAtStop
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, autocast_code, col, g, optimization
from modeldebug.types import Finding

_GiB = 2**30


def device_memory(ev: Evidence) -> tuple[float | None, float | None]:
    """(device total bytes, host total bytes) from the run's ``device`` event, when the collector recorded it.

    Expected event: ``{"type": "device", "data": {"total_memory": bytes, "host_total_memory": bytes}}``.
    """
    dev = host = None
    for e in ev.events_of(Device):
        dev = e.total_memory if e.total_memory is not None else dev
        host = e.host_total_memory if e.host_total_memory is not None else host
    return (float(dev) if dev else None), (float(host) if host else None)


def peak_at_stop(ev: Evidence) -> float:
    """The CUDA allocator's peak (and reserved) bytes read as the run stopped: a step that ran
    out of memory never closes, so no step record holds it. NaN when not recorded."""
    peak = np.nan
    for e in ev.events_of(MemoryAtStop):
        peak = np.fmax(peak, np.fmax(float(e.cuda_peak or np.nan), float(e.cuda_reserved or np.nan)))
    return float(peak)


@register
@dataclass
class MemoryPressure(Rule):
    """Peak memory near the limit.

    Reads: steps.cuda_reserved / cuda_peak / rss_bytes, the ``device`` event's total_memory
    (and host_total_memory), the ``memory_at_stop`` event (the allocator's peak when the run
    ended: an out-of-memory step never closes), config.alert_thresholds.memory_usage (bytes, or
    a fraction of the device's memory when <= 1).
    Fires: when peak CUDA reserved (or peak allocated) memory reaches ``fraction`` = 90% of the
    device's total: the allocator starts to fragment and retry, and a longer sequence or a
    larger batch will run out (common practice; fault suite); or when the peak crosses the
    user's memory_usage alert.
    Severity: high at >= ``high_fraction`` = 97%, medium otherwise (and for an alert).
    Cause: other (no contract cause covers "batch too large for the device").
    Recommends: a smaller batch with the same effective size (accumulation), bf16 autocast,
    activation checkpointing.
    """

    id = "memory_pressure"
    kind = "memory_pressure"
    reads = ("steps.cuda_reserved", "steps.cuda_peak", "steps.rss_bytes", "events.device", "events.memory_at_stop",
             "config.alert_thresholds.memory_usage", "run.device")
    fraction: float = 0.90
    high_fraction: float = 0.97

    def check(self, ev: Evidence) -> list[Finding]:
        s = ev.steps
        if len(s) == 0:
            return []
        steps = col(s, "step")
        cuda = np.fmax(col(s, "cuda_reserved"), col(s, "cuda_peak"))
        rss = col(s, "rss_bytes")
        dev_total, host_total = device_memory(ev)
        at_stop = peak_at_stop(ev)
        on_cuda = np.isfinite(cuda).any() or np.isfinite(at_stop)
        mem, total, what = (cuda, dev_total, "GPU memory") if on_cuda else (rss, host_total, "host memory (RSS)")
        if on_cuda and np.isfinite(at_stop) and not (np.nanmax(mem, initial=-np.inf) >= at_stop):
            # Counted at the last step: the peak came after it (the step that ran out of memory).
            mem, steps = np.append(mem, at_stop), np.append(steps, steps[-1])
        if not np.isfinite(mem).any():
            return []
        i = int(np.nanargmax(mem))
        peak = float(mem[i])
        findings = []
        if total and peak >= self.fraction * total:
            share = peak / total
            first = int(steps[np.flatnonzero(mem >= self.fraction * total)[0]])
            findings.append(self._finding(
                ev, "high" if share >= self.high_fraction else "medium", first,
                f"Peak {what} is {g(peak / _GiB)} GiB, {g(100 * share)}% of the device's {g(total / _GiB)} GiB "
                f"(first above {g(100 * self.fraction)}% at step {first}).",
                {"peak_bytes": peak, "total_bytes": total, "fraction": share},
            ))
        limit = ev.config.alert_thresholds.memory_usage
        if limit is not None and not findings:
            limit_bytes = limit * total if limit <= 1 and total else (limit if limit > 1 else None)
            if limit_bytes is not None and peak > limit_bytes:
                first = int(steps[np.flatnonzero(mem > limit_bytes)[0]])
                findings.append(self._finding(
                    ev, "medium", first,
                    f"Peak {what} {g(peak / _GiB)} GiB crossed your alert threshold {g(limit_bytes / _GiB)} GiB "
                    f"at step {first}.",
                    {"peak_bytes": peak, "alert_threshold_bytes": limit_bytes, "alert_threshold": limit},
                ))
        return findings

    def _finding(self, ev, severity, step, msg, evidence) -> Finding:
        return self.finding(
            severity=severity, confidence=0.85, location=None, step=step, message=msg, evidence=evidence,
            causes=["other"],
            recommendations=[
                optimization("Halve the batch size and accumulate two micro-batches per optimizer step (same "
                             "effective batch).", "(loss / 2).backward()  # optimizer.step() every 2nd batch"),
                optimization("Run forward and loss in bfloat16 autocast.",
                             autocast_code(ev, "loss = criterion(model(x), y)")),
                optimization("Recompute activations in backward for the largest blocks.",
                             "out = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)"),
            ],
        )
