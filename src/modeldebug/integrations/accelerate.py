"""accelerate loops: ``with watch_accelerator(accelerator) as watch: ...train...``.

Call it after ``accelerator.prepare(...)``; it watches what was prepared (or the ``models`` and
``optimizers`` you give), unwrapped: the model inside DDP, the torch optimizer inside the
``AcceleratedOptimizer``::

    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    with watch_accelerator(accelerator, json="report.json") as watch:
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = criterion(model(x), y)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step(); scheduler.step(); optimizer.zero_grad()
    print(watch.report.findings)

What accelerate changes is taken into account by the collector itself (so ``modeldebug run`` of an
unmodified accelerate script sees the same):

* a step is an optimizer step that was applied: under ``accelerator.accumulate`` the torch
  optimizer steps only when ``sync_gradients`` is set, and the backward passes before it are that
  step's gradient accumulation;
* the loss is the one given to ``accelerator.backward(loss)``, not ``loss / gradient_accumulation_steps``
  (nor, under fp16, the GradScaler's scaled loss; ``collect/amp.py``);
* steps the GradScaler skipped are steps marked ``scaler_skipped``, and the loss-scale series is kept;
* gradient norms are taken before ``accelerator.clip_grad_norm_`` clips them.

When the block ends the run is diagnosed: ``watch.report``, written to ``json``/``html`` if given,
and (``log_findings``) its summary numbers and findings go to the accelerator's trackers
(``accelerator.log``) from the main process. Under ``modeldebug run`` the run's own debugger is
used (nothing is watched twice; the parent process writes the run's report) and ``watch.report``
is the run so far. Nothing here raises into the training loop: an internal error is logged once
and the loop goes on unwatched.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import TYPE_CHECKING, Any, Iterable

from modeldebug.errors import require

if TYPE_CHECKING:
    from modeldebug.collect.session import Debugger
    from modeldebug.config import DebuggingConfig
    from modeldebug.types import Report

log = logging.getLogger(__name__)


def watch_accelerator(accelerator, models: Any = None, optimizers: Any = None, *,
                      config: "DebuggingConfig | None" = None, store: Any = None, json: str | None = None,
                      html: str | None = None, issue: str | None = None, log_findings: bool = True) -> "AcceleratorWatch":
    """Watch the training an ``accelerate.Accelerator`` runs; use as a context manager.

    ``models`` / ``optimizers``: one or several, prepared or not (default: everything
    ``accelerator.prepare`` returned). ``config``/``store`` as for :func:`modeldebug.watch`;
    ``json``/``html``: where to write the report when the block ends; ``issue``: what you see.
    """
    require("accelerate", "accelerate")
    return AcceleratorWatch(accelerator, models, optimizers, config=config, store=store, json=json, html=html,
                            issue=issue, log_findings=log_findings)


class AcceleratorWatch:
    """What :func:`watch_accelerator` returns: ``debugger`` while it watches, ``report`` after."""

    def __init__(self, accelerator, models, optimizers, *, config, store, json, html, issue, log_findings):
        self.accelerator = accelerator
        self.json, self.html, self.issue, self.log_findings = json, html, issue, log_findings
        self.report: "Report | None" = None
        self.debugger: "Debugger | None" = None
        self._own = False  # our Debugger (else the one of `modeldebug run`)
        try:
            self.debugger = self._debugger(config, store)
            for model in _listed(models, getattr(accelerator, "_models", [])):
                self.debugger.attach(accelerator.unwrap_model(model))
            for optimizer in _listed(optimizers, getattr(accelerator, "_optimizers", [])):
                self.debugger.attach_optimizer(getattr(optimizer, "optimizer", optimizer))  # inside AcceleratedOptimizer
        except Exception:
            log.exception("modeldebug could not watch this accelerate run; it trains unwatched")
            self.debugger = None

    def _debugger(self, config, store) -> "Debugger":
        from modeldebug.collect import autopatch

        active = getattr(autopatch, "_active", None)
        if active is not None and not active._stopped:  # under `modeldebug run`: its run, watched once
            discovery = getattr(active, "discovery", None)
            if discovery is not None:
                discovery.remove()  # the models are given: no global module hooks to find them
            return active
        from modeldebug.collect.session import Debugger

        self._own = True
        return Debugger(config, store=store, command=list(sys.argv))

    # ------------------------------------------------------------------ the block

    def __enter__(self) -> "AcceleratorWatch":
        if self.debugger is not None and self._own:
            try:
                self.debugger.start()
            except Exception:
                log.exception("modeldebug could not start watching; the run trains unwatched")
                self.debugger = None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = "completed" if exc is None else "interrupted" if isinstance(exc, KeyboardInterrupt) else "crashed"
        self.finish(status, exc)
        return False

    def finish(self, status: str = "completed", error: BaseException | None = None) -> "Report | None":
        """Stop watching (our own run) and diagnose; called when the block ends."""
        dbg, self.debugger = self.debugger, None
        if dbg is None:
            return self.report
        try:
            from modeldebug.pipeline import diagnose

            if self._own:
                dbg.stop(status, error=error)
                diagnosis = diagnose(dbg.store, dbg.run_id, issue=self.issue, json_out=self.json, html_out=self.html)
            else:  # `modeldebug run` closes the run and writes its report: this is the run so far
                dbg.store.update_run(dbg.run_id, steps=dbg.step_count)
                diagnosis = diagnose(dbg.store, dbg.run_id, evidence=dbg.evidence(), issue=self.issue, save=False,
                                     json_out=self.json, html_out=self.html)
            self.report = diagnosis.report
            if self.log_findings and getattr(self.accelerator, "is_main_process", True):
                log_report(self.accelerator, self.report)
        except Exception:
            log.exception("modeldebug could not diagnose this accelerate run")
        return self.report


def log_report(accelerator, report: "Report") -> None:
    """The report's summary numbers and findings (text) to the accelerator's trackers, at the last
    step; a tracker that refuses them is skipped."""
    from modeldebug.export.content import build

    content = build(report)
    values: dict[str, Any] = {k: v for k, v in content.final.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    for tracker in getattr(accelerator, "trackers", None) or []:
        try:
            tracker.log(values, step=report.run.steps)
            if type(tracker).__name__ != "MLflowTracker":  # (MLflow's tracker takes numbers only)
                tracker.log({"modeldebug/findings": content.findings_text or "No problems found."}, step=report.run.steps)
        except Exception:  # noqa: BLE001
            log.warning("modeldebug could not log its findings to %s", type(tracker).__name__, exc_info=True)


def _listed(given: Any, prepared: Iterable[Any]) -> list[Any]:
    if given is None:
        return list(prepared)
    return list(given) if isinstance(given, (list, tuple)) else [given]
