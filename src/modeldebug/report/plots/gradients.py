"""Gradient flow: each layer's gradient norm, first layer at the top, as a range and over time."""

from __future__ import annotations

import math

from modeldebug.metrics import TrainingMetrics
from modeldebug.report.plots.canvas import COLORS, Canvas, finite, label, log_axis, matches, positive, reads, xy
from modeldebug.types import Finding

HEATMAP_COLUMNS = 80  # step bins in the gradient-flow heatmap
WEIGHT_NAMES = ("weight", "weight_orig", "in_proj_weight")


def grad_rows(metrics: TrainingMetrics) -> tuple[list[str], list[list], list[list], str]:
    """Per-layer gradient-norm series, first to last layer: weight gradients, else output gradients."""
    layers = metrics.layers
    order = {l.name: i for i, l in enumerate(layers)}
    params = [p for p in metrics.params if any(finite(v) for v in p.grad_norm)]
    weights = [p for p in params if p.name.rsplit(".", 1)[-1] in WEIGHT_NAMES]
    params = weights or params
    if params:
        params = sorted(params, key=lambda p: order.get(p.module, len(order)))
        return [p.name for p in params], [p.step for p in params], [p.grad_norm for p in params], "weight-gradient norm"
    rows = [l for l in layers if any(finite(v) for v in l.grad_norm)]
    return [l.name for l in rows], [l.step for l in rows], [l.grad_norm for l in rows], "output-gradient norm"


@reads(TrainingMetrics)
def plot_grad_flow(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    import numpy as np

    names, steps, values, what = grad_rows(metrics)
    if not names:
        return None
    location = finding.location if finding is not None else None
    hl = [i for i, n in enumerate(names) if matches(n, location)]
    # Heatmap: layers (rows, first at top) x step bins (columns), log10 of the largest norm in the bin.
    all_steps = sorted({s for row in steps for s in row if finite(s)})
    if len(all_steps) > HEATMAP_COLUMNS:
        edges = np.linspace(all_steps[0], all_steps[-1], HEATMAP_COLUMNS + 1)
        bins = sorted({float(edges[max(0, int(np.searchsorted(edges, x, side="right")) - 1)]) for x in all_steps})
    else:
        bins = all_steps
    grid = np.full((len(names), max(len(bins), 1)), np.nan)
    positives = [y for ys in values for y in ys or [] if finite(y) and y > 0]
    floor = math.floor(math.log10(min(positives))) - 1 if positives else -12.0  # where exact zeros are drawn
    for i, (xs, ys) in enumerate(zip(steps, values)):
        for x, y in zip(*xy(xs, ys)):
            j = max(0, int(np.searchsorted(bins, x, side="right")) - 1)
            v = math.log10(y) if y > 0 else floor
            grid[i, j] = v if not (grid[i, j] >= v) else grid[i, j]
    all_steps = bins
    per_layer = [np.array(xy(xs, ys)[1], dtype=float) for xs, ys in zip(steps, values)]
    height = min(6.0, 1.2 + 0.14 * len(names))
    fig, (ax_line, ax_map) = canvas.figure(1, 2, height=max(2.6, height), width=9.0, gridspec_kw={"width_ratios": [1, 1.3]})
    idx = np.arange(len(names))
    med = [float(np.median(v)) if len(v) else np.nan for v in per_layer]
    lo = [float(v.min()) if len(v) else np.nan for v in per_layer]
    hi = [float(v.max()) if len(v) else np.nan for v in per_layer]
    last = [float(v[-1]) if len(v) else np.nan for v in per_layer]
    ax_line.fill_betweenx(idx, lo, hi, color=COLORS["train"], alpha=0.15, label="min-max over steps")
    ax_line.plot(med, idx, color=COLORS["train"], marker="o", markersize=3, linewidth=1, label="median")
    ax_line.plot(last, idx, color=COLORS["val"], marker=".", markersize=3, linewidth=0.8, label="latest")
    for i in hl:
        ax_line.axhline(i, color=COLORS["bad"], linewidth=6, alpha=0.2)
    if positive(lo + hi + med):
        log_axis(ax_line, "x")
    ax_line.set_yticks(idx, [label(n, 28) for n in names], fontsize=6 if len(names) > 20 else 7)
    if len(names) > 40:
        ax_line.set_yticks(idx[:: max(1, len(names) // 40)])
    ax_line.invert_yaxis()
    ax_line.set_xlabel(what)
    ax_line.set_title("Gradient flow, first layer at the top")
    ax_line.legend(loc="best")
    finite_cells = grid[np.isfinite(grid)]
    if finite_cells.size:
        im = ax_map.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=floor,
                           vmax=max(float(finite_cells.max()), floor + 1), extent=(-0.5, grid.shape[1] - 0.5, len(names) - 0.5, -0.5))
        cbar = fig.colorbar(im, ax=ax_map, shrink=0.9)
        cbar.set_label(f"log10 {what}" + (f" (0 drawn as {floor:g})" if (grid == floor).any() else ""))
    ticks = np.linspace(0, len(all_steps) - 1, min(6, len(all_steps))).round().astype(int) if all_steps else []
    ax_map.set_xticks(ticks, [str(int(all_steps[t])) for t in ticks])
    ax_map.set_yticks([])
    ax_map.grid(False)
    for i in hl:
        ax_map.axhline(i, color=COLORS["bad"], linewidth=1.2)
    if finding is not None and finding.step is not None and all_steps:
        j = int(np.searchsorted(all_steps, finding.step))
        ax_map.axvline(min(j, len(all_steps) - 1), color=COLORS["bad"], linestyle="--", linewidth=1)
    ax_map.set_xlabel("step" if len(all_steps) == HEATMAP_COLUMNS else "sampled step")
    ax_map.set_title("Over time (sampled steps)")
    return canvas.uri(fig)
