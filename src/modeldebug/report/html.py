"""The HTML report: one self-contained file, findings most severe first, each next to its evidence.

Drawn from a ``Report`` alone (``report.metrics``, see ``analysis.summarize`` and the ONNX
commands), so a stored run renders again with ``modeldebug report RUN --html OUT.html``.

Pictures are matplotlib SVGs embedded as ``data:`` images: the page needs no JavaScript and no
network, stays small (long series are downsampled in ``summarize``), and its Content-Security-
Policy forbids scripts outright. Everything from the user or the script (issue text, module names,
messages, the command line) goes through jinja2's autoescape into HTML text and, inside the
pictures, through matplotlib's SVG text escaping inside an ``<img>`` (which never runs scripts).

Which picture goes with which finding is the table ``FINDING_PLOTS`` (kind -> plot function); a
kind that is not in it (``runtime_error``, the distributed kinds) is shown with its evidence
table and no picture. Needs the ``report`` extra (matplotlib, jinja2).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from modeldebug.errors import require
from modeldebug.types import Finding, Report

EXTRA = "report"
MAX_HISTOGRAMS = 12  # small multiples in the activations overview
MAX_BAR_ROWS = 40  # layers or ops in one bar chart
HEATMAP_COLUMNS = 80  # step bins in the gradient-flow heatmap
MAX_LINES = 24  # more parameters than this are drawn as a band
COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "bad": "#d62728", "ok": "#2ca02c", "muted": "#9aa0a6"}
STEP_PARTS = (("data_s", "data", "#8c564b"), ("forward_s", "forward", "#1f77b4"),
              ("backward_s", "backward", "#ff7f0e"), ("optimizer_s", "optimizer", "#2ca02c"))

Plot = Callable[["_Canvas", dict, "Finding | None"], "str | None"]


# --- public ------------------------------------------------------------------------------------


def render_html(report: Report, *, issue: str | None = None) -> str:
    """The report as one HTML document (str); raises MissingExtraError without the ``report`` extra."""
    jinja2 = require("jinja2", EXTRA)
    canvas = _Canvas()
    metrics = report.metrics or {}
    issue = issue if issue is not None else metrics.get("issue")
    llm = metrics.get("llm") if (metrics.get("llm") or {}).get("status") == "ok" else None
    if llm is not None:
        from modeldebug.llm.analyst import explanation_for
    findings = []
    for f in report.sorted_findings():
        plot = FINDING_PLOTS.get(f.kind)
        findings.append({"f": f, "plot": canvas.draw(plot, metrics, f) if plot else None,
                         "evidence": _evidence_rows(f.evidence),
                         "llm": explanation_for(report, f) if llm is not None else None})
    sections = [(title, canvas.draw(plot, metrics, None), plot in WIDE) for title, plot in OVERVIEW]
    sections = [s for s in sections if s[1]]
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in ("high", "medium", "low")}
    source = resources.files("modeldebug.report").joinpath("templates", "report.html.j2").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(source).render(
        report=report, run=report.run, issue=issue, findings=findings, sections=sections, counts=counts,
        tables=_tables(metrics), facts=_facts(report), fmt=_fmt, llm=llm,
    )


def require_extra() -> None:
    """Raise MissingExtraError (naming the ``report`` extra) unless the HTML report can be drawn."""
    require("jinja2", EXTRA)
    require("matplotlib", EXTRA)


def write_html(report: Report, path: str | os.PathLike, *, issue: str | None = None) -> None:
    path = Path(path)
    text = render_html(report, issue=issue)  # render first: a missing extra leaves no empty file behind
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- drawing ------------------------------------------------------------------------------------


class _Canvas:
    """Makes matplotlib figures (no pyplot, no global state) and turns them into ``data:`` SVG URIs."""

    def __init__(self) -> None:
        self.mpl = require("matplotlib", EXTRA)
        from matplotlib.figure import Figure

        self._Figure = Figure
        self._cache: dict[tuple, str | None] = {}
        self.rc = {"svg.fonttype": "none", "svg.hashsalt": "modeldebug", "font.size": 8, "axes.titlesize": 9,
                   "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
                   "legend.fontsize": 7, "legend.frameon": False, "text.usetex": False,
                   "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "path.simplify_threshold": 0.3}

    def draw(self, plot: Plot, metrics: dict, finding: Finding | None) -> str | None:
        key = (plot, None if finding is None else (finding.kind, finding.location, finding.step))
        if key not in self._cache:
            with self.mpl.rc_context(self.rc):
                self._cache[key] = plot(self, metrics, finding)
        return self._cache[key]

    def figure(self, rows: int = 1, cols: int = 1, height: float = 2.6, width: float = 7.0, **kw):
        fig = self._Figure(figsize=(width, height * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False, **kw)
        return fig, [ax for row in axes for ax in row]

    @staticmethod
    def uri(fig) -> str:
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        svg = _compact_svg(buf.getvalue())
        return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


_COORDS = re.compile(r'\b(d|x|y|x1|x2|y1|y2|width|height|transform)="([^"]*)"')
_DECIMALS = re.compile(r"(\.\d)\d+")


def _compact_svg(svg: str) -> str:
    """About half the size: coordinates to 0.1 pt, no metadata block, no XML prologue (text is untouched)."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, count=1, flags=re.S)
    svg = _COORDS.sub(lambda m: m.group(1) + '="' + _DECIMALS.sub(r"\1", m.group(2)) + '"', svg)
    return re.sub(r" *\n *", "\n", svg)


def _label(text: Any, limit: int = 48) -> str:
    """A user string as plain text for matplotlib: shortened, and no mathtext (``$`` escaped)."""
    text = str(text)
    if len(text) > limit:
        text = "…" + text[-(limit - 1):]
    return text.replace("\\", "\\\\").replace("$", r"\$")


def _xy(xs, ys) -> tuple[list, list]:
    """Pairs with both values finite (None, NaN and inf dropped)."""
    pairs = [(x, y) for x, y in zip(xs or [], ys or []) if _finite(x) and _finite(y)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _positive(values) -> bool:
    vals = [v for v in values if _finite(v)]
    return bool(vals) and min(vals) > 0


def _logy_if_wide(ax, values) -> None:
    vals = [v for v in values if _finite(v)]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 100:
        _log(ax, "y")


def _log(ax, which: str = "y") -> None:
    """A log axis labelled 1e-05 style: matplotlib's default 10^x labels go through mathtext, 10x slower."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_locator(LogLocator(numticks=7))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")))
    axis.set_minor_formatter(NullFormatter())


def _step_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    ax.set_xlabel("step")


def _mark_step(ax, step, text: str = "") -> None:
    if step is None:
        return
    ax.axvline(step, color=COLORS["bad"], linestyle="--", linewidth=1)
    if text:
        ax.annotate(_label(text), (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                    textcoords="offset points", color=COLORS["bad"], fontsize=7)


def _series(metrics: dict) -> dict:
    return metrics.get("series") or {}


def _layers(metrics: dict) -> list[dict]:
    return metrics.get("layers") or []


def _matches(name: str | None, location: str | None) -> bool:
    """A layer or parameter named by a finding's location (the module itself or one of its parameters)."""
    if not name or not location:
        return False
    return name == location or name.startswith(location + ".") or location.startswith(name + ".")


# --- training plots ------------------------------------------------------------------------------


def plot_loss(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    s = _series(metrics)
    x, y = _xy(s.get("step"), s.get("loss"))
    val = metrics.get("validation") or {}
    vx, vy = _xy(val.get("step"), val.get("loss"))
    if not x and not vx:
        return None
    fig, (ax,) = canvas.figure()
    ax.plot(x, y, color=COLORS["train"], linewidth=1, label="training loss", marker="o" if len(x) < 30 else None, markersize=3)
    if vx:
        ax.plot(vx, vy, color=COLORS["val"], marker="o", markersize=3, linewidth=1.2, label="validation loss")
    _logy_if_wide(ax, y + vy)
    ax_acc = None
    ax_, acc = _xy(val.get("step"), val.get("accuracy"))
    if acc:
        ax_acc = ax.twinx()
        ax_acc.plot(ax_, acc, color=COLORS["ok"], marker="s", markersize=2.5, linewidth=0.8, label="validation accuracy")
        ax_acc.set_ylim(0, 1.02)
        ax_acc.set_ylabel("accuracy")
        ax_acc.grid(False)
    if finding is not None and finding.kind == "overfitting" and finding.evidence.get("best_step") is not None:
        _mark_step(ax, finding.evidence["best_step"], "best validation")
    elif finding is not None:
        _mark_step(ax, finding.step, f"step {finding.step}" if finding.step is not None else "")
    _step_axis(ax)
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    handles, labels = ax.get_legend_handles_labels()
    if ax_acc is not None:
        more = ax_acc.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="best")
    return canvas.uri(fig)


def plot_nonfinite(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    """Loss and global gradient norm, the first non-finite step marked."""
    s = _series(metrics)
    if not s.get("step"):
        return None
    bad = finding.step if finding is not None and finding.step is not None else metrics.get("first_nonfinite_step")
    fig, axes = canvas.figure(2, 1, height=1.9, sharex=True)
    for ax, col, title, color in ((axes[0], "loss", "training loss", COLORS["train"]),
                                  (axes[1], "grad_norm", "global gradient norm", COLORS["val"])):
        x, y = _xy(s["step"], s.get(col))
        ax.plot(x, y, color=color, linewidth=1, marker="o" if len(x) < 30 else None, markersize=3)
        _logy_if_wide(ax, y)
        ax.set_ylabel(title)
        _mark_step(ax, bad, f"first non-finite: step {bad}" if ax is axes[0] and bad is not None else "")
    _step_axis(axes[1])
    axes[0].set_title("Loss and gradient norm (points after the first non-finite value are missing)")
    return canvas.uri(fig)


def _grad_rows(metrics: dict) -> tuple[list[str], list[list], list[list], str]:
    """Per-layer gradient-norm series, first to last layer: weight gradients, else output gradients."""
    layers = _layers(metrics)
    order = {l["name"]: i for i, l in enumerate(layers)}
    params = [p for p in metrics.get("params") or [] if any(_finite(v) for v in p.get("grad_norm") or [])]
    weights = [p for p in params if p["name"].rsplit(".", 1)[-1] in ("weight", "weight_orig", "in_proj_weight")]
    params = weights or params
    if params:
        params = sorted(params, key=lambda p: order.get(p.get("module"), len(order)))
        return [p["name"] for p in params], [p["step"] for p in params], [p["grad_norm"] for p in params], "weight-gradient norm"
    rows = [l for l in layers if any(_finite(v) for v in l.get("grad_norm") or [])]
    return [l["name"] for l in rows], [l["step"] for l in rows], [l["grad_norm"] for l in rows], "output-gradient norm"


def plot_grad_flow(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    import numpy as np

    names, steps, values, what = _grad_rows(metrics)
    if not names:
        return None
    location = finding.location if finding is not None else None
    hl = [i for i, n in enumerate(names) if _matches(n, location)]
    # Heatmap: layers (rows, first at top) x step bins (columns), log10 of the largest norm in the bin.
    all_steps = sorted({s for row in steps for s in row if _finite(s)})
    if len(all_steps) > HEATMAP_COLUMNS:
        edges = np.linspace(all_steps[0], all_steps[-1], HEATMAP_COLUMNS + 1)
        bins = sorted({float(edges[max(0, int(np.searchsorted(edges, x, side="right")) - 1)]) for x in all_steps})
    else:
        bins = all_steps
    grid = np.full((len(names), max(len(bins), 1)), np.nan)
    positive = [y for ys in values for y in ys or [] if _finite(y) and y > 0]
    floor = math.floor(math.log10(min(positive))) - 1 if positive else -12.0  # where exact zeros are drawn
    for i, (xs, ys) in enumerate(zip(steps, values)):
        for x, y in zip(*_xy(xs, ys)):
            j = max(0, int(np.searchsorted(bins, x, side="right")) - 1)
            v = math.log10(y) if y > 0 else floor
            grid[i, j] = v if not (grid[i, j] >= v) else grid[i, j]
    all_steps = bins
    per_layer = [np.array(_xy(xs, ys)[1], dtype=float) for xs, ys in zip(steps, values)]
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
    if _positive(lo + hi + med):
        _log(ax_line, "x")
    ax_line.set_yticks(idx, [_label(n, 28) for n in names], fontsize=6 if len(names) > 20 else 7)
    if len(names) > 40:
        ax_line.set_yticks(idx[:: max(1, len(names) // 40)])
    ax_line.invert_yaxis()
    ax_line.set_xlabel(what)
    ax_line.set_title("Gradient flow, first layer at the top")
    ax_line.legend(loc="best")
    finite = grid[np.isfinite(grid)]
    if finite.size:
        im = ax_map.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=floor,
                           vmax=max(float(finite.max()), floor + 1), extent=(-0.5, grid.shape[1] - 0.5, len(names) - 0.5, -0.5))
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


def _activation_layers(metrics: dict, finding: Finding | None) -> list[dict]:
    layers = [l for l in _layers(metrics) if l.get("histogram")]
    if finding is not None:
        return [l for l in layers if _matches(l["name"], finding.location)][:1]
    if len(layers) <= MAX_HISTOGRAMS:
        return layers
    kinds = ("relu", "tanh", "sigmoid", "gelu", "silu", "elu", "softmax", "hardtanh", "mish")
    act = [l for l in layers if any(k in l["type"].lower() for k in kinds)] or layers
    step = len(act) / MAX_HISTOGRAMS
    return [act[int(i * step)] for i in range(min(MAX_HISTOGRAMS, len(act)))]


def _histogram(ax, layer: dict) -> None:
    import numpy as np

    for key, color, label in (("histogram_first", COLORS["muted"], "first"), ("histogram", COLORS["train"], "latest")):
        h = layer.get(key)
        if not h or h.get("lo") is None or h.get("hi") is None:
            continue
        counts = np.asarray(h["counts"], dtype=float)
        total = counts.sum() or 1.0
        edges = np.linspace(h["lo"], h["hi"], len(counts) + 1) if h["hi"] > h["lo"] else np.array([h["lo"] - 0.5, h["lo"] + 0.5])
        if len(edges) != len(counts) + 1:
            edges = np.linspace(h["lo"] - 0.5, h["lo"] + 0.5, len(counts) + 1)
        ax.stairs(counts / total, edges, fill=key == "histogram", color=color, alpha=0.6 if key == "histogram" else 1,
                  label=f"{label} (step {h.get('step', '?')})")


def plot_activation_layer(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    """One layer: its output histogram (first and latest sample) and its dead/zero/saturated fractions."""
    layers = [l for l in _layers(metrics) if finding is not None and _matches(l["name"], finding.location)]
    if not layers:
        return None
    layer = layers[0]
    fig, (ax_h, ax_f) = canvas.figure(1, 2, width=9.0)
    if layer.get("histogram"):
        _histogram(ax_h, layer)
        ax_h.legend(loc="best")
    ax_h.set_xlabel("output value")
    ax_h.set_ylabel("fraction of values")
    ax_h.set_title(_label(f"{layer['name']} ({layer['type']}): output histogram", 70))
    for key, label, color in (("dead_frac", "dead units", COLORS["bad"]), ("zero_frac", "zero outputs", COLORS["muted"]),
                              ("sat_frac", "saturated", COLORS["val"])):
        x, y = _xy(layer.get("step"), layer.get(key))
        if x:
            ax_f.plot(x, y, marker=".", markersize=3, linewidth=1, color=color, label=label)
    ax_f.set_ylim(-0.03, 1.03)
    _step_axis(ax_f)
    ax_f.set_ylabel("fraction")
    ax_f.set_title("Dead, zero and saturated fractions")
    ax_f.legend(loc="best")
    return canvas.uri(fig)


def plot_activations(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    """Overview: small-multiple histograms, and dead/saturated/zero fractions of every layer (latest sample)."""
    import numpy as np

    layers = _layers(metrics)
    if not layers:
        return None
    chosen = _activation_layers(metrics, None)
    cols = 4
    rows = -(-len(chosen) // cols) if chosen else 0
    bars = layers[:MAX_BAR_ROWS]
    fig = canvas._Figure(figsize=(9.0, 1.6 * rows + 2.8), layout="constrained")
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.6] * rows + [2.6])
    for k, layer in enumerate(chosen):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        _histogram(ax, layer)
        ax.set_title(_label(f"{layer['name']} ({layer['type']})", 34), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    ax = fig.add_subplot(grid[rows, :])
    idx = np.arange(len(bars))
    width = 0.28

    def latest(layer, key):
        vals = [v for v in layer.get(key) or [] if _finite(v)]
        return vals[-1] if vals else 0.0

    for off, key, label, color in ((-width, "dead_frac", "dead units", COLORS["bad"]), (0, "sat_frac", "saturated", COLORS["val"]),
                                   (width, "zero_frac", "zero outputs", COLORS["muted"])):
        ax.bar(idx + off, [latest(l, key) for l in bars], width, color=color, label=label)
    ax.set_xticks(idx, [_label(l["name"], 20) for l in bars], rotation=60, ha="right", fontsize=6)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("fraction (latest sample)")
    more = f" (first {MAX_BAR_ROWS} of {len(layers)})" if len(layers) > MAX_BAR_ROWS else ""
    ax.set_title("Dead, saturated and zero fractions per layer" + more)
    ax.legend(loc="upper right", ncols=3)
    if chosen:
        fig.suptitle("Activation histograms (grey: first sample, blue: latest)", fontsize=9)
    return canvas.uri(fig)


def plot_updates(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    """Update-to-weight ratio |Δw|/|w| and weight norm of each parameter over time."""
    params = [p for p in metrics.get("params") or [] if any(_finite(v) for v in (p.get("update_ratio") or []) + (p.get("norm") or []))]
    if not params:
        return None
    location = finding.location if finding is not None else None
    hl = [p for p in params if _matches(p["name"], location) or _matches(p.get("module"), location)]
    if location and not hl and finding is not None:
        hl = [p for p in params if p["name"] in json.dumps(finding.evidence)]
    fig, (ax_u, ax_n) = canvas.figure(1, 2, width=9.0)
    many = len(params) > 12
    norms = [v for p in params for v in p.get("norm") or []]
    if len(params) > MAX_LINES:  # a band over all parameters, and the highlighted ones as lines
        for ax, key in ((ax_u, "update_ratio"), (ax_n, "norm")):
            _band(ax, params, key)
        params = hl
    for p in params:
        mark = p in hl
        style = {"linewidth": 1.6 if mark else 0.8, "alpha": 1.0 if mark or not many else 0.45}
        if hl and not mark:
            style.update(color=COLORS["muted"], alpha=0.35)
        label = _label(p["name"], 30) if mark or not many else None
        x, y = _xy(p["step"], [v if _finite(v) and v > 0 else None for v in p.get("update_ratio") or []])
        zeros = _xy(p["step"], [1e-12 if v == 0 else None for v in p.get("update_ratio") or []])
        ax_u.plot(x, y, label=label, **style)
        if zeros[0]:
            ax_u.plot(*zeros, linestyle="none", marker="v", markersize=3, color=COLORS["bad"] if mark or not hl else COLORS["muted"])
        ax_n.plot(*_xy(p["step"], p.get("norm")), **style)
    ax_u.axhspan(1e-5, 1e-1, color=COLORS["ok"], alpha=0.06)
    _log(ax_u, "y")
    _step_axis(ax_u)
    ax_u.set_ylabel("|Δw| / |w| (0 drawn at 1e-12)")
    ax_u.set_title("Update-to-weight ratio (green band: 1e-5 to 1e-1)")
    if hl or not many:
        ax_u.legend(loc="best")
    _step_axis(ax_n)
    ax_n.set_ylabel("|w|")
    _logy_if_wide(ax_n, norms)
    ax_n.set_title("Weight norm")
    return canvas.uri(fig)


def _band(ax, rows: list[dict], key: str) -> None:
    """Median and 10-90% band over many series of ``key`` (by step), positive values only."""
    import numpy as np

    steps = sorted({x for r in rows for x in r.get("step") or [] if _finite(x)})
    col = {x: j for j, x in enumerate(steps)}
    grid = np.full((len(rows), len(steps)), np.nan)
    for i, r in enumerate(rows):
        for x, y in zip(*_xy(r.get("step"), r.get(key))):
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


def plot_memory(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    s = _series(metrics)
    lines = [(col, label) for col, label in (("rss_bytes", "host RSS"), ("cuda_allocated", "CUDA allocated"),
                                             ("cuda_reserved", "CUDA reserved")) if _xy(s.get("step"), s.get(col))[0]]
    if not lines:
        return None
    fig, (ax,) = canvas.figure()
    for col, label in lines:
        x, y = _xy(s["step"], s[col])
        ax.plot(x, [v / 2**20 for v in y], linewidth=1, label=label)
    if finding is not None:
        _mark_step(ax, finding.step)
    _step_axis(ax)
    ax.set_ylabel("MiB")
    ax.set_title("Memory")
    ax.legend(loc="best")
    return canvas.uri(fig)


def plot_step_time(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    """Step time split into data wait, forward, backward and optimizer: over time, and the medians."""
    import numpy as np

    s = _series(metrics)
    parts = [(col, label, color) for col, label, color in STEP_PARTS if _xy(s.get("step"), s.get(col))[0]]
    if not parts:
        return None
    fig, (ax_t, ax_m) = canvas.figure(1, 2, width=9.0, gridspec_kw={"width_ratios": [2.2, 1]})
    steps = s["step"]
    stack = np.array([[v if _finite(v) else 0.0 for v in s[col]] for col, _, _ in parts]) * 1000
    ax_t.stackplot(steps, stack, labels=[p[1] for p in parts], colors=[p[2] for p in parts], alpha=0.85)
    _step_axis(ax_t)
    ax_t.set_ylabel("ms")
    ax_t.set_title("Step time split")
    ax_t.legend(loc="upper right", ncols=len(parts))
    med = metrics.get("timing_median_s") or {}
    vals = [(med.get(col) or 0.0) * 1000 for col, _, _ in parts]
    ax_m.barh([p[1] for p in parts], vals, color=[p[2] for p in parts])
    ax_m.invert_yaxis()
    total = sum(vals) or 1.0
    for i, v in enumerate(vals):
        ax_m.annotate(f"{v:.3g} ms ({v / total:.0%})", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax_m.set_xlim(0, max(vals) * 1.6 or 1)
    ax_m.set_xlabel("median ms per step")
    ax_m.set_title("Median split")
    return canvas.uri(fig)


def plot_layer_time(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    """Median forward time per layer (the slowest first), the finding's layer highlighted."""
    rows = []
    for l in _layers(metrics):
        v = sorted(y for y in l.get("fwd_time_s") or [] if _finite(y))
        if v:
            rows.append((l["name"], l["type"], v[len(v) // 2] * 1000))
    if not rows:
        return plot_step_time(canvas, metrics, finding)
    rows = sorted(rows, key=lambda r: -r[2])[:20]
    location = finding.location if finding is not None else None
    fig, (ax,) = canvas.figure(height=max(2.4, 0.6 + 0.18 * len(rows)))
    colors = [COLORS["bad"] if _matches(n, location) else COLORS["train"] for n, _, _ in rows]
    ax.barh(range(len(rows)), [r[2] for r in rows], color=colors)
    ax.set_yticks(range(len(rows)), [_label(f"{n} ({t})", 40) for n, t, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median forward ms (sampled steps)")
    ax.set_title("Forward time per layer, slowest first")
    return canvas.uri(fig)


def plot_time_for(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    if finding is not None and finding.kind == "slow_operation" and finding.location:
        return plot_layer_time(canvas, metrics, finding)
    return plot_step_time(canvas, metrics, finding)


def plot_classes(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    counts = metrics.get("class_counts") or {}
    if not counts:
        return plot_loss(canvas, metrics, finding)
    items = list(counts.items())[:MAX_BAR_ROWS]
    fig, (ax,) = canvas.figure()
    ax.bar([_label(k, 12) for k, _ in items], [v for _, v in items], color=COLORS["train"])
    ax.set_xlabel("class")
    ax.set_ylabel("count")
    ax.set_title("Targets seen per class")
    return canvas.uri(fig)


def plot_grad_norm(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    s = _series(metrics)
    x, y = _xy(s.get("step"), s.get("grad_norm"))
    if not x:
        return None
    fig, (ax,) = canvas.figure()
    ax.plot(x, y, color=COLORS["val"], linewidth=1)
    _logy_if_wide(ax, y)
    if finding is not None:
        _mark_step(ax, finding.step)
    _step_axis(ax)
    ax.set_ylabel("global gradient norm")
    ax.set_title("Gradient norm")
    return canvas.uri(fig)


# --- ONNX plots ----------------------------------------------------------------------------------


def plot_onnx_ops(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    """Share of node time per op type (profile reports), or per node when a finding names one."""
    nodes = metrics.get("top_nodes") or []
    ops = metrics.get("op_types") or []
    location = finding.location if finding is not None else None
    if location and nodes:
        rows = [(n["node"] + f" ({n['op_type']})", n["share"], _matches(n["node"], location)) for n in nodes[:MAX_BAR_ROWS // 2]]
        title = "Share of node time per node"
    elif ops:
        rows = [(o["op_type"] + f" ×{o['nodes']}", o["share"], False) for o in ops[:MAX_BAR_ROWS // 2]]
        title = "Share of node time per op type"
    else:
        return None
    fig, (ax,) = canvas.figure(height=max(2.2, 0.6 + 0.18 * len(rows)))
    ax.barh(range(len(rows)), [r[1] for r in rows], color=[COLORS["bad"] if r[2] else COLORS["train"] for r in rows])
    ax.set_yticks(range(len(rows)), [_label(r[0], 44) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of node time")
    ax.set_title(title)
    return canvas.uri(fig)


def plot_onnx_compare(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    """Max absolute and relative error at each matched point, in graph order; tolerance and first divergence marked."""
    points = metrics.get("points") or []
    if not points:
        return None
    tol = metrics.get("tolerances") or {}
    first = (finding.location if finding is not None else None) or metrics.get("first_divergence")
    fig, (ax,) = canvas.figure(height=3.0)
    floor = 1e-12
    idx = list(range(len(points)))
    abs_err = [max(p.get("max_abs") or 0.0, floor) if _finite(p.get("max_abs")) else None for p in points]
    rel_err = [max(p.get("max_rel") or 0.0, floor) if _finite(p.get("max_rel")) else None for p in points]
    ax.plot(*_xy(idx, abs_err), color=COLORS["train"], marker="o", markersize=3, linewidth=1, label="max abs error")
    ax.plot(*_xy(idx, rel_err), color=COLORS["val"], marker=".", markersize=3, linewidth=0.8, label="max rel error")
    bad = [i for i, p in enumerate(points) if p.get("ok") is False]
    ax.plot(*_xy(bad, [abs_err[i] for i in bad]), linestyle="none", marker="x", color=COLORS["bad"], markersize=6, label="beyond tolerance")
    if _finite(tol.get("atol")) and tol["atol"] > 0:
        ax.axhline(tol["atol"], color=COLORS["muted"], linestyle=":", linewidth=1, label=f"atol {tol['atol']:g}")
    for i, p in enumerate(points):
        if first and (_matches(p.get("module"), first) or p.get("onnx_node") == first):
            ax.axvline(i, color=COLORS["bad"], linestyle="--", linewidth=1)
            break
    _log(ax, "y")
    step = max(1, len(points) // 30)
    ax.set_xticks(idx[::step], [_label(p.get("module") or p.get("onnx_node") or "?", 24) for p in points[::step]],
                  rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("error (0 drawn at 1e-12)")
    ax.set_title("PyTorch vs ONNX: error per matched point, in graph order")
    ax.legend(loc="best")
    return canvas.uri(fig)


def plot_onnx_for(canvas: _Canvas, metrics: dict, finding: Finding | None) -> str | None:
    return plot_onnx_compare(canvas, metrics, finding) or plot_onnx_ops(canvas, metrics, finding)


# Finding kind -> the picture of its evidence. Kinds not listed get no picture, only their evidence table.
FINDING_PLOTS: dict[str, Plot] = {
    "exploding_gradient": plot_grad_flow,
    "vanishing_gradient": plot_grad_flow,
    "nan_or_inf": plot_nonfinite,
    "dead_relu": plot_activation_layer,
    "saturated_activation": plot_activation_layer,
    "poor_weight_init": plot_updates,
    "unchanged_weights": plot_updates,
    "loss_not_decreasing": plot_loss,
    "oscillating_loss": plot_loss,
    "overfitting": plot_loss,
    "gradient_accumulation": plot_grad_norm,
    "data_issue": plot_classes,
    "memory_growth": plot_memory,
    "memory_pressure": plot_memory,
    "input_bottleneck": plot_step_time,
    "slow_operation": plot_time_for,
    "onnx_numerical_mismatch": plot_onnx_for,
    "onnx_slow_node": plot_onnx_ops,
}

# The run's overview, after the findings (sections without data are left out).
OVERVIEW: list[tuple[str, Plot]] = [
    ("Loss", plot_loss),
    ("Gradient flow", plot_grad_flow),
    ("Activations", plot_activations),
    ("Update-to-weight ratios", plot_updates),
    ("Memory", plot_memory),
    ("Step time", plot_step_time),
    ("Forward time per layer", plot_layer_time),
    ("ONNX: comparison errors", plot_onnx_compare),
    ("ONNX: time per op", plot_onnx_ops),
]

WIDE = {plot_grad_flow, plot_activations}


# --- text parts ----------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, default=str)
        return text if len(text) <= 200 else text[:199] + "…"
    return str(v)


def _evidence_rows(evidence: dict) -> list[tuple[str, str]]:
    return [(str(k), _fmt(v)) for k, v in evidence.items()]


def _facts(report: Report) -> list[tuple[str, str]]:
    run = report.run
    facts = [("status", run.status + (f" (exit {run.exit_code})" if run.exit_code is not None else ""))]
    if run.steps or run.models:
        facts.append(("steps", f"{run.steps} in {run.duration_s:.1f} s"))
    else:
        facts.append(("duration", f"{run.duration_s:.2f} s"))
    for m in run.models:
        facts.append(("model", f"{m.name}: {m.parameters:,} parameters ({m.trainable:,} trainable)"))
    if run.device:
        facts.append(("device", run.device))
    if run.monitor_overhead is not None:
        facts.append(("monitor overhead", f"{run.monitor_overhead.time_fraction:.1%} of the run's time"))
    return facts


def _tables(metrics: dict) -> list[dict]:
    """Plain tables: the ONNX per-op and per-node times, the comparison points, the first NaN node."""
    tables = []
    if metrics.get("op_types"):
        tables.append({"title": "ONNX: time per op type", "head": ["op type", "nodes", "mean µs per run", "share"],
                       "rows": [[o["op_type"], o["nodes"], _fmt(o["mean_us"]), f"{o['share']:.1%}"] for o in metrics["op_types"]]})
    if metrics.get("top_nodes"):
        tables.append({"title": "ONNX: slowest nodes", "head": ["node", "op type", "provider", "mean µs per run", "share"],
                       "rows": [[n["node"], n["op_type"], n.get("provider") or "", _fmt(n["mean_us"]), f"{n['share']:.1%}"]
                                for n in metrics["top_nodes"]]})
    if metrics.get("points"):
        tables.append({"title": "ONNX: comparison per matched point", "head": ["module", "ONNX node", "max abs", "max rel", "mismatch", "ok"],
                       "rows": [[p.get("module", ""), p.get("onnx_node", ""), _fmt(p.get("max_abs")), _fmt(p.get("max_rel")),
                                 _fmt(p.get("mismatch_fraction")), "yes" if p.get("ok") else "no"] for p in metrics["points"]],
                       "bad": [i for i, p in enumerate(metrics["points"]) if p.get("ok") is False]})
    if metrics.get("outputs"):
        tables.append({"title": "ONNX: graph outputs", "head": ["output", "value", "max abs", "max rel", "ok"],
                       "rows": [[o.get("output"), o.get("value", ""), _fmt(o.get("max_abs")), _fmt(o.get("max_rel")),
                                 "yes" if o.get("ok") else "no"] for o in metrics["outputs"]]})
    if metrics.get("nonfinite_value_count"):
        tables.append({"title": "ONNX: non-finite values", "head": ["first node", "values", "count"],
                       "rows": [[metrics.get("first_node") or "", ", ".join(metrics.get("nonfinite_values") or [])[:400],
                                 metrics["nonfinite_value_count"]]]})
    return tables
