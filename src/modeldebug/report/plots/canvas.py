"""The drawing surface every plot shares: matplotlib figures (no pyplot, no global state) turned into
``data:`` SVG URIs, and the small helpers the plot families use (labels, finite pairs, log axes)."""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Any, Callable

from modeldebug.errors import require

EXTRA = "report"
MAX_BAR_ROWS = 40  # layers, classes or ops in one bar chart
COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "bad": "#d62728", "ok": "#2ca02c", "muted": "#9aa0a6"}

# A plot: (canvas, the report's metrics, the finding it illustrates or None) -> a data: URI, or None
# when the report has nothing to draw it from.
Plot = Callable[["Canvas", Any, Any], "str | None"]


def reads(*kinds: type) -> Callable[[Plot], Plot]:
    """Mark a plot with the metrics kinds it draws from; :meth:`Canvas.draw` skips it for other kinds."""

    def mark(plot: Plot) -> Plot:
        plot.reads = kinds  # type: ignore[attr-defined]
        return plot

    return mark


class Canvas:
    """Makes matplotlib figures and turns them into ``data:`` SVG URIs; draws each plot once per finding."""

    def __init__(self) -> None:
        self.mpl = require("matplotlib", EXTRA)
        from matplotlib.figure import Figure

        self.Figure = Figure
        self._cache: dict[tuple, str | None] = {}
        self.rc = {"svg.fonttype": "none", "svg.hashsalt": "modeldebug", "font.size": 8, "axes.titlesize": 9,
                   "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
                   "legend.fontsize": 7, "legend.frameon": False, "text.usetex": False,
                   "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "path.simplify_threshold": 0.3}

    def draw(self, plot: Plot, metrics: Any, finding: Any) -> str | None:
        if not isinstance(metrics, getattr(plot, "reads", object)):
            return None
        key = (plot, None if finding is None else (finding.kind, finding.location, finding.step))
        if key not in self._cache:
            with self.mpl.rc_context(self.rc):
                self._cache[key] = plot(self, metrics, finding)
        return self._cache[key]

    def figure(self, rows: int = 1, cols: int = 1, height: float = 2.6, width: float = 7.0, **kw):
        fig = self.Figure(figsize=(width, height * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False, **kw)
        return fig, [ax for row in axes for ax in row]

    @staticmethod
    def uri(fig) -> str:
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        svg = compact_svg(buf.getvalue())
        return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


_COORDS = re.compile(r'\b(d|x|y|x1|x2|y1|y2|width|height|transform)="([^"]*)"')
_DECIMALS = re.compile(r"(\.\d)\d+")


def compact_svg(svg: str) -> str:
    """About half the size: coordinates to 0.1 pt, no metadata block, no XML prologue (text is untouched)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.S)
    svg = _COORDS.sub(lambda m: m.group(1) + '="' + _DECIMALS.sub(r"\1", m.group(2)) + '"', svg)
    return re.sub(r" *\n *", "\n", svg)


def label(text: Any, limit: int = 48) -> str:
    """A user string as plain text for matplotlib: shortened, and no mathtext (``$`` escaped)."""
    text = str(text)
    if len(text) > limit:
        text = "…" + text[-(limit - 1):]
    return text.replace("\\", "\\\\").replace("$", r"\$")


def xy(xs, ys) -> tuple[list, list]:
    """Pairs with both values finite (None, NaN and inf dropped)."""
    pairs = [(x, y) for x, y in zip(xs or [], ys or []) if finite(x) and finite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def positive(values) -> bool:
    vals = [v for v in values if finite(v)]
    return bool(vals) and min(vals) > 0


def logy_if_wide(ax, values) -> None:
    vals = [v for v in values if finite(v)]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 100:
        log_axis(ax, "y")


def log_axis(ax, which: str = "y") -> None:
    """A log axis labelled 1e-05 style: matplotlib's default 10^x labels go through mathtext, 10x slower."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(numticks=7))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")))
    axis.set_minor_formatter(NullFormatter())


def step_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.set_xlabel("step")


def mark_step(ax, step, text: str = "") -> None:
    if step is None:
        return
    ax.axvline(step, color=COLORS["bad"], linestyle="--", linewidth=1)
    if text:
        ax.annotate(label(text), (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                    textcoords="offset points", color=COLORS["bad"], fontsize=7)


def matches(name: str | None, location: str | None) -> bool:
    """A layer or parameter named by a finding's location (the module itself or one of its parameters)."""
    if not name or not location:
        return False
    return name == location or name.startswith(location + ".") or location.startswith(name + ".")
