"""What a language model said about a run, as a value of its own: :class:`LLMAnalysis`.

An enriched report carries it in two places: ``report.metrics.llm`` (a
:class:`~modeldebug.metrics.LLMSection`: status, model, summary, ranking, explanations, ...) and
the findings it added (``source="llm"``). The run store keeps the rules' report as the run's
report and each analysis beside it as opaque JSON (table ``llm_analyses``); the functions here
split a report in two and put an analysis back, so the store imports no LLM code:

- :func:`rules_only` / :func:`analysis_of`: the two halves of an enriched report.
- :func:`apply_analysis`: an analysis applied to a rules' report (after ``--reanalyze`` too).
- :func:`save_report_with_analysis` / :func:`apply_latest_analysis` / :func:`load_report_with_analysis`:
  the same through a :class:`~modeldebug.store.RunStore`.

Nothing here needs dspy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from modeldebug.llm.helpers import finding_id
from modeldebug.metrics import FindingKey, LLMSection, StoredRef, key_of
from modeldebug.types import Finding, Report

if TYPE_CHECKING:
    from modeldebug.store import RunStore


class LLMAnalysis(LLMSection):
    """One analysis as the store keeps it: ``metrics.llm`` of the report it was made for (less
    ``stored`` and ``unmatched``, which belong to a report it is applied to) and the findings the
    LM added."""

    findings: list[Finding] = Field(default_factory=list, description="The LM's own findings (source='llm').")

    def section(self) -> LLMSection:
        """What goes into ``metrics.llm`` (the LM's findings go into ``report.findings``)."""
        return LLMSection.model_validate(self.model_dump(exclude={"findings"}))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def rules_only(report: Report) -> Report:
    """The rules' report inside a report an LM enriched: the LM's findings and ``metrics.llm`` taken
    out, the rule findings back in the order the rules gave them. A copy; a rules' report comes back
    unchanged."""
    out = report.model_copy(deep=True)
    llm = out.metrics.llm
    out.metrics.unset("llm")
    rules = [f for f in out.findings if f.source != "llm"]
    seen = llm.findings_seen if llm is not None else {}
    if seen:
        position: dict[int, int] = {}
        free = dict(seen)
        for i, f in enumerate(rules):
            key = key_of(f)
            fid = next((k for k, v in free.items() if v == key), None)
            if fid is not None:
                del free[fid]
                position[i] = int(fid[1:])
        rules = [f for _, f in sorted(enumerate(rules), key=lambda t: (position.get(t[0], 1 << 30), t[0]))]
    out.findings = rules
    return out


def analysis_of(report: Report) -> LLMAnalysis | None:
    """The LM analysis an enriched report carries (``metrics.llm`` and the LM's findings), or None."""
    llm = report.metrics.llm
    if llm is None:
        return None
    data = llm.model_dump(exclude={"stored", "unmatched"})
    if llm.ok:
        data["findings"] = [f for f in report.findings if f.source == "llm"]
    return LLMAnalysis.model_validate(data)


def apply_analysis(report: Report, analysis: LLMAnalysis | dict[str, Any]) -> Report:
    """``report`` (the rules') with an LM analysis applied; every rule finding stays, unchanged.

    The rule findings the LM saw are found again by kind, location and step, so an analysis still
    applies after the rules ran again (``modeldebug report --reanalyze``): findings it ranked come
    first in its order, the others follow in the rules' order; its explanations stay keyed by the
    ids it used; ids whose finding is gone are listed under ``unmatched``; its own findings come
    last, marked ``source="llm"``. A fallback analysis only sets ``metrics.llm``.
    """
    if not isinstance(analysis, LLMAnalysis):
        analysis = LLMAnalysis.model_validate(analysis)  # a stored row's JSON
    out = rules_only(report)
    section = analysis.section()
    if not analysis.ok:
        out.metrics.llm = section
        return out
    findings = list(out.findings)
    if "findings_seen" in analysis.model_fields_set:
        seen = dict(analysis.findings_seen)
    else:  # an analysis without identities: ids are positions in the rules' list
        seen = {finding_id(i): key_of(f) for i, f in enumerate(findings)}
    where: dict[str, int] = {}
    taken: set[int] = set()
    for fid, key in seen.items():
        i = next((i for i, f in enumerate(findings) if i not in taken and key_of(f) == key), None)
        if i is not None:
            where[fid] = i
            taken.add(i)
    ranked = list(dict.fromkeys(where[fid] for fid in analysis.ranking if fid in where))
    order = [findings[i] for i in ranked] + [f for i, f in enumerate(findings) if i not in ranked]
    added = []
    for f in analysis.findings:
        f = f.model_copy(update={"source": "llm"})
        if not any(r.kind == f.kind and (r.location or None) == (f.location or None) for r in findings):
            added.append(f)
    out.findings = order + added
    section.ranking = [fid for fid in analysis.ranking if fid in where]
    section.explanations = {fid: text for fid, text in analysis.explanations.items() if fid in where}
    section.findings_seen = seen
    section.added_findings = len(added)
    unmatched = [fid for fid in seen if fid not in where]
    if unmatched:
        section.unmatched = unmatched
    out.metrics.llm = section
    return out


# --- through the run store ---------------------------------------------------------------------


def save_report_with_analysis(store: RunStore, run_id: str, report: Report) -> None:
    """Save a run's report, enriched or not: the rules' part as the run's report and, when the report
    carries a new LM analysis (not one read back from this store), that analysis beside it."""
    analysis = analysis_of(report)
    if analysis is not None:
        if report.metrics.llm.stored is not None:  # applied from the store: nothing new to keep
            analysis = None
        report = rules_only(report)
    store.save_report(run_id, report, analysis=None if analysis is None else analysis.to_dict())


def apply_latest_analysis(store: RunStore, run_id: str, report: Report) -> Report:
    """``report`` (a rules' report of this run) with the run's latest successful LM analysis applied,
    marked with the row it came from (``metrics.llm.stored``); ``report`` itself when there is none."""
    row = next((r for r in reversed(store.llm_analyses(run_id)) if r["status"] == "ok"), None)
    if row is None:
        return report
    out = apply_analysis(report, row["analysis"])
    out.metrics.llm.stored = StoredRef(id=row["id"], created_at=row["created_at"])
    return out


def load_report_with_analysis(store: RunStore, run_id: str) -> Report | None:
    """The run's saved report with its latest successful LM analysis applied; None when it has none."""
    report = store.load_report(run_id)
    return None if report is None else apply_latest_analysis(store, run_id, report)


__all__ = [
    "FindingKey", "LLMAnalysis", "LLMSection", "analysis_of", "apply_analysis", "apply_latest_analysis",
    "finding_id", "load_report_with_analysis", "rules_only", "save_report_with_analysis",
]
