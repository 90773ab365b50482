"""Activations: output histograms (first and latest sample) and dead, zero and saturated fractions."""

from __future__ import annotations

from modeldebug.metrics import LayerSeries, TrainingMetrics
from modeldebug.report.plots.canvas import COLORS, MAX_BAR_ROWS, Canvas, finite, label, matches, reads, step_axis, xy
from modeldebug.types import Finding

MAX_HISTOGRAMS = 12  # small multiples in the activations overview
ACTIVATION_NAMES = ("relu", "tanh", "sigmoid", "gelu", "silu", "elu", "softmax", "hardtanh", "mish")


def activation_layers(metrics: TrainingMetrics, finding: Finding | None) -> list[LayerSeries]:
    layers = [l for l in metrics.layers if l.histogram]
    if finding is not None:
        return [l for l in layers if matches(l.name, finding.location)][:1]
    if len(layers) <= MAX_HISTOGRAMS:
        return layers
    act = [l for l in layers if any(k in l.type.lower() for k in ACTIVATION_NAMES)] or layers
    step = len(act) / MAX_HISTOGRAMS
    return [act[int(i * step)] for i in range(min(MAX_HISTOGRAMS, len(act)))]


def _histogram(ax, layer: LayerSeries) -> None:
    import numpy as np

    for h, color, name, fill in ((layer.histogram_first, COLORS["muted"], "first", False),
                                 (layer.histogram, COLORS["train"], "latest", True)):
        if h is None or h.lo is None or h.hi is None:
            continue
        counts = np.asarray(h.counts, dtype=float)
        total = counts.sum() or 1.0
        edges = np.linspace(h.lo, h.hi, len(counts) + 1) if h.hi > h.lo else np.array([h.lo - 0.5, h.lo + 0.5])
        if len(edges) != len(counts) + 1:
            edges = np.linspace(h.lo - 0.5, h.lo + 0.5, len(counts) + 1)
        ax.stairs(counts / total, edges, fill=fill, color=color, alpha=0.6 if fill else 1,
                  label=f"{name} (step {h.step})")


@reads(TrainingMetrics)
def plot_activation_layer(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    """One layer: its output histogram (first and latest sample) and its dead/zero/saturated fractions."""
    layers = [l for l in metrics.layers if finding is not None and matches(l.name, finding.location)]
    if not layers:
        return None
    layer = layers[0]
    fig, (ax_h, ax_f) = canvas.figure(1, 2, width=9.0)
    if layer.histogram:
        _histogram(ax_h, layer)
        ax_h.legend(loc="best")
    ax_h.set_xlabel("output value")
    ax_h.set_ylabel("fraction of values")
    ax_h.set_title(label(f"{layer.name} ({layer.type}): output histogram", 70))
    for values, name, color in ((layer.dead_frac, "dead units", COLORS["bad"]), (layer.zero_frac, "zero outputs", COLORS["muted"]),
                                (layer.sat_frac, "saturated", COLORS["val"])):
        x, y = xy(layer.step, values)
        if x:
            ax_f.plot(x, y, marker=".", markersize=3, linewidth=1, color=color, label=name)
    ax_f.set_ylim(-0.03, 1.03)
    step_axis(ax_f)
    ax_f.set_ylabel("fraction")
    ax_f.set_title("Dead, zero and saturated fractions")
    ax_f.legend(loc="best")
    return canvas.uri(fig)


def _latest(values) -> float:
    vals = [v for v in values if finite(v)]
    return vals[-1] if vals else 0.0


@reads(TrainingMetrics)
def plot_activations(canvas: Canvas, metrics: TrainingMetrics, finding: Finding | None) -> str | None:
    """Overview: small-multiple histograms, and dead/saturated/zero fractions of every layer (latest sample)."""
    import numpy as np

    layers = metrics.layers
    if not layers:
        return None
    chosen = activation_layers(metrics, None)
    cols = 4
    rows = -(-len(chosen) // cols) if chosen else 0
    bars = layers[:MAX_BAR_ROWS]
    fig = canvas.Figure(figsize=(9.0, 1.6 * rows + 2.8), layout="constrained")
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[1.6] * rows + [2.6])
    for k, layer in enumerate(chosen):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        _histogram(ax, layer)
        ax.set_title(label(f"{layer.name} ({layer.type})", 34), fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    ax = fig.add_subplot(grid[rows, :])
    idx = np.arange(len(bars))
    width = 0.28
    for off, key, name, color in ((-width, "dead_frac", "dead units", COLORS["bad"]), (0, "sat_frac", "saturated", COLORS["val"]),
                                  (width, "zero_frac", "zero outputs", COLORS["muted"])):
        ax.bar(idx + off, [_latest(getattr(l, key)) for l in bars], width, color=color, label=name)
    ax.set_xticks(idx, [label(l.name, 20) for l in bars], rotation=60, ha="right", fontsize=6)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("fraction (latest sample)")
    more = f" (first {MAX_BAR_ROWS} of {len(layers)})" if len(layers) > MAX_BAR_ROWS else ""
    ax.set_title("Dead, saturated and zero fractions per layer" + more)
    ax.legend(loc="upper right", ncols=3)
    if chosen:
        fig.suptitle("Activation histograms (grey: first sample, blue: latest)", fontsize=9)
    return canvas.uri(fig)
