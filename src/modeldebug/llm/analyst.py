"""DebugAnalysisModule (the spec's DSPy module) and :func:`enrich_report`, the only way the LM touches a report.

The contract with the rule engine: the LM explains and ranks, it never removes a rule finding,
and anything it adds is marked as its own (``Finding.source == "llm"``, ``report.metrics.llm``).
Any LM error, timeout or unparseable answer returns the rules' report unchanged except for
``metrics.llm`` with ``status="fallback"`` and a ``notice``, and that one-line notice for the caller.

What the LM said is a value of its own, an :class:`~modeldebug.llm.analysis.LLMAnalysis`
(:func:`analysis_from_prediction`); :mod:`modeldebug.llm.analysis` applies it to a report and
keeps it in the run store.
"""

from __future__ import annotations

import logging
import time
from typing import Any, get_args

from modeldebug.llm.analysis import LLMAnalysis, apply_analysis, rules_only
from modeldebug.llm.helpers import compact_metrics, finding_id, findings_for_prompt, to_json
from modeldebug.llm.settings import LMSettings, as_lm, load_dspy
from modeldebug.metrics import LLMNote, LLMRecommendation, LLMSection, key_of
from modeldebug.types import Finding, FindingKind, Report

log = logging.getLogger(__name__)

LLM_CONFIDENCE = 0.3  # an LM's claim is not a measurement: below every rule's confidence
_KINDS = set(get_args(FindingKind))


def _module_class():
    dspy = load_dspy()
    from modeldebug.llm.signatures import DebugAnalysis

    class DebugAnalysisModule(dspy.Module):
        """The spec's DebugAnalysisModule: metrics + findings + issue -> issues, recommendations."""

        def __init__(self):
            super().__init__()
            self.analyze = dspy.Predict(DebugAnalysis)

        def forward(self, metrics: str, findings: str, issue: str = ""):
            return self.analyze(metrics=metrics, findings=findings, issue=issue)

    return DebugAnalysisModule


def DebugAnalysisModule():  # noqa: N802 - a class made on first use, so dspy loads only when wanted
    return _module_class()()


def default_adapter():
    """ChatAdapter without its silent second call through JSONAdapter: one LM call, one answer."""
    dspy = load_dspy()
    return dspy.ChatAdapter(use_json_adapter_fallback=False)


def describe_lm(lm: Any) -> str:
    if isinstance(lm, LMSettings):
        return lm.describe()
    return str(getattr(lm, "model", None) or type(lm).__name__)


def fallback_notice(lm: Any, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    if len(first) > 160:
        first = first[:157] + "..."
    return (f"LM {describe_lm(lm)} gave no usable answer ({type(exc).__name__}: {first}); "
            "showing the rule engine's report.")


def enrich_report(
    report: Report,
    lm: Any,
    *,
    issue: str | None = None,
    context: dict[str, Any] | None = None,
    adapter: Any = None,
) -> tuple[Report, str | None]:
    """The report explained and ranked by an LM, or the rules' report and a one-line notice.

    ``lm`` is LMSettings, a model name, or a dspy LM object. Never raises for an LM failure.
    """
    started = time.perf_counter()
    rules_report = rules_only(report)  # an earlier LM's ranking and additions are not facts for this one
    try:
        lm_obj = as_lm(lm)
        dspy = load_dspy()
        findings = list(rules_report.findings)
        with dspy.context(lm=lm_obj, adapter=adapter or default_adapter()):
            pred = DebugAnalysisModule()(
                metrics=to_json(compact_metrics(rules_report, context=context)),
                findings=to_json(findings_for_prompt(findings)),
                issue=issue or "",
            )
        analysis = analysis_from_prediction(rules_report, pred, model=describe_lm(lm), issue=issue)
        analysis.seconds = round(time.perf_counter() - started, 3)
        return apply_analysis(rules_report, analysis), None
    except Exception as exc:  # any LM failure: the rules' answer stands
        log.debug("LM analysis failed", exc_info=True)
        notice = fallback_notice(lm, exc)
        rules_report.metrics.llm = LLMSection(status="fallback", model=describe_lm(lm), notice=notice, issue=issue or None,
                                              seconds=round(time.perf_counter() - started, 3))
        return rules_report, notice


def analysis_from_prediction(report: Report, pred: Any, *, model: str, issue: str | None = None) -> LLMAnalysis:
    """What the LM said about ``report`` (the rules' report it was shown).

    Issues that restate a rule finding become its explanation; new ones of a known kind become
    findings marked ``source="llm"`` at a low confidence (unless a rule finding already has that kind
    and location); the rest are notes. Ids the LM made up are ignored.
    """
    findings = list(report.findings)
    ids = {finding_id(i) for i in range(len(findings))}
    ranking: list[str] = []
    for fid in pred.ranking or []:
        fid = str(fid).strip()
        if fid in ids and fid not in ranking:
            ranking.append(fid)
    explanations: dict[str, str] = {}
    notes: list[LLMNote] = []
    added: list[Finding] = []
    for issue_ in pred.issues or []:
        fid = (issue_.finding_id or "").strip()
        if fid in ids:
            explanations[fid] = issue_.description
            continue
        kind = (issue_.kind or "").strip()
        duplicate = any(f.kind == kind and (f.location or None) == (issue_.location or None) for f in findings)
        if kind in _KINDS and not duplicate:
            added.append(Finding(kind=kind, severity=issue_.severity, confidence=LLM_CONFIDENCE,
                                 location=issue_.location, message=issue_.description, source="llm",
                                 evidence={"llm_issue_type": issue_.type}))
        elif not duplicate:
            notes.append(LLMNote.model_validate(issue_.model_dump()))
    return LLMAnalysis(
        status="ok",
        model=model,
        issue=issue or None,
        summary=pred.summary,
        ranking=ranking,
        explanations=explanations,
        recommendations=[LLMRecommendation.model_validate(r.model_dump()) for r in pred.recommendations or []],
        notes=notes,
        findings=added,
        findings_seen={finding_id(i): key_of(f) for i, f in enumerate(findings)},
    )
