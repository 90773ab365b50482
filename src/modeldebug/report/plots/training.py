"""Training curves: loss (with validation), the first non-finite step, the global gradient norm, classes."""

from __future__ import annotations

from modeldebug.metrics import Series, TrainingMetrics, ValidationSeries
from modeldebug.report.plots.canvas import (
    COLORS, MAX_BAR_ROWS, Canvas, label, logy_if_wide, mark_step, reads, step_axis, xy,
)
from modeldebug.types import Finding


@reads(TrainingMetrics)
def plot_loss(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    s = metrics.series or Series()
    x, y = xy(s.step, s.loss)
    val = metrics.validation or ValidationSeries()
    vx, vy = xy(val.step, val.loss)
    if not x and not vx:
        return None
    fig, (ax,) = canvas.figure()
    ax.plot(x, y, color=COLORS["train"], linewidth=1, label="training loss", marker="o" if len(x) < 30 else None, markersize=3)
    if vx:
        ax.plot(vx, vy, color=COLORS["val"], marker="o", markersize=3, linewidth=1.2, label="validation loss")
    logy_if_wide(ax, y + vy)
    ax_acc = None
    ax_, acc = xy(val.step, val.accuracy)
    if acc:
        ax_acc = ax.twinx()
        ax_acc.plot(ax_, acc, color=COLORS["ok"], marker="s", markersize=2.5, linewidth=0.8, label="validation accuracy")
        ax_acc.set_ylim(0, 1.02)
        ax_acc.set_ylabel("accuracy")
        ax_acc.grid(False)
    if finding is not None and finding.kind == "overfitting" and finding.evidence.get("best_step") is not None:
        mark_step(ax, finding.evidence["best_step"], "best validation")
    elif finding is not None:
        mark_step(ax, finding.step, f"step {finding.step}" if finding.step is not None else "")
    step_axis(ax)
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    handles, labels = ax.get_legend_handles_labels()
    if ax_acc is not None:
        more = ax_acc.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="best")
    return canvas.uri(fig)


@reads(TrainingMetrics)
def plot_nonfinite(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    """Loss and global gradient norm, the first non-finite step marked."""
    s = metrics.series or Series()
    if not s.step:
        return None
    bad = finding.step if finding is not None and finding.step is not None else metrics.first_nonfinite_step
    fig, axes = canvas.figure(2, 1, height=1.9, sharex=True)
    for ax, values, title, color in ((axes[0], s.loss, "training loss", COLORS["train"]),
                                     (axes[1], s.grad_norm, "global gradient norm", COLORS["val"])):
        x, y = xy(s.step, values)
        ax.plot(x, y, color=color, linewidth=1, marker="o" if len(x) < 30 else None, markersize=3)
        logy_if_wide(ax, y)
        ax.set_ylabel(title)
        mark_step(ax, bad, f"first non-finite: step {bad}" if ax is axes[0] and bad is not None else "")
    step_axis(axes[1])
    axes[0].set_title("Loss and gradient norm (points after the first non-finite value are missing)")
    return canvas.uri(fig)


@reads(TrainingMetrics)
def plot_grad_norm(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    s = metrics.series or Series()
    x, y = xy(s.step, s.grad_norm)
    if not x:
        return None
    fig, (ax,) = canvas.figure()
    ax.plot(x, y, color=COLORS["val"], linewidth=1)
    logy_if_wide(ax, y)
    if finding is not None:
        mark_step(ax, finding.step)
    step_axis(ax)
    ax.set_ylabel("global gradient norm")
    ax.set_title("Gradient norm")
    return canvas.uri(fig)


@reads(TrainingMetrics)
def plot_classes(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    if not metrics.class_counts:
        return plot_loss(canvas, metrics, finding)
    items = list(metrics.class_counts.items())[:MAX_BAR_ROWS]
    fig, (ax,) = canvas.figure()
    ax.bar([label(k, 12) for k, _ in items], [v for _, v in items], color=COLORS["train"])
    ax.set_xlabel("class")
    ax.set_ylabel("count")
    ax.set_title("Targets seen per class")
    return canvas.uri(fig)
