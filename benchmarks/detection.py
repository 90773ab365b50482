"""Detection benchmark: every script of the fault suite through `modeldebug run`, scored.

For each planted kind: how many of its broken scripts were found with that kind (at severity
medium or high, or at any severity with --any-severity), how often the first cause named is the
planted one; for the healthy scripts: false alarms (findings of severity medium or high).

    python benchmarks/detection.py [--jobs 2] [--json out.json] [--workdir DIR] [--only PATTERN] [--pending | --all]

--pending scores the staged scripts of tests/faults/pending/ instead of tests/faults/, --all both;
either adds one line per script with what was found. The same harness (tests/faults/ only) backs
tests/faults/test_detection.py. Each script runs under its own limit, scaled to how busy the machine
is and retried once, so a loaded machine slows the suite down without failing it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "faults"
PENDING = FAULTS / "pending"
PLANTED = re.compile(r"^planted: kind=(\w+) cause=(\w+)$", re.M)
REQUIRES = re.compile(r"^requires: (\w+)$", re.M)
# A script that trains on several processes says how it is started: `launch: torchrun N` runs it as
# `modeldebug run -- python -m torch.distributed.run --standalone --nproc-per-node N script`.
LAUNCH = re.compile(r"^launch: torchrun (\d+)$", re.M)
# A planted symptom that does no harm by design (measured, and said in its docstring): the right
# answer is the kind at low severity, a hint; medium or high would be an alarm without harm.
EXPECTED_LOW = re.compile(r"^expected: low$", re.M)
SERIOUS = ("high", "medium")


@dataclass
class Case:
    path: Path
    kind: str  # "none" for healthy scripts
    cause: str
    requires: str | None = None
    hint: bool = False  # expected at low severity only (see EXPECTED_LOW)
    processes: int = 1  # > 1: started by torchrun with that many processes (see LAUNCH)

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def key(self) -> str:
        """Unique across folders (a pending script may share a name with one of the suite)."""
        return self.name if self.path.parent == FAULTS else f"{self.path.parent.name}-{self.name}"

    @property
    def healthy(self) -> bool:
        return self.kind == "none"

    @property
    def broken(self) -> bool:
        return not self.healthy and not self.hint


@dataclass
class Result:
    case: Case
    exit_code: int
    seconds: float
    findings: list[dict] = field(default_factory=list)
    error: str = ""
    report_written: bool = True

    def matching(self, serious_only: bool = True) -> list[dict]:
        return [f for f in self.findings if f["kind"] == self.case.kind and (not serious_only or f["severity"] in SERIOUS)]

    def detected(self, serious_only: bool = True) -> bool:
        return bool(self.matching(serious_only))

    def cause_first(self) -> bool:
        found = self.matching(serious_only=False)
        return bool(found) and bool(found[0]["causes"]) and found[0]["causes"][0] == self.case.cause

    def false_alarms(self) -> list[dict]:
        return [f for f in self.findings if f["severity"] in SERIOUS]

    def hint_right(self) -> bool:
        """A hint script: its kind found, and nothing at medium or high."""
        return self.detected(serious_only=False) and not self.false_alarms()


def found(f: dict) -> str:
    return f"{f['kind']}({f['severity']})"


def cases(only: str | None = None, folders: tuple[Path, ...] = (FAULTS,)) -> list[Case]:
    out = []
    for path in [p for folder in folders for p in sorted(folder.glob("*__*.py"))]:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        m = PLANTED.search(doc)
        if not m or (only and not re.search(only, path.stem)):
            continue
        req, launch = REQUIRES.search(doc), LAUNCH.search(doc)
        out.append(Case(path, m.group(1), m.group(2), req.group(1) if req else None,
                        hint=bool(EXPECTED_LOW.search(doc)), processes=int(launch.group(1)) if launch else 1))
    return out


def available(case: Case) -> bool:
    try:
        import torch
    except ImportError:
        return False
    if case.processes > 1 and not torch.distributed.is_available():
        return False
    if case.requires == "cuda":
        return torch.cuda.is_available()
    # (any other requirement names a package: a framework's scripts need it installed)
    return case.requires is None or importlib.util.find_spec(case.requires) is not None


# Each script runs under its own limit: the slowest takes about 10 s on the quiet 2-core dev machine
# (two at a time) and 40 s while other work loads it; SCRIPT_BUDGET_S is times how much slower it runs now.
SCRIPT_BUDGET_S = 150.0
CALIBRATION_S = 0.032  # calibration_job() on the quiet dev machine
MAX_SLOWDOWN = 6.0


def calibration_job() -> float:
    """Seconds for a fixed CPU-bound job in one thread (a Python loop and small matmuls, like a script's step)."""
    import torch

    a = torch.ones(64, 64)
    started = time.perf_counter()
    x = 0
    for i in range(1_000_000):
        x += i
    for _ in range(1000):
        a @ a
    return time.perf_counter() - started


def slowdown() -> float:
    """How many times slower than the idle dev machine this one runs now, from 1 to MAX_SLOWDOWN (median of 5)."""
    times = sorted(calibration_job() for _ in range(5))
    return min(max(times[2] / CALIBRATION_S, 1.0), MAX_SLOWDOWN)


def longest_wait_s(scripts: int = 1, jobs: int = 2) -> float:
    """The most a caller can wait for `scripts` results: each may time out twice at the largest limit,
    behind the scripts already running."""
    return 2 * SCRIPT_BUDGET_S * MAX_SLOWDOWN * (-(-scripts // jobs) + 1) + 60


class Runner:
    """Runs cases on `jobs` threads, each script under its own limit scaled to the machine's speed and
    retried once when it runs out; `result(case)` waits for that case alone, moving it to the front if it
    has not started. Leaving the `with` block stops what is queued and kills what runs."""

    def __init__(self, selected: list[Case], jobs: int = 2, workdir: Path | None = None, run_args=None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="modeldebug-detection-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.run_args = run_args  # case -> more `modeldebug run` options (benchmarks/live.py: --alerts, --stop-on)
        self.cases = [c for c in selected if available(c)]
        self.factor = slowdown()
        self._queue = list(self.cases)
        self._done: dict[str, Result] = {}
        self._running: dict[int, subprocess.Popen] = {}
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(max(jobs, 1))]
        for t in self._threads:
            t.start()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def result(self, case: Case) -> Result:
        with self._cond:
            if case not in self.cases:
                raise KeyError(f"{case.key} was not given to this runner")
            if case in self._queue:
                self._queue.remove(case)
                self._queue.insert(0, case)
            while case.key not in self._done:
                self._cond.wait()
            return self._done[case.key]

    def results(self) -> list[Result]:
        return [self.result(c) for c in self.cases]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._queue.clear()
            running = list(self._running.values())
        for proc in running:
            _kill_group(proc)  # its worker thread collects it
        for t in self._threads:
            t.join(timeout=30)

    def _work(self) -> None:
        while True:
            with self._cond:
                if self._closed or not self._queue:
                    return
                case = self._queue.pop(0)
            try:
                r = self._run(case)
            except Exception as exc:  # noqa: BLE001 - one broken case must not hang every waiter
                r = Result(case, -1, 0.0, error=f"harness failed: {exc!r}", report_written=False)
            with self._cond:
                self._done[case.key] = r
                self._cond.notify_all()

    def _run(self, case: Case) -> Result:
        limits = []
        for attempt in range(2):
            if attempt:
                self.factor = slowdown()  # the machine may have become busier since the start
            limits.append(SCRIPT_BUDGET_S * self.factor)
            r = self._once(case, limits[-1])
            if r is not None:
                return r
        return Result(case, -1, sum(limits), report_written=False,
                      error=f"timed out twice, after {limits[0]:.0f} s and {limits[1]:.0f} s")

    def _once(self, case: Case, limit: float) -> Result | None:
        """One run of the script; None when it ran past `limit` (it and its children are killed)."""
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        out = self.workdir / f"{case.key}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "modeldebug", "run", "--store", str(self.workdir / f"{case.key}.db"),
               "--json", str(out), *(self.run_args(case) if self.run_args else []), "--", *launcher(case), str(case.path)]
        started = time.perf_counter()
        # A session of its own, so a timeout kills the training script with `modeldebug run`.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=self.workdir, start_new_session=True)
        with self._cond:
            self._running[proc.pid] = proc
            if self._closed:
                _kill_group(proc)
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # a child that left the group still holds the pipes
                pass
            return None
        finally:
            with self._cond:
                self._running.pop(proc.pid, None)
        seconds = time.perf_counter() - started
        if not out.exists():
            return Result(case, proc.returncode, seconds, error=(stderr or stdout)[-3000:], report_written=False)
        return Result(case, proc.returncode, seconds, findings=json.loads(out.read_text())["findings"])


def launcher(case: Case) -> list[str]:
    """The command that starts a case's script (before its path): python, or torchrun's module."""
    if case.processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(case.processes)]
    return [sys.executable]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_all(selected: list[Case], jobs: int = 2, workdir: Path | None = None) -> list[Result]:
    with Runner(selected, jobs, workdir) as runner:
        return runner.results()


def score(results: list[Result]) -> dict:
    kinds: dict[str, dict] = {}
    for r in results:
        if not r.case.broken:
            continue
        k = kinds.setdefault(r.case.kind, {"cases": 0, "detected": 0, "detected_any": 0, "cause_first": 0})
        k["cases"] += 1
        k["detected"] += r.detected()
        k["detected_any"] += r.detected(serious_only=False)
        k["cause_first"] += r.cause_first()
    healthy = [r for r in results if r.case.healthy]
    broken = [r for r in results if r.case.broken]
    hints = [r for r in results if r.case.hint]
    return {
        "kinds": kinds,
        "broken": len(broken),
        "detected": sum(r.detected() for r in broken),
        "detected_any": sum(r.detected(serious_only=False) for r in broken),
        "cause_first": sum(r.cause_first() for r in broken),
        "healthy": len(healthy),
        "false_alarms": sum(len(r.false_alarms()) for r in healthy),
        "healthy_with_alarms": [r.case.key for r in healthy if r.false_alarms()],
        "hints": len(hints),
        "hints_right": sum(r.hint_right() for r in hints),
    }


def table(results: list[Result], s: dict) -> str:
    lines = [f"{'kind':24} {'detected':>9} {'any sev.':>9} {'cause 1st':>10}"]
    for kind, k in sorted(s["kinds"].items()):
        lines.append(f"{kind:24} {k['detected']:>4}/{k['cases']:<4} {k['detected_any']:>4}/{k['cases']:<4} "
                     f"{k['cause_first']:>5}/{k['cases']:<4}")
    lines.append(f"{'all broken scripts':24} {s['detected']:>4}/{s['broken']:<4} {s['detected_any']:>4}/{s['broken']:<4} "
                 f"{s['cause_first']:>5}/{s['broken']:<4}")
    lines.append(f"healthy scripts: {s['healthy']}, false alarms (medium/high): {s['false_alarms']}"
                 + (f" in {', '.join(s['healthy_with_alarms'])}" if s["healthy_with_alarms"] else ""))
    if s["hints"]:
        lines.append(f"harmless symptoms (expected at low only): {s['hints']}, right: {s['hints_right']}")
    for r in results:
        if r.case.hint and not r.hint_right():
            lines.append(f"  hint {r.case.key}: " + (", ".join(found(f) for f in r.findings) or "no finding"))
    misses = [r for r in results if r.case.broken and not r.detected()]
    for r in misses:
        got = ", ".join(found(f) for f in r.findings) or (r.error.splitlines() or ["no finding"])[-1]
        lines.append(f"  missed {r.case.key}: {got}")
    wrong_cause = [r for r in results if r.case.broken and r.detected(False) and not r.cause_first()]
    for r in wrong_cause:
        first = r.matching(False)[0]
        lines.append(f"  cause of {r.case.key}: planted {r.case.cause}, named {first['causes']}")
    for r in results:
        if r.case.healthy and r.false_alarms():
            lines.append(f"  false alarm in {r.case.key}: " + ", ".join(found(f) for f in r.false_alarms()))
    return "\n".join(lines)


def per_script(results: list[Result]) -> str:
    """One line per script: what was planted and every finding, in report order."""
    width = max((len(r.case.key) for r in results), default=0)
    lines = []
    for r in results:
        got = " ".join(found(f) for f in r.findings) or (
            "no finding" if r.report_written else "no report: " + (r.error.splitlines() or [""])[-1])
        ok = not r.false_alarms() if r.case.healthy else r.hint_right() if r.case.hint else r.detected()
        mark = "ok " if ok else "-- "
        lines.append(f"{mark}{r.case.key:{width}} {r.seconds:5.1f} s  planted {r.case.kind}: {got}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", help="regex on script names")
    parser.add_argument("--json", help="write per-script results here")
    parser.add_argument("--workdir", help="keep each script's report and run store here (default: a temporary folder)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--pending", action="store_true", help="score tests/faults/pending/ instead of tests/faults/")
    which.add_argument("--all", action="store_true", help="score tests/faults/ and tests/faults/pending/")
    args = parser.parse_args()
    started = time.perf_counter()
    folders = (PENDING,) if args.pending else (FAULTS, PENDING) if args.all else (FAULTS,)
    selected = cases(args.only, folders)
    results = run_all(selected, jobs=args.jobs, workdir=Path(args.workdir) if args.workdir else None)
    s = score(results)
    print(table(results, s))
    if args.pending or args.all:
        print(per_script(results))
    skipped = [c.name for c in selected if not available(c)]
    if skipped:
        print(f"skipped (need a GPU): {', '.join(skipped)}")
    print(f"{len(results)} scripts in {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"score": s, "results": [
            {"name": r.case.key, "kind": r.case.kind, "cause": r.case.cause, "exit_code": r.exit_code,
             "seconds": round(r.seconds, 2), "findings": [{k: f[k] for k in ("kind", "severity", "causes", "location", "step")} for f in r.findings],
             "error": r.error} for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
