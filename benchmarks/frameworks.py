"""What `modeldebug run` costs and sees under each framework: the healthy fault-suite scripts of
torch.compile, Lightning, the Hugging Face Trainer, accelerate, AMP and FSDP, timed plain and
under `modeldebug run`, interleaved side by side.

    python benchmarks/frameworks.py [--repeats 3] [--only PATTERN] [--broken] [--json out.json]

For each healthy script (tests/faults/healthy__*<framework>*.py): the wall time of the whole
script, plain (`python script.py`, or torchrun for `launch: torchrun N`) and watched, in pairs
whose order alternates (plain first, then watched first, ...) so that a machine getting busier
slows both alike; the ratio of the medians and the range of the pairs' ratios. Wall time is what
the user waits for: it includes `modeldebug run`'s start (~0.2-0.3 s) and the diagnosis after the
script. Then what the watched run saw (optimizer steps, layers with sampled statistics, validation
passes, the monitor's own share of the run, `run.monitor_overhead.time_fraction`) and what it
found (any severity; a healthy script should have nothing at medium or high). `--broken` also
runs each framework's broken scripts once under `modeldebug run` and shows the planted kind next
to what was found.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import SCRIPT_BUDGET_S, Case, available, cases, launcher, slowdown  # noqa: E402

# name fragment of a fault script -> the framework it trains with, in the README's order
FRAMEWORKS = {
    "compiled": "torch.compile",
    "lightning": "Lightning",
    "hf_trainer": "HF Trainer",
    "accelerate": "accelerate",
    "amp": "AMP (GradScaler)",
    "fsdp": "FSDP",
}
SERIOUS = ("high", "medium")


def framework_of(case: Case) -> str | None:
    # a whole word of the name (fsdp1, fsdp2 too): "amp" is not the one in "clamp" or "example"
    words = case.name.replace("__", "_")
    return next((name for key, name in FRAMEWORKS.items() if re.search(rf"(^|_){key}\d*(_|$)", words)), None)


@dataclass
class Timing:
    script: str
    framework: str
    plain_s: list[float] = field(default_factory=list)
    watched_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    report: dict | None = None  # the last watched run's report

    @property
    def ratio(self) -> float | None:
        if not self.plain_s or not self.watched_s:
            return None
        return statistics.median(self.watched_s) / statistics.median(self.plain_s)

    @property
    def pair_ratios(self) -> list[float]:
        return [w / p for p, w in zip(self.plain_s, self.watched_s)]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")


def run_plain(case: Case, workdir: Path, limit: float) -> tuple[float, str]:
    return _timed([*launcher(case), str(case.path)], workdir, limit)


def run_watched(case: Case, workdir: Path, limit: float) -> tuple[float, str, dict | None]:
    out = workdir / f"{case.key}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "modeldebug", "run", "--store", str(workdir / f"{case.key}.db"), "--json", str(out),
           "--", *launcher(case), str(case.path)]
    seconds, error = _timed(cmd, workdir, limit)
    report = json.loads(out.read_text()) if out.exists() else None
    return seconds, error, report


def _timed(cmd: list[str], workdir: Path, limit: float) -> tuple[float, str]:
    """Wall seconds of ``cmd`` and, when it failed, the end of its output."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, f"timed out after {limit:.0f} s"
    seconds = time.perf_counter() - started
    return seconds, "" if proc.returncode == 0 else f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-500:]}"


def time_case(case: Case, repeats: int, workdir: Path) -> Timing:
    timing = Timing(case.name, framework_of(case) or "?")
    limit = SCRIPT_BUDGET_S * slowdown()
    for i in range(repeats):
        order = ("plain", "watched") if i % 2 == 0 else ("watched", "plain")
        pair: dict[str, float] = {}
        for which in order:
            if which == "plain":
                seconds, error = run_plain(case, workdir, limit)
            else:
                seconds, error, report = run_watched(case, workdir, limit)
                timing.report = report or timing.report
            if error:
                timing.errors.append(f"{which}: {error}")
            else:
                pair[which] = seconds
        if len(pair) == 2:  # only complete pairs count: a ratio needs both halves
            timing.plain_s.append(pair["plain"])
            timing.watched_s.append(pair["watched"])
    return timing


def watched_summary(report: dict | None) -> dict:
    """What the watched run saw and found."""
    if report is None:
        return {}
    run, metrics = report["run"], report.get("metrics", {})
    validation = metrics.get("validation") or {}
    overhead = run.get("monitor_overhead") or {}
    return {
        "steps": run.get("steps", 0),
        "layers": len(metrics.get("layers", [])),
        "validation_passes": len(validation.get("step", [])),
        "models": [m["name"] for m in run.get("models", [])],
        "monitor_fraction": overhead.get("time_fraction"),
        "monitor_stopped": metrics.get("monitor_stopped"),
        "found": [f"{f['kind']}({f['severity']})" for f in report.get("findings", [])],
        "false_alarms": [f["kind"] for f in report.get("findings", []) if f["severity"] in SERIOUS],
    }


def table(timings: list[Timing]) -> str:
    lines = ["| framework | healthy script | plain s (median) | watched s (median) | ratio | pair ratios | steps | "
             "layers | validation passes | monitor share | found |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for t in timings:
        w = watched_summary(t.report)
        plain = f"{statistics.median(t.plain_s):.2f}" if t.plain_s else "-"
        watched = f"{statistics.median(t.watched_s):.2f}" if t.watched_s else "-"
        ratio = f"{t.ratio:.2f}x" if t.ratio else "-"
        pairs = ", ".join(f"{r:.2f}" for r in t.pair_ratios) or "-"
        share = f"{w['monitor_fraction']:.1%}" if w.get("monitor_fraction") is not None else "-"
        found = ", ".join(w.get("found", [])) or ("nothing" if w else "no report")
        if w.get("monitor_stopped"):
            found += f" (monitor stopped: {w['monitor_stopped'].get('error', '')[:80]})"
        lines.append(f"| {t.framework} | {t.script} | {plain} | {watched} | {ratio} | {pairs} | {w.get('steps', '-')} | "
                     f"{w.get('layers', '-')} | {w.get('validation_passes', '-')} | {share} | {found} |")
    return "\n".join(lines)


def broken_table(rows: list[dict]) -> str:
    lines = ["| framework | broken script | planted | found | planted kind at medium/high |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['framework']} | {r['script']} | {r['planted']} | {', '.join(r['found']) or 'nothing'} | "
                     f"{'yes' if r['detected'] else 'no'} |")
    return "\n".join(lines)


def run_broken(selected: list[Case], workdir: Path) -> list[dict]:
    rows = []
    for case in selected:
        _, error, report = run_watched(case, workdir, SCRIPT_BUDGET_S * slowdown())
        findings = (report or {}).get("findings", [])
        rows.append({
            "framework": framework_of(case), "script": case.name, "planted": f"{case.kind} ({case.cause})",
            "found": [f"{f['kind']}({f['severity']})" for f in findings] or ([error[:80]] if error else []),
            "detected": any(f["kind"] == case.kind and f["severity"] in SERIOUS for f in findings),
        })
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="plain/watched pairs per script")
    parser.add_argument("--only", help="only scripts whose name matches this regular expression")
    parser.add_argument("--broken", action="store_true", help="also run each framework's broken scripts once")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    found = [c for c in cases(args.only) if framework_of(c) and available(c)]
    healthy = [c for c in found if c.healthy]
    if not healthy and not (args.broken and found):
        print(f"no framework scripts found (names with {', '.join(FRAMEWORKS)})", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="modeldebug-frameworks-"))
    order = list(FRAMEWORKS.values())
    healthy.sort(key=lambda c: (order.index(framework_of(c)), c.name))
    timings = []
    for case in healthy:
        print(f"timing {case.name} ({args.repeats} pairs)...", file=sys.stderr, flush=True)
        timings.append(time_case(case, args.repeats, workdir))
    print(f"modeldebug run vs plain, {time.strftime('%Y-%m-%d')}, wall time of the whole script "
          f"(median of {args.repeats} interleaved pairs):\n")
    print(table(timings))
    for t in timings:
        for error in t.errors:
            print(f"\n{t.script}: {error}")
    broken_rows = []
    if args.broken:
        broken = sorted((c for c in found if c.broken), key=lambda c: (order.index(framework_of(c)), c.name))
        print(f"\nrunning {len(broken)} broken scripts once each...", file=sys.stderr, flush=True)
        broken_rows = run_broken(broken, workdir)
        print("\n" + broken_table(broken_rows))
    if args.json:
        data = {"timings": [{**asdict(t), "ratio": t.ratio, "watched": watched_summary(t.report)} for t in timings],
                "broken": broken_rows}
        for t in data["timings"]:
            t.pop("report")
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
