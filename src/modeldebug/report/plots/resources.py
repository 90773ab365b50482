"""Resources and timing: memory over time, the step split into its parts, forward time per layer."""

from __future__ import annotations

from modeldebug.metrics import Series, StepTimes, TrainingMetrics
from modeldebug.report.plots.canvas import COLORS, Canvas, finite, label, mark_step, matches, reads, step_axis, xy
from modeldebug.types import Finding

STEP_PARTS = (("data_s", "data", "#8c564b"), ("forward_s", "forward", "#1f77b4"),
              ("backward_s", "backward", "#ff7f0e"), ("optimizer_s", "optimizer", "#2ca02c"))
MEMORY_LINES = (("rss_bytes", "host RSS"), ("cuda_allocated", "CUDA allocated"), ("cuda_reserved", "CUDA reserved"))


@reads(TrainingMetrics)
def plot_memory(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    s = metrics.series or Series()
    lines = [(getattr(s, col), name) for col, name in MEMORY_LINES if xy(s.step, getattr(s, col))[0]]
    if not lines:
        return None
    fig, (ax,) = canvas.figure()
    for values, name in lines:
        x, y = xy(s.step, values)
        ax.plot(x, [v / 2**20 for v in y], linewidth=1, label=name)
    if finding is not None:
        mark_step(ax, finding.step)
    step_axis(ax)
    ax.set_ylabel("MiB")
    ax.set_title("Memory")
    ax.legend(loc="best")
    return canvas.uri(fig)


@reads(TrainingMetrics)
def plot_step_time(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    """Step time split into data wait, forward, backward and optimizer: over time, and the medians."""
    import numpy as np

    s = metrics.series or Series()
    parts = [(col, name, color) for col, name, color in STEP_PARTS if xy(s.step, getattr(s, col))[0]]
    if not parts:
        return None
    fig, (ax_t, ax_m) = canvas.figure(1, 2, width=9.0, gridspec_kw={"width_ratios": [2.2, 1]})
    stack = np.array([[v if finite(v) else 0.0 for v in getattr(s, col)] for col, _, _ in parts]) * 1000
    ax_t.stackplot(s.step, stack, labels=[p[1] for p in parts], colors=[p[2] for p in parts], alpha=0.85)
    step_axis(ax_t)
    ax_t.set_ylabel("ms")
    ax_t.set_title("Step time split")
    ax_t.legend(loc="upper right", ncols=len(parts))
    med = metrics.timing_median_s or StepTimes()
    vals = [(getattr(med, col) or 0.0) * 1000 for col, _, _ in parts]
    ax_m.barh([p[1] for p in parts], vals, color=[p[2] for p in parts])
    ax_m.invert_yaxis()
    total = sum(vals) or 1.0
    for i, v in enumerate(vals):
        ax_m.annotate(f"{v:.3g} ms ({v / total:.0%})", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax_m.set_xlim(0, max(vals) * 1.6 or 1)
    ax_m.set_xlabel("median ms per step")
    ax_m.set_title("Median split")
    return canvas.uri(fig)


@reads(TrainingMetrics)
def plot_layer_time(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    """Median forward time per layer (the slowest first), the finding's layer highlighted."""
    rows = []
    for l in metrics.layers:
        v = sorted(y for y in l.fwd_time_s if finite(y))
        if v:
            rows.append((l.name, l.type, v[len(v) // 2] * 1000))
    if not rows:
        return plot_step_time(canvas, metrics, finding)
    rows = sorted(rows, key=lambda r: -r[2])[:20]
    location = finding.location if finding is not None else None
    fig, (ax,) = canvas.figure(height=max(2.4, 0.6 + 0.18 * len(rows)))
    colors = [COLORS["bad"] if matches(n, location) else COLORS["train"] for n, _, _ in rows]
    ax.barh(range(len(rows)), [r[2] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), [label(f"{n} ({t})", 40) for n, t, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median forward ms (sampled steps)")
    ax.set_title("Forward time per layer, slowest first")
    return canvas.uri(fig)


@reads(TrainingMetrics)
def plot_time_for(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    if finding is not None and finding.kind == "slow_operation" and finding.location:
        return plot_layer_time(canvas, metrics, finding)
    return plot_step_time(canvas, metrics, finding)
