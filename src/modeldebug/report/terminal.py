"""The terminal report (rich): findings most severe first, then a one-line summary."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.padding import Padding
from rich.panel import Panel
from rich.text import Text

from modeldebug.metrics import LLMSection
from modeldebug.types import Finding, Report

_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan"}


def print_report(report: Report, console: Console | None = None, *, issue: str | None = None, written: list[str] = (),
                 title: str | None = None) -> None:
    """``title``: what the heading names instead of a run (``explain FILE``, ``onnx check``)."""
    console = console or Console(stderr=False, highlight=False)
    run = report.run
    head = Text()
    head.append("modeldebug ", style="bold")
    if title:
        head.append(title)
    else:
        head.append(f"run {run.id}  ")
        head.append(run.status, style="green" if run.status == "completed" else "bold red")
        if run.signal and run.status != "stopped":
            head.append(f" by {run.signal}", style="bold red")
        if run.stopped_by:
            head.append(f" by {run.stopped_by}", style="bold red")
        if run.exit_code is not None:
            head.append(f" (exit {run.exit_code})")
    if run.steps or run.models:  # a training run (ONNX reports have no steps)
        head.append(f"  {run.steps} steps in {run.duration_s:.1f} s")
    if run.command:
        head.append("\n$ " + " ".join(run.command), style="dim")
    if issue:
        head.append(f"\nissue: {issue}", style="italic")
    stopped = report.training.monitor_stopped if report.training else None
    if stopped is not None:
        head.append(f"\nmodeldebug stopped watching at step {stopped.step} after an error in its own code "
                    f"({stopped.hook}: {stopped.error}); the findings cover the steps before.",
                    style="yellow")
    console.print(head)

    findings = [f for f in report.sorted_findings() if not f.suppressed]
    llm = report.metrics.llm if report.metrics.llm is not None and report.metrics.llm.ok else None
    stories = report.stories()
    for story in stories:  # each root cause, what follows from it folded under it
        root = story.root
        parts: list[Any] = [_body(root, llm)]
        given = {r.description for r in root.recommendations}
        if story.consequences:
            parts.append(Text(f"\nfollows from it ({len(story.consequences)}):", style="bold"))
        for c in story.consequences:
            head = _title(c.finding)
            if c.depth > 1:
                head.append(f"  ← {c.finding.caused_by}", style="dim")
            body = _body(c.finding, llm, skip=given)
            given |= {r.description for r in c.finding.recommendations}
            parts.append(Padding(Text("\n").join([Text(), head, body]), (0, 0, 0, 2 * c.depth)))
        console.print(Panel(Group(*parts), title=_title(root), title_align="left",
                            border_style=_STYLE[root.severity]))
    if llm is not None:
        _print_llm_panel(llm, console)

    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("high", "medium", "low")}
    summary = Text()
    if findings:
        summary.append(f"{len(findings)} finding{'s' if len(findings) != 1 else ''}: ")
        summary.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
        if len(stories) < len(findings):
            summary.append(f" from {len(stories)} root cause{'s' if len(stories) != 1 else ''}")
    elif run.status == "crashed":  # e.g. it failed before importing torch: nothing watched said why
        summary.append(f"No finding: the script failed (exit {run.exit_code}) and what modeldebug watched "
                       "shows no cause; its own error output is above.", style="yellow")
    elif run.unwatched is not None:
        summary.append(run.unwatched.reason, style="yellow")
    else:
        summary.append("No problems found.", style="green")
    overhead = run.monitor_overhead
    if overhead is not None:
        summary.append(f"  monitor overhead {overhead.time_fraction:.1%}", style="dim")
    console.print(summary)
    if run.unwatched is not None and (findings or run.status == "crashed"):
        console.print(Text(run.unwatched.reason, style="yellow"))
    _print_expected(report, console)
    for path in written:
        console.print(f"report written to {escape(path)}", style="dim", soft_wrap=True)  # a path is never folded


def _print_expected(report: Report, console: Console) -> None:
    """Suppressed findings, one dim line each, and the rules that failed (their findings are missing)."""
    for f in report.findings:
        if f.suppressed:
            where = f" at {f.location}" if f.location else ""
            console.print(Text(f"suppressed: {f.severity} {f.kind}{where} ({f.suppression_reason})", style="dim"))
    for e in report.rule_errors:
        console.print(Text(f"rule {e.rule} failed ({e.source}): {e.error}: {e.message}; its findings are missing",
                           style="yellow"))


def _title(f: Finding) -> Text:
    title = Text()
    title.append(f.severity.upper(), style=_STYLE[f.severity])
    title.append(f"  {f.kind}")
    if f.location:
        title.append(f"  at {f.location}", style="bold")
    if f.step is not None:
        title.append(f"  (step {f.step})", style="dim")
    return title


def _body(f: Finding, llm: LLMSection | None, skip: set[str] = frozenset()) -> Text:
    """A finding's message, causes, evidence, its recommendations (less those in ``skip``, already
    given in the same story) and what a language model said about it."""
    body = Text(f.message)
    if f.causes:
        body.append("\nlikely cause: " + ", ".join(c.replace("_", " ") for c in f.causes), style="dim")
    if f.evidence:
        body.append("\nevidence: " + _compact(f.evidence), style="dim")
    for r in f.recommendations:
        if r.description in skip:
            continue
        body.append(f"\n→ {r.description}", style="green")
        if r.implementation:
            code = "\n".join("    " + line for line in r.implementation.splitlines())
            body.append("\n" + code, style="green dim")
    text = llm.explanation_for(f) if llm is not None else None
    if text:
        body.append(f"\nlanguage model: {text}", style="italic")
    if f.source == "llm":
        body.append("\n(added by the language model)", style="dim italic")
    return body


def _print_llm_panel(llm: LLMSection, console: Console) -> None:
    """What the language model said (its summary, recommendations, notes), apart from the measured findings."""
    body = Text()
    if llm.summary:
        body.append(llm.summary)
    for r in llm.recommendations:
        body.append(f"\n→ {r.description}", style="green")
        if r.implementation:
            code = "\n".join("    " + line for line in r.implementation.splitlines())
            body.append("\n" + code, style="green dim")
    for n in llm.notes:
        body.append(f"\nnote ({n.severity}, {n.type}): {n.description}", style="dim")
    if llm.unmatched:
        body.append(f"\n{len(llm.unmatched)} finding(s) it discussed are no longer in the rules' report.", style="dim")
    if not body.plain:
        return
    title = Text("language model", style="bold")
    title.append(f"  {llm.model or ''}", style="dim")
    if llm.stored is not None:
        title.append(time.strftime("  (stored %Y-%m-%d %H:%M)", time.localtime(llm.stored.created_at)), style="dim")
    console.print(Panel(body, title=title, title_align="left", border_style="magenta",
                        subtitle="explanation, not measurement", subtitle_align="right"))


def _compact(evidence: dict, limit: int = 300) -> str:
    text = _plain(evidence)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(v: Any) -> str:
    """Evidence as short text: numbers rounded to 4 significant digits, no JSON quotes."""
    if isinstance(v, bool) or v is None:
        return "null" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_plain(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_plain(x) for x in v) + "]"
    return str(v)
