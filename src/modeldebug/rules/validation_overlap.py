"""validation_overlap: the evaluation data holds training samples (identical content)."""

from __future__ import annotations

from dataclasses import dataclass

from modeldebug.events import EvalOverlap
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, fix, g
from modeldebug.types import Finding


@register
@dataclass
class ValidationOverlap(Rule):
    """Evaluation samples that are training samples, by content fingerprint.

    Reads: events.eval_overlap (collect/fingerprints.py: per evaluation source that is not itself a
    training source, its fingerprinted samples, distinct ones, and how many of those are training
    samples; how many training samples were fingerprinted, and the training dataset's size).
    Measures: per source, the share of its distinct samples found among the training ones, divided
    by the share of the training set fingerprinted (when the training set's size is known), so a
    large training set fingerprinted in part is not read as a clean split.
    Fires: when no evaluation source is held out (every source's overlap >= ``clean``: evaluating
    on the training set next to a clean validation set is a choice, not a leak), and the sources'
    overlap is at least ``min_overlap`` with ``min_matches`` samples or more; high from
    ``high_overlap``. Quiet when fewer than ``min_distinct_train`` distinct training samples were
    seen (data with a handful of distinct inputs repeats by nature).
    Cause: data_leakage. Thresholds: exact duplicates between a split's two sides are rare in real
    datasets (a few per thousand in CIFAR-10's test set), so 10% overlap is a split gone wrong.
    Recommends splitting once and building the validation loader from the held-out part only.
    """

    id = "validation_overlap"
    kind = "validation_overlap"
    reads = ("events.eval_overlap",)
    clean: float = 0.02
    min_overlap: float = 0.1
    high_overlap: float = 0.5
    min_matches: int = 10
    min_distinct_train: int = 64

    def check(self, ev: Evidence) -> list[Finding]:
        events = ev.events_of(EvalOverlap)
        if not events:
            return []
        e = events[-1]
        if e.train_distinct < self.min_distinct_train or not e.sources:
            return []
        coverage = min(1.0, e.train_distinct / e.train_size) if e.train_size else 1.0
        overlaps = [min(1.0, s["in_train"] / s["distinct"] / coverage) if s["distinct"] else 0.0 for s in e.sources]
        if min(overlaps) < self.clean:
            return []  # some evaluation data is held out
        distinct = sum(s["distinct"] for s in e.sources)
        matches = sum(s["in_train"] for s in e.sources)
        overlap = min(1.0, matches / distinct / coverage) if distinct else 0.0
        if overlap < self.min_overlap or matches < self.min_matches:
            return []
        severity = "high" if overlap >= self.high_overlap else "medium"
        whole = overlap >= 0.99
        what = ("every evaluation sample is a training sample: the evaluation runs on the training data"
                if whole else f"{g(100 * overlap)}% of the evaluation samples are training samples")
        return [self.finding(
            severity=severity, confidence=0.9 if coverage >= 0.99 else 0.75,
            message=(f"Validation overlaps the training data: {what} ({matches} of {distinct} distinct evaluation "
                     f"samples have the content of a training sample). The validation loss measures memorised "
                     f"samples, so it is optimistic, and early stopping, checkpoint choice or lr reduction on "
                     f"it select on training data."),
            evidence={"overlap": overlap, "matches": matches, "eval_distinct": distinct,
                      "train_fingerprinted": e.train_distinct, "train_size": e.train_size,
                      "train_coverage": coverage, "sources": e.sources},
            causes=["data_leakage"],
            recommendations=[
                fix("Split the data once, and build the validation loader from the held-out part only (not from "
                    "the training tensors, and not with a second random_split, which draws a new split).",
                    "train_set, val_set = random_split(dataset, [n_train, n_val],\n"
                    "                                  generator=torch.Generator().manual_seed(0))  # once\n"
                    "train_loader = DataLoader(train_set, batch_size=bs, shuffle=True)\n"
                    "val_loader = DataLoader(val_set, batch_size=bs)"),
            ],
        )]


__all__ = ["ValidationOverlap"]
