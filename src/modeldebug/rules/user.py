"""Rules that are not built in: a user's rule file, rules shipped as packages, rule options.

- :func:`load_rule_file`: the Rule classes a Python file defines (``--rules my_rules.py``). A file
  that cannot be imported is bad input: :class:`RuleLoadError` says why, before anything runs.
- :func:`entry_point_rules`: rules installed packages declare in the ``modeldebug.rules``
  entry-point group. One that fails to load becomes a rule error in the report, not a crash.
- :class:`RuleOptions`: what a project's configuration changes about the rules (rules switched
  off, thresholds by rule id, severities, extra rules) and :func:`build_rules` applies it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

from modeldebug.rules.base import Rule
from modeldebug.types import RuleError

ENTRY_POINT_GROUP = "modeldebug.rules"


class RuleLoadError(ValueError):
    """A rule file or option that cannot be used; the message says what to change."""


def load_rule_file(path: str | Path) -> list[type[Rule]]:
    """The Rule subclasses defined in the Python file at ``path`` (those it only imports are left out)."""
    path = Path(path)
    if not path.is_file():
        raise RuleLoadError(f"No rule file at {path}: --rules takes a Python file that defines Rule subclasses.")
    # One module name per file, stable across loads: a file loaded twice (run, then report) is one module.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"modeldebug_user_rules_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuleLoadError(f"Cannot import {path}: a rule file is a Python source file (.py).")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        where = _where(exc, path)
        raise RuleLoadError(f"Could not load the rules in {path}: {type(exc).__name__}{where}: {exc}") from exc
    rules = rules_in(module)
    if not rules:
        raise RuleLoadError(f"{path} defines no rule: expected a subclass of modeldebug.rules.Rule with `id`, "
                            f"`kind` and `check(evidence)` (see docs/rules.md).")
    return rules


def rules_in(module: ModuleType) -> list[type[Rule]]:
    """The concrete Rule classes ``module`` defines, checked as the registry checks its own."""
    from modeldebug.rules import validate_rule

    found = []
    for obj in vars(module).values():
        if inspect.isclass(obj) and issubclass(obj, Rule) and obj is not Rule and obj.__module__ == module.__name__:
            if not obj.id and not obj.kind:
                continue  # a base class of the user's own rules
            try:
                validate_rule(obj)
            except (TypeError, ValueError) as exc:
                raise RuleLoadError(f"{module.__file__}: {exc}") from exc
            found.append(obj)
    return found


def _where(exc: BaseException, path: Path) -> str:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" at line {exc.lineno}"
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" at line {line}" if line else ""


def entry_point_rules() -> tuple[list[type[Rule]], list[RuleError]]:
    """Rules of installed packages (entry-point group ``modeldebug.rules``) and the ones that failed.

    An entry point names a Rule subclass, a module (its Rule classes), or a list of Rule classes.
    """
    from importlib.metadata import entry_points

    rules: list[type[Rule]] = []
    errors: list[RuleError] = []
    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception as exc:  # a broken distribution's metadata must not cost the analysis
        return [], [RuleError(rule=ENTRY_POINT_GROUP, source="entry points", error=type(exc).__name__, message=str(exc))]
    for ep in eps:
        source = f"entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
            if isinstance(obj, ModuleType):
                found = rules_in(obj)
            elif inspect.isclass(obj) and issubclass(obj, Rule):
                from modeldebug.rules import validate_rule

                validate_rule(obj)
                found = [obj]
            elif isinstance(obj, (list, tuple)) and all(inspect.isclass(o) and issubclass(o, Rule) for o in obj):
                from modeldebug.rules import validate_rule

                for o in obj:
                    validate_rule(o)
                found = list(obj)
            else:
                raise TypeError(f"expected a Rule subclass, a module of rules or a list of Rule subclasses, got {obj!r}")
        except Exception as exc:
            errors.append(RuleError(rule=ep.name, source=source, error=type(exc).__name__, message=str(exc)))
            continue
        rules.extend(found)
    return rules, errors


@dataclass
class RuleOptions:
    """What changes about the rules: the project's configuration and the command line, merged.

    ``disable``: rule ids left out. ``thresholds``: rule id -> {field: value}, the rule's dataclass
    fields. ``severity``: rule id or finding kind -> the severity its findings get. ``extra``: rule
    classes (or instances) added to the preset, e.g. from ``--rules`` files.
    """

    disable: list[str] = field(default_factory=list)
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    severity: dict[str, str] = field(default_factory=dict)
    extra: list[Any] = field(default_factory=list)
    entry_points: bool = True

    def is_default(self) -> bool:
        return not (self.disable or self.thresholds or self.severity or self.extra)


def threshold_problem(cls: type[Rule], values: dict[str, Any]) -> str | None:
    """Why ``values`` are not thresholds of ``cls`` (None when every key is one of its fields)."""
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    unknown = [k for k in values if k not in names]
    if unknown:
        valid = ", ".join(names) if names else "none (it takes no thresholds)"
        return f"rule {cls.id!r} has no threshold {', '.join(map(repr, unknown))}; its thresholds: {valid}"
    return None


def build_rules(
    level: str,
    evidence: Any,
    options: RuleOptions | None,
    explicit: Sequence[Any] | None = None,
) -> tuple[list[Rule], list[RuleError]]:
    """The rules to run on ``evidence``: ``explicit`` when given, else the level's preset plus installed
    and extra rules, less the disabled ones, with thresholds applied; and the rules that could not be
    made (a threshold a rule refuses, an entry point that fails to load)."""
    from modeldebug.rules import has_reads, preset

    errors: list[RuleError] = []
    if explicit is not None:
        candidates: list[Any] = list(explicit)
    else:
        candidates = list(preset(level, evidence))
        options = options or RuleOptions()
        if options.entry_points:
            installed, failed = _installed_rules()
            errors = list(failed)  # a copy: the cached list serves every analysis of this process
            candidates += [cls for cls in installed if has_reads(cls, evidence)]
        candidates += list(options.extra)
    options = options or RuleOptions()
    built: dict[str, Rule] = {}
    for item in candidates:
        cls = item if isinstance(item, type) else type(item)
        rule_id = getattr(cls, "id", "") or cls.__name__
        if rule_id in options.disable:
            continue
        wanted = options.thresholds.get(rule_id)
        try:
            if wanted:
                problem = threshold_problem(cls, wanted)
                if problem:
                    raise RuleLoadError(problem)
                base = item if not isinstance(item, type) else cls()
                rule = dataclasses.replace(base, **wanted)
            else:
                rule = item() if isinstance(item, type) else item
        except Exception as exc:
            errors.append(RuleError(rule=rule_id, kind=getattr(cls, "kind", None) or None, source=_source(cls),
                                    error=type(exc).__name__, message=str(exc)))
            continue
        built[rule_id] = rule  # a later rule with the same id replaces an earlier one, as register does
    return list(built.values()), errors


_installed: tuple[list[type[Rule]], list[RuleError]] | None = None


def _installed_rules() -> tuple[list[type[Rule]], list[RuleError]]:
    """Entry-point rules, looked up once per process (the scan reads every installed distribution)."""
    global _installed
    if _installed is None:
        _installed = entry_point_rules()
    return _installed


def forget_installed_rules() -> None:
    """Look the entry points up again at the next analysis (after installing a package)."""
    global _installed
    _installed = None


def _source(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if cls.__module__.startswith("modeldebug.rules."):
        return "built-in"
    return str(path) if path else cls.__module__


def source_of(rule: Any) -> str:
    return _source(rule if isinstance(rule, type) else type(rule))
