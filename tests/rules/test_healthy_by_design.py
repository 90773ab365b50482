"""Patterns that are healthy by design get no false alarm (issue 13): a language model's skewed
token targets, parameters deliberately outside the optimizer, outputs no loss uses, adversarial
training, and the broken neighbours of each that must still fire."""

import numpy as np
import pytest
from builders import build, healthy_columns

from modeldebug.evidence import LayerInfo
from modeldebug.rules.data_issue import DataIssue


def _with_embedding(cols, vocab=5000):
    cols["layers"]["emb"] = LayerInfo("emb", "Embedding", 0, vocab * 64, f"Embedding({vocab}, 64)", family="Embedding")
    for name, info in cols["layers"].items():
        if name != "emb":
            info.order += 1
    return cols


def _zipf_counts(classes=2000, exponent=1.0, total=20000, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, classes + 1) ** exponent
    ids = rng.choice(classes, size=total, p=p / p.sum())
    return {int(k): int(v) for k, v in zip(*np.unique(ids, return_counts=True))}


@pytest.mark.parametrize("exponent", [0.8, 1.0, 1.3])
def test_a_language_models_zipf_targets_are_not_imbalanced_labels(exponent):
    counts = _zipf_counts(exponent=exponent)
    assert max(counts.values()) / min(counts.values()) >= 100
    assert DataIssue().check(build(_with_embedding(healthy_columns()), class_counts=counts)) == []


def test_zipf_counts_without_token_inputs_still_fire():
    """A long-tailed classification set (no Embedding): the class weights are the right advice."""
    found = DataIssue().check(build(healthy_columns(), class_counts=_zipf_counts()))
    assert [(f.kind, f.severity, f.causes[0]) for f in found] == [("data_issue", "medium", "label_problem")]


def test_token_inputs_with_a_few_skewed_classes_still_fire():
    """Token tagging with a class that almost never occurs: few classes, not a power law."""
    counts = {0: 5000, 1: 40, 2: 30, 3: 20}
    found = DataIssue().check(build(_with_embedding(healthy_columns()), class_counts=counts))
    assert [f.severity for f in found] == ["medium"]
