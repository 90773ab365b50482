"""memory_growth: memory that keeps growing step after step (a leak, typically a kept-alive graph)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, best_practice, col, fix, g
from modeldebug.types import Finding

_MiB = 2**20


@register
@dataclass
class MemoryGrowth(Rule):
    """Steady growth of process RSS or CUDA allocated memory.

    Reads: steps.rss_bytes, steps.cuda_allocated (each on its own), steps.step.
    Fires: on a series with at least ``min_steps`` values after the first ``warmup`` fraction
    of the run (allocator and cache warm-up), whose four quarter medians rise strictly, by at
    least ``min_growth_mib`` = 32 MiB and ``min_rel`` = 5% of the first quarter (fault suite: a
    graph kept alive by ``total += loss`` on a small MLP adds tens of MiB within a few hundred
    steps; healthy runs plateau after warm-up), and the rise is spread over steps: more than
    ``max_jumps`` = 3 of the largest step-to-step rises are needed to make half of it (a leak keeps
    something every step: the suite's leaks need 50-110 steps; the allocator grows in a few jumps,
    a 37 MiB one in a healthy BERT fine-tuning run, then plateaus or gives memory back), and the
    growth stands clear of the churn around its trend: at least ``min_trend_to_churn`` = 4 times
    the spread (10th to 90th percentile) of the series about its straight-line fit (a leak's
    residuals are a few MiB, its growth 9-18 times them; a healthy word-LSTM whose 8 MiB buffers
    the allocator returns and takes again drifts up 27-48 MiB at 1.2-2.2 times its churn; the
    churn is bounded and a leak is not, so a leak under churn is found once it outgrows it).
    Severity: high when memory at least doubled, else medium.
    Causes: graph_kept_alive first (the usual leak in a training loop), other.
    Recommends: accumulate ``loss.item()``, detach anything kept across steps, with the
    measured growth per step.
    """

    id = "memory_growth"
    kind = "memory_growth"
    reads = ("steps.rss_bytes", "steps.cuda_allocated")
    min_steps: int = 20
    warmup: float = 0.1
    min_growth_mib: float = 32.0
    min_rel: float = 0.05
    max_jumps: int = 3
    min_trend_to_churn: float = 4.0

    def check(self, ev: Evidence) -> list[Finding]:
        findings = []
        for column, label in (("cuda_allocated", "CUDA allocated memory"), ("rss_bytes", "process memory (RSS)")):
            f = self._series(ev, column, label)
            if f:
                findings.append(f)
                break  # a leak on the GPU shows in RSS too only when it is on the host: report once
        return findings

    @staticmethod
    def _jumps_for_half(mem: np.ndarray) -> int:
        """How many of the largest step-to-step rises make half of all the rise."""
        rises = np.sort(np.diff(mem)[np.diff(mem) > 0])[::-1]
        if not len(rises):
            return 0
        return int(np.searchsorted(np.cumsum(rises), 0.5 * rises.sum())) + 1

    def _series(self, ev: Evidence, column: str, label: str) -> Finding | None:
        steps, mem = col(ev.steps, "step"), col(ev.steps, column)
        ok = np.isfinite(mem)
        if ok.sum() < self.min_steps:
            return None
        s, m = steps[ok], mem[ok]
        skip = max(1, int(len(m) * self.warmup))
        s, m = s[skip:], m[skip:]
        if len(m) < self.min_steps:
            return None
        quarters = np.array([np.median(q) for q in np.array_split(m, 4)])
        growth = float(quarters[-1] - quarters[0])
        if not (np.all(np.diff(quarters) > 0) and growth >= self.min_growth_mib * _MiB
                and growth >= self.min_rel * max(quarters[0], 1.0)):
            return None
        jumps = self._jumps_for_half(m)
        if jumps <= self.max_jumps:
            return None  # a few jumps of the allocator (a new arena, a raised mmap threshold), not a leak
        fit = np.polyfit(s.astype(float), m, 1)
        residual = m - np.polyval(fit, s.astype(float))
        churn = float(np.percentile(residual, 90) - np.percentile(residual, 10))
        if growth < self.min_trend_to_churn * churn:
            return None  # memory taken and given back around a drift, not kept step after step
        per_step = float(fit[0])
        first = int(s[0])
        return self.finding(
            severity="high" if quarters[-1] >= 2 * quarters[0] else "medium", confidence=0.85,
            location=None, step=first,
            message=(f"{label[0].upper() + label[1:]} grows steadily: {g(quarters[0] / _MiB)} MiB -> "
                     f"{g(quarters[-1] / _MiB)} MiB (quarter medians), about {g(per_step / 2**10)} KiB per step; "
                     f"something from each step is kept alive."),
            evidence={"column": column, "start_bytes": float(quarters[0]), "end_bytes": float(quarters[-1]),
                      "bytes_per_step": per_step, "quarter_medians": quarters, "jumps_for_half": jumps,
                      "churn_bytes": churn},
            causes=["graph_kept_alive", "other"],
            recommendations=[
                fix("Accumulate Python numbers, not tensors that hold the graph: use loss.item().",
                    "running_loss += loss.item()  # not: running_loss += loss"),
                fix("Detach (and move to CPU) anything you keep across steps: outputs, hidden states, metrics.",
                    "history.append(output.detach().cpu())\nhidden = hidden.detach()  # RNNs: between batches"),
                best_practice("Run evaluation under torch.no_grad().", "with torch.no_grad():\n    val_out = model(x)"),
            ],
        )
