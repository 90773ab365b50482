"""input_bottleneck: most of each step is spent waiting for the next batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import GRACE_STEPS, Rule, best_practice, col, g, grace_mask, optimization
from modeldebug.types import Finding


@register
@dataclass
class InputBottleneck(Rule):
    """Data loading dominating the step time.

    Reads: steps.data_s (time in DataLoader.__next__, or without a DataLoader the time from the
    last step to the forward), steps.step_s (or forward_s + backward_s + optimizer_s + data_s when
    step_s is missing), after the grace steps (the first batches pay for worker start-up).
    Fires: when the median step spends at least ``data_fraction`` = 50% of its time waiting for
    data and the median wait is at least ``min_data_s`` = 1 ms (below that, collate overhead of
    a tiny model; fault suite). Medians, so that an evaluation pass between two steps does not
    count as waiting. The GPU/CPU idles while it waits.
    Severity: medium (high when at least 80%).
    Cause: slow_data_loading.
    Recommends: DataLoader workers, pinned memory, persistent workers, moving per-sample work
    out of __getitem__ (precompute or batch the transform).
    """

    id = "input_bottleneck"
    kind = "input_bottleneck"
    reads = ("steps.data_s", "steps.step_s", "steps.forward_s", "steps.backward_s", "steps.optimizer_s")
    data_fraction: float = 0.5
    min_data_s: float = 0.001
    grace_steps: int = GRACE_STEPS

    def check(self, ev: Evidence) -> list[Finding]:
        s = ev.steps
        steps, data = col(s, "step"), col(s, "data_s")
        total = col(s, "step_s")
        parts = data + np.nan_to_num(col(s, "forward_s")) + np.nan_to_num(col(s, "backward_s")) \
            + np.nan_to_num(col(s, "optimizer_s"))
        total = np.where(np.isfinite(total), np.maximum(total, data), parts)
        ok = grace_mask(steps, self.grace_steps) & np.isfinite(data) & np.isfinite(total) & (total > 0)
        if ok.sum() < 3:
            return []
        frac = float(np.median(data[ok] / total[ok]))
        med = float(np.median(data[ok]))
        if frac < self.data_fraction or med < self.min_data_s:
            return []
        return [self.finding(
            severity="high" if frac >= 0.8 else "medium", confidence=0.85, location=None,
            step=int(steps[ok][0]),
            message=(f"Waiting for data takes {g(100 * frac)}% of the step time (median {g(1e3 * med)} ms of "
                     f"{g(1e3 * float(np.median(total[ok])))} ms per step): the model idles while batches load."),
            evidence={"data_fraction": frac, "median_data_s": med, "median_step_s": float(np.median(total[ok]))},
            causes=["slow_data_loading"],
            recommendations=[
                optimization("Load batches in parallel worker processes and pin memory for GPU copies.",
                             "DataLoader(dataset, batch_size=..., shuffle=True, num_workers=4, pin_memory=True, "
                             "persistent_workers=True)"),
                best_practice("Move per-sample work out of __getitem__: precompute it once, or do it per batch on "
                              "the device.", "dataset = TensorDataset(precomputed_x, y)"),
            ],
        )]
