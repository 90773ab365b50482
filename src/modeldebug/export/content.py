"""What a report exports, the same for every platform: scalars by step, final numbers, run facts,
findings as text. Each exporter only maps this onto its library's calls, so the three platforms
show the same names and values (tests read them back and compare them with the report).

Names: ``modeldebug/train/<column>`` (loss, grad_norm, lr, step times, memory: the report's
series), ``modeldebug/val/<loss|accuracy>``, ``modeldebug/layer/<layer>/<statistic>`` and
``modeldebug/param/<parameter>/<statistic>`` on the steps they were sampled at,
``modeldebug/findings/<severity>`` (counts), ``modeldebug/run/*`` and ``modeldebug/monitor/*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from modeldebug.types import SEVERITY_ORDER

if TYPE_CHECKING:
    from modeldebug.metrics import Histogram
    from modeldebug.types import Finding, Report

PREFIX = "modeldebug"
LAYER_STATS = ("output_mean", "output_std", "zero_frac", "dead_frac", "sat_frac", "grad_norm")
PARAM_STATS = ("norm", "grad_norm", "update_ratio")
SEVERITIES = tuple(SEVERITY_ORDER)  # high, medium, low


@dataclass(frozen=True)
class Scalar:
    tag: str
    step: int
    value: float


@dataclass(frozen=True)
class LayerHistogram:
    tag: str
    step: int
    lo: float
    hi: float
    counts: list[int]


@dataclass
class ExportContent:
    run_id: str
    status: str  # the report's run status: completed, crashed, interrupted, terminated
    exit_code: int | None
    info: dict[str, str]  # run facts as text: parameters (MLflow), config (wandb), a table (TensorBoard)
    scalars: list[Scalar] = field(default_factory=list)  # in step order
    final: dict[str, float] = field(default_factory=dict)  # numbers about the whole run, at ``last_step``
    last_step: int = 0
    histograms: list[LayerHistogram] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)  # one flat, JSON-safe dict per finding
    findings_text: str = ""  # markdown
    worst_severity: str = "none"
    report_json: str = ""


def build(report: Report) -> ExportContent:
    """Everything of ``report`` that goes to a platform."""
    run = report.run
    findings = [finding_row(f, i) for i, f in enumerate(report.sorted_findings())]
    worst = min((SEVERITY_ORDER[f.severity] for f in report.shown_findings()), default=None)
    content = ExportContent(
        run_id=run.id, status=run.status, exit_code=run.exit_code, info=run_facts(report),
        findings=findings, findings_text=findings_markdown(report), report_json=report.to_json(),
        worst_severity=SEVERITIES[worst] if worst is not None else "none",
    )
    training = report.training
    if training is not None:
        content.scalars = sorted(training_scalars(training), key=lambda s: s.step)
        content.histograms = layer_histograms(training)
    steps = [s.step for s in content.scalars]
    content.last_step = max(steps + [run.steps], default=0)
    content.final = final_numbers(report)
    return content


def run_facts(report: Report) -> dict[str, str]:
    run = report.run
    facts = {"run_id": run.id, "status": run.status, "command": " ".join(run.command), "steps": str(run.steps),
             "duration_s": f"{run.duration_s:.3f}"}
    if run.exit_code is not None:
        facts["exit_code"] = str(run.exit_code)
    if run.device:
        facts["device"] = run.device
    if run.models:
        facts["models"] = ", ".join(f"{m.name} ({m.parameters} parameters, {m.trainable} trainable)" for m in run.models)
    if run.signal:
        facts["signal"] = run.signal
    if getattr(report.metrics, "issue", None):
        facts["issue"] = report.metrics.issue
    return facts


def final_numbers(report: Report) -> dict[str, float]:
    """Counts of the findings the report shows (what --fail-on counts), the suppressed apart."""
    shown = report.shown_findings()
    counts = {s: 0 for s in SEVERITIES}
    for f in shown:
        counts[f.severity] += 1
    final = {f"{PREFIX}/findings/{s}": float(n) for s, n in counts.items()}
    final[f"{PREFIX}/findings/total"] = float(len(shown))
    final[f"{PREFIX}/findings/suppressed"] = float(len(report.findings) - len(shown))
    final[f"{PREFIX}/run/steps"] = float(report.run.steps)
    final[f"{PREFIX}/run/duration_s"] = float(report.run.duration_s)
    overhead = report.run.monitor_overhead
    if overhead is not None:
        final[f"{PREFIX}/monitor/time_fraction"] = float(overhead.time_fraction)
        final[f"{PREFIX}/monitor/peak_memory_bytes"] = float(overhead.peak_memory_bytes)
    return final


def training_scalars(metrics) -> list[Scalar]:
    out: list[Scalar] = []
    if metrics.series is not None:
        columns = metrics.series.columns()
        steps = columns.pop("step", [])
        for name, values in columns.items():
            out += _points(f"{PREFIX}/train/{name}", steps, values)
    if metrics.validation is not None:
        v = metrics.validation
        out += _points(f"{PREFIX}/val/loss", v.step, v.loss) + _points(f"{PREFIX}/val/accuracy", v.step, v.accuracy)
    for layer in metrics.layers:
        for stat in LAYER_STATS:
            out += _points(f"{PREFIX}/layer/{layer.name}/{stat}", layer.step, getattr(layer, stat))
    for param in metrics.params:
        for stat in PARAM_STATS:
            out += _points(f"{PREFIX}/param/{param.name}/{stat}", param.step, getattr(param, stat))
    return out


def _points(tag: str, steps, values) -> list[Scalar]:
    # The report holds null where a value was missing or not finite; a platform gets the finite ones.
    return [Scalar(tag, int(s), float(v)) for s, v in zip(steps or (), values or ())
            if s is not None and v is not None and math.isfinite(v)]


def layer_histograms(metrics) -> list[LayerHistogram]:
    out = []
    for layer in metrics.layers:
        seen = set()
        for h in (layer.histogram_first, layer.histogram):
            if _usable(h) and h.step not in seen:
                seen.add(h.step)
                out.append(LayerHistogram(f"{PREFIX}/layer/{layer.name}/output", h.step, h.lo, h.hi, list(h.counts)))
    return sorted(out, key=lambda h: h.step)


def _usable(h: Histogram | None) -> bool:
    return (h is not None and h.lo is not None and h.hi is not None and math.isfinite(h.lo)
            and math.isfinite(h.hi) and h.hi >= h.lo and sum(h.counts) > 0)


def finding_row(f: Finding, index: int) -> dict[str, Any]:
    return {
        "id": f.id or f"{f.kind}#{index + 1}", "kind": f.kind, "severity": f.severity,
        "confidence": f.confidence, "location": f.location, "step": f.step, "message": f.message,
        "causes": list(f.causes), "caused_by": f.caused_by, "source": f.source,
        "recommendations": [r.description for r in f.recommendations],
        "suppressed": f.suppressed, "suppression_reason": f.suppression_reason,
    }


def finding_line(row: dict[str, Any]) -> str:
    """One line: ``[high] exploding_gradient at fc1 (step 37): <message>``."""
    where = f" at {row['location']}" if row["location"] else ""
    when = f" (step {row['step']})" if row["step"] is not None else ""
    line = f"[{row['severity']}] {row['kind']}{where}{when}: {row['message']}"
    return f"suppressed ({row['suppression_reason'] or 'expected'}): {line}" if row["suppressed"] else line


def findings_markdown(report: Report) -> str:
    """The findings as the terminal tells them: root causes first, consequences under their root."""
    shown = report.shown_findings()
    rows = {id(f): finding_row(f, i) for i, f in enumerate(report.sorted_findings())}
    suppressed = [rows[id(f)] for f in report.sorted_findings() if f.suppressed]
    about = f"in run {report.run.id} ({report.run.steps} steps, {report.run.status})"
    lines = [f"**{len(shown)} finding(s)** {about}" if shown else f"No findings {about}."]
    if shown or suppressed:
        lines.append("")
    for story in report.stories():
        lines.append(_markdown_item(rows[id(story.root)], 0))
        lines += [_markdown_item(rows[id(c.finding)], c.depth) for c in story.consequences]
    lines += [f"- {finding_line(row)}" for row in suppressed]
    return "\n".join(lines)


def _markdown_item(row: dict[str, Any], depth: int) -> str:
    indent = "  " * depth
    text = f"{indent}- {finding_line(row)}"
    if row["causes"]:
        text += f"\n{indent}  - causes: {', '.join(row['causes'])}"
    text += "".join(f"\n{indent}  - fix: {r}" for r in row["recommendations"])
    return text
