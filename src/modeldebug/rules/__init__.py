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

``reads`` names the evidence a rule reads: an Evidence field (``layers``), a table's column
(``steps.loss``; the key columns step/layer/param/rank come with any column of their table) or an
event type (``events.ranks``). ``register`` rejects a name Evidence does not have; the rules' tests
check that a rule reads nothing it does not declare; and a preset built for an Evidence leaves out
the rules with nothing to read in it (a single-process run skips the distributed rules).
"""

from __future__ import annotations

import logging
import re
from dataclasses import fields
from typing import Iterable

from modeldebug.config import DebuggingConfig
from modeldebug.events import Event
from modeldebug.evidence import (
    LAYER_COLUMNS,
    PARAM_COLUMNS,
    RANK_COLUMNS,
    STEP_COLUMNS,
    VALIDATION_COLUMNS,
    Evidence,
)
from modeldebug.rules.base import Rule
from modeldebug.types import SEVERITY_ORDER, Finding, RuleError, RunInfo, is_kind

log = logging.getLogger(__name__)

LEVELS = ("basic", "detailed", "comprehensive")

_REGISTRY: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Add a rule class to the registry (usable as a decorator); a later class replaces an id."""
    validate_rule(cls)
    _REGISTRY[cls.id] = cls
    return cls


def validate_rule(cls: type[Rule]) -> None:
    """Raise TypeError/ValueError, saying what to change, when ``cls`` is not a usable rule class."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise TypeError(f"Expected a subclass of modeldebug.rules.Rule but got {cls!r}")
    if not cls.id or not cls.kind:
        raise ValueError(f"Expected {cls.__name__} to set `id` and `kind` but got id={cls.id!r}, kind={cls.kind!r}")
    if cls.level not in LEVELS:
        raise ValueError(f"Expected {cls.__name__}.level in {LEVELS} but got {cls.level!r}")
    unknown = [r for r in cls.reads if not _known(r)]
    if unknown:
        raise ValueError(f"Expected {cls.__name__}.reads to name Evidence fields, table columns (steps.loss) or "
                         f"event types (events.ranks) but got {unknown}")
    if not is_kind(cls.kind):
        raise ValueError(f"Expected {cls.__name__}.kind to be a built-in finding kind or a custom one named "
                         f"'custom.<name>' (e.g. 'custom.{_snake(cls.kind)}') but got {cls.kind!r}")


def _snake(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", str(text).lower()).strip("_") or "my_check"


TABLE_COLUMNS = {"steps": STEP_COLUMNS, "validation": VALIDATION_COLUMNS, "layer_stats": LAYER_COLUMNS,
                 "param_stats": PARAM_COLUMNS, "ranks": RANK_COLUMNS}
KEY_COLUMNS = frozenset({"step", "layer", "param", "rank"})
_FIELDS = frozenset(f.name for f in fields(Evidence))
_MODELS = {"run": RunInfo, "config": DebuggingConfig}  # always present


def _event_tags() -> set[str]:
    found, todo = set(), [Event]
    while todo:
        cls = todo.pop()
        found.add(cls.tag)
        todo.extend(cls.__subclasses__())
    return found - {""}


def _known(read: str) -> bool:
    name, _, part = read.partition(".")
    if name not in _FIELDS:
        return False
    if not part:
        return True
    if name == "events":
        return part in _event_tags()
    if name in _MODELS:  # config.alert_thresholds.gradient_norm
        return part.split(".")[0] in _MODELS[name].model_fields
    return part in TABLE_COLUMNS.get(name, ())


def has_reads(rule: Rule | type[Rule], ev: Evidence) -> bool:
    """Whether any evidence the rule reads is present in ``ev`` (a rule that declares no reads: always)."""
    if not rule.reads:
        return True
    for read in rule.reads:
        name, _, part = read.partition(".")
        if name in _MODELS:
            return True
        value = getattr(ev, name)
        if name == "events" and part:
            if any(e.get("type") == part for e in value):
                return True
        elif name in TABLE_COLUMNS:
            if len(value) and (not part or part in value):
                return True
        elif value:
            return True
    return False


def unregister(rule_id: str) -> None:
    _REGISTRY.pop(rule_id, None)


def registry() -> dict[str, type[Rule]]:
    """A copy of the registry: rule id -> class."""
    return dict(_REGISTRY)


def preset(level: str = "detailed", evidence: Evidence | None = None) -> list[Rule]:
    """Default-configured rules for an analysis level (each level includes the cheaper ones); given
    ``evidence``, only those with something to read in it (the others would find nothing)."""
    if level not in LEVELS:
        raise ValueError(f"Expected `level` in {LEVELS} but got {level!r}")
    upto = LEVELS.index(level)
    return [cls() for cls in _REGISTRY.values()
            if LEVELS.index(cls.level) <= upto and (evidence is None or has_reads(cls, evidence))]


def run_rules(evidence: Evidence, rules: Iterable[Rule | type[Rule]] | None = None) -> list[Finding]:
    """Run rules (default: the preset of the evidence's analysis level, with installed rules) and
    collect their findings, most severe first, then by step. A rule that raises is logged and
    skipped; :func:`apply_rules` also returns it as a rule error for the report."""
    return apply_rules(evidence, rules)[0]


def apply_rules(
    evidence: Evidence,
    rules: Iterable[Rule | type[Rule]] | None = None,
    options: "RuleOptions | None" = None,
) -> tuple[list[Finding], list[RuleError]]:
    """The findings of ``rules`` (default: the preset, installed rules and ``options.extra``, less
    ``options.disable``, with ``options.thresholds``) and the rules that failed, each a RuleError.

    One broken rule never costs the whole analysis, and is never skipped silently.
    """
    from modeldebug.rules.user import build_rules, source_of

    level = evidence.config.analysis_level
    built, errors = build_rules(level, evidence, options, None if rules is None else list(rules))
    severity = dict(options.severity) if options is not None else {}
    findings: list[Finding] = []
    for rule in built:
        try:
            found = list(rule.check(evidence))
            for f in found:
                if not isinstance(f, Finding):
                    raise TypeError(f"check() must return Finding objects (made with self.finding(...)), got {f!r}")
        except Exception as exc:  # a rule's bug must not kill the analysis
            errors.append(RuleError(rule=getattr(rule, "id", "") or type(rule).__name__, kind=getattr(rule, "kind", None) or None,
                                    source=source_of(rule), error=type(exc).__name__, message=str(exc)))
            continue
        wanted = severity.get(rule.id) or None
        for f in found:
            new = wanted or severity.get(f.kind)
            findings.append(f.model_copy(update={"severity": new}) if new and new != f.severity else f)
    for e in errors:
        log.error("rule %s failed (%s: %s); its findings are missing from this report", e.rule, e.error, e.message)
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.step if f.step is not None else -1))
    return findings, errors


def _load_builtin() -> None:
    # Importing each module registers its rule.
    from modeldebug.rules import (  # noqa: F401
        amp_scaler_step,
        clip_before_backward,
        dead_relu,
        data_issue,
        distributed_desync,
        exploding_gradient,
        gradient_accumulation,
        input_bottleneck,
        labels_unrelated,
        loss_not_decreasing,
        loss_scale,
        loss_shape_broadcast,
        loss_spike,
        lr_schedule_misuse,
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
        train_eval_mode,
        unchanged_weights,
        uneven_batches,
        untracked_parameters,
        validation_overlap,
        vanishing_gradient,
        weight_decay_too_high,
        wrong_loss_input,
    )


_load_builtin()

from modeldebug.rules.user import RuleLoadError, RuleOptions, load_rule_file  # noqa: E402  (needs the registry above)

__all__ = ["LEVELS", "Rule", "RuleLoadError", "RuleOptions", "apply_rules", "has_reads", "load_rule_file", "preset",
           "register", "registry", "run_rules", "unregister", "validate_rule"]
