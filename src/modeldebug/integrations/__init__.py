"""Callbacks for the frameworks people train with; each module imports its framework lazily.

    from modeldebug.integrations.lightning import ModelDebugCallback      # Lightning
    from modeldebug.integrations.transformers import ModelDebugCallback   # Hugging Face Trainer
    from modeldebug.integrations.accelerate import watch_accelerator      # accelerate loops
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)


def never_raises(switch_off: Callable[[Any, str, Exception], Any]):
    """Wraps a callback's hooks: skipped once ``self._off``, and an error of ours sets it and calls
    ``switch_off(self, hook name, exc)`` instead of raising into the framework's training loop."""

    def wrap(hook):
        @functools.wraps(hook)
        def run(self, *args, **kwargs):
            if self._off:
                return None
            try:
                return hook(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the user's training goes on without us
                self._off = True
                switch_off(self, hook.__name__, exc)
                return None

        return run

    return wrap


def stop_softly(dbg: Any, stop: Callable[[Any], Any]) -> None:
    """``stop_on`` under a framework: at the optimizer step after a finding matched, ``stop(finding)``
    tells the framework's loop to end (Lightning's ``should_stop``, the HF Trainer's control) in place
    of the StopTraining that ``md.watch`` raises, which would escape ``fit``/``train``."""
    live = getattr(dbg, "live", None)
    if live is None or getattr(live, "handle", None) is None:
        return

    def stop_loop(found):
        try:
            stop(found)
        except Exception:  # noqa: BLE001 - the user's training goes on without us
            log.debug("modeldebug could not stop the training loop", exc_info=True)

    live.stop_action = stop_loop
