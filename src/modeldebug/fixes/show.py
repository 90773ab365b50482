"""`modeldebug fix` on the terminal: progress while the windows run, then each root finding with the
candidates tried for it (verified first), and the diff of the best verified fix."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from modeldebug.fixes.verify import FixSession
from modeldebug.types import Finding, Fix, Report

_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan"}


def progress(out: Console):
    def tell(text: str) -> None:
        out.print(f"[dim]modeldebug fix: {escape(text)}[/dim]")

    return tell


def by_finding(report: Report, fixes: list[Fix]) -> list[tuple[Finding | None, list[Fix]]]:
    """Each root finding with the fixes tried for it, in the report's order of stories; fixes for no
    shown root (a kind that is not a root) come last, under None. A fix for two roots is under the first."""
    placed: set[int] = set()
    groups: list[tuple[Finding | None, list[Fix]]] = []
    for story in report.stories():
        mine = [f for f in fixes if id(f) not in placed and story.root.kind in f.addresses]
        placed |= {id(f) for f in mine}
        if mine:
            groups.append((story.root, mine))
    rest = [f for f in fixes if id(f) not in placed]
    return groups + ([(None, rest)] if rest else [])


def print_session(session: FixSession, out: Console) -> None:
    report = session.report
    if report is not None and session.fixes:
        for finding, fixes in by_finding(report, session.fixes):
            if finding is not None:
                out.print(f"[{_STYLE.get(finding.severity, 'bold')}]{finding.severity.upper()}[/] "
                          f"[bold]{escape(finding.kind)}[/bold]"
                          + (f" at {escape(finding.location)}" if finding.location else "")
                          + f": {escape(_first_sentence(finding.message))}")
            for fix in fixes:
                _print_fix(fix, out)
        best = session.fixes[0]
        if best.verified and best.patch:
            out.print("[bold]the best verified fix as a diff[/bold] (git apply):")
            # never folded: a copied diff must still apply
            out.print(Syntax(best.patch.rstrip("\n"), "diff", theme="ansi_dark", background_color="default"),
                      soft_wrap=True)
        elif best.verified:
            out.print(f"[dim]no diff for the best verified fix: {escape(_no_diff(best))}[/dim]")
    out.print(f"[bold]modeldebug fix[/bold]: {escape(session.verdict)}  (in {session.seconds:.1f} s, "
              f"every candidate re-run one at a time)")


def _print_fix(fix: Fix, out: Console) -> None:
    mark = "[green]VERIFIED[/green]" if fix.verified else "[red]rejected[/red]"
    out.print(f"  {mark}  {escape(fix.change)}")
    out.print(f"      for: {escape(', '.join(fix.addresses))}   training loss {_num(fix.loss_before)} -> "
              f"{_num(fix.loss_after)}" + (f"   validation loss {_num(fix.val_loss_before)} -> {_num(fix.val_loss_after)}"
                                           if fix.val_loss_before is not None or fix.val_loss_after is not None else "")
              + f"   ({fix.seconds:.1f} s)")
    out.print(f"      {escape(fix.reason)}")
    if fix.findings_after:
        out.print(f"      found after: {escape(', '.join(fix.findings_after))}")


def _first_sentence(text: str) -> str:
    head = text.split(". ")[0].rstrip(".")
    return head if len(head) <= 160 else head[:159] + "…"


def _no_diff(fix: Fix) -> str:
    return fix.reason.split("; no diff: ", 1)[1] if "; no diff: " in fix.reason else "its change is not at a line of the script"


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"
