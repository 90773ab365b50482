"""Findings while it runs (issue 19): how early the live diagnosis reports each fault, and what
`--stop-on high` saves.

    python benchmarks/live.py [--only PATTERN] [--jobs 2] [--json out.json]

For each broken script of the fault suite, under `modeldebug run --alerts FILE`: the step its fault
starts (0, or its docstring's `starts: N`), the step count when the live diagnosis first reported
the planted kind (`steps_seen` of the first alert line of that kind at medium or high), the step
the finding names, the end of the run, and the first alert of any kind at medium or high (where an
early warning shows: kind@steps seen). The nan_or_inf scripts run again under `--stop-on high`:
the step count when it stopped vs the first non-finite step, and the wall time saved against the
full run. Healthy scripts run under `--stop-on high` and must never stop (nor alert at medium or
high). Scripts run through benchmarks/detection.py's Runner (same limits, retries and launchers).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import SERIOUS, Case, Result, Runner, available, cases  # noqa: E402

STARTS = re.compile(r"^starts: (\d+)$", re.M)  # a fault planted after the first step


def fault_start(case: Case) -> int:
    m = STARTS.search(ast.get_docstring(ast.parse(case.path.read_text())) or "")
    return int(m.group(1)) if m else 0


@dataclass
class Row:
    name: str
    kind: str
    starts: int | None = None
    first_alert: int | None = None  # steps the store held when the planted kind first alerted
    finding_step: int | None = None  # the step that alert's finding names
    first_any: str | None = None  # the first medium/high alert of any kind: "kind@steps seen"
    final_step: int | None = None  # the final report's finding of the planted kind: its step
    end: int | None = None  # the run's steps
    status: str = ""
    seconds: float = 0.0
    nan_step: int | None = None  # nan_or_inf: the first non-finite step
    stopped_at: int | None = None  # --stop-on high: the steps run when it stopped
    stopped_by: str | None = None
    stop_seconds: float | None = None
    serious_alerts: int = 0  # healthy: alerts at medium or high
    error: str = ""


def alerts_of(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line cut short by a killed run
    return out


def first_alert(lines: list[dict], kind: str) -> dict | None:
    return next((a for a in lines if a["finding"]["kind"] == kind and a["finding"]["severity"] in SERIOUS), None)


def report_of(workdir: Path, case: Case) -> dict:
    path = workdir / f"{case.key}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def first_nonfinite(report: dict) -> int | None:
    return (report.get("metrics") or {}).get("first_nonfinite_step")


class Bench:
    """Two runners, each on its own folder: the full runs (--alerts) and the runs under --stop-on high."""

    def __init__(self, selected: list[Case], jobs: int):
        root = Path(tempfile.mkdtemp(prefix="modeldebug-live-"))
        self.full_dir, self.stop_dir = root / "full", root / "stop"
        self.full_dir.mkdir()
        self.stop_dir.mkdir()
        broken = [c for c in selected if c.broken]
        stopping = [c for c in selected if c.healthy or c.kind == "nan_or_inf"]
        half = max(1, jobs // 2)  # the two runners share the jobs
        self.full = Runner(broken, max(1, jobs - half), self.full_dir, lambda c: ["--alerts", str(self.alerts(self.full_dir, c))])
        self.stop = Runner(stopping, half, self.stop_dir,
                           lambda c: ["--alerts", str(self.alerts(self.stop_dir, c)), "--stop-on", "high"])

    @staticmethod
    def alerts(folder: Path, case: Case) -> Path:
        return folder / f"{case.key}.alerts.jsonl"

    def close(self) -> None:
        self.full.close()
        self.stop.close()

    def row(self, case: Case) -> Row:
        row = Row(case.name, case.kind)
        if case.broken:
            r = self.full.result(case)
            report = report_of(self.full_dir, case)
            run = report.get("run") or {}
            row.starts, row.end, row.status, row.seconds = fault_start(case), run.get("steps"), run.get("status", ""), r.seconds
            row.error = r.error[-300:]
            lines = alerts_of(self.alerts(self.full_dir, case))
            alert = first_alert(lines, case.kind)
            serious = next((a for a in lines if a["finding"]["severity"] in SERIOUS), None)
            if serious is not None:
                row.first_any = f"{serious['finding']['kind']}@{serious['steps_seen']}"
            if alert is not None:
                row.first_alert, row.finding_step = alert["steps_seen"], alert["finding"].get("step")
            final = r.matching()
            row.final_step = final[0].get("step") if final else None
            row.nan_step = first_nonfinite(report) if case.kind == "nan_or_inf" else None
        if case in self.stop.cases:
            self._stopped(case, row)
        return row

    def _stopped(self, case: Case, row: Row) -> None:
        r: Result = self.stop.result(case)
        run = report_of(self.stop_dir, case).get("run") or {}
        if run.get("status") == "stopped":
            row.stopped_at, row.stopped_by = run.get("steps"), run.get("stopped_by")
        row.stop_seconds = r.seconds
        if case.healthy:
            row.status, row.seconds, row.error = run.get("status", ""), r.seconds, r.error[-300:]
            row.end = run.get("steps")
            row.serious_alerts = sum(a["finding"]["severity"] in SERIOUS for a in alerts_of(self.alerts(self.stop_dir, case)))


def _n(x) -> str:
    return "-" if x is None else str(x)


def table(rows: list[Row]) -> str:
    broken = [r for r in rows if r.kind != "none"]
    lines = ["| script | kind | fault starts | first live report (steps seen) | finding's step | end of run | first alert of any kind |",
             "|---|---|---|---|---|---|---|"]
    for r in broken:
        lines.append(f"| {r.name} | {r.kind} | {_n(r.starts)} | {_n(r.first_alert)} | {_n(r.finding_step)} | {_n(r.end)} "
                     f"| {_n(r.first_any)} |")
    reported = [r for r in broken if r.first_alert is not None and r.end]
    if reported:
        early = sorted(r.end - r.first_alert for r in reported)
        lines.append(f"\nreported live: {len(reported)} of {len(broken)}; steps before the end of the run: "
                     f"median {early[len(early) // 2]}, least {early[0]}")
    nan = [r for r in rows if r.kind == "nan_or_inf" and r.stop_seconds is not None]
    if nan:
        lines += ["", "| nan_or_inf script (--stop-on high) | first NaN step | stopped at (steps run) | full run s | stopped run s | saved s |",
                  "|---|---|---|---|---|---|"]
        for r in nan:
            saved = r.seconds - r.stop_seconds if r.stopped_at is not None else None
            lines.append(f"| {r.name} | {_n(r.nan_step)} | {_n(r.stopped_at)} | {r.seconds:.1f} | {r.stop_seconds:.1f} | "
                         f"{'-' if saved is None else f'{saved:.1f}'} |")
    healthy = [r for r in rows if r.kind == "none"]
    if healthy:
        stopped = [r.name for r in healthy if r.stopped_at is not None]
        loud = [r.name for r in healthy if r.serious_alerts]
        lines.append(f"\nhealthy under --stop-on high: {len(healthy)} run, {len(stopped)} stopped"
                     + (f" ({', '.join(stopped)})" if stopped else "")
                     + f", {len(loud)} with a medium/high alert" + (f" ({', '.join(loud)})" if loud else ""))
    errors = [f"{r.name}: {r.error}" for r in rows if r.error and r.status not in ("completed", "stopped")]
    if errors:
        lines.append("\nerrors:\n" + "\n".join(errors))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="regex on script names")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    started = time.perf_counter()
    selected = [c for c in cases(args.only) if available(c) and not c.hint]
    bench = Bench(selected, args.jobs)
    try:
        rows = [bench.row(c) for c in selected]
    finally:
        bench.close()
    print(table(rows))
    print(f"{len(rows)} scripts in {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    healthy_stopped = [r for r in rows if r.kind == "none" and r.stopped_at is not None]
    return 1 if healthy_stopped else 0


if __name__ == "__main__":
    sys.exit(main())
