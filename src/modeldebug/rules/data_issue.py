"""data_issue: the data itself is wrong: NaN inputs, unnormalized inputs, constant or skewed labels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.events import CLASS_LOSSES, LOSS_FUNCS, BatchClasses, LossTargets
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    REFERENCE_READS,
    Rule,
    col,
    family,
    first_true,
    fix,
    flag,
    g,
    impact_severity,
    loss_trend,
)
from modeldebug.rules.reference import loss_calls
from modeldebug.types import Finding

_TOKEN_INPUT = {"Embedding", "EmbeddingBag"}  # integer ids: their mean/std say nothing about scaling
_BINARY = {"binary_cross_entropy", "binary_cross_entropy_with_logits"}


@register
@dataclass
class DataIssue(Rule):
    """Problems visible in the batches and labels.

    Reads: steps.input_nonfinite, steps.input_mean / input_std / input_min / input_max,
    class_counts, layers (is the first layer an embedding?), steps.loss.
    Fires (one finding per problem):
    - non-finite inputs at any step: high.
    - inputs far from normalized: median |mean| or std above ``max_scale`` = 10, or std below
      ``min_std`` = 1e-3 (DeepDiagnosis asks inputs within [-1, 1]; standardized data has
      |x| up to ~4, so the fault suite widened the bound to a scale of 10, which raw pixels
      (0-255) and raw physical units exceed). Low while the loss improves, medium otherwise.
      Skipped when the first layer is an Embedding (token ids).
    - one label class only: high; majority/minority count ratio >= ``max_imbalance`` = 100:
      medium (label_problem). The counts come from sampled steps, so a rare class's count is small
      and noisy: the ratio must hold against the one-sided 95% Poisson upper bound of the minority
      count (a 45:1 split sampled on a few steps reads 100:1 by chance). Not raised when a
      class loss is weighted (``CrossEntropyLoss(weight=...)``: the imbalance is handled; a
      WeightedRandomSampler shows balanced counts and needs no exception), nor for a language
      model's targets: token inputs (an Embedding layer) and at least ``zipf_min_classes`` = 50
      classes whose log count falls linearly with log rank (correlation <= -0.9, slope in
      [-2.5, -0.5]; Zipf's law, exponent ~1 for words).
    - batches of one class (class-index losses, sampled steps): at least ``max_single_class`` = half
      of ``min_batches`` = 5 or more probed batches hold one class, where batches of their median
      size drawn at random from the class frequencies the probes show (each batch's smallest label)
      would be so at most
      ``max_single_by_chance`` = 5% of the time (a 99:1 binary task in batches of 64 is one class
      53% of the time by chance: not raised): data ordered by label and not shuffled (cause
      unshuffled_data); high when 90% or more are.
    - binary cross-entropy targets outside [0, 1]: ``max_outside_unit`` = 1% or more of the sampled
      target values below 0 or above 1 (-1/+1 labels): high (label_problem).
    Recommends: filtering bad samples, standardization with the numbers seen, class weights
    computed from the counts, shuffling, 0/1 labels.
    """

    id = "data_issue"
    kind = "data_issue"
    reads = ("steps.input_nonfinite", "steps.input_mean", "steps.input_std", "steps.input_min",
             "steps.input_max", "class_counts", "layers", "steps.loss",
             "steps.loss_nonfinite", "events.loss_call", "events.batch_classes", "events.loss_targets",
             "steps.loss_fn_value") + REFERENCE_READS  # severity by harm
    max_scale: float = 10.0
    min_std: float = 1e-3
    max_imbalance: float = 100.0
    zipf_min_classes: int = 50
    zipf_slope: tuple[float, float] = (-2.5, -0.5)  # word/subword corpora: ~-0.7 to -1.2
    zipf_min_corr: float = 0.9
    min_batches: int = 5
    max_outside_unit: float = 0.01
    max_single_class: float = 0.5
    max_single_by_chance: float = 0.05

    def check(self, ev: Evidence) -> list[Finding]:
        return self._nonfinite(ev) + self._scale(ev) + self._labels(ev) + self._order(ev) + self._binary_targets(ev)

    def _binary_targets(self, ev: Evidence) -> list[Finding]:
        """Binary cross-entropy targets outside [0, 1] (-1/+1 labels, class ids 0..K): the loss has no
        lower bound there and pushes the logits to infinity."""
        t = next((t for t in ev.events_of(LossTargets) if t.name in _BINARY), None)
        if t is None:
            return []
        below, above = t.below_zero or 0.0, t.above_one or 0.0
        if below + above < self.max_outside_unit:
            return []
        loss = LOSS_FUNCS.get(t.name, t.name)
        lowest = col(ev.steps, "loss_fn_value")
        lowest = lowest[np.isfinite(lowest)]
        seen = (f" The loss went below zero, to {g(float(lowest.min()))}, which binary cross-entropy on targets "
                "in [0, 1] never does." if len(lowest) and lowest.min() < 0 else "")
        looks = (" (the labels look like -1/+1)" if below > 0.05 and not above else
                 " (class ids or other codes, not probabilities)" if above else "")
        return [self.finding(
            severity="high", confidence=0.9, location=None, step=None,
            message=(f"{loss} targets lie outside [0, 1]{looks}: {g(100 * below)}% of the sampled target values "
                     f"are below 0 and {g(100 * above)}% above 1. Outside [0, 1] its loss has no minimum and "
                     f"drives the logits to infinity.{seen}"),
            evidence={"loss_function": t.name, "targets_below_zero": below, "targets_above_one": above,
                      "sampled_targets": t.rows},
            causes=["label_problem"],
            recommendations=[fix("Map the labels to 0/1 before the loss (or use a loss made for -1/+1 labels, "
                                 "nn.SoftMarginLoss).", "y = (y > 0).float()  # -1/+1 -> 0/1")],
        )]

    def _order(self, ev: Evidence) -> list[Finding]:
        """Batches of one class, far more often than batches drawn at random from these labels
        would be: the data arrives ordered by label."""
        mix = next(iter(ev.events_of(BatchClasses)), None)
        if mix is None or mix.batches < self.min_batches:
            return []
        # Class frequencies as the probed batches' smallest labels show them: one-class batches give
        # their class, shuffled ones the smallest class almost always (which reads as one class:
        # quiet). The sampled steps' counts can miss classes the order keeps away from them.
        lows = np.array(list(mix.lowest_labels.values()), float)
        if len(lows) < 2:
            return []
        share = mix.single_class / mix.batches

        def one_class(counts: np.ndarray) -> float:
            """The chance that a batch of that size drawn from these class frequencies holds one class."""
            return float(np.sum((counts / counts.sum()) ** mix.median_size))

        # The smallest labels misjudge imbalance when the common class has the larger label (1% of
        # class 0: 47% of batches show 0, the rest 1); the sampled steps' counts do not, where they
        # saw two classes or more: the larger chance of the two counts.
        sampled = np.array([v for v in ev.class_counts.values() if v], float)
        by_chance = max(one_class(lows), one_class(sampled) if len(sampled) >= 2 else 0.0)
        if share < self.max_single_class or by_chance > self.max_single_by_chance:
            return []
        return [self.finding(
            severity="high" if share >= 0.9 else "medium", confidence=0.85, location=None, step=None,
            message=(f"{mix.single_class} of {mix.batches} probed training batches ({g(100 * share)}%) hold a single "
                     f"class, of {len(lows)} classes or more, where batches of {g(mix.median_size)} drawn at random "
                     f"from those labels would be one class {g(100 * by_chance)}% of the time. The data arrives "
                     f"ordered by label: each stretch of steps pulls the model to one class, which it forgets "
                     f"at the next."),
            evidence={"single_class_batches": mix.single_class, "sampled_batches": mix.batches,
                      "median_batch_size": mix.median_size, "single_class_by_chance": by_chance,
                      "classes": len(lows)},
            causes=["unshuffled_data"],
            recommendations=[fix("Shuffle the training data every epoch.",
                                 "loader = DataLoader(train_set, batch_size=64, shuffle=True)\n"
                                 "# or, by hand: perm = torch.randperm(len(x)); x, y = x[perm], y[perm]")],
        )]

    def _nonfinite(self, ev: Evidence) -> list[Finding]:
        bad = flag(ev.steps, "input_nonfinite")
        if not bad.any():
            return []
        steps = col(ev.steps, "step")
        first = first_true(bad, steps)
        return [self.finding(
            severity="high", confidence=0.95, location=None, step=first,
            message=f"Input batches contain NaN/Inf at {int(bad.sum())} of {len(bad)} steps (first at step {first}).",
            evidence={"steps_with_nonfinite_inputs": int(bad.sum()), "first_step": first},
            causes=["other", "label_problem"],
            recommendations=[
                fix("Find and drop (or impute) the non-finite samples before training.",
                    "mask = torch.isfinite(X).all(dim=1); X, y = X[mask], y[mask]"),
                fix("Or replace them in the batch.", "x = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)"),
            ],
        )]

    def off_scale(self, ev: Evidence) -> tuple[str, float, float, int] | None:
        """("large" or "tiny", median input mean, median input std, first step seen) when the
        model's float inputs are far from normalized; None when not (or token ids, or no input seen)."""
        order = ev.layers_in_order()
        if order and family(order[0]) in _TOKEN_INPUT:
            return None
        s = ev.steps
        mean, std = col(s, "input_mean"), col(s, "input_std")
        ok = np.isfinite(mean) & np.isfinite(std)
        if not ok.any():
            return None
        m, sd, first = float(np.median(mean[ok])), float(np.median(std[ok])), int(col(s, "step")[ok][0])
        if max(abs(m), sd) > self.max_scale:
            return "large", m, sd, first
        if 0 < sd < self.min_std and abs(m) < self.min_std:
            return "tiny", m, sd, first
        return None

    def _scale(self, ev: Evidence) -> list[Finding]:
        scale = self.off_scale(ev)
        if scale is None:
            return []
        what, m, sd, first = scale
        lo, hi = col(ev.steps, "input_min"), col(ev.steps, "input_max")
        rng = (float(np.nanmin(lo)) if np.isfinite(lo).any() else None,
               float(np.nanmax(hi)) if np.isfinite(hi).any() else None)
        trend = loss_trend(ev)
        msg = (f"Inputs are far from normalized: mean {g(m)}, std {g(sd)}"
               + (f", range [{g(rng[0])}, {g(rng[1])}]" if None not in rng else "")
               + f" (median over steps); values this {what} slow or destabilize training.")
        if trend is not None:
            msg += f" The loss went {g(trend.start)} -> {g(trend.end)}."
        code = f"x = (x - {m:.4g}) / {sd:.4g}" if sd > 0 else "x = (x - x.mean(0)) / (x.std(0) + 1e-8)"
        recs = [fix(f"Standardize the inputs with the statistics seen (mean {g(m)}, std {g(sd)}), ideally per feature "
                    "computed on the training set.", code)]
        if rng[1] is not None and rng[0] is not None and rng[0] >= 0 and 200 <= rng[1] <= 256:
            recs.insert(0, fix("These look like raw 0-255 pixels: scale to [0, 1] and normalize.",
                               "transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])"))
        return [self.finding(
            severity=impact_severity(trend, hurt="medium"), confidence=0.8, location=None, step=first, message=msg,
            evidence={"input_mean": m, "input_std": sd, "input_min": rng[0], "input_max": rng[1]},
            causes=["unnormalized_inputs"], recommendations=recs,
        )]

    def _token_targets(self, ev: Evidence, counts: dict[int, int]) -> bool:
        """A language model's targets: token ids (the inputs go through an Embedding) over many
        classes whose rank-frequency curve is a power law (Zipf: log count falls linearly with log
        rank, exponent ~1 for words). Skewed by the nature of language, not a sampling fault."""
        order = ev.layers_in_order()
        if len(counts) < self.zipf_min_classes or not any(family(info) in _TOKEN_INPUT for info in order):
            return False
        freq = np.sort(np.array(list(counts.values()), float))[::-1]
        log_rank, log_freq = np.log(np.arange(1, len(freq) + 1)), np.log(freq)
        slope = float(np.polyfit(log_rank, log_freq, 1)[0])
        corr = float(np.corrcoef(log_rank, log_freq)[0, 1])
        return self.zipf_slope[0] <= slope <= self.zipf_slope[1] and corr <= -self.zipf_min_corr

    def _labels(self, ev: Evidence) -> list[Finding]:
        counts = {int(k): int(v) for k, v in ev.class_counts.items() if v}
        if not counts:
            return []
        total = sum(counts.values())
        mix = next(iter(ev.events_of(BatchClasses)), None)
        if len(counts) == 1 and not (mix is not None and len(mix.lowest_labels) > 1):
            # (unless other classes showed in batches between the sampled steps: data ordered by label)
            (cls, n), = counts.items()
            return [self.finding(
                severity="high", confidence=0.9, location=None, step=None,
                message=f"All {n} labels seen are class {cls}: the model can only learn to predict that constant.",
                evidence={"class_counts": counts}, causes=["label_problem"],
                recommendations=[fix("Check how labels are built and loaded (a constant, a wrong column, a "
                                     "broadcast), and shuffle the data.", "print(torch.bincount(y))")],
            )]
        ratio = max(counts.values()) / min(counts.values())
        surely = max(counts.values()) / poisson_upper(min(counts.values()))
        weighted = any(c.name in CLASS_LOSSES and c.options.get("weighted") for c in loss_calls(ev))
        if surely < self.max_imbalance or weighted or self._token_targets(ev, counts):
            return []
        # CrossEntropyLoss(weight=...) is indexed by class id: one entry per id up to the largest.
        weights = [round(total / (len(counts) * counts[c]), 3) if c in counts else 1.0
                   for c in range(max(counts) + 1)] if min(counts) >= 0 else []
        major = max(counts, key=counts.get)
        minor = min(counts, key=counts.get)
        return [self.finding(
            severity="medium", confidence=0.8, location=None, step=None,
            message=(f"Labels are extremely imbalanced: class {major} has {counts[major]} samples, class {minor} "
                     f"{counts[minor]} ({g(ratio)}:1); the model can score well by ignoring the rare classes."),
            evidence={"class_counts": counts, "imbalance_ratio": ratio},
            causes=["label_problem"],
            recommendations=[
                fix("Weight the loss by inverse class frequency (weights computed from these counts).",
                    f"nn.CrossEntropyLoss(weight=torch.tensor({weights}))"),
                fix("Or oversample the rare classes.",
                    "WeightedRandomSampler(weights=1.0 / counts[y], num_samples=len(y))"),
            ],
        )]


def poisson_upper(n: int) -> float:
    """One-sided 95% upper bound of a Poisson mean whose count came out ``n`` (Wilson-Hilferty's
    cube-root approximation of the exact chi-square bound; within 1% for n >= 1)."""
    k = n + 1
    return k * (1 - 1 / (9 * k) + 1.645 / (3 * k ** 0.5)) ** 3
