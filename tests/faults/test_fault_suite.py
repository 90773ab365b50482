"""The fault suite's own contract: every script declares its planted fault, every kind is covered.

test_detection.py runs each through ``modeldebug run`` and compares the findings with the
planted line.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path
from typing import get_args

import pytest

from modeldebug.types import Cause, FindingKind

HERE = Path(__file__).parent
SCRIPTS = sorted(p for p in HERE.glob("*__*.py"))
PLANTED = re.compile(r"^planted: kind=(\w+) cause=(\w+)$", re.M)
KINDS = ["exploding_gradient", "vanishing_gradient", "nan_or_inf", "dead_relu", "saturated_activation",
         "poor_weight_init", "unchanged_weights", "loss_not_decreasing", "oscillating_loss", "gradient_accumulation",
         "overfitting", "data_issue", "memory_growth", "input_bottleneck", "slow_operation", "memory_pressure"]


def planted(path: Path) -> tuple[str, str]:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    m = PLANTED.search(doc)
    assert m, f"{path.name}: the docstring needs a line 'planted: kind=... cause=...'"
    return m.group(1), m.group(2)


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_declares_its_fault(path):
    kind, cause = planted(path)
    prefix = path.stem.split("__")[0]
    if prefix == "healthy":
        assert (kind, cause) == ("none", "none")
    else:
        assert kind == prefix and kind in get_args(FindingKind) and cause in get_args(Cause)
    assert "modeldebug" not in path.read_text(), "fault scripts are plain PyTorch"
    assert "manual_seed" in path.read_text()


def test_every_kind_has_two_broken_scripts_and_there_are_eight_healthy_ones():
    counts = Counter(path.stem.split("__")[0] for path in SCRIPTS)
    assert {k: counts[k] for k in KINDS if counts[k] < 2} == {}
    assert counts["healthy"] >= 8
