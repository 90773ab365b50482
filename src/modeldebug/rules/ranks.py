"""What the distributed rules share (not a rule): each rank's outcome when the job ended."""

from __future__ import annotations

from modeldebug.events import RankExit, Ranks
from modeldebug.evidence import Evidence


def rank_outcomes(ev: Evidence) -> list[dict]:
    """Each rank's outcome, as ``modeldebug run`` recorded it when the job ended (event ``ranks``)."""
    found = ev.events_of(Ranks)
    return found[-1].ranks if found else []


def data_parallel(ev: Evidence) -> str:
    """What the ranks trained under, as rank 0 recorded it at its exit ("DDP", "FSDP", "FSDP2"):
    "" when none was found, "DDP" for a store older than the record."""
    exits = ev.events_of(RankExit)
    if not exits or exits[-1].parallel is None:
        return "DDP"
    return exits[-1].parallel


def reduction_of(parallel: str) -> str:
    """The collective that spreads one rank's gradients to the others under ``parallel``."""
    return {"DDP": "DDP's gradient all-reduce", "FSDP": "FSDP's gradient reduce-scatter",
            "FSDP2": "FSDP2's gradient reduce-scatter"}.get(parallel, "the gradient all-reduce")


# distributed_desync's reason, by what the ranks trained under ({} is its name).
DESYNC_REASONS = {
    "DDP": " {} averages gradients, not parameters, so the replicas now train different models.",
    "FSDP": " Under {} these parameters are whole on every rank (not sharded: ignored modules or replicas),"
            " and ranks holding different values of them now train different models.",
    "": " The ranks now train different models.",
}
DESYNC_REASONS["FSDP2"] = DESYNC_REASONS["FSDP"]
