"""`modeldebug fix`: the training loss unfixed (the probe window, the report's series) and with a
candidate fix (its window, ``Fix.loss_curve``) on one plot."""

from __future__ import annotations

from modeldebug.metrics import Series, TrainingMetrics
from modeldebug.report.plots.canvas import COLORS, Canvas, label, logy_if_wide, step_axis, xy
from modeldebug.types import Fix


def plot_fix(canvas: Canvas, metrics: TrainingMetrics, fix: Fix) -> str | None:
    before = metrics.series or Series()
    after = fix.loss_curve or Series()
    bx, by = xy(before.step, before.loss)
    ax_, ay = xy(after.step, after.loss)
    if not bx and not ax_:
        return None
    with canvas.mpl.rc_context(canvas.rc):
        fig, (ax,) = canvas.figure(height=2.4)
        ax.plot(bx, by, color=COLORS["bad"], linewidth=1, label="before: the script unfixed")
        ax.plot(ax_, ay, color=COLORS["ok"] if fix.verified else COLORS["muted"], linewidth=1,
                label="after: " + label(fix.change if len(fix.change) <= 70 else fix.change[:69] + "…", 72))
        logy_if_wide(ax, by + ay)
        step_axis(ax)
        ax.set_ylabel("training loss")
        ax.set_title("Training loss before and after the fix (same seeds, same window)")
        ax.legend(loc="best")
        return canvas.uri(fig)
