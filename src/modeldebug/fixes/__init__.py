"""`modeldebug fix`: try candidate fixes for a script's root findings on short re-runs (issue 18).

``verify`` runs the windows and compares them, ``candidates`` builds the fixes to try, ``child``
applies one in the watched script. Loaded on first use: the watched script imports ``child`` only.
"""

from __future__ import annotations

from typing import Any

DEFAULT_STEPS = 300  # the probe window: long enough for the rules to see most symptoms on a small script
DEFAULT_CANDIDATES = 4


def __getattr__(name: str) -> Any:
    if name in ("fix", "run_fix", "FixSession"):
        from modeldebug.fixes import verify

        return getattr(verify, name)
    raise AttributeError(name)
