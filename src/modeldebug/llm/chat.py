"""``modeldebug ask RUN "question"``: a dspy.ReAct agent whose tools read a stored run.

The tools (:class:`RunTools`) return dicts of recorded numbers: the run's overview, the rule
engine's findings, a series (loss, grad_norm, lr, timings, memory, validation loss) over a step
range, the layers, one layer's statistics. Without an LM, or when the LM fails, :func:`ask`
answers from the rule engine: the findings that match the question's words.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.llm.helpers import finding_id, findings_for_prompt, match_issue, to_json
from modeldebug.types import Report

log = logging.getLogger(__name__)

STEP_SERIES = ("loss", "grad_norm", "lr", "data_s", "forward_s", "backward_s", "optimizer_s", "step_s",
               "rss_bytes", "cuda_allocated", "cuda_reserved", "input_mean", "input_std")
LAYER_FIELDS = ("mean", "std", "min", "max", "zero_frac", "dead_frac", "sat_frac", "grad_norm", "grad_mean",
                "grad_zero_frac", "fwd_time_s")
PARAM_FIELDS = ("norm", "grad_norm", "update_ratio")


def _f(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return float(f"{x:.5g}") if math.isfinite(x) else None


def _points(steps: np.ndarray, values: np.ndarray, max_points: int) -> list[list[Any]]:
    n = len(steps)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int)) if n else np.arange(0)
    return [[int(steps[i]), _f(values[i])] for i in idx]


def _summary(values: np.ndarray) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    ok = v[np.isfinite(v)]
    if not len(ok):
        return {"count": int(len(v)), "finite": 0}
    return {"count": int(len(v)), "finite": int(len(ok)), "first": _f(ok[0]), "last": _f(ok[-1]),
            "min": _f(ok.min()), "max": _f(ok.max()), "median": _f(np.median(ok))}


class RunTools:
    """Read-only views of one run for an agent; every method returns a JSON-able dict."""

    def __init__(self, evidence: Evidence, report: Report):
        self.ev = evidence
        self.report = report

    def run_overview(self) -> dict[str, Any]:
        """The run (status, steps, models), its findings in short, and the series and layers that exist."""
        run = self.report.run
        return {
            "run": {"id": run.id, "status": run.status, "steps": run.steps, "duration_s": _f(run.duration_s),
                    "command": " ".join(run.command), "models": [m.model_dump() for m in run.models]},
            "findings": [{"id": finding_id(i), "kind": f.kind, "severity": f.severity, "location": f.location,
                          "step": f.step} for i, f in enumerate(self.report.findings)],
            "series": [s for s in STEP_SERIES if s in self.ev.steps and np.isfinite(
                np.asarray(self.ev.steps[s], dtype=float)).any()] + (["val_loss"] if len(self.ev.validation) else []),
            "layers": len(self.ev.layers),
            "optimizers": [{"type": o.type, "param_groups": [{k: v for k, v in g.items() if k != "params"}
                                                              for g in o.param_groups]} for o in self.ev.optimizers],
        }

    def list_findings(self) -> dict[str, Any]:
        """Every finding of the rule engine with its message, evidence, causes and recommendations."""
        return {"findings": findings_for_prompt(self.report.findings, limit=100)}

    def get_series(self, name: str, start_step: int = 0, end_step: int = -1, max_points: int = 40) -> dict[str, Any]:
        """A per-step series (loss, grad_norm, lr, step_s, data_s, rss_bytes, val_loss, ...) between two steps (end -1: last)."""
        table = self.ev.validation if name in ("val_loss", "validation_loss") else self.ev.steps
        col = "loss" if table is self.ev.validation else name
        if col not in table:
            return {"error": f"no series {name!r}", "available": self.run_overview()["series"]}
        steps = np.asarray(table.step)
        values = np.asarray(table[col], dtype=float)
        keep = steps >= int(start_step)
        if int(end_step) >= 0:
            keep &= steps <= int(end_step)
        steps, values = steps[keep], values[keep]
        return {"name": name, "summary": _summary(values),
                "points": _points(steps, values, max(2, min(int(max_points), 200))),
                "first_nonfinite_step": int(steps[~np.isfinite(values)][0]) if (~np.isfinite(values)).any() else None}

    def list_layers(self) -> dict[str, Any]:
        """The model's layers in forward order: name, type, parameter count, description."""
        layers = self.ev.layers_in_order() or list(self.ev.layers.values())
        return {"layers": [{"name": l.name, "type": l.type, "parameters": l.parameters, "description": l.description}
                           for l in layers[:200]], "total": len(self.ev.layers)}

    def layer_stats(self, name: str) -> dict[str, Any]:
        """One layer's recorded statistics over the sampled steps (outputs, gradients) and its parameters'."""
        info = self.ev.layers.get(name)
        if info is None:
            close = [n for n in self.ev.layers if name in n][:10]
            return {"error": f"no layer {name!r}", "similar": close}
        t = self.ev.layer(name)
        out: dict[str, Any] = {"name": name, "type": info.type, "description": info.description,
                               "samples": int(len(t))}
        for col in LAYER_FIELDS:
            if col in t:
                out[col] = _summary(t[col])
        params = {}
        for pname, p in self.ev.params.items():
            if p.module == name or pname.startswith(name + "."):
                pt = self.ev.param(pname)
                params[pname] = {"shape": p.shape, "requires_grad": p.requires_grad, "in_optimizer": p.in_optimizer,
                                 **{c: _summary(pt[c]) for c in PARAM_FIELDS if c in pt}}
        out["parameters"] = params
        return out

    def tools(self) -> list[Callable[..., Any]]:
        """Plain functions (named, typed, documented) for dspy.ReAct."""
        def run_overview() -> dict:
            """The run (status, steps, models), its findings in short, and the series and layers that exist."""
            return self.run_overview()

        def list_findings() -> dict:
            """Every finding of the rule engine with its message, evidence, causes and recommendations."""
            return self.list_findings()

        def get_series(name: str, start_step: int = 0, end_step: int = -1) -> dict:
            """A per-step series (loss, grad_norm, lr, step_s, data_s, rss_bytes, val_loss) from start_step to end_step (-1: last)."""
            return self.get_series(name, start_step, end_step)

        def list_layers() -> dict:
            """The model's layers in forward order with their types and parameter counts."""
            return self.list_layers()

        def layer_stats(name: str) -> dict:
            """One layer's recorded output and gradient statistics and its parameters' norms and update ratios."""
            return self.layer_stats(name)

        return [run_overview, list_findings, get_series, list_layers, layer_stats]


@dataclass
class AskResult:
    answer: str
    source: str  # "llm" or "rules"
    notice: str | None = None
    matched: list[str] = field(default_factory=list)  # finding ids that match the question's words
    trajectory: dict[str, Any] = field(default_factory=dict)


def rules_answer(report: Report, question: str) -> tuple[str, list[str]]:
    """An answer without an LM: the findings that bear on the question, most relevant first."""
    idx = match_issue(question, report.findings)
    if not report.findings:
        return "The rule engine found nothing wrong in this run.", []
    chosen = idx or list(range(min(3, len(report.findings))))
    head = ("Findings that bear on your question:" if idx else
            "No finding matches your question's words; the run's main findings:")
    lines = [head]
    for i in chosen[:5]:
        f = report.findings[i]
        line = f"- {finding_id(i)} {f.severity} {f.kind}" + (f" at {f.location}" if f.location else "") + f": {f.message}"
        if f.recommendations:
            line += f" Fix: {f.recommendations[0].description}"
        lines.append(line)
    return "\n".join(lines), [finding_id(i) for i in idx]


def ask(
    evidence: Evidence,
    report: Report,
    question: str,
    lm: Any = None,
    *,
    adapter: Any = None,
    max_iters: int = 8,
) -> AskResult:
    """Answer a question about a run: a ReAct agent over :class:`RunTools` when ``lm`` is given, else the rules."""
    fallback, matched = rules_answer(report, question)
    if lm is None:
        return AskResult(fallback, "rules", None, matched)
    from modeldebug.llm.analyst import default_adapter, fallback_notice
    from modeldebug.llm.settings import as_lm, load_dspy

    try:
        dspy = load_dspy()
        from modeldebug.llm.signatures import AskRun

        tools = RunTools(evidence, report)
        agent = dspy.ReAct(AskRun, tools=tools.tools(), max_iters=max_iters)
        with dspy.context(lm=as_lm(lm), adapter=adapter or default_adapter()):
            pred = agent(question=question, run_overview=to_json(tools.run_overview(), limit=8000))
        answer = (pred.answer or "").strip()
        if not answer:
            raise ValueError("the LM's answer was empty")
        return AskResult(answer, "llm", None, matched, dict(pred.trajectory))
    except Exception as exc:
        log.debug("ask: LM failed", exc_info=True)
        return AskResult(fallback, "rules", fallback_notice(lm, exc), matched)
