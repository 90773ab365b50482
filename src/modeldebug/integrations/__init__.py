"""Callbacks for the frameworks people train with; each module imports its framework lazily.

    from modeldebug.integrations.lightning import ModelDebugCallback      # Lightning
    from modeldebug.integrations.transformers import ModelDebugCallback   # Hugging Face Trainer
    from modeldebug.integrations.accelerate import watch_accelerator      # accelerate loops
"""

from __future__ import annotations

import functools
from typing import Any, Callable


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
