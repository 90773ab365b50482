"""What the loss function sees in training: its name, options and shapes (host-side, once per new
signature), and on sampled steps its output (the mean over the step's calls of that loss: gradient
accumulation's micro-batches), the range of its first input and a few rows of its targets.

Per step this costs a shape tuple and a set lookup (the signature) and an integer increment (the
call count); the device work (an ``aminmax``, a row sum, a copy of at most ``TARGET_ROWS`` x
``TARGET_COLS`` targets) runs only on sampled steps and travels with the step's other statistics.
When the run stops, the sampled targets give the loss of the best constant prediction
(``LossTargets``): the reference a run's loss is judged against (rules/reference.py).

A loss summed over its items (``reduction="sum"``, as transformers' models compute it before dividing
by the batch's token count) is recorded per item (``per_item``): in the units the script reports, and
next to the trivial predictor's loss.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from modeldebug.events import CLASS_LOSSES, LossCall, LossTargets

if TYPE_CHECKING:
    from modeldebug.collect.steps import Step
    from modeldebug.collect.writer import Writer

# Losses that compare input and target element by element (and broadcast them when shapes differ).
ELEMENTWISE = frozenset({"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                         "binary_cross_entropy_with_logits", "kl_div", "poisson_nll_loss", "soft_margin_loss"})
# Elementwise losses whose best constant prediction the sampled targets give.
REGRESSION = frozenset({"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                        "binary_cross_entropy_with_logits"})
# Losses whose sum per_item divides by the items it sums.
PER_ITEM = CLASS_LOSSES | ELEMENTWISE
_OPTIONS = ("label_smoothing", "beta", "delta", "ignore_index")
_WEIGHTS = ("weight", "pos_weight")
MAX_SIGNATURES = 256  # distinct (name, shapes) remembered; variable-length batches stop adding after that
MAX_EVENTS = 16  # LossCall events written; broadcasting calls are always written
TARGET_ROWS, TARGET_COLS, MAX_TARGET_ROWS = 32, 128, 4096


def reduction_of(options: dict[str, Any] | None) -> str:
    """The reduction a loss call asked for ("mean" by default; the deprecated flags too)."""
    if not options:
        return "mean"
    if options.get("reduce") is False:
        return "none"
    if options.get("size_average") is False:
        return "sum"
    return str(options.get("reduction") or "mean")


def per_item(name: str, input: Any, target: Any, output: torch.Tensor, options: dict[str, Any] | None) -> torch.Tensor:
    """The loss value per item: a summed loss divided by the items it sums (targets not ignored for
    cross-entropy and NLL, elements for elementwise losses), on the device; other values as they are."""
    value = output.detach().float().reshape(())
    if reduction_of(options) != "sum" or name not in PER_ITEM or not isinstance(input, torch.Tensor):
        return value
    if name in CLASS_LOSSES and isinstance(target, torch.Tensor) and not target.is_floating_point():
        ignore = (options or {}).get("ignore_index", -100)
        return value / (target != ignore).sum().to(value.device).clamp_min(1)
    if name in CLASS_LOSSES:  # class probabilities as targets: one item per row of scores
        items = input.numel() // input.shape[1] if input.dim() >= 2 and input.shape[1] else 1
    else:
        shape = broadcast_shape(name, input, target)
        items = math.prod(shape) if shape is not None else input.numel()
    return value / max(items, 1)


def broadcast_shape(name: str, input: Any, target: Any) -> list[int] | None:
    """The shape an elementwise loss broadcasts input and target to, when it has more elements than
    either of them (each prediction compared with targets it does not belong to)."""
    if name not in ELEMENTWISE or not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        return None
    if input.shape == target.shape:
        return None
    try:
        shape = torch.broadcast_shapes(input.shape, target.shape)
    except RuntimeError:
        return None
    if math.prod(shape) > max(input.numel(), target.numel()):
        return list(shape)
    return None


class LossCalls:
    def __init__(self, writer: "Writer"):
        self.writer = writer
        self._seen: set[tuple] = set()
        self._events = 0
        self._target_name: str | None = None  # the loss whose targets are sampled ("" once several are)
        self._target_options: dict[str, Any] = {}
        self._targets: list[np.ndarray] = []
        self._rows = 0
        self._probed: tuple[int, str] | None = None  # (id of the step, loss) whose value is being sampled

    def training_call(self, st: "Step | None", name: str, input: Any, target: Any, output: torch.Tensor,
                      options: dict[str, Any] | None) -> None:
        key = (name, getattr(input, "shape", None), getattr(target, "shape", None))
        if key not in self._seen and len(self._seen) < MAX_SIGNATURES:
            self._seen.add(key)
            self._new_signature(name, input, target, options)
        if st is None:
            return
        st.loss_calls += 1
        if not st.sampled:
            return
        if st.loss_probe is None:
            self._probe(st, name, input, target, output, options)
            self._probed = (id(st), name)
        elif self._probed == (id(st), name) and output.numel() == 1:
            # Gradient accumulation: the step's value is the mean over its micro-batches' calls.
            value = per_item(name, input, target, output, options).to(st.loss_probe.device)
            zero, one = value.new_zeros(()), value.new_ones(())
            st.loss_probe = st.loss_probe + torch.stack([value, zero, zero, zero, one])

    def _new_signature(self, name: str, input: Any, target: Any, options: dict[str, Any] | None) -> None:
        wide = broadcast_shape(name, input, target)
        if wide is None and self._events >= MAX_EVENTS:
            return
        self._events += 1
        opts = {k: options[k] for k in _OPTIONS if options and isinstance(options.get(k), (int, float))}
        if options and any(options.get(k) is not None for k in _WEIGHTS):
            opts["weighted"] = True
        self.writer.event(LossCall(
            name=name, reduction=reduction_of(options), options=opts, broadcast_shape=wide,
            input_shape=list(input.shape) if isinstance(input, torch.Tensor) else None,
            target_shape=list(target.shape) if isinstance(target, torch.Tensor) else None,
        ))

    def _probe(self, st: "Step", name: str, input: Any, target: Any, output: torch.Tensor,
               options: dict[str, Any] | None) -> None:
        """The loss value and the range of its input (and targets to sample), on the device."""
        nan = torch.full((), math.nan, device=output.device)
        value = per_item(name, input, target, output, options) if output.numel() == 1 else nan
        lo = hi = err = nan
        if isinstance(input, torch.Tensor) and input.is_floating_point() and input.numel():
            x = input.detach().float()
            lo, hi = torch.aminmax(x.reshape(-1))
            if name in CLASS_LOSSES and x.dim() >= 2:
                err = (x.sum(1) - 1).abs().amax()
                if name == "nll_loss":  # log-probabilities (all <= 0): do their exps sum to 1 over the classes?
                    # (the median row: rows zeroed by a padding mask do not count)
                    err = torch.where(hi <= 0, (x.exp().sum(1) - 1).abs().median(), err)
        one = torch.ones((), device=nan.device)  # calls counted: later ones of the same loss add their value
        st.loss_probe = torch.stack([t.to(nan.device) for t in (value, lo, hi, err, one)])
        if (name in REGRESSION and isinstance(target, torch.Tensor) and target.is_floating_point()
                and target.dim() >= 1 and target.numel() and self._rows < MAX_TARGET_ROWS):
            if self._target_name is None:
                self._target_name, self._target_options = name, dict(options or {})
            if self._target_name == name:
                y = target.detach().reshape(target.shape[0], -1)[:TARGET_ROWS]
                y = y[:, :: -(-y.shape[1] // TARGET_COLS)]
                st.loss_targets = y.float().clone()
            else:
                self._target_name = ""

    def arrived(self, st: "Step", extra_host: list) -> np.ndarray | None:
        """A sampled step's probe on the host (popped from its extra parts, in ``sampled_parts`` order)."""
        rec_values = extra_host.pop(0) if st.loss_probe is not None else None
        if rec_values is not None:  # (value sum, input min, max, sum error, calls)
            rec_values = np.array([rec_values[0] / rec_values[4], *rec_values[1:4]])
        if st.loss_targets is not None:
            rows = extra_host.pop(0).reshape(st.loss_targets.shape)
            if not self._targets or self._targets[0].shape[1] == rows.shape[1]:
                self._targets.append(np.asarray(rows, dtype=np.float64))
                self._rows += len(rows)
        st.loss_probe = st.loss_targets = None
        return rec_values

    def finish(self) -> None:
        """Write the loss of the best constant prediction on the sampled targets (at stop)."""
        if not self._target_name or not self._targets:
            return
        y = np.concatenate(self._targets)
        baseline, predictor = constant_loss(self._target_name, y, self._target_options)
        finite = y[np.isfinite(y)]
        # what a bounded output cannot reach, and the targets' scale
        reach = dict(below_zero=float(np.mean(finite < 0)), below_minus_one=float(np.mean(finite < -1)),
                     above_one=float(np.mean(finite > 1)), rms=float(np.sqrt(np.mean(finite ** 2)))) if len(finite) else {}
        self.writer.event(LossTargets(name=self._target_name, rows=len(y), features=y.shape[1],
                                      baseline=baseline, predictor=predictor, **reach))


def constant_loss(name: str, y: np.ndarray, options: dict[str, Any]) -> tuple[float | None, str]:
    """The loss per item (reduction "mean", or "sum" recorded per item) of predicting one constant per
    output on targets ``y`` [rows, outputs]: the mean for MSE, the median for L1/Huber-like losses (the
    L1 minimiser; Huber's lies between median and mean), the positive rate for binary cross-entropy.
    None when it does not apply."""
    y = y[np.isfinite(y).all(1)]
    if len(y) < 2 or reduction_of(options) not in ("mean", "sum") or any(options.get(k) is not None for k in _WEIGHTS):
        return None, ""
    if name == "mse_loss":
        return float(np.mean(np.var(y, axis=0))), "the mean"
    if name in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        if y.min() < 0 or y.max() > 1:
            return None, ""
        p = np.clip(y.mean(0), 1e-7, 1 - 1e-7)
        return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)))), "the positive rate"
    d = np.abs(y - np.median(y, axis=0))
    if name == "l1_loss":
        return float(d.mean()), "the median"
    width = float(options.get("beta" if name == "smooth_l1_loss" else "delta", 1.0))
    if width <= 0:
        return float(d.mean()), "the median"
    quad = 0.5 * d**2
    lin = width * (d - 0.5 * width)
    loss = np.where(d < width, quad, lin)
    if name == "smooth_l1_loss":
        loss = loss / width
    return float(loss.mean()), "the median"
