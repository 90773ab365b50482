"""runtime_error: the watched script raised; say where, why and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass

from modeldebug.events import RuntimeErrorDiagnosis, ScriptException, Traceback
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule
from modeldebug.types import Finding


@register
@dataclass
class RuntimeErrorRule(Rule):
    """The exception that ended the run, explained (``modeldebug.diagnose``).

    Reads: ``events`` of type ``runtime_error`` (a Finding diagnosed in-process from the live
    exception, where the traceback's frames give the module, its inputs and parameters), else
    ``traceback`` (the formatted traceback: ``diagnose_text``), else ``exception`` (type and
    message only).
    Fires: once, when any of them is present, except for KeyboardInterrupt and SystemExit (Ctrl-C,
    a signal: the run's status says interrupted or terminated). Severity high: the run crashed.
    Recommends: what the diagnosis derives (cause among shape, dtype, device, in-place, out of
    memory, NaN, other), with sizes and types taken from the error: ``nn.Linear(2048, 10)``,
    ``x.float()``, ``x.to(device)``, ... No thresholds.
    """

    id = "runtime_error"
    kind = "runtime_error"
    reads = ("events.runtime_error", "events.traceback", "events.exception")

    def check(self, ev: Evidence) -> list[Finding]:
        stored = _last(ev.events_of(RuntimeErrorDiagnosis))
        if stored is not None:
            try:
                f = Finding.model_validate(stored.finding)
            except ValueError:
                f = None
            if f is not None:
                if f.step is None and stored.at_step is not None:
                    f = f.model_copy(update={"step": int(stored.at_step)})
                return [f]
        tb, exc = _last(ev.events_of(Traceback)), _last(ev.events_of(ScriptException))
        text = tb.text if tb is not None else None
        if _interruption(exc, text):
            return []  # Ctrl-C or a signal ended the run: the run's status says so, it is no fault
        if not text and exc is not None:
            text = f"{exc.type or 'Error'}: {exc.message or ''}"
        if not text:
            return []
        from modeldebug.diagnose import diagnose_text  # ~1200 lines and their regexes: only for a run that failed

        f = diagnose_text(text)
        step = (exc or tb).at_step
        if step is not None:
            f = f.model_copy(update={"step": int(step)})
        return [f]


INTERRUPTIONS = ("KeyboardInterrupt", "SystemExit")


def _interruption(exc: ScriptException | None, text: str | None) -> bool:
    if exc is not None:
        return exc.type in INTERRUPTIONS
    last = text.strip().splitlines()[-1] if text and text.strip() else ""
    return last.split(":", 1)[0].strip() in INTERRUPTIONS


def _last(events: list):
    return events[-1] if events else None
