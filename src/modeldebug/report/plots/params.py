"""Parameters: the update-to-weight ratio |Δw|/|w| and the weight norm of each parameter over time."""

from __future__ import annotations

import json

from modeldebug.metrics import ParamSeries, TrainingMetrics
from modeldebug.report.plots.canvas import COLORS, Canvas, finite, label, log_axis, logy_if_wide, matches, reads, step_axis, xy
from modeldebug.types import Finding

MAX_LINES = 24  # more parameters than this are drawn as a band


@reads(TrainingMetrics)
def plot_updates(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    """Update-to-weight ratio |Δw|/|w| and weight norm of each parameter over time."""
    params = [p for p in metrics.params if any(finite(v) for v in p.update_ratio + p.norm)]
    if not params:
        return None
    location = finding.location if finding is not None else None
    hl = [p for p in params if matches(p.name, location) or matches(p.module, location)]
    if location and not hl and finding is not None:
        hl = [p for p in params if p.name in json.dumps(finding.evidence)]
    fig, (ax_u, ax_n) = canvas.figure(1, 2, width=9.0)
    many = len(params) > 12
    norms = [v for p in params for v in p.norm]
    if len(params) > MAX_LINES:  # a band over all parameters, and the highlighted ones as lines
        for ax, key in ((ax_u, "update_ratio"), (ax_n, "norm")):
            _band(ax, params, key)
        params = hl
    for p in params:
        mark = p in hl
        style = {"linewidth": 1.6 if mark else 0.8, "alpha": 1.0 if mark or not many else 0.45}
        if hl and not mark:
            style.update(color=COLORS["muted"], alpha=0.35)
        name = label(p.name, 30) if mark or not many else None
        x, y = xy(p.step, [v if finite(v) and v > 0 else None for v in p.update_ratio])
        zeros = xy(p.step, [1e-12 if v == 0 else None for v in p.update_ratio])
        ax_u.plot(x, y, label=name, **style)
        if zeros[0]:
            ax_u.plot(*zeros, linestyle="none", marker="v", markersize=3, color=COLORS["bad"] if mark or not hl else COLORS["muted"])
        ax_n.plot(*xy(p.step, p.norm), **style)
    ax_u.axhspan(1e-5, 1e-1, color=COLORS["ok"], alpha=0.06)
    log_axis(ax_u, "y")
    step_axis(ax_u)
    ax_u.set_ylabel("|Δw| / |w| (0 drawn at 1e-12)")
    ax_u.set_title("Update-to-weight ratio (green band: 1e-5 to 1e-1)")
    if hl or not many:
        ax_u.legend(loc="best")
    step_axis(ax_n)
    ax_n.set_ylabel("|w|")
    logy_if_wide(ax_n, norms)
    ax_n.set_title("Weight norm")
    return canvas.uri(fig)


def _band(ax, rows: list[ParamSeries], key: str) -> None:
    """Median and 10-90% band over many series of ``key`` (by step), positive values only."""
    import numpy as np

    steps = sorted({x for r in rows for x in r.step if finite(x)})
    col = {x: j for j, x in enumerate(steps)}
    grid = np.full((len(rows), len(steps)), np.nan)
    for i, r in enumerate(rows):
        for x, y in zip(*xy(r.step, getattr(r, key))):
            if y > 0:
                grid[i, col[x]] = y
    keep = np.isfinite(grid).any(axis=0)
    if not keep.any():
        return
    xs, grid = np.asarray(steps)[keep], grid[:, keep]
    lo, med, hi = np.nanpercentile(grid, [10, 50, 90], axis=0)
    ax.fill_between(xs, lo, hi, color=COLORS["train"], alpha=0.2, label=f"10-90% of {len(rows)} parameters")
    ax.plot(xs, med, color=COLORS["train"], linewidth=1, label="median")
    ax.legend(loc="best")
