"""The Hugging Face Trainer: ``Trainer(..., callbacks=[ModelDebugCallback()])``.

The callback watches the Trainer's model (the plain Debugger: hooks, patches, the run store) and
gives it what only the Trainer knows:

* the losses of a step's micro-batches add up to the step's loss (the Trainer divides each by the
  accumulation steps, or by the token count of all of them, before ``backward``): the recorded
  loss is the one the Trainer logs, not loss/K;
* ``eval_loss`` from ``on_evaluate`` is the validation loss (a model's own loss may call no torch
  loss function; transformers' models sum the cross-entropy and divide by the token count);
* optimizer steps the GradScaler skipped (``on_optimizer_step``), counted in the summary.

Gradient norms are taken before clipping by the collector itself, where ``clip_grad_norm_`` is
called (transformers 5 calls ``on_pre_optimizer_step`` after clipping, so the callback would see
clipped gradients there). At ``on_train_end`` the report is written (``<output_dir>/modeldebug-report.json``
by default) and its findings and summary go into the Trainer's logs (``trainer.log``: every
reporter the Trainer has, TensorBoard, MLflow, W&B, sees them) and ``state.log_history``.

Under ``modeldebug run`` the zero-code debugger adopts the Trainer when it finds the model (at the
first backward, ``adopt_trainer``): it adds this callback, or binds the user's own, to itself, so
nothing is watched twice and the parent process writes the report. Nothing here raises into the
Trainer: an internal error switches the callback off with one log line.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import weakref
from typing import Any

from modeldebug.errors import require
from modeldebug.integrations import never_raises, stop_softly

require("transformers", "transformers")
from transformers import Trainer, TrainerCallback  # noqa: E402

log = logging.getLogger(__name__)

REPORT_NAME = "modeldebug-report.json"
SEVERITY_LEVEL = {"high": 3, "medium": 2, "low": 1}  # a finding's kind in the logs: its severity as a number
_STACK_DEPTH = 64  # frames looked at for the Trainer that calls us


def _log_and_switch_off(callback, method: str, exc: Exception) -> None:
    log.error("modeldebug's Trainer callback stopped after an internal error in %s", method, exc_info=exc)


_safe = never_raises(_log_and_switch_off)  # a callback method that never raises into the Trainer


class ModelDebugCallback(TrainerCallback):
    """Watch a Trainer's run with modeldebug.

    ``config``: a ``DebuggingConfig`` (the project's configuration file applies as with ``md.watch``);
    ``store``: the run store (path or RunStore); ``json``/``html``: where to write the report at the
    end (``json`` defaults to ``<output_dir>/modeldebug-report.json``; False writes none); ``rules``,
    ``on_finding``, ``stop_on``, ``alerts`` as ``md.watch`` takes them (``stop_on`` ends training as
    ``control.should_training_stop`` does, after the step under way). After training,
    ``callback.report`` is the Report and ``callback.debugger`` the Debugger.
    """

    def __init__(self, config: Any = None, *, store: Any = None, json: str | os.PathLike | bool | None = None,
                 html: str | os.PathLike | None = None, rules: Any = (), on_finding: Any = None,
                 stop_on: Any = None, alerts: Any = None):
        self.config = config
        self.store = store
        self.watch_options = dict(rules=rules, on_finding=on_finding, stop_on=stop_on, alerts=alerts)
        self.stopped_by: Any = None  # the finding stop_on stopped the training for
        self.json = json
        self.html = html
        self.debugger: Any = None
        self.report: Any = None
        self.skipped_steps = 0
        self._own = False  # the callback started the debugger (not the zero-code one of `modeldebug run`)
        self._trainer: Trainer | None = None
        self._off = False
        self._ended = False

    def bind(self, debugger: Any, trainer: Trainer | None = None) -> None:
        """Use ``debugger`` (started by someone else: ``modeldebug run``) for this Trainer's run."""
        self.debugger, self._own = debugger, False
        self._trainer = trainer or self._trainer
        debugger.steps.losses_add_up = True

    # ------------------------------------------------------------------ the Trainer's events

    @_safe
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self._trainer = self._trainer or trainer_on_stack()
        self._ended, self.stopped_by = False, None
        if self.debugger is not None and not self._own:
            return  # bound to the zero-code debugger
        active = _zero_code_debugger()
        if active is not None:
            self.bind(active)
            return
        from modeldebug.collect.session import watch

        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        dbg = watch(model, inner if _is_torch_optimizer(inner) else None, config=self.config, store=self.store,
                    **self.watch_options)
        stop_softly(dbg, self._stop_training)
        dbg.start()
        self.debugger, self._own = dbg, True
        dbg.steps.losses_add_up = True
        atexit.register(_close_unfinished, weakref.ref(dbg))  # training that raised never reaches on_train_end

    def _stop_training(self, finding: Any) -> None:
        self.stopped_by = finding  # (on_step_end tells the Trainer: its loop reads control there)
        log.warning("modeldebug stops the training: %s %s", finding.kind, finding.message)

    @_safe
    def on_step_end(self, args, state, control, **kwargs):
        if self.stopped_by is not None:
            control.should_training_stop = True
        return control

    @_safe
    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if getattr(optimizer, "step_was_skipped", False):  # GradScaler found inf/NaN gradients
            self.skipped_steps += 1

    @_safe
    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        dbg = self.debugger
        if dbg is not None and isinstance(loss, (int, float)) and not getattr(dbg, "_stopped", True):
            dbg.steps.validation.set_loss(float(loss))

    @_safe
    def on_train_end(self, args, state, control, **kwargs):
        dbg = self.debugger
        if dbg is None or self._ended:
            return
        self._ended = True
        if self._own:
            if self.stopped_by is not None:
                from modeldebug.live_diagnosis import StopTraining

                dbg.__exit__(StopTraining, StopTraining(self.stopped_by), None)  # status "stopped", and by what
            else:
                dbg.stop("completed")
            self.report = dbg.report()
            self._write(args)
        else:  # `modeldebug run` writes the report when the script ends: the findings so far
            from modeldebug.pipeline import evaluate

            dbg.steps.validation.flush(dbg.writer, dbg.steps.count)  # (the last evaluation is done)
            dbg.writer.meta(dbg.watched, final=False)
            self.report = evaluate(dbg.evidence())
        self._log(state, summary(self.report, self.skipped_steps))

    # ------------------------------------------------------------------ the end

    def _write(self, args) -> None:
        from modeldebug.pipeline import write_outputs

        path = self.json
        if path is None or path is True:
            path = os.path.join(args.output_dir, REPORT_NAME) if getattr(args, "output_dir", None) else None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_outputs(self.report, json_out=path or None, html_out=self.html)

    def _log(self, state, logs: dict[str, float]) -> None:
        for f in self.report.sorted_findings():
            if f.severity in ("high", "medium") and not getattr(f, "suppressed", False):
                log.warning("modeldebug: %s %s: %s", f.severity.upper(), f.kind, f.message)
        if self._trainer is not None:
            self._trainer.log(dict(logs))  # every reporter of the Trainer sees it, and state.log_history
        else:
            state.log_history.append({**logs, "step": state.global_step})


def summary(report: Any, skipped_steps: int = 0) -> dict[str, float]:
    """The report as numbers a Trainer can log: counts by severity, the monitor's cost, and each
    finding's kind with its severity (3 high, 2 medium, 1 low; the highest when a kind repeats)."""
    shown = [f for f in report.findings if not getattr(f, "suppressed", False)]  # (expected by the project)
    out: dict[str, float] = {"modeldebug/findings": len(shown)}
    for sev in SEVERITY_LEVEL:
        out[f"modeldebug/{sev}"] = sum(f.severity == sev for f in shown)
    overhead = getattr(report.run, "monitor_overhead", None)
    if overhead is not None:
        out["modeldebug/monitor_overhead"] = float(overhead.time_fraction)
    if skipped_steps:
        out["modeldebug/skipped_steps"] = skipped_steps
    for f in shown:
        key = f"modeldebug/{f.kind}"
        out[key] = max(out.get(key, 0), SEVERITY_LEVEL[f.severity])
    return out


# ---------------------------------------------------------------------- zero-code

def adopt_trainer(debugger: Any) -> bool:
    """Called by ``modeldebug run``'s debugger when it finds the model: if a Trainer is training it,
    give it the callback (first, so the findings it logs reach the Trainer's reporters before they
    close), or bind the user's own callback. True when a Trainer was adopted. A Trainer it cannot
    adopt is watched as a plain loop (the monitor stays on)."""
    try:
        trainer = trainer_on_stack()
        if trainer is None:
            return False
        callbacks = trainer.callback_handler.callbacks
        for cb in callbacks:
            if isinstance(cb, ModelDebugCallback):
                if cb.debugger is not debugger:
                    cb.bind(debugger, trainer)
                return True
        cb = ModelDebugCallback()
        cb.bind(debugger, trainer)
        callbacks.insert(0, cb)
        return True
    except Exception:
        log.exception("modeldebug could not adopt the Trainer; its loop is watched without its own numbers")
        return False


def trainer_on_stack() -> Trainer | None:
    """The Trainer whose method is running in this thread (the caller of our callbacks and patches)."""
    frame = sys._getframe(1)
    for _ in range(_STACK_DEPTH):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            obj = frame.f_locals.get("self")
            if isinstance(obj, Trainer):
                return obj
        frame = frame.f_back
    return None


def _close_unfinished(ref: "weakref.ref") -> None:
    """At exit: a run whose training raised (no on_train_end) is closed as crashed, its hooks removed."""
    dbg = ref()
    try:
        if dbg is not None and not dbg._stopped:
            dbg.stop("crashed")
    except Exception:
        pass


def _zero_code_debugger() -> Any:
    """The debugger of `modeldebug run` in this process, if any."""
    autopatch = sys.modules.get("modeldebug.collect.autopatch")
    active = getattr(autopatch, "_active", None)
    return active if active is not None and not getattr(active, "_stopped", False) else None


def _is_torch_optimizer(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.optim.Optimizer)
