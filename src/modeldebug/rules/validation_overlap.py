"""validation_overlap: the evaluation data holds training samples (identical content)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
    seen (data with a handful of distinct inputs repeats by nature). Data whose contents repeat by
    nature (binary shapes, categorical rows: fewer than ``NATURAL_REPEAT`` of the training items
    fingerprinted have a content of their own) shares contents between two clean splits by chance:
    the overlap counted is the share beyond that chance (``_natural_repeats``), and it must reach
    ``high_overlap``.
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
        chance = 0.0  # share of a held-out sample's contents expected among the training ones
        repeats = _natural_repeats(e)
        if repeats is not None:
            coverage, chance = repeats

        def beyond_chance(matches: int, distinct: int) -> float:
            if not distinct:
                return 0.0
            return float(np.clip((matches / distinct - chance) / max(coverage - chance, 1e-9), 0.0, 1.0))

        overlaps = [beyond_chance(s["in_train"], s["distinct"]) for s in e.sources]
        if min(overlaps) < self.clean:
            return []  # some evaluation data is held out
        distinct = sum(s["distinct"] for s in e.sources)
        matches = sum(s["in_train"] for s in e.sources)
        overlap = beyond_chance(matches, distinct)
        # Where the data repeats by nature the chance share is a model's estimate: only a split shared
        # for the most part is told apart from it.
        least = self.high_overlap if chance else self.min_overlap
        if overlap < least or matches < self.min_matches:
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
            evidence={"overlap": overlap, "chance_overlap": chance, "matches": matches, "eval_distinct": distinct,
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


# Training items fingerprinted whose contents are this share distinct or less: the data repeats by nature.
NATURAL_REPEAT = 0.9


def _natural_repeats(e: EvalOverlap) -> tuple[float, float] | None:
    """(share of the training set fingerprinted, share of a fresh sample's contents expected among the
    fingerprinted ones) when the training contents repeat by nature, else None.

    The fingerprinted rows are taken as random draws of the N training items (epochs repeat them), so
    about N(1 - exp(-rows/N)) items were fingerprinted; if their distinct contents D fall well short,
    the items are draws from M contents, with D = M(1 - exp(-items/M)), and a fresh sample's content is
    among the D with chance D/M (a split that shares nothing still matches that often)."""
    size, rows, distinct = e.train_size, e.train_samples, e.train_distinct
    if not size or not rows:
        return None
    items = size * (1 - math.exp(-rows / size))
    if distinct >= NATURAL_REPEAT * items:
        return None
    lo, hi = float(distinct), float(distinct) * 1e6  # M(1 - exp(-items/M)) grows with M
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if mid * (1 - math.exp(-items / mid)) < distinct else (lo, mid)
    return min(1.0, items / size), min(1.0, distinct / hi)


__all__ = ["ValidationOverlap"]
