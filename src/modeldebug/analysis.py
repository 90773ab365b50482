"""Evidence -> Report: run the rules and summarise the run into the metrics the report's pictures use."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from modeldebug.events import MonitorError
from modeldebug.evidence import Evidence, histogram_counts
from modeldebug.metrics import TrainingMetrics
from modeldebug.types import Finding, Report
from modeldebug.unwatched import run_with_unwatched

# Long series are downsampled to at most this many points in the report's metrics.
MAX_POINTS = 500
# Per-layer and per-parameter series (one per layer or parameter) keep fewer points each.
MAX_LAYER_POINTS = 120


def analyze(evidence: Evidence, rules: Sequence[Any] | None = None, options: Any = None) -> Report:
    """The rules' report: findings (see :func:`find`), the rules that failed, and the run's summaries
    (see :func:`summarize`). ``options``: a RuleOptions (rules off, thresholds, severities, extra rules)."""
    findings, errors = find_checked(evidence, rules, options)
    return Report(run=run_with_unwatched(evidence), findings=findings, metrics=summarize(evidence), rule_errors=errors)


def find(evidence: Evidence, rules: Sequence[Any] | None = None) -> list[Finding]:
    """The rules' findings and their post-passes (see :func:`find_checked`)."""
    return find_checked(evidence, rules)[0]


def find_checked(evidence: Evidence, rules: Sequence[Any] | None = None, options: Any = None):
    """The rules' findings with their post-passes (what the trivial predictor's loss shows, see
    rules/reference.py; the rank a NaN started on; root causes and the consequences linked to them,
    see rules/causality.py), and the rules that raised, as RuleErrors."""
    from modeldebug.rules import apply_rules
    from modeldebug.rules.causality import link_findings
    from modeldebug.rules.rank_attribution import attribute_ranks
    from modeldebug.rules.reference import with_reference

    found, errors = apply_rules(evidence, rules, options)
    findings = with_reference(found, evidence)
    if len(evidence.ranks):  # a torchrun job: name the rank a NaN started on
        findings = attribute_ranks(findings, evidence)
    return link_findings(findings, evidence), errors


def summarize(ev: Evidence) -> TrainingMetrics:
    """Summaries of the run (typed, see modeldebug.metrics): series for plots and the spec's DebugMetrics figures."""
    steps = ev.steps
    out: dict[str, Any] = {"steps": int(len(steps))}
    if len(steps):
        # Keep every bucket's extremes of loss and gradient norm, so spikes survive downsampling.
        idx = _downsample_index(len(steps), keep=(steps.loss, steps.grad_norm))
        series = {"step": steps.step[idx]}
        for col in ("loss", "grad_norm", "lr", "data_s", "forward_s", "backward_s", "optimizer_s", "step_s",
                    "rss_bytes", "cuda_allocated", "cuda_reserved"):
            series[col] = steps[col][idx]
        if "loss_scale" in steps and np.isfinite(steps.loss_scale).any():  # a GradScaler ran
            series["loss_scale"] = steps.loss_scale[idx]
            series["scaler_skipped"] = steps.scaler_skipped[idx].astype(float)
        out["series"] = {k: _floats(v) for k, v in series.items()}
        timing = {}
        for col in ("data_s", "forward_s", "backward_s", "optimizer_s", "step_s"):
            v = steps[col][np.isfinite(steps[col])]
            timing[col] = float(np.median(v)) if len(v) else None
        out["timing_median_s"] = timing
        bad = np.zeros(len(steps), dtype=bool)
        for col in ("loss_nonfinite", "grad_nonfinite"):
            if col in steps:
                bad |= steps[col].astype(bool)
        bad |= ~np.isfinite(steps.loss) & ~np.isnan(steps.loss)
        out["first_nonfinite_step"] = int(steps.step[np.argmax(bad)]) if bad.any() else None
    if len(ev.validation):
        out["validation"] = {"step": _floats(ev.validation.step), "loss": _floats(ev.validation.loss),
                             "accuracy": _floats(ev.validation.accuracy)}
    layers = []
    for info in ev.layers_in_order():
        t = ev.layer(info.name)
        if not len(t):
            continue
        i = _downsample_index(len(t), MAX_LAYER_POINTS, keep=(t.grad_norm,))
        entry = {
            "name": info.name,
            "type": info.type,
            "order": info.order,
            "samples": int(len(t)),
            "step": _floats(t.step[i]),
            "output_mean": _floats(t.mean[i]),
            "output_std": _floats(t.std[i]),
            "zero_frac": _floats(t.zero_frac[i]),
            "dead_frac": _floats(t.dead_frac[i]),
            "sat_frac": _floats(t.sat_frac[i]),
            "grad_norm": _floats(t.grad_norm[i]),
            "fwd_time_s": _floats(t.fwd_time_s[i]),
        }
        if "hist" in t:
            # The latest histogram (the last sample may have none: a non-finite output), and the first.
            have = [k for k, blob in enumerate(t.hist) if isinstance(blob, bytes)]
            for key, k in (("histogram", have[-1] if have else None), ("histogram_first", have[0] if have else None)):
                if k is not None:
                    entry[key] = {"step": int(t.step[k]), "lo": _float(t.hist_lo[k]), "hi": _float(t.hist_hi[k]),
                                  "counts": histogram_counts(t.hist[k]).tolist()}
        layers.append(entry)
    if layers:
        out["layers"] = layers
    params = []
    for name in ev.params:
        t = ev.param(name)
        if len(t):
            i = _downsample_index(len(t), MAX_LAYER_POINTS, keep=(t.grad_norm, t.update_ratio))
            params.append({"name": name, "module": ev.params[name].module, "step": _floats(t.step[i]),
                           "norm": _floats(t.norm[i]), "grad_norm": _floats(t.grad_norm[i]),
                           "update_ratio": _floats(t.update_ratio[i])})
    if params:
        out["params"] = params
    if ev.class_counts:
        out["class_counts"] = {str(k): int(v) for k, v in sorted(ev.class_counts.items())}
    stopped = ev.events_of(MonitorError)
    if stopped:
        # The collector switched itself off after an error in its own code (the script went on):
        # the findings cover the steps before it.
        first = stopped[0]
        out["monitor_stopped"] = {"step": first.at_step, "hook": first.hook,
                                  "error": f"{first.type or 'Error'}: {first.message}"}
    return TrainingMetrics.model_validate(out)


def _downsample_index(n: int, limit: int = MAX_POINTS, keep: Sequence[np.ndarray] = ()) -> np.ndarray:
    """At most ``limit`` row indices, first and last included, spread evenly over ``n`` rows.

    For each column in ``keep``, every bucket also keeps the rows of its largest and smallest
    value and its first non-finite value, so a spike or a NaN between two picked rows is not lost.
    """
    if n <= limit:
        return np.arange(n)
    per_bucket = 1 + 3 * len(keep)
    buckets = max(1, (limit - 1) // per_bucket)
    size = -(-n // buckets)
    starts = np.arange(0, n, size)
    picked = [starts, np.array([n - 1])]
    pad = len(starts) * size - n
    for col in keep:
        v = np.asarray(col, dtype=float)
        v = np.concatenate([v, np.full(pad, np.nan)]).reshape(len(starts), size)
        finite = np.isfinite(v)
        offset = np.arange(len(starts)) * size
        hi = np.where(finite, v, -np.inf).argmax(axis=1)
        lo = np.where(finite, v, np.inf).argmin(axis=1)
        picked += [offset + hi, offset + lo]
        inf = np.isinf(v)  # NaN also stands for "not measured" (and pads the last bucket): only inf counts here
        if inf.any():
            picked.append((offset + inf.argmax(axis=1))[inf.any(axis=1)])
    idx = np.unique(np.concatenate(picked))
    return idx[idx < n]


def _float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _floats(values) -> list[float | None]:
    """JSON has no NaN or Infinity: non-finite values become null."""
    arr = np.asarray(values, dtype=float)
    return [v if math.isfinite(v) else None for v in arr.tolist()]
