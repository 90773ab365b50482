"""`modeldebug run`: run an unmodified script with the instrumentation injected, then diagnose it.

The script runs in a child process whose PYTHONPATH starts with ``collect/boot`` (its
sitecustomize starts the collector once torch is imported, see ``collect/autopatch``). The child
writes to the run store; this parent process owns the run's final status, diagnoses the run from
the store and writes the reports, also when the child crashed, was interrupted or was killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from modeldebug import live
from modeldebug.analysis import analyze
from modeldebug.collect.autopatch import ENV_RUN
from modeldebug.config import DebuggingConfig
from modeldebug.store import RunStore
from modeldebug.types import SEVERITY_ORDER, Report, RunInfo

BOOT_DIR = Path(__file__).parent / "collect" / "boot"


@dataclass
class RunResult:
    report: Report
    exit_code: int  # the script's own exit code (negative: killed by that signal)
    written: list[str] = field(default_factory=list)

    def cli_exit_code(self, fail_on: str | None) -> int:
        """The script's exit code, or 1 when findings reach ``fail_on`` in a run that otherwise passed."""
        code = self.exit_code if self.exit_code >= 0 else 128 - self.exit_code
        if fail_on and code == 0:
            limit = SEVERITY_ORDER[fail_on]
            if any(SEVERITY_ORDER[f.severity] <= limit for f in self.report.findings):
                return 1
        return code


def resolve_command(command: Sequence[str]) -> list[str]:
    """A bare ``python``/``python3`` means the interpreter modeldebug runs in (the one it is installed in)."""
    if not command:
        raise ValueError("Expected a command to run after `--`, e.g. `modeldebug run -- python train.py`")
    command = list(command)
    if command[0] in ("python", "python3") and not os.environ.get("VIRTUAL_ENV"):
        command[0] = sys.executable
    elif shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise ValueError(f"Cannot find the program {command[0]!r} to run; check the command after `--`.")
    return command


def run_script(
    command: Sequence[str],
    *,
    config: DebuggingConfig | None = None,
    store_path: str | os.PathLike = ".modeldebug/runs.db",
    json_out: str | os.PathLike | None = None,
    html_out: str | os.PathLike | None = None,
    issue: str | None = None,
    show_status: bool = True,
    lm=None,
) -> RunResult:
    """Run ``command`` watched and diagnose it; ``lm`` (LMSettings or a dspy LM) adds the LM's explanation.

    An LM failure never changes the result: its notice is kept in ``report.metrics["llm"]``.
    """
    config = config or DebuggingConfig()
    command = resolve_command(command)
    if html_out:
        from modeldebug.report.html import require_extra

        require_extra()  # before the run: a missing extra should not cost the user a training run
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    store = RunStore(store_path)
    store.create_run(RunInfo(id=run_id, command=list(command), status="running"), config)
    store.close()

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BOOT_DIR), env.get("PYTHONPATH")) if p)
    env[ENV_RUN] = json.dumps(
        {"run_id": run_id, "store": str(Path(store_path).resolve()), "config": config.model_dump(), "command": command}
    )
    env["MODELDEBUG_PYTHON"] = sys.executable

    started = time.time()
    interrupted = False
    status = live.Status(run_id, store_path).start() if show_status and live.wanted() else None
    if status is not None:
        proc, master = live.spawn(command, env)
    else:
        proc = subprocess.Popen(command, env=env)

    def forward_interrupt(signum, frame):
        # A terminal's Ctrl-C reaches the child too; a SIGINT sent to us alone is passed on.
        nonlocal interrupted
        interrupted = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGINT, forward_interrupt)
    try:
        if status is not None:
            live.pump(master, status)
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)

    store = RunStore(store_path)
    try:
        info = next((r for r in store.list_runs(limit=1000) if r.id == run_id), None)
        status = info.status if info else "running"
        if code != 0 and status in ("running", "completed"):
            status = "interrupted" if interrupted or code in (-signal.SIGINT, 130) else "crashed"
        elif interrupted and status == "running":
            status = "interrupted"
        fields = {"status": status, "exit_code": code}
        if info is None or info.duration_s == 0:
            fields["duration_s"] = time.time() - started
        store.update_run(run_id, **fields)
        report = _analyze(store, run_id)
        if issue:
            report.metrics["issue"] = issue
        if lm is not None:
            from modeldebug.llm import enrich_report

            report, _ = enrich_report(report, lm, issue=issue)
        store.save_report(run_id, report)
    finally:
        store.close()
    written = []
    if json_out:
        write_json(report, json_out)
        written.append(str(json_out))
    if html_out:
        from modeldebug.report.html import write_html

        write_html(report, html_out, issue=issue)
        written.append(str(html_out))
    return RunResult(report=report, exit_code=code, written=written)


def _analyze(store: RunStore, run_id: str) -> Report:
    """Diagnose rank 0's run; for a torchrun job, with every rank's outcome (which rank failed
    first, ranks left waiting) recorded first and the NaN finding naming its rank."""
    from modeldebug.collect.distributed import summarize_ranks
    from modeldebug.collect.records import EventRecord

    ranks = summarize_ranks(store, run_id)
    if ranks:
        store.add(run_id, EventRecord(step=None, type="ranks", data={"ranks": ranks}))
    evidence = store.load_evidence(run_id)
    return analyze(evidence)


def write_json(report: Report, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json())
