"""What the distributed rules share (not a rule): each rank's outcome when the job ended."""

from __future__ import annotations

from modeldebug.events import Ranks
from modeldebug.evidence import Evidence


def rank_outcomes(ev: Evidence) -> list[dict]:
    """Each rank's outcome, as ``modeldebug run`` recorded it when the job ended (event ``ranks``)."""
    found = ev.events_of(Ranks)
    return found[-1].ranks if found else []
