"""The HTML report's pictures, by family, and which picture goes with which finding.

Each plot is ``plot(canvas, metrics, finding) -> data: URI or None`` and is marked with the metrics
kinds it draws from (:func:`~modeldebug.report.plots.canvas.reads`): :meth:`Canvas.draw` gives
None for a report of another kind, so the overview can list training and ONNX plots alike.

- ``training``: loss (and validation), the first non-finite step, gradient norm, classes.
- ``gradients``: gradient flow per layer.  ``activations``: histograms, dead/saturated fractions.
- ``params``: update-to-weight ratios and weight norms.  ``resources``: memory, step time split.
- ``onnx``: ONNX time per op or node, PyTorch-vs-ONNX errors.
"""

from __future__ import annotations

from modeldebug.report.plots.activations import plot_activation_layer, plot_activations
from modeldebug.report.plots.canvas import EXTRA, Canvas, Plot
from modeldebug.report.plots.gradients import plot_grad_flow
from modeldebug.report.plots.onnx import plot_onnx_compare, plot_onnx_for, plot_onnx_ops
from modeldebug.report.plots.params import plot_updates
from modeldebug.report.plots.resources import plot_layer_time, plot_memory, plot_step_time, plot_time_for
from modeldebug.report.plots.training import plot_classes, plot_grad_norm, plot_loss, plot_nonfinite

# Finding kind -> the picture of its evidence. Kinds not listed (runtime_error, the distributed
# kinds) get no picture, only their evidence table.
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
    "loss_spike": plot_loss,
    "overfitting": plot_loss,
    "gradient_accumulation": plot_grad_norm,
    "data_issue": plot_classes,
    "memory_growth": plot_memory,
    "memory_pressure": plot_memory,
    "input_bottleneck": plot_step_time,
    "slow_operation": plot_time_for,
    "onnx_numerical_mismatch": plot_onnx_for,
    "onnx_slow_node": plot_onnx_ops,
    # silent bugs (issue 13): what each one does to the curves
    "wrong_loss_input": plot_loss,
    "loss_shape_broadcast": plot_loss,
    "train_eval_mode": plot_loss,
    "lr_schedule_misuse": plot_loss,
    "labels_unrelated": plot_loss,
    "validation_overlap": plot_loss,
    "untracked_parameters": plot_updates,
    "weight_decay_too_high": plot_updates,
    "clip_before_backward": plot_grad_norm,
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

__all__ = [
    "EXTRA", "FINDING_PLOTS", "OVERVIEW", "WIDE", "Canvas", "Plot", "plot_activation_layer", "plot_activations",
    "plot_classes", "plot_grad_flow", "plot_grad_norm", "plot_layer_time", "plot_loss", "plot_memory",
    "plot_nonfinite", "plot_onnx_compare", "plot_onnx_for", "plot_onnx_ops", "plot_step_time", "plot_time_for",
    "plot_updates",
]
