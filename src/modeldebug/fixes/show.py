"""`modeldebug fix` on the terminal: progress while the windows run, then each candidate with its numbers."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape

from modeldebug.fixes.verify import FixSession
from modeldebug.types import Fix


def progress(out: Console):
    def tell(text: str) -> None:
        out.print(f"[dim]modeldebug fix: {escape(text)}[/dim]")

    return tell


def print_session(session: FixSession, out: Console) -> None:
    report = session.report
    if report is not None and session.fixes:
        for fix in session.fixes:
            _print_fix(fix, out)
    out.print(f"[bold]modeldebug fix[/bold]: {escape(session.verdict)}  (in {session.seconds:.1f} s, "
              f"every candidate re-run one at a time)")


def _print_fix(fix: Fix, out: Console) -> None:
    mark = "[green]VERIFIED[/green]" if fix.verified else "[red]rejected[/red]"
    out.print(f"{mark}  {escape(fix.change)}")
    out.print(f"    for: {escape(', '.join(fix.addresses))}   training loss {_num(fix.loss_before)} -> "
              f"{_num(fix.loss_after)}" + (f"   validation loss {_num(fix.val_loss_before)} -> {_num(fix.val_loss_after)}"
                                           if fix.val_loss_before is not None or fix.val_loss_after is not None else "")
              + f"   ({fix.seconds:.1f} s)")
    out.print(f"    {escape(fix.reason)}")
    if fix.findings_after:
        out.print(f"    found after: {escape(', '.join(fix.findings_after))}")


def _num(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"
