"""The one post-run path: evidence -> rules (and their post-passes) -> optional LM -> store -> outputs.

`modeldebug run` (:mod:`modeldebug.runner`), `modeldebug report`, ``Debugger.report()`` and the
agent all come through here, so a run is diagnosed, explained, saved and written the same way
whichever door it came in by:

- :func:`evaluate`: the rules' report of one Evidence (findings, rank attribution, the metrics the
  pictures draw from).
- :func:`conclude`: the user's words (issue, context) on the report and, with an LM, its explanation.
- :func:`diagnose`: a stored run, from evidence (or its saved report) to the saved report and files.
- :func:`write_json` / :func:`write_outputs`: the report's files.
- :func:`evaluated_run`: a stored run's evidence and rules' report, evaluated once and reused by
  the agent's tools across calls until the run changes.

Only the standard library is imported here at import time: `modeldebug run` imports this module
after the script ends.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from modeldebug.errors import ErrorType
    from modeldebug.evidence import Evidence
    from modeldebug.store import RunStore
    from modeldebug.types import Finding, Report


@dataclass
class Diagnosis:
    report: Report
    evidence: Evidence | None  # None when the saved report was reused
    notices: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)


def evaluate(evidence: Evidence, rules: Sequence[Any] | None = None, options: Any = None) -> Report:
    """The rules' report of ``evidence``: findings (with their post-passes), the rules that failed and
    the run's summaries. ``options``: a RuleOptions (modeldebug.rules.user) from the project's settings."""
    from modeldebug.analysis import analyze

    return analyze(evidence, rules, options)


def at_level(evidence: Evidence, level: str | None) -> Evidence:
    """``evidence`` diagnosed as if collected at analysis ``level`` (the rules' preset follows it)."""
    if not level or level == evidence.config.analysis_level:
        return evidence
    import dataclasses

    return dataclasses.replace(evidence, config=evidence.config.model_copy(update={"analysis_level": level}))


def expected(store: RunStore, report: Report, suppressions: Sequence[Any] = (), baseline: str | None = None,
             options: Any = None) -> Report:
    """``report`` with the findings the project expects marked suppressed: those its suppressions
    match, and those the ``baseline`` run (an id in ``store``) already had. Marks are made again each
    time, from these settings only (a saved report's earlier marks are dropped)."""
    if not suppressions and not baseline and not any(f.suppressed for f in report.findings):
        return report
    from modeldebug.project_config import apply_suppressions

    base = None
    if baseline:
        base = store.load_report(baseline) or evaluate(store.load_evidence(baseline), options=options)
    return apply_suppressions(report, list(suppressions), base, baseline)


def conclude(
    report: Report,
    *,
    issue: str | None = None,
    context: dict[str, Any] | None = None,
    lm: Any = None,
    adapter: Any = None,
) -> tuple[Report, str | None]:
    """``report`` with the user's issue and context kept in it and, given ``lm``, explained and ranked
    by the LM (never raises for an LM failure: its one-line notice comes back instead)."""
    if issue:
        report.metrics.issue = issue
    if context:
        report.metrics.context = context
    if lm is None:
        return report, None
    from modeldebug.llm import enrich_report

    return enrich_report(report, lm, issue=issue or report.metrics.issue, context=context, adapter=adapter)


def with_stored_llm(store: RunStore, run_id: str, report: Report) -> Report:
    """``report`` with what an LM said about the run before (``--lm``), marked as the LM's."""
    from modeldebug.llm.analysis import apply_latest_analysis

    return apply_latest_analysis(store, run_id, report)


def diagnose(
    store: RunStore,
    run_id: str,
    *,
    evidence: Evidence | None = None,
    rules: Sequence[Any] | None = None,
    options: Any = None,
    level: str | None = None,
    suppressions: Sequence[Any] = (),
    baseline: str | None = None,
    rule_errors: Sequence[Any] = (),
    reuse_saved: bool = False,
    stored_llm: bool = False,
    issue: str | None = None,
    lm: Any = None,
    save: bool = True,
    json_out: str | os.PathLike | None = None,
    html_out: str | os.PathLike | None = None,
) -> Diagnosis:
    """A run's report, saved in ``store`` and written to the files asked for.

    ``reuse_saved``: the saved rules' report when there is one (else the rules run on the evidence).
    ``stored_llm``: the run's latest stored LM analysis is applied. ``issue`` defaults to the one the
    report keeps. The report is saved (``save``) when it is new or an LM explained it; the store
    keeps the rules' report and the LM's analysis apart.

    The project's settings: ``options`` (RuleOptions: rules off, thresholds, severities, extra
    rules) and ``level`` apply when the rules run (``rule_errors``: rules that could not be loaded,
    added to the report's); ``suppressions`` and ``baseline`` (a run id in
    ``store``: its findings are expected) mark findings suppressed, on a saved report too.
    """
    report = store.load_report(run_id) if reuse_saved else None
    changed = report is None or bool(issue) or lm is not None
    if report is None:
        evidence = store.load_evidence(run_id) if evidence is None else evidence
        report = evaluate(at_level(evidence, level), rules, options)
        if rule_errors:  # rules that could not even be loaded (a rule file that fails to import)
            report = report.model_copy(update={"rule_errors": [*rule_errors, *report.rule_errors]})
    report = expected(store, report, suppressions, baseline, options)
    if stored_llm:
        report = with_stored_llm(store, run_id, report)
    report, notice = conclude(report, issue=issue, lm=lm)
    if save and changed:
        from modeldebug.llm.analysis import save_report_with_analysis

        save_report_with_analysis(store, run_id, report)  # the rules' report, and a new LM analysis beside it
    written = write_outputs(report, json_out=json_out, html_out=html_out, issue=issue or report.metrics.issue)
    return Diagnosis(report=report, evidence=evidence, notices=[notice] if notice else [], written=written)


def write_json(report: Report, path: str | os.PathLike) -> None:
    """Write the report as JSON to ``path``; ``-`` is stdout."""
    if str(path) == "-":
        import sys

        sys.stdout.write(report.to_json() + "\n")
        sys.stdout.flush()
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json(), encoding="utf-8")


def write_outputs(
    report: Report,
    *,
    json_out: str | os.PathLike | None = None,
    html_out: str | os.PathLike | None = None,
    issue: str | None = None,
) -> list[str]:
    """Write the JSON and HTML reports asked for; the paths written, in that order.
    A missing report extra raises MissingExtraError (after the JSON is written)."""
    written = []
    if json_out:
        write_json(report, json_out)
        written.append("stdout" if str(json_out) == "-" else str(json_out))
    if html_out:
        from modeldebug.report.html import write_html

        write_html(report, html_out, issue=issue)
        written.append(str(html_out))
    return written


# --- a stored run, evaluated once for the agent's tools -------------------------------------------


@dataclass
class EvaluatedRun:
    run_id: str
    evidence: Evidence
    report: Report  # the rules' report; shared: copy it before changing it


# A few runs, held strongly: each tool call on one run would otherwise load it and run every rule.
_CACHE_SIZE = 2
_cache: OrderedDict[tuple[str, str], tuple[Any, EvaluatedRun]] = OrderedDict()
_cache_lock = threading.Lock()


def evaluated_run(store_path: str | os.PathLike, run_ref: str, error_type: ErrorType = "analysis") -> EvaluatedRun:
    """The run ``run_ref`` names in the store at ``store_path``, its evidence and rules' report, from
    the cache while the run's rows are unchanged. Raises DebuggingError (``error_type``) when the store
    or the run is missing."""
    from modeldebug.errors import DebuggingError
    from modeldebug.store import RunStore

    path = Path(store_path)
    if not path.exists():
        raise DebuggingError(f"No run store at {path}: run training under modeldebug first.", error_type,
                             {"store": str(path)})
    store = RunStore(path, read_only=True)  # a reader: creates and changes nothing
    try:
        try:
            run_id = store.resolve(str(run_ref))
            version = store.run_version(run_id)
        except ValueError as exc:
            raise DebuggingError(str(exc), error_type, {"store": str(path), "run": run_ref}) from exc
        key = (str(path.resolve()), run_id)
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None and hit[0] == version:
                _cache.move_to_end(key)
                return hit[1]
        evidence = store.load_evidence(run_id)
    finally:
        store.close()
    run = EvaluatedRun(run_id, evidence, _with_project(evidence, error_type))
    with _cache_lock:
        _cache[key] = (version, run)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return run


def _with_project(evidence: Evidence, error_type: ErrorType) -> Report:
    """The rules' report under the project's settings (its rule options and suppressions), as
    `modeldebug report --reanalyze` would make it; a bad configuration file is a DebuggingError."""
    from modeldebug.errors import DebuggingError
    from modeldebug.project_config import apply_suppressions, diagnosis_settings, resolve

    try:
        settings = diagnosis_settings(resolve({}))
    except ValueError as exc:  # ConfigError, RuleLoadError
        raise DebuggingError(str(exc), error_type, {}) from exc
    report = evaluate(evidence, options=settings.get("options"))
    if settings.get("suppressions"):
        report = apply_suppressions(report, settings["suppressions"])
    return report


def findings_of(evidence: Evidence) -> list[Finding]:
    """The rules' findings on ``evidence``: those of its cached evaluation when it is a cached run's."""
    with _cache_lock:
        run = next((r for _, r in _cache.values() if r.evidence is evidence), None)
    if run is not None:
        return run.report.findings
    from modeldebug.analysis import find

    return find(evidence)
