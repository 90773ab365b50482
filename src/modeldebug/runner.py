"""`modeldebug run`: run an unmodified script with the instrumentation injected, then diagnose it.

The script runs in a child process whose PYTHONPATH starts with ``collect/boot`` (its
sitecustomize starts the collector once torch is imported, see ``collect/autopatch``). The child
writes to the run store; this parent process owns the run's final status, diagnoses the run from
the store and writes the reports, also when the child crashed, was interrupted or was killed.

Start-up is on the user's clock: before the script starts, this process loads only the standard
library, the CLI and the sqlite run store (no torch, numpy, pydantic or rich). What the diagnosis
needs afterwards is imported in a background thread while the script runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from modeldebug import live, processes
from modeldebug.collect.autopatch import ENV_RUN
from modeldebug.processes import PASSED_ON
from modeldebug.store import DEFAULT_PATH
from modeldebug.store_rescue import finish_run, start_run

if TYPE_CHECKING:
    from modeldebug.config import DebuggingConfig
    from modeldebug.store import RunStore
    from modeldebug.types import Report

BOOT_DIR = Path(__file__).parent / "collect" / "boot"

# Imported while the script runs, for the diagnosis at its end (each failure is left for the
# import at the point of use to report).
DIAGNOSIS_MODULES = (
    "numpy",
    "numpy.ma",  # np.median imports it on first use
    "modeldebug.types",
    "modeldebug.config",
    "modeldebug.evidence",
    "modeldebug.records",
    "modeldebug.collect.distributed",
    "modeldebug.rules",
    "modeldebug.rules.rank_attribution",
    "modeldebug.analysis",
    "modeldebug.pipeline",
    "modeldebug.llm.analysis",  # the pipeline splits an LM's analysis off the report it saves
)


@dataclass
class RunResult:
    report: Report
    exit_code: int  # the script's own exit code (negative: killed by that signal)
    written: list[str] = field(default_factory=list)
    signal: int | None = None  # SIGINT/SIGTERM/SIGHUP sent to `modeldebug run` itself
    stopped: bool = False  # interrupted by --stop-on

    def cli_exit_code(self, fail_on: str | None) -> int:
        """The script's exit code, or 1 when findings reach ``fail_on`` in a run that otherwise passed.

        Only the rules' findings count: what a language model added is explanation, not
        measurement, and must not change a CI job's outcome."""
        code = self.exit_code if self.exit_code >= 0 else 128 - self.exit_code
        if self.stopped:
            return code or 1  # stopped early by a finding: never a pass, even if the script exits 0
        if self.signal in PASSED_ON:
            return 128 + self.signal  # what the script did with the signal, the job was stopped
        if fail_on and code == 0:
            from modeldebug.types import SEVERITY_ORDER

            limit = SEVERITY_ORDER[fail_on]
            measured = [f for f in self.report.shown_findings() if f.source != "llm"]  # suppressed: expected
            if any(SEVERITY_ORDER[f.severity] <= limit for f in measured):
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
    config: DebuggingConfig | Mapping[str, Any] | None = None,
    store_path: str | os.PathLike = DEFAULT_PATH,
    json_out: str | os.PathLike | None = None,
    html_out: str | os.PathLike | None = None,
    issue: str | None = None,
    show_status: bool = True,
    lm=None,
    prepare: Sequence[str] = (),
    diagnose_with: Mapping[str, Any] | None = None,
    alerts: str | os.PathLike | None = None,
    stop_on: str | None = None,
    live_budget: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    output: Any = None,
) -> RunResult:
    """Run ``command`` watched and diagnose it; ``lm`` (LMSettings or a dspy LM) adds the LM's explanation.

    ``config`` is a DebuggingConfig or a mapping of its fields; a mapping is validated by the
    watched process (as DebuggingConfig, when it starts watching), so the command line starts the
    script without importing pydantic. ``prepare`` names modules the caller uses on the result
    (the CLI's report printer): they are imported while the script runs.

    ``alerts``: a file that gets one JSON line per finding as it first holds (and when its severity
    changes) while the script runs; ``stop_on`` (``high``, ``medium`` or kinds, comma-separated):
    the script is interrupted as by Ctrl-C when such a finding appears, and the run's status is
    ``stopped`` (see :mod:`modeldebug.live_diagnosis`). ``diagnose_with``: the project's settings for the diagnosis at the end, passed on to
    :func:`modeldebug.pipeline.diagnose` (``options``, ``suppressions``, ``baseline``).

    ``extra_env``: more variables for the script (`modeldebug fix`'s candidate and window);
    ``output``: a file the script's stdout and stderr go to instead of the terminal.

    An LM failure never changes the result: its notice is kept in ``report.metrics.llm``.
    """
    if config is None:
        settings: dict[str, Any] = {}
    elif isinstance(config, Mapping):
        settings = dict(config)
    else:
        settings = config.model_dump()
    command = resolve_command(command)
    if html_out:
        from modeldebug.report.html import require_extra

        require_extra()  # before the run: a missing extra should not cost the user a training run
    from modeldebug.store import RunStore

    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_info = {"id": run_id, "command": list(command), "status": "running"}
    store_path = start_run(store_path, run_info, settings)  # a bad store: a side store, and the user is told

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BOOT_DIR), env.get("PYTHONPATH")) if p)
    env[ENV_RUN] = json.dumps(
        {"run_id": run_id, "store": str(Path(store_path).resolve()), "config": settings, "command": command}
    )
    env["MODELDEBUG_PYTHON"] = sys.executable
    env.update(extra_env or {})

    started = time.time()
    signals = _Signals()  # before the script starts: a SIGTERM from now on is the script's too
    show = show_status and live.wanted()
    watcher = None
    warm_up = threading.Thread(target=_prepare, args=(DIAGNOSIS_MODULES + tuple(prepare),),
                               name="modeldebug-prepare", daemon=True)
    if show or alerts or stop_on:
        from modeldebug.live_diagnosis import LiveDiagnosis

        # its first pass imports what the warm-up imports, so it waits for it
        watcher = LiveDiagnosis(run_id, store_path, alerts_path=alerts, stop_on=stop_on, on_stop=signals.stop_for,
                                diagnose_with=dict(diagnose_with or {}), after=warm_up,
                                **({"budget": live_budget} if live_budget else {}))
    status = live.Status(run_id, store_path, diagnosis=watcher).start() if show else None
    try:
        if status is not None:
            proc, master = live.spawn(command, env)
        else:
            proc = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    except OSError as exc:  # not executable, a bad #! line: nothing ran, and the run must not stay "running"
        if status is not None:
            status.stop()
        signals.restore()
        with RunStore(store_path) as store:
            store.update_run(run_id, status="crashed", exit_code=126, duration_s=time.time() - started)
        raise ValueError(f"The command could not start: {exc.strerror or exc}: {command[0]}") from None
    except BaseException:
        signals.restore()
        raise
    warm_up.start()
    if watcher is not None:
        watcher.start()

    signals.watch(proc)
    try:
        if status is not None:
            live.pump(master, status, proc)
        code = proc.wait()
        ended_by = signals.received or _signal_of(code)
        if ended_by:
            processes.end_leftovers()  # what the script started, left running: ended as the script was
    finally:
        signals.restore_sigint()  # SIGTERM and SIGHUP stay held until the report is written
    # The main thread imports nothing while the warm-up thread may be importing: two threads
    # importing the same modules in different orders can deadlock on the import locks.
    warm_up.join()

    stopped_by = None
    if watcher is not None:
        watcher.stop_polling()  # no pass after the script: the diagnosis below is the last word
        stopped_by = watcher.stopped_by

    def finish(path: Path):
        with RunStore(path) as store:
            _close_run(store, run_id, code, signals.received, started, stopped_by=stopped_by)
            _record_ranks(store, run_id)
            from modeldebug.pipeline import diagnose

            return diagnose(store, run_id, issue=issue, lm=lm, json_out=json_out, html_out=html_out,
                            **(diagnose_with or {}))

    try:
        diagnosis = finish_run(store_path, run_id, run_info, finish)  # damage found now: finished in a side store
    finally:
        signals.restore()
    if watcher is not None:
        watcher.finish(diagnosis.report.findings, steps=diagnosis.report.run.steps)  # what the passes missed, now
    return RunResult(report=diagnosis.report, exit_code=code, written=diagnosis.written, signal=signals.received,
                     stopped=stopped_by is not None)


class _Signals:
    """What `modeldebug run` does with the signals it gets while the script runs: SIGINT is passed
    on (a terminal's Ctrl-C reaches the script too); SIGTERM and SIGHUP are passed on, and the
    script is killed if it has not ended ``GRACE_S`` later. The first signal is remembered."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.received: int | None = None
        self._kill_timer: threading.Timer | None = None
        self._previous = {}
        for signum in (signal.SIGINT, *processes.PASSED_ON):
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except (ValueError, OSError):  # not the main thread (run_script called from a thread)
                pass

    def watch(self, proc: subprocess.Popen) -> None:
        """The script has started: a signal received while it was starting is passed on now."""
        self.proc = proc
        if self.received is not None:
            self._on_signal(self.received, None)

    def _on_signal(self, signum, frame) -> None:
        if self.received is None or self.received == signal.SIGINT:
            self.received = signum
        if self.proc is None or self.proc.poll() is not None:
            return  # not started yet (watch passes it on), or ended: the report is being written
        self.proc.send_signal(signum)
        if signum != signal.SIGINT and self._kill_timer is None:
            self._kill_timer = threading.Timer(processes.GRACE_S, self._kill)
            self._kill_timer.daemon = True
            self._kill_timer.start()

    def stop_for(self, finding) -> None:
        """--stop-on: interrupt the script as Ctrl-C does (it may save a checkpoint); killed if it has
        not ended ``GRACE_S`` later. Called from the live diagnosis' thread."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGINT) if _own_group(proc) else proc.send_signal(signal.SIGINT)
        except OSError:
            return
        if self._kill_timer is None:
            self._kill_timer = threading.Timer(processes.GRACE_S, self._kill)
            self._kill_timer.daemon = True
            self._kill_timer.start()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def restore_sigint(self) -> None:
        # Once the script has ended, Ctrl-C stops modeldebug itself (a slow LM call) as before.
        self._restore(signal.SIGINT)

    def restore(self) -> None:
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        for signum in list(self._previous):
            self._restore(signum)

    def _restore(self, signum: int) -> None:
        previous = self._previous.pop(signum, None)
        if previous is not None:
            signal.signal(signum, previous)


def _signal_of(code: int) -> int | None:
    """The signal that ended the script: it died of it, or exited 128+signum for SIGINT, SIGTERM or
    SIGHUP (Python's KeyboardInterrupt, the watched script's own handling, a shell's convention)."""
    if code < 0:
        return -code
    if code - 128 in (signal.SIGINT, *processes.PASSED_ON):
        return code - 128
    return None


def _own_group(proc: subprocess.Popen) -> bool:
    """Whether the script leads a process group of its own (then its children get the signal too)."""
    try:
        return os.getpgid(proc.pid) == proc.pid
    except OSError:
        return False


def _close_run(store: RunStore, run_id: str, code: int, received: int | None, started: float,
               stopped_by=None) -> None:
    """The run's final status, exit code and signal; its step count and models from what is stored
    when the script could not close the run itself (killed). ``stopped_by``: the finding --stop-on
    stopped it for (status ``stopped``)."""
    info = next((r for r in store.list_runs(limit=1000, prefix=run_id) if r.id == run_id), None)
    status = info.status if info else "running"
    ended_by = received or _signal_of(code)
    if ended_by in processes.PASSED_ON:
        status = "terminated"
    elif code != 0 and status in ("running", "completed"):
        status = "interrupted" if ended_by == signal.SIGINT else "crashed"
    elif received == signal.SIGINT and status == "running":
        status = "interrupted"
    elif status == "running":  # ended well without being watched (it never imported torch)
        status = "completed"
    fields: dict[str, Any] = {"status": status, "exit_code": code}
    if ended_by and status != "completed":
        fields["signal"] = processes.signal_name(ended_by)
    if stopped_by is not None:
        from modeldebug.live_diagnosis import stopped_by_text

        fields.update(status="stopped", stopped_by=stopped_by_text(stopped_by))
    if info is None or info.duration_s == 0:
        fields["duration_s"] = time.time() - started
    if info is not None and info.status == "running":
        steps, _ = store.progress(run_id)
        fields["steps"] = max(steps, info.steps)
    store.update_run(run_id, **fields)


def _prepare(names: Sequence[str]) -> None:
    """While the script runs: adopt what it leaves behind (ctypes, ~15 ms, is off the user's clock
    here: an orphan is adopted when its parent ends, so any time before the script ends will do),
    and import what the diagnosis needs."""
    processes.become_subreaper()
    _import_quietly(names)


def _import_quietly(names: Sequence[str]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a missing optional module: the import where it is used says so
            pass


def _record_ranks(store: RunStore, run_id: str) -> None:
    """For a torchrun job, every rank's outcome (which rank failed first, ranks left waiting), recorded
    before the diagnosis so that the NaN finding can name its rank."""
    from modeldebug.collect.distributed import summarize_ranks
    from modeldebug.events import Ranks

    ranks = summarize_ranks(store, run_id)
    if ranks:
        store.add(run_id, Ranks(ranks=ranks).record(step=None))
