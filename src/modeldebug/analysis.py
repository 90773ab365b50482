"""Evidence -> Report: run the rules and summarise the run into the metrics the report's pictures use."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from modeldebug.evidence import Evidence, histogram_counts
from modeldebug.types import Report

# Long series are downsampled to at most this many points in the report's metrics.
MAX_POINTS = 500


def analyze(evidence: Evidence, rules: Sequence[Any] | None = None) -> Report:
    from modeldebug.rules import run_rules

    findings = run_rules(evidence, rules)
    return Report(run=evidence.run, findings=findings, metrics=summarize(evidence))


def summarize(ev: Evidence) -> dict[str, Any]:
    """Plain-JSON summaries of the run: series for plots and the spec's DebugMetrics figures."""
    steps = ev.steps
    out: dict[str, Any] = {"steps": int(len(steps))}
    if len(steps):
        idx = _downsample_index(len(steps))
        series = {"step": steps.step[idx]}
        for col in ("loss", "grad_norm", "lr", "data_s", "forward_s", "backward_s", "optimizer_s", "step_s",
                    "rss_bytes", "cuda_allocated", "cuda_reserved"):
            series[col] = steps[col][idx]
        out["series"] = {k: _floats(v) for k, v in series.items()}
        timing = {}
        for col in ("data_s", "forward_s", "backward_s", "optimizer_s", "step_s"):
            v = steps[col][np.isfinite(steps[col])]
            timing[col] = float(np.median(v)) if len(v) else None
        out["timing_median_s"] = timing
    if len(ev.validation):
        out["validation"] = {"step": _floats(ev.validation.step), "loss": _floats(ev.validation.loss)}
    layers = []
    for info in ev.layers_in_order():
        t = ev.layer(info.name)
        if not len(t):
            continue
        last = len(t) - 1
        entry = {
            "name": info.name,
            "type": info.type,
            "order": info.order,
            "samples": int(len(t)),
            "step": _floats(t.step),
            "output_mean": _floats(t.mean),
            "output_std": _floats(t.std),
            "zero_frac": _floats(t.zero_frac),
            "dead_frac": _floats(t.dead_frac),
            "sat_frac": _floats(t.sat_frac),
            "grad_norm": _floats(t.grad_norm),
            "fwd_time_s": _floats(t.fwd_time_s),
        }
        hist = histogram_counts(t.hist[last]) if "hist" in t else None
        if hist is not None:
            entry["histogram"] = {"lo": _float(t.hist_lo[last]), "hi": _float(t.hist_hi[last]), "counts": hist.tolist()}
        layers.append(entry)
    if layers:
        out["layers"] = layers
    params = []
    for name in ev.params:
        t = ev.param(name)
        if len(t):
            params.append({"name": name, "step": _floats(t.step), "norm": _floats(t.norm),
                           "grad_norm": _floats(t.grad_norm), "update_ratio": _floats(t.update_ratio)})
    if params:
        out["params"] = params
    if ev.class_counts:
        out["class_counts"] = {str(k): int(v) for k, v in sorted(ev.class_counts.items())}
    return out


def _downsample_index(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_POINTS).round().astype(int))


def _float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _floats(values) -> list[float | None]:
    """JSON has no NaN or Infinity: non-finite values become null."""
    arr = np.asarray(values, dtype=float)
    return [v if math.isfinite(v) else None for v in arr.tolist()]
