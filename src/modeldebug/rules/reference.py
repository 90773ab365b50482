"""The loss a trivial predictor gets, and how far the run stays from it: harm judged against a
reference, not against the run's own (possibly blown-up) start.

The trivial predictor ignores the input: for cross-entropy / NLL it predicts the label frequencies
(its loss is the entropy of the label histogram, ``class_counts``, with the Miller-Madow
correction for the classes seen; with label smoothing the smoothed one), for the regression losses and binary cross-entropy one constant per output, from
the targets sampled at the loss call (``events.loss_targets``, collect/loss_calls.py).

The reference applies only when the run's training loss *is* one loss function's output: one loss
function, one call per step, reduction "mean" (or "sum": recorded per item), no class weights. The
series judged is ``steps.loss`` when it matches the loss function's own output on the sampled steps
(or stays at one ratio close to 1 to it: the same loss over another count of items), else those
sampled outputs (a loss with an added penalty, or divided for gradient accumulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.events import CLASS_LOSSES, LossCall, LossTargets
from modeldebug.evidence import Evidence

# Rules reading the reference declare these reads.
READS = ("events.loss_call", "events.loss_targets", "class_counts", "steps.loss", "steps.loss_fn_value",
         "steps.loss_calls", "steps.backward_calls", "validation")
# At most this share of steps may call the loss function more than once per backward (a GAN's two
# losses, a metric; gradient accumulation's one call per micro-batch is still one plain call).
MAX_MULTI_CALL = 0.05
# steps.loss is the loss function's output when their median ratio on sampled steps is within this.
SAME_LOSS = 0.01
# steps.loss at a constant ratio to it this close to 1 is the same loss normalised otherwise.
RESCALED = 0.1
# A training or validation loss within 5% of the reference (or above it) learned next to nothing.
NO_BETTER = 0.95


@dataclass
class Reference:
    loss: str  # the loss function ("cross_entropy")
    baseline: float  # its value for the trivial predictor
    predictor: str  # "predicting the label frequencies", "predicting the mean"
    end: float  # training loss at the end (median of the last window)
    best: float  # lowest median over any window of the run
    n: int  # training losses judged
    val_end: float | None = None  # the last validation loss, when the same loss function gave it
    val_best: float | None = None
    uniform: float | None = None  # cross-entropy of a uniform guess over the classes (ln K), for CE / NLL

    def learned_nothing(self) -> bool:
        """The run never got nearer the label frequencies' loss than a uniform guess's: a model learns
        the label frequencies (its output bias) within its first steps whatever its labels, so one that
        stays this high was not moved by its updates (an lr far too low), not misled by its labels."""
        if self.uniform is None or self.uniform - self.baseline < 0.05 * self.baseline:
            return False  # balanced classes: the two guesses coincide and say nothing here
        return self.best > (self.baseline + self.uniform) / 2

    @property
    def ratio(self) -> float:
        return self.end / self.baseline

    def note(self, what: str = "loss", value: float | None = None) -> str:
        """ "loss 1.8e3, where predicting the mean gives 2.1" """
        return f"{what} {_g(self.end if value is None else value)}, where {self.predictor} gives {_g(self.baseline)}"

    def evidence(self) -> dict:
        out = {"trivial_loss": self.baseline, "trivial_predictor": self.predictor, "loss_end": self.end,
               "loss_best": self.best}
        if self.val_end is not None:
            out["val_loss_end"] = self.val_end
        return out


def _g(x: float) -> str:
    return f"{x:.3g}"


def loss_calls(ev: Evidence) -> list[LossCall]:
    return ev.events_of(LossCall)


def reference(ev: Evidence) -> Reference | None:
    """The trivial predictor's loss and the run's losses next to it; None where it does not apply."""
    calls = loss_calls(ev)
    names = {c.name for c in calls}
    if len(names) != 1 or len(ev.steps) == 0:
        return None
    call = calls[0]
    # (a summed loss is recorded per item: collect/loss_calls.py's per_item)
    if any(c.reduction not in ("mean", "sum") or c.options.get("weighted") for c in calls):
        return None
    counts = _col(ev, "loss_calls")
    backward = _col(ev, "backward_calls")
    if len(counts) and np.mean(counts > (np.maximum(backward, 1) if len(backward) == len(counts) else 1)) > MAX_MULTI_CALL:
        return None
    found = _baseline(ev, call)
    if found is None:
        return None
    baseline, predictor = found
    if not np.isfinite(baseline) or baseline <= 1e-8:
        return None  # a constant target: nothing to learn, no reference
    series = _series(ev)
    if len(series) < 6:
        return None
    k = int(np.clip(len(series) // 10, 3, 50))
    end = float(np.median(series[-k:]))
    best = float(np.min(_rolling_median(series, k)))
    val_end = val_best = None
    v = ev.validation
    if len(v) and "loss_fn" in v:
        same = (np.asarray(v["loss_fn"]) == call.name) & np.isfinite(np.asarray(v["loss"], dtype=float))
        if same.any():
            losses = np.asarray(v["loss"], dtype=float)[same]
            val_end, val_best = float(losses[-1]), float(losses.min())
    classes = classes_scored(ev, call)
    return Reference(loss=call.name, baseline=baseline, predictor=predictor, end=end, best=best, n=len(series),
                     val_end=val_end, val_best=val_best, uniform=float(np.log(classes)) if classes else None)


def harm(ev: Evidence, ref: Reference | None = None) -> str:
    """A sentence naming the harm the reference shows ("" when none): the training loss within 5%
    of the trivial predictor's or above, or the validation loss there while training is below."""
    ref = ref if ref is not None else reference(ev)
    if ref is None:
        return ""
    if ref.end >= NO_BETTER * ref.baseline:
        return f"The run does little better than ignoring the input: training {ref.note()}."
    if ref.val_end is not None and ref.val_end >= NO_BETTER * ref.baseline:
        return (f"The run does not generalise: validation {ref.note('loss', ref.val_end)} "
                f"(training {_g(ref.end)}).")
    return ""


def _col(ev: Evidence, name: str) -> np.ndarray:
    if name not in ev.steps:
        return np.zeros(0)
    return np.asarray(ev.steps[name], dtype=float)


def loss_in_fn_units(ev: Evidence) -> np.ndarray | None:
    """``steps.loss`` step by step in the loss function's units, when it is that one loss (its
    output on the sampled steps, or at one ratio close to 1 to it); None when it is not (a loss with
    an added penalty, divided for gradient accumulation, or summed over the batch)."""
    loss, fn = _col(ev, "loss"), _col(ev, "loss_fn_value")
    if not len(fn) or len(fn) != len(loss):
        return None
    both = np.isfinite(loss) & np.isfinite(fn) & (fn != 0)
    ratios = loss[both] / fn[both]
    ratio = float(np.median(ratios)) if len(ratios) else np.nan
    if len(ratios) >= 2 and abs(ratio - 1) <= SAME_LOSS:
        return loss
    if len(ratios) >= 3 and abs(ratio - 1) <= RESCALED and np.all(np.abs(ratios / ratio - 1) <= SAME_LOSS):
        # The same loss over another count of items (transformers divides a causal LM's summed loss
        # by all labels, the loss function sums the shifted ones): in the loss function's units.
        return loss / ratio
    return None


def _series(ev: Evidence) -> np.ndarray:
    fn = _col(ev, "loss_fn_value")
    if not len(fn):
        return np.zeros(0)
    units = loss_in_fn_units(ev)
    if units is not None:
        return units[np.isfinite(units)]
    return fn[np.isfinite(fn)]


def _rolling_median(x: np.ndarray, k: int) -> np.ndarray:
    if len(x) <= k:
        return np.array([np.median(x)])
    windows = np.lib.stride_tricks.sliding_window_view(x, k)
    return np.median(windows, axis=1)


def classes_scored(ev: Evidence, call: LossCall) -> int | None:
    """The classes a cross-entropy / NLL input scores (its dim 1), else the classes seen."""
    if call.name not in CLASS_LOSSES:
        return None
    seen = sum(1 for v in ev.class_counts.values() if v > 0)
    shape = call.input_shape or []
    classes = int(shape[1]) if len(shape) >= 2 else seen
    return classes if classes >= max(seen, 2) else None


def _baseline(ev: Evidence, call: LossCall) -> tuple[float, str] | None:
    if call.name in CLASS_LOSSES:
        counts = np.array([v for v in ev.class_counts.values() if v > 0], dtype=float)
        if len(counts) < 2:
            return None
        classes = classes_scored(ev, call) or len(counts)
        p = counts / counts.sum()
        eps = float(call.options.get("label_smoothing") or 0.0)
        if eps > 0 and call.name == "cross_entropy" and classes >= len(counts):
            q = np.concatenate([p, np.zeros(classes - len(counts))]) * (1 - eps) + eps / classes
            return float(-(q * np.log(q)).sum()), "predicting the (smoothed) label frequencies"
        # Miller-Madow: the histogram's entropy falls short of the labels' by about (K - 1) / 2N, which
        # matters with many classes (a vocabulary) seen over few sampled targets.
        bias = (len(counts) - 1) / (2 * counts.sum())
        return float(-(p * np.log(p)).sum() + bias), "predicting the label frequencies"
    targets = [t for t in ev.events_of(LossTargets) if t.name == call.name and t.baseline is not None]
    if not targets:
        return None
    return float(targets[-1].baseline), f"predicting {targets[-1].predictor}"


# Kinds whose severity is judged by harm (base.impact_severity): their findings carry the reference.
HARM_JUDGED = frozenset({"data_issue", "saturated_activation", "poor_weight_init", "dead_relu", "vanishing_gradient",
                         "exploding_gradient"})


def with_reference(findings: list, ev: Evidence) -> list:
    """A post-pass: findings of the harm-judged kinds say what the reference shows, when it shows
    harm (their severity rose for it): the sentence in the message, the numbers in the evidence."""
    if not any(f.kind in HARM_JUDGED for f in findings):
        return findings
    ref = reference(ev)
    note = harm(ev, ref) if ref is not None else ""
    if not note:
        return findings
    for f in findings:
        if f.kind in HARM_JUDGED and f.source == "rules":
            f.message = f"{f.message} {note}"
            for k, v in ref.evidence().items():
                f.evidence.setdefault(k, v)
    return findings
