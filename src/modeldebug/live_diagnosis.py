"""Findings while training runs: the rules on the evidence so far, in a background thread.

The same code as the diagnosis at the end (:func:`modeldebug.analysis.find_checked`, with the
project's rule options and suppressions) runs on what the store holds now, at a cadence bounded by
a cost budget: each pass waits ``took / budget`` (at least ``min_interval_s``), so the rules take
about ``budget`` of the wall time (1% by default, as the sampling schedule). A finding is raised
once, when it first holds (``new``), and again when its severity changes (``changed``); each is
passed to ``on_finding``, appended to the alerts file as one JSON line (flushed), and checked
against ``stop_on``. Suppressed findings (expected by the project) never alert or stop a run.

It runs in the parent process of `modeldebug run` (reading the store the script writes: nothing
runs in the training process), or inside the training process for ``md.watch(..., on_finding=...,
stop_on=...)``, where a stop is raised as :class:`StopTraining` at the next optimizer step.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from modeldebug.types import Finding

BUDGET = 0.01  # fraction of wall time the live rules may take
MIN_INTERVAL_S = 1.0  # the store is flushed about once a second: polling faster sees nothing new
QUICK_S = 0.2  # how often a cheap query asks whether a non-finite step has appeared (written at once)
# A pass judges an unfinished run: a trend seen in its first steps, a burst of load on the machine,
# or a model or optimizer found later can make a finding hold that the run does not bear out. So a
# finding alerts only once it has held, at the same severity, from one pass to a later one that
# has seen CONFIRM_GROWTH times the steps; acute kinds alert at once (a NaN stops a run now).
ACUTE_KINDS = frozenset({"nan_or_inf", "runtime_error", "rank_failure", "memory_pressure"})
CONFIRM_GROWTH = 1.5
SEVERITIES = ("high", "medium")


class StopTraining(Exception):
    """Raised in the training thread at the next optimizer step after a finding that
    ``md.watch(..., stop_on=...)`` names appeared; ``finding`` is that finding."""

    def __init__(self, finding: "Finding"):
        where = f" at {finding.location}" if finding.location else ""
        super().__init__(f"modeldebug stopped training: {finding.severity} {finding.kind}{where} "
                         f"(step {finding.step}): {finding.message}")
        self.finding = finding


@dataclass(frozen=True)
class StopOn:
    """Which findings stop a run: every finding at or above a severity, or any of some kinds."""

    severity: str | None = None
    kinds: frozenset[str] = frozenset()

    def matches(self, f: "Finding") -> bool:
        if f.suppressed or f.source != "rules":
            return False
        if self.severity is not None:
            return SEVERITIES.index(f.severity) <= SEVERITIES.index(self.severity) if f.severity in SEVERITIES else False
        return f.kind in self.kinds

    def __str__(self) -> str:
        return self.severity or ",".join(sorted(self.kinds))


def parse_stop_on(text: str | StopOn | None) -> StopOn | None:
    """``high``, ``medium``, or finding kinds separated by commas; ValueError says what is valid."""
    if text is None or isinstance(text, StopOn):
        return text
    value = str(text).strip()
    if value in SEVERITIES:
        return StopOn(severity=value)
    from modeldebug.types import is_kind

    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if not is_kind(k)]
    if not kinds or unknown:
        raise ValueError(f"--stop-on takes high, medium, or finding kinds separated by commas (nan_or_inf,"
                         f"exploding_gradient); {', '.join(unknown) or repr(value)} is none of them")
    return StopOn(kinds=frozenset(kinds))


def stopped_by_text(f: "Finding") -> str:
    """How a run's ``stopped_by`` names the finding that stopped it."""
    where = f" at {f.location}" if f.location else ""
    step = f" (step {f.step})" if f.step is not None else ""
    return f"{f.severity} {f.kind}{where}{step}"


def key(f: "Finding") -> tuple[str, str | None]:
    return f.kind, f.location


class LiveDiagnosis:
    """Diagnoses the run ``run_id`` of the store at ``store_path`` again and again while it runs."""

    def __init__(
        self,
        run_id: str,
        store_path: str | os.PathLike,
        *,
        alerts_path: str | os.PathLike | None = None,
        on_finding: Callable[[str, "Finding"], Any] | None = None,
        stop_on: StopOn | str | None = None,
        on_stop: Callable[["Finding"], Any] | None = None,
        diagnose_with: dict[str, Any] | None = None,
        budget: float = BUDGET,
        min_interval_s: float = MIN_INTERVAL_S,
        after: threading.Thread | None = None,
    ):
        self.run_id = run_id
        self.store_path = Path(store_path)
        self.alerts_path = Path(alerts_path) if alerts_path else None
        self.on_finding = on_finding
        self.stop_on = parse_stop_on(stop_on)
        self.on_stop = on_stop
        self.options = (diagnose_with or {}).get("options")
        self.suppressions = list((diagnose_with or {}).get("suppressions", ()))
        self.budget = budget
        self.min_interval_s = min_interval_s
        self.findings: list[Finding] = []  # the latest pass's, most severe first
        self.newest: Finding | None = None  # the latest medium/high finding raised
        self.stopped_by: Finding | None = None
        self.passes = 0
        self.seconds = 0.0  # time spent in passes
        self.steps_seen = 0
        self.error: str | None = None  # why it gave up, if it did
        self._after = after  # a thread importing what a pass needs: two importing threads can deadlock
        self._known: dict[tuple, str] = {}  # finding key -> severity last alerted
        self._held: dict[tuple, tuple[str, int]] = {}  # the last pass's findings -> (severity, steps first held)
        self._alerts = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="modeldebug-live-diagnosis")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "LiveDiagnosis":
        if self.alerts_path is not None:
            self.alerts_path.parent.mkdir(parents=True, exist_ok=True)
            self._alerts = open(self.alerts_path, "a", encoding="utf-8")
        self._thread.start()
        return self

    def stop_polling(self) -> None:
        """No pass after this one (the caller's diagnosis is the last word); returns at once."""
        self._stop.set()

    def stop(self) -> None:
        """Stop polling, wait for a pass under way, and close the alerts file."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if self._alerts is not None:
            self._alerts.close()
            self._alerts = None

    # ------------------------------------------------------------------ one pass

    def poll(self, acute_only: bool = False) -> list[tuple[str, "Finding"]]:
        """Diagnose the evidence so far once; the alerts it raised (``new``/``changed``, finding).
        ``acute_only``: only the rules of ACUTE_KINDS (a NaN has appeared and a run may be stopped on
        it: they take a fraction of a whole pass); the whole pass follows."""
        from modeldebug.analysis import find_checked
        from modeldebug.errors import DebuggingError
        from modeldebug.project_config import apply_suppressions
        from modeldebug.store import RunStore
        from modeldebug.types import Report

        started = time.monotonic()
        try:
            with RunStore(self.store_path, read_only=True) as store:
                evidence = store.load_evidence(self.run_id)
        except (DebuggingError, sqlite3.Error, ValueError):
            return []  # the run is not in the store yet, or the store is busy: next pass
        self.steps_seen = len(evidence.steps)
        if not self.steps_seen:
            return []
        findings, _ = find_checked(evidence, _acute_rules() if acute_only else None, self.options)
        if self.suppressions:
            findings = apply_suppressions(Report(run=evidence.run, findings=findings), self.suppressions).findings
        if acute_only:
            self.seconds += time.monotonic() - started
            return self._raise([f for f in findings if f.kind in ACUTE_KINDS], partial=True)
        self.findings = findings
        self.passes += 1
        self.seconds += time.monotonic() - started
        return self._raise(findings)

    def _raise(self, findings: list["Finding"], final: bool = False,
               partial: bool = False) -> list[tuple[str, "Finding"]]:
        raised = []
        if not partial:  # (an acute-only pass says nothing of the other findings)
            held, self._held = self._held, {}
            for f in findings:
                severity, since = held.get(key(f), (None, 0))
                self._held[key(f)] = (f.severity, since if severity == f.severity else self.steps_seen)
        for f in findings:
            if f.suppressed:
                continue
            before = self._known.get(key(f))
            if before == f.severity:
                continue
            if not (final or f.kind in ACUTE_KINDS or self._confirmed(f)):
                continue  # not yet borne out by a later pass
            event = "new" if before is None else "changed"
            self._known[key(f)] = f.severity
            raised.append((event, f))
            if f.severity in SEVERITIES:
                self.newest = f
            self._write(event, f)
            if self.on_finding is not None:
                try:
                    self.on_finding(event, f)
                except Exception:  # the user's callback: its failure must not end the diagnosis
                    pass
            if self.stopped_by is None and self.stop_on is not None and self.stop_on.matches(f):
                self.stopped_by = f
                if self.on_stop is not None:
                    self.on_stop(f)
        return raised

    def _confirmed(self, f: "Finding") -> bool:
        since = self._held[key(f)][1]
        return self.steps_seen > since and self.steps_seen >= CONFIRM_GROWTH * since

    def _write(self, event: str, f: "Finding") -> None:
        if self._alerts is None:
            return
        line = {"event": event, "run": self.run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "steps_seen": self.steps_seen, "finding": f.model_dump(mode="json")}
        self._alerts.write(json.dumps(line) + "\n")
        self._alerts.flush()  # for tail -f and log shippers: each line as it happens

    def finish(self, findings: list["Finding"], steps: int | None = None) -> None:
        """The diagnosis at the end: what it found that no pass raised yet is alerted now (no pass of
        its own: the final report's findings are the same code's on all the evidence), with the
        run's ``steps`` as the steps seen."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if steps is not None:
            self.steps_seen = steps
        self.findings = list(findings)
        self.stop_on = None  # the run is over: nothing left to stop
        self._raise(self.findings, final=True)
        if self._alerts is not None:
            self._alerts.close()
            self._alerts = None

    def _loop(self) -> None:
        if self._after is not None:
            self._after.join()
        next_pass = time.monotonic() + self.min_interval_s
        seen_bad = -1  # the last non-finite step a pass has looked at
        while not self._stop.wait(QUICK_S):
            try:
                bad = self._nonfinite_after(seen_bad)
                if bad is None and time.monotonic() < next_pass:
                    continue
                started = time.monotonic()
                if bad is not None and self.stop_on is not None and self.stopped_by is None:
                    self.poll(acute_only=True)  # to stop on a NaN at once, before the whole pass
                self.poll()
                if bad is not None:
                    seen_bad = bad
                took = time.monotonic() - started
            except Exception as exc:  # a diagnosis that cannot run now must never get in training's way
                self.error = f"{type(exc).__name__}: {exc}"
                return
            next_pass = time.monotonic() + max(self.min_interval_s, took / self.budget - took)

    def _nonfinite_after(self, step: int) -> int | None:
        """A NaN or inf appeared (the collector writes the first one at once): diagnose now, not at
        the next pass the budget allows."""
        from modeldebug.store import RunStore

        try:
            with RunStore(self.store_path, read_only=True) as store:
                return store.nonfinite_after(self.run_id, step)
        except Exception:  # not there yet, or busy: the next pass will tell
            return None


def _acute_rules() -> list:
    from modeldebug.rules import registry

    return [cls for cls in registry().values() if cls.kind in ACUTE_KINDS]


def attach(dbg, *, on_finding=None, stop_on=None, alerts=None, budget: float = BUDGET) -> LiveDiagnosis:
    """Live diagnosis of a Debugger's own run, in a thread of the training process: ``stop_on``
    raises StopTraining in the training thread when the next optimizer step begins (the update it
    would apply is not applied). The Debugger's store must be a file (an in-memory store has no
    second reader)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    if dbg.store.path is None:
        raise ValueError("Live findings (on_finding, stop_on, alerts) read the run store from a second thread: "
                         "give md.watch a store file (store=... or DebuggingConfig(store_path=...)).")
    live = LiveDiagnosis(dbg.run_id, dbg.store.path, alerts_path=alerts, on_finding=on_finding, stop_on=stop_on,
                         diagnose_with=dict(dbg.diagnose_with), budget=budget)

    def stop_here(optimizer, args, kwargs):
        found = live.stopped_by
        if found is not None and not live.raised:
            live.raised = True
            live.stop_action(found)

    def raise_stop(found):
        raise StopTraining(found)

    live.raised = False
    live.stop_action = raise_stop  # (a framework's callback ends its loop instead: integrations.stop_softly)
    live.handle = register_optimizer_step_pre_hook(stop_here) if live.stop_on is not None else None
    return live.start()


def detach(live: LiveDiagnosis | None) -> None:
    """Stop a live diagnosis attached by :func:`attach` and remove its hook."""
    if live is None:
        return
    handle = getattr(live, "handle", None)
    if handle is not None:
        handle.remove()
    live.stop()
