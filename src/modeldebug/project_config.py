"""A project's settings: ``[tool.modeldebug]`` in pyproject.toml, or a ``modeldebug.toml``.

Only the standard library is imported until a file is found (`modeldebug run` reads this before
the script starts); the file's schema is :mod:`modeldebug.project_schema`.

The file is looked for in the working directory and then its parents (the first directory with
either file wins; in one directory, modeldebug.toml before pyproject.toml). Keys are written as in
pyproject.toml (``fail-on``); ``fail_on`` is read the same. Command-line options win over the file,
the file over the defaults; :func:`resolve` keeps where each value came from, which
``modeldebug config`` prints. An unknown key, or a value of the wrong type, is an error that names
the key, the file and what is valid.

    [tool.modeldebug]
    level = "detailed"                 # basic | detailed | comprehensive
    sampling-budget = 0.01             # fraction of training time the per-layer statistics may take
    live-budget = 0.01                 # fraction of wall time the findings-while-it-runs passes may take
    fail-on = "high"                   # exit 1 when a finding reaches this severity
    store = ".modeldebug/runs.db"
    rules = ["tools/our_rules.py"]     # extra rule files, relative to this file
    disable = ["dead_relu"]            # rule ids switched off
    severity = { overfitting = "low" } # by rule id or finding kind

    [tool.modeldebug.thresholds.exploding_gradient]
    norm_ratio = 1e4                   # the rule's own threshold fields

    [[tool.modeldebug.suppress]]
    kind = "unchanged_weights"
    location = "encoder.*"             # a glob; leave it out to match every location
    reason = "the encoder is frozen on purpose"
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from modeldebug.project_schema import ProjectConfig, Suppression

from modeldebug.store import DEFAULT_PATH

CONFIG_FILES = ("modeldebug.toml", "pyproject.toml")


class ConfigError(ValueError):
    """The project's configuration cannot be used; the message names the file, the key and what is valid."""




@dataclass
class Setting:
    value: Any
    source: str  # "default", "command line", or the configuration file's path


@dataclass
class Settings:
    """The settings in force: each with where it came from."""

    values: dict[str, Setting] = field(default_factory=dict)
    file: Path | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key].value

    def source(self, key: str) -> str:
        return self.values[key].source

    def rule_options(self, extra_rule_files: list[str] = ()):
        """The RuleOptions these settings ask for (rule files loaded; bad ones raise RuleLoadError)."""
        from modeldebug.rules.user import RuleOptions, load_rule_file

        extra = []
        for path in [*self["rules"], *extra_rule_files]:
            extra.extend(load_rule_file(path))
        options = RuleOptions(disable=list(self["disable"]), thresholds=dict(self["thresholds"]),
                              severity=dict(self["severity"]), extra=extra)
        check_rule_options(options, self)
        return options

    def suppressions(self) -> list[Suppression]:
        return list(self["suppress"])


DEFAULTS: dict[str, Any] = {
    "level": "detailed",
    "sampling-budget": None,
    "live-budget": None,
    "every": None,
    "fail-on": None,
    "store": DEFAULT_PATH,
    "rules": [],
    "disable": [],
    "severity": {},
    "thresholds": {},
    "suppress": [],
}


def find_file(start: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The configuration file that applies in ``start`` (default: the working directory) and its table."""
    here = Path(start or os.getcwd()).resolve()
    for directory in (here, *here.parents):
        for name in CONFIG_FILES:
            path = directory / name
            if not path.is_file():
                continue
            table = _read(path)
            if name == "pyproject.toml":
                table = table.get("tool", {}).get("modeldebug")
                if table is None:
                    continue  # a pyproject without our table: keep looking up
            return path, table
    return None


def _read(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc}") from exc


def parse(table: Mapping[str, Any], path: Path | str = "<config>") -> ProjectConfig:
    """The table as a ProjectConfig; an unknown key or a bad value raises ConfigError naming it."""
    from pydantic import ValidationError

    from modeldebug.project_schema import KEYS, ProjectConfig

    where = f"[tool.modeldebug] of {path}" if Path(str(path)).name == "pyproject.toml" else str(path)
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table of settings but got {type(table).__name__}")
    normalised = {}
    for key, value in table.items():
        name = str(key).replace("-", "_")
        if name not in ProjectConfig.model_fields:
            raise ConfigError(f"Unknown key {key!r} in {where}; valid keys: {', '.join(KEYS)}")
        normalised[name] = value
    if isinstance(normalised.get("thresholds"), Mapping):
        normalised["thresholds"] = {rule: ({str(k).replace("-", "_"): v for k, v in values.items()}
                                           if isinstance(values, Mapping) else values)
                                    for rule, values in normalised["thresholds"].items()}
    try:
        return ProjectConfig.model_validate(normalised)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p).replace("_", "-") if i == 0 else str(p) for i, p in enumerate(err["loc"]))
            problems.append(f"{loc}: {err['msg']}")
        raise ConfigError(f"Bad value in {where}: " + "; ".join(problems)) from None


def resolve(command_line: Mapping[str, Any] | None = None, start: str | os.PathLike | None = None,
            use_file: bool = True) -> Settings:
    """Defaults < the configuration file < ``command_line`` (keys as in the file; None means not given)."""
    settings = Settings(values={k: Setting(v, "default") for k, v in DEFAULTS.items()})
    found = find_file(start) if use_file else None
    if found is not None:
        path, table = found
        settings.file = path
        config = parse(table, path)
        for name in config.model_fields_set:
            key = name.replace("_", "-")
            value = getattr(config, name)
            if key in ("store",) and value is not None:
                value = str((path.parent / value).resolve()) if not Path(value).is_absolute() else value
            if key == "rules":
                value = [str((path.parent / v).resolve()) if not Path(v).is_absolute() else v for v in value]
            settings.values[key] = Setting(value, str(path))
    for key, value in (command_line or {}).items():
        if key not in settings.values:
            raise KeyError(f"{key!r} is not a setting; settings: {', '.join(DEFAULTS)}")
        if value is None or value == [] or value == {}:
            continue
        settings.values[key] = Setting(value, "command line")
    return settings


def check_rule_options(options, settings: Settings | None = None) -> None:
    """Refuse rule ids and kinds the options name that no rule has (a typo would switch nothing off)."""
    from modeldebug.rules import registry
    from modeldebug.rules.user import threshold_problem
    from modeldebug.types import is_kind

    known = {**registry(), **{cls.id: cls for cls in options.extra}}
    try:
        from modeldebug.rules.user import _installed_rules

        known.update({cls.id: cls for cls in _installed_rules()[0]})
    except Exception:  # entry points that fail are reported as rule errors with the findings
        pass
    src = lambda key: f" ({settings.source(key)})" if settings is not None else ""  # noqa: E731
    for rule_id in options.disable:
        if rule_id not in known:
            raise ConfigError(f"disable: no rule {rule_id!r}{src('disable')}; rule ids: {', '.join(sorted(known))}")
    for key in options.severity:
        if key not in known and not is_kind(key):
            raise ConfigError(f"severity: {key!r} is neither a rule id nor a finding kind{src('severity')}; "
                              f"rule ids: {', '.join(sorted(known))}")
    for rule_id, values in options.thresholds.items():
        if rule_id not in known:
            raise ConfigError(f"thresholds: no rule {rule_id!r}{src('thresholds')}; rule ids: {', '.join(sorted(known))}")
        problem = threshold_problem(known[rule_id], values)
        if problem:
            raise ConfigError(f"thresholds: {problem}{src('thresholds')}")


def apply_suppressions(report, suppressions: list[Suppression], baseline=None, baseline_id: str | None = None):
    """``report`` with the findings the project expects marked suppressed (with the reason): those a
    suppression matches, and, given a ``baseline`` report, those it already had (same kind and location)."""
    known = {(f.kind, f.location) for f in baseline.findings} if baseline is not None else set()
    changed = []
    for f in report.findings:
        if f.suppressed:  # marked by an earlier diagnosis: only today's settings count
            f = f.model_copy(update={"suppressed": False, "suppression_reason": None})
        reason = None
        if f.source == "rules":
            rule = next((s for s in suppressions if s.matches(f.kind, f.location)), None)
            if rule is not None:
                reason = rule.reason
            elif (f.kind, f.location) in known:
                reason = f"already in the baseline run {baseline_id or baseline.run.id}"
        changed.append(f.model_copy(update={"suppressed": True, "suppression_reason": reason}) if reason else f)
    return report.model_copy(update={"findings": changed})


def diagnosis_settings(settings: Settings, baseline: str | None = None, store: Any = None) -> dict[str, Any]:
    """:func:`modeldebug.pipeline.diagnose`'s keyword arguments for ``settings``: RuleOptions when the
    settings change the rules (rule files loaded and every rule id checked now, so that a typo is
    refused before a run, not after it), the suppressions, and ``baseline`` resolved in ``store``.
    Raises ConfigError, or RuleLoadError for a rule file that cannot be loaded."""
    out: dict[str, Any] = {}
    if settings["rules"] or settings["disable"] or settings["thresholds"] or settings["severity"]:
        out["options"] = settings.rule_options()
    if settings["suppress"]:
        out["suppressions"] = settings.suppressions()
    if baseline:
        try:
            out["baseline"] = store.resolve(baseline)
        except ValueError as exc:
            raise ConfigError(f"--baseline: {exc}") from None
    return out
