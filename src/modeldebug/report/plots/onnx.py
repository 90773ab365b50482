"""ONNX: share of node time per op type or node (profile), PyTorch-vs-ONNX error per point (compare)."""

from __future__ import annotations

from typing import Union

from modeldebug.metrics import OnnxCompareMetrics, OnnxProfileMetrics
from modeldebug.report.plots.canvas import COLORS, MAX_BAR_ROWS, Canvas, finite, label, log_axis, matches, reads, xy
from modeldebug.types import Finding


@reads(OnnxProfileMetrics)
def plot_onnx_ops(canvas: Canvas, metrics: OnnxProfileMetrics, finding: Finding | None) -> str | None:
    """Share of node time per op type (profile reports), or per node when a finding names one."""
    nodes, ops = metrics.top_nodes, metrics.op_types
    location = finding.location if finding is not None else None
    if location and nodes:
        rows = [(n.node + f" ({n.op_type})", n.share, matches(n.node, location)) for n in nodes[:MAX_BAR_ROWS // 2]]
        title = "Share of node time per node"
    elif ops:
        rows = [(o.op_type + f" ×{o.nodes}", o.share, False) for o in ops[:MAX_BAR_ROWS // 2]]
        title = "Share of node time per op type"
    else:
        return None
    fig, (ax,) = canvas.figure(height=max(2.2, 0.6 + 0.18 * len(rows)))
    ax.barh(range(len(rows)), [r[1] for r in rows], color=[COLORS["bad"] if r[2] else COLORS["train"] for r in rows])
    ax.set_yticks(range(len(rows)), [label(r[0], 44) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of node time")
    ax.set_title(title)
    return canvas.uri(fig)


@reads(OnnxCompareMetrics)
def plot_onnx_compare(canvas: Canvas, metrics: OnnxCompareMetrics, finding: Finding | None) -> str | None:
    """Max absolute and relative error at each matched point, in graph order; tolerance and first divergence marked."""
    points = metrics.points
    if not points:
        return None
    atol = metrics.tolerances.atol if metrics.tolerances is not None else None
    first = (finding.location if finding is not None else None) or metrics.first_divergence
    fig, (ax,) = canvas.figure(height=3.0)
    floor = 1e-12
    idx = list(range(len(points)))
    abs_err = [max(p.max_abs or 0.0, floor) if finite(p.max_abs) else None for p in points]
    rel_err = [max(p.max_rel or 0.0, floor) if finite(p.max_rel) else None for p in points]
    ax.plot(*xy(idx, abs_err), color=COLORS["train"], marker="o", markersize=3, linewidth=1, label="max abs error")
    ax.plot(*xy(idx, rel_err), color=COLORS["val"], marker=".", markersize=3, linewidth=0.8, label="max rel error")
    bad = [i for i, p in enumerate(points) if p.ok is False]
    ax.plot(*xy(bad, [abs_err[i] for i in bad]), linestyle="none", marker="x", color=COLORS["bad"], markersize=6, label="beyond tolerance")
    if finite(atol) and atol > 0:
        ax.axhline(atol, color=COLORS["muted"], linestyle=":", linewidth=1, label=f"atol {atol:g}")
    for i, p in enumerate(points):
        if first and (matches(p.module, first) or p.onnx_node == first):
            ax.axvline(i, color=COLORS["bad"], linestyle="--", linewidth=1)
            break
    log_axis(ax, "y")
    step = max(1, len(points) // 30)
    ax.set_xticks(idx[::step], [label(p.module or p.onnx_node or "?", 24) for p in points[::step]],
                  rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("error (0 drawn at 1e-12)")
    ax.set_title("PyTorch vs ONNX: error per matched point, in graph order")
    ax.legend(loc="best")
    return canvas.uri(fig)


@reads(OnnxCompareMetrics, OnnxProfileMetrics)
def plot_onnx_for(canvas: Canvas, metrics: Union[OnnxCompareMetrics, OnnxProfileMetrics], finding: Finding | None) -> str | None:
    if isinstance(metrics, OnnxCompareMetrics):
        return plot_onnx_compare(canvas, metrics, finding)
    return plot_onnx_ops(canvas, metrics, finding)
