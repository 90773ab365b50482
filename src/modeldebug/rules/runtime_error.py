"""runtime_error: the watched script raised; say where, why and how to fix it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule
from modeldebug.types import Finding


def _data(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data") or {}
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return {"text": data}
    return data if isinstance(data, dict) else {}


def _last(events: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    found = [e for e in events if e.get("type") == kind]
    return found[-1] if found else None


@register
@dataclass
class RuntimeErrorRule(Rule):
    """The exception that ended the run, explained (``modeldebug.diagnose``).

    Reads: ``events`` of type ``runtime_error`` (a Finding diagnosed in-process from the live
    exception, where the traceback's frames give the module, its inputs and parameters), else
    ``traceback`` (the formatted traceback: ``diagnose_text``), else ``exception`` (type and
    message only).
    Fires: once, when any of them is present. Severity high: the run crashed.
    Recommends: what the diagnosis derives (cause among shape, dtype, device, in-place, out of
    memory, NaN, other), with sizes and types taken from the error: ``nn.Linear(2048, 10)``,
    ``x.float()``, ``x.to(device)``, ... No thresholds.
    """

    id = "runtime_error"
    kind = "runtime_error"
    reads = ("events.runtime_error", "events.traceback", "events.exception")

    def check(self, ev: Evidence) -> list[Finding]:
        events = ev.events or []
        stored = _last(events, "runtime_error")
        if stored is not None:
            data = _data(stored)
            try:
                f = Finding.model_validate(data)
            except ValueError:
                f = None
            if f is not None:
                if f.step is None and stored.get("step") is not None:
                    f = f.model_copy(update={"step": int(stored["step"])})
                return [f]
        text = None
        tb = _last(events, "traceback")
        if tb is not None:
            text = _data(tb).get("text")
        exc = _last(events, "exception")
        if not text and exc is not None:
            data = _data(exc)
            text = f"{data.get('type') or 'Error'}: {data.get('message') or ''}"
        if not text:
            return []
        from modeldebug.diagnose import diagnose_text  # a package of parsers and regexes: only for a run that failed

        f = diagnose_text(text)
        step = (exc or tb or {}).get("step")
        if step is not None:
            f = f.model_copy(update={"step": int(step)})
        return [f]
