"""The HTML report: one self-contained file, findings most severe first, each next to its evidence.

Drawn from a ``Report`` alone (its typed ``metrics``, see ``modeldebug.metrics``), so a stored run
renders again with ``modeldebug report RUN --html OUT.html``. The pictures are in
:mod:`modeldebug.report.plots` (by family; ``FINDING_PLOTS`` says which goes with which finding
kind); this module assembles the page: header, findings, what a language model said (read from
``metrics.llm``), the overview and the ONNX tables.

Pictures are matplotlib SVGs embedded as ``data:`` images: the page needs no JavaScript and no
network, stays small (long series are downsampled in ``summarize``), and its Content-Security-
Policy forbids scripts outright. Everything from the user or the script (issue text, module names,
messages, the command line) goes through jinja2's autoescape into HTML text and, inside the
pictures, through matplotlib's SVG text escaping inside an ``<img>`` (which never runs scripts).
Needs the ``report`` extra (matplotlib, jinja2).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from modeldebug.errors import require
from modeldebug.metrics import OnnxCompareMetrics, OnnxNanMetrics, OnnxProfileMetrics
from modeldebug.report.plots import EXTRA, FINDING_PLOTS, OVERVIEW, WIDE, Canvas
from modeldebug.types import Report


def render_html(report: Report, *, issue: str | None = None) -> str:
    """The report as one HTML document (str); raises MissingExtraError without the ``report`` extra."""
    jinja2 = require("jinja2", EXTRA)
    canvas = Canvas()
    metrics = report.metrics
    issue = issue if issue is not None else metrics.issue
    llm = metrics.llm if metrics.llm is not None and metrics.llm.ok else None
    def item(f: Any, depth: int = 0) -> dict:
        plot = FINDING_PLOTS.get(f.kind)
        return {"f": f, "depth": depth, "plot": canvas.draw(plot, metrics, f) if plot else None,
                "evidence": _evidence_rows(f.evidence), "llm": llm.explanation_for(f) if llm is not None else None}

    # Root causes first, each with the findings that follow from it folded under it.
    stories = [{"root": item(s.root), "consequences": [item(c.finding, c.depth) for c in s.consequences]}
               for s in report.stories()]
    fixes = _fixes(canvas, report)
    placed: set[int] = set()
    for story in stories:  # the best verified fix of a root next to it (a fix of two roots: the first)
        story["fix"] = next((f for f in fixes if f["fix"].verified and id(f) not in placed
                             and story["root"]["f"].kind in f["fix"].addresses), None)
        placed |= {id(story["fix"])} if story["fix"] else set()
    findings = [i for s in stories for i in [s["root"], *s["consequences"]]]
    sections = [(title, canvas.draw(plot, metrics, None), plot in WIDE) for title, plot in OVERVIEW]
    sections = [s for s in sections if s[1]]
    counts = {s: sum(1 for f in report.findings if f.severity == s and not f.suppressed) for s in ("high", "medium", "low")}
    suppressed = [f for f in report.findings if f.suppressed]
    source = resources.files("modeldebug.report").joinpath("templates", "report.html.j2").read_text("utf-8")
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.from_string(source).render(
        report=report, run=report.run, issue=issue, findings=findings, stories=stories, sections=sections, counts=counts,
        suppressed=suppressed, rule_errors=report.rule_errors,
        tables=_tables(metrics), facts=_facts(report), fmt=_fmt, llm=llm, fixes=fixes,
    )


def require_extra() -> None:
    """Raise MissingExtraError (naming the ``report`` extra) unless the HTML report can be drawn."""
    require("jinja2", EXTRA)
    require("matplotlib", EXTRA)


def write_html(report: Report, path: str | os.PathLike, *, issue: str | None = None) -> None:
    path = Path(path)
    text = render_html(report, issue=issue)  # render first: a missing extra leaves no empty file behind
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- text parts ----------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        text = json.dumps(v, default=str)
        return text if len(text) <= 200 else text[:199] + "…"
    return str(v)


def _fixes(canvas: Canvas, report: Report) -> list[dict]:
    """`modeldebug fix`'s candidates, each with its before/after loss plot (a training report's)."""
    from modeldebug.report.plots.fixes import plot_fix

    training = report.training
    return [{"fix": f, "plot": plot_fix(canvas, training, f) if training is not None else None} for f in report.fixes]


def _evidence_rows(evidence: dict) -> list[tuple[str, str]]:
    return [(str(k), _fmt(v)) for k, v in evidence.items()]


def _facts(report: Report) -> list[tuple[str, str]]:
    run = report.run
    facts = [("status", run.status + (f" by {run.signal}" if run.signal else "")
              + (f" (exit {run.exit_code})" if run.exit_code is not None else ""))]
    if run.steps or run.models:
        facts.append(("steps", f"{run.steps} in {run.duration_s:.1f} s"))
    else:
        facts.append(("duration", f"{run.duration_s:.2f} s"))
    for m in run.models:
        facts.append(("model", f"{m.name}: {m.parameters:,} parameters ({m.trainable:,} trainable)"))
    if run.device:
        facts.append(("device", run.device))
    if run.monitor_overhead is not None:
        facts.append(("monitor overhead", f"{run.monitor_overhead.time_fraction:.1%} of the run's time"))
    return facts


def _tables(metrics: Any) -> list[dict]:
    """Plain tables: the ONNX per-op and per-node times, the comparison points, the first NaN node."""
    tables = []
    if isinstance(metrics, OnnxProfileMetrics) and metrics.op_types:
        tables.append({"title": "ONNX: time per op type", "head": ["op type", "nodes", "mean µs per run", "share"],
                       "rows": [[o.op_type, o.nodes, _fmt(o.mean_us), f"{o.share:.1%}"] for o in metrics.op_types]})
    if isinstance(metrics, OnnxProfileMetrics) and metrics.top_nodes:
        tables.append({"title": "ONNX: slowest nodes", "head": ["node", "op type", "provider", "mean µs per run", "share"],
                       "rows": [[n.node, n.op_type, n.provider or "", _fmt(n.mean_us), f"{n.share:.1%}"]
                                for n in metrics.top_nodes]})
    if isinstance(metrics, OnnxCompareMetrics) and metrics.points:
        tables.append({"title": "ONNX: comparison per matched point", "head": ["module", "ONNX node", "max abs", "max rel", "mismatch", "ok"],
                       "rows": [[p.module or "", p.onnx_node or "", _fmt(p.max_abs), _fmt(p.max_rel),
                                 _fmt(p.mismatch_fraction), "yes" if p.ok else "no"] for p in metrics.points],
                       "bad": [i for i, p in enumerate(metrics.points) if p.ok is False]})
    if isinstance(metrics, OnnxCompareMetrics) and metrics.outputs:
        tables.append({"title": "ONNX: graph outputs", "head": ["output", "value", "max abs", "max rel", "ok"],
                       "rows": [[o.output, o.value or "", _fmt(o.max_abs), _fmt(o.max_rel),
                                 "yes" if o.ok else "no"] for o in metrics.outputs]})
    if isinstance(metrics, OnnxNanMetrics) and metrics.nonfinite_value_count:
        tables.append({"title": "ONNX: non-finite values", "head": ["first node", "values", "count"],
                       "rows": [[metrics.first_node or "", ", ".join(metrics.nonfinite_values)[:400],
                                 metrics.nonfinite_value_count]]})
    return tables
