"""The rule engine: Evidence -> [Finding], deterministic, fast and offline.

One rule per file. This module holds the registry (rule id -> class), the presets by
``analysis_level`` and ``run_rules``. Add your own rule::

    from modeldebug.rules import Rule, register

    @register
    @dataclass
    class TinyBatch(Rule):
        id = "tiny_batch"; kind = "data_issue"; reads = ("steps.input_std",)
        def check(self, ev): ...

A registered rule joins the preset of its ``level`` (and the levels above it).
"""

from __future__ import annotations

import logging
from typing import Iterable

from modeldebug.evidence import Evidence
from modeldebug.rules.base import Rule
from modeldebug.types import SEVERITY_ORDER, Finding

log = logging.getLogger(__name__)

LEVELS = ("basic", "detailed", "comprehensive")

_REGISTRY: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Add a rule class to the registry (usable as a decorator); a later class replaces an id."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise TypeError(f"Expected a subclass of modeldebug.rules.Rule but got {cls!r}")
    if not cls.id or not cls.kind:
        raise ValueError(f"Expected {cls.__name__} to set `id` and `kind` but got id={cls.id!r}, kind={cls.kind!r}")
    if cls.level not in LEVELS:
        raise ValueError(f"Expected {cls.__name__}.level in {LEVELS} but got {cls.level!r}")
    _REGISTRY[cls.id] = cls
    return cls


def unregister(rule_id: str) -> None:
    _REGISTRY.pop(rule_id, None)


def registry() -> dict[str, type[Rule]]:
    """A copy of the registry: rule id -> class."""
    return dict(_REGISTRY)


def preset(level: str = "detailed") -> list[Rule]:
    """Default-configured rules for an analysis level (each level includes the cheaper ones)."""
    if level not in LEVELS:
        raise ValueError(f"Expected `level` in {LEVELS} but got {level!r}")
    upto = LEVELS.index(level)
    return [cls() for cls in _REGISTRY.values() if LEVELS.index(cls.level) <= upto]


def run_rules(evidence: Evidence, rules: Iterable[Rule | type[Rule]] | None = None) -> list[Finding]:
    """Run rules (default: the preset of the evidence's analysis level) and collect their findings.

    A rule that raises is logged and skipped: one broken rule never costs the whole analysis.
    Findings come back most severe first, then by step.
    """
    if rules is None:
        rules = preset(evidence.config.analysis_level)
    findings: list[Finding] = []
    for rule in rules:
        if isinstance(rule, type):
            rule = rule()
        try:
            findings.extend(rule.check(evidence))
        except Exception:  # a rule's bug must not kill the analysis
            log.exception("rule %s failed; its findings are missing from this report", getattr(rule, "id", rule))
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.step if f.step is not None else -1))
    return findings


def _load_builtin() -> None:
    # Importing each module registers its rule.
    from modeldebug.rules import (  # noqa: F401
        dead_relu,
        data_issue,
        distributed_desync,
        exploding_gradient,
        gradient_accumulation,
        input_bottleneck,
        loss_not_decreasing,
        memory_growth,
        memory_pressure,
        nan_or_inf,
        oscillating_loss,
        overfitting,
        poor_weight_init,
        rank_failure,
        runtime_error,
        saturated_activation,
        slow_operation,
        straggler_rank,
        unchanged_weights,
        uneven_batches,
        vanishing_gradient,
    )


_load_builtin()

__all__ = ["LEVELS", "Rule", "preset", "register", "registry", "run_rules", "unregister"]
