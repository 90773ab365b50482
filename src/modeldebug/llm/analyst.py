"""DebugAnalysisModule (the spec's DSPy module) and :func:`enrich_report`, the only way the LM touches a report.

The contract with the rule engine: the LM explains and ranks, it never removes a rule finding,
and anything it adds is marked as its own (``Finding.source == "llm"``, ``report.metrics["llm"]``).
Any LM error, timeout or unparseable answer returns the rules' report unchanged except for
``metrics["llm"] = {"status": "fallback", "notice": ...}``, and a one-line notice for the caller.

What the LM said is also a value of its own, an *analysis* (a JSON-able dict): ``metrics["llm"]``
plus the findings it added and the identity (kind, location, step) of each rule finding it saw
under its id F1, F2, ... The run store keeps analyses next to the rules' report
(:meth:`RunStore.save_report` splits an enriched report with :func:`rules_only` and
:func:`analysis_of`; :meth:`RunStore.load_report` puts the latest back with
:func:`apply_analysis`). None of these three needs dspy.
"""

from __future__ import annotations

import logging
import time
from typing import Any, get_args

from modeldebug.llm.helpers import compact_metrics, finding_id, findings_for_prompt, to_json
from modeldebug.llm.settings import LMSettings, as_lm, load_dspy
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
        analysis["seconds"] = round(time.perf_counter() - started, 3)
        return apply_analysis(rules_report, analysis), None
    except Exception as exc:  # any LM failure: the rules' answer stands
        log.debug("LM analysis failed", exc_info=True)
        notice = fallback_notice(lm, exc)
        rules_report.metrics["llm"] = {"status": "fallback", "model": describe_lm(lm), "notice": notice,
                                       "issue": issue or None, "seconds": round(time.perf_counter() - started, 3)}
        return rules_report, notice


def merge(report: Report, pred: Any, *, model: str) -> Report:
    """Apply a parsed DebugAnalysis answer: reorder (never drop) rule findings, add the LM's own marked."""
    return apply_analysis(report, analysis_from_prediction(report, pred, model=model))


def _key(f: Finding) -> dict[str, Any]:
    return {"kind": f.kind, "location": f.location, "step": f.step}


def analysis_from_prediction(report: Report, pred: Any, *, model: str, issue: str | None = None) -> dict[str, Any]:
    """What the LM said about ``report`` (the rules' report it was shown), as a JSON-able analysis.

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
    notes: list[dict[str, Any]] = []
    added: list[dict[str, Any]] = []
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
                                 evidence={"llm_issue_type": issue_.type}).model_dump(mode="json"))
        elif not duplicate:
            notes.append({**issue_.model_dump(), "source": "llm"})
    return {
        "status": "ok",
        "model": model,
        "issue": issue or None,
        "summary": pred.summary,
        "ranking": ranking,
        "explanations": explanations,
        "recommendations": [{**r.model_dump(), "source": "llm"} for r in pred.recommendations or []],
        "notes": notes,
        "findings": added,
        "findings_seen": {finding_id(i): _key(f) for i, f in enumerate(findings)},
    }


def rules_only(report: Report) -> Report:
    """The rules' report inside a report an LM enriched: the LM's findings and ``metrics["llm"]``
    taken out, the rule findings back in the order the rules gave them. A copy; a rules' report
    comes back unchanged."""
    out = report.model_copy(deep=True)
    llm = out.metrics.pop("llm", None) or {}
    rules = [f for f in out.findings if f.source != "llm"]
    seen = llm.get("findings_seen") or {}
    if seen:
        position: dict[int, int] = {}
        free = dict(seen)
        for i, f in enumerate(rules):
            fid = next((k for k, v in free.items() if v == _key(f)), None)
            if fid is not None:
                del free[fid]
                position[i] = int(fid[1:])
        rules = [f for _, f in sorted(enumerate(rules), key=lambda t: (position.get(t[0], 1 << 30), t[0]))]
    out.findings = rules
    return out


def analysis_of(report: Report) -> dict[str, Any] | None:
    """The LM analysis an enriched report carries (``metrics["llm"]`` and the LM's findings), or None."""
    llm = (report.metrics or {}).get("llm")
    if not llm:
        return None
    out = {k: v for k, v in llm.items() if k not in ("stored", "unmatched")}
    if out.get("status") == "ok":
        out["findings"] = [f.model_dump(mode="json") for f in report.findings if f.source == "llm"]
    return out


def apply_analysis(report: Report, analysis: dict[str, Any]) -> Report:
    """``report`` (the rules') with an LM analysis applied; every rule finding stays, unchanged.

    The rule findings the LM saw are found again by kind, location and step, so an analysis still
    applies after the rules ran again (``modeldebug report --reanalyze``): findings it ranked come
    first in its order, the others follow in the rules' order; its explanations stay keyed by the
    ids it used; ids whose finding is gone are listed under ``unmatched``; its own findings come
    last, marked ``source="llm"``. A fallback analysis only sets ``metrics["llm"]``.
    """
    out = rules_only(report)
    meta = {k: v for k, v in analysis.items() if k != "findings"}
    if analysis.get("status") != "ok":
        out.metrics["llm"] = meta
        return out
    findings = list(out.findings)
    seen = analysis.get("findings_seen")
    if seen is None:  # an analysis without identities: ids are positions in the rules' list
        seen = {finding_id(i): _key(f) for i, f in enumerate(findings)}
    where: dict[str, int] = {}
    taken: set[int] = set()
    for fid, key in seen.items():
        i = next((i for i, f in enumerate(findings) if i not in taken and _key(f) == key), None)
        if i is not None:
            where[fid] = i
            taken.add(i)
    ranked = [where[fid] for fid in analysis.get("ranking") or [] if fid in where]
    ranked = list(dict.fromkeys(ranked))
    order = [findings[i] for i in ranked] + [f for i, f in enumerate(findings) if i not in ranked]
    added = []
    for data in analysis.get("findings") or []:
        f = Finding.model_validate({**data, "source": "llm"})
        if not any(r.kind == f.kind and (r.location or None) == (f.location or None) for r in findings):
            added.append(f)
    out.findings = order + added
    meta["ranking"] = [fid for fid in analysis.get("ranking") or [] if fid in where]
    meta["explanations"] = {fid: text for fid, text in (analysis.get("explanations") or {}).items() if fid in where}
    meta["findings_seen"] = seen
    meta["added_findings"] = len(added)
    unmatched = [fid for fid in seen if fid not in where]
    if unmatched:
        meta["unmatched"] = unmatched
    out.metrics["llm"] = meta
    return out


def explanation_for(report: Report, finding: Finding) -> str | None:
    """The LM's explanation of one rule finding of an enriched report, if it gave one."""
    llm = (report.metrics or {}).get("llm") or {}
    if finding.source == "llm" or not llm.get("explanations"):
        return None
    for fid, key in (llm.get("findings_seen") or {}).items():
        if key == _key(finding) and fid in llm["explanations"]:
            return llm["explanations"][fid]
    return None
