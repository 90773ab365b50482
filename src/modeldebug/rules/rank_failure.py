"""rank_failure: a rank died and took the job down; which rank failed first."""

from __future__ import annotations

from dataclasses import dataclass

from modeldebug.events import Ranks
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, best_practice
from modeldebug.rules.ranks import rank_outcomes
from modeldebug.types import Finding


@register
@dataclass
class RankFailure(Rule):
    """The rank where a distributed job's failure began.

    Reads: the ``ranks`` event (each rank's status, error and the wall time it failed, from every
    rank's run when the job ended).
    Fires: when a rank crashed or died. When one rank fails, the others fail after it: their
    next collective loses its peer (a gloo/NCCL connection error) or torchrun kills them. The first
    failure is the earliest rank with an error of its own (not a lost connection); else a rank that
    died without a word (SIGKILL: the out-of-memory killer, a lost node); else the earliest crash.
    Severity: high. ``evidence.rank`` is the rank that failed first; its own run (``<run>.rank<r>``)
    holds its steps and traceback.
    Recommends: start from that rank's own run and traceback (the other ranks' errors are
    consequences of it).
    """

    id = "rank_failure"
    kind = "rank_failure"
    reads = ("events.ranks",)

    def check(self, ev: Evidence) -> list[Finding]:
        ranks = rank_outcomes(ev)
        first = Ranks(ranks=ranks).first_failed()
        if first is None:
            return []
        rank = first["rank"]
        if first.get("error_type"):
            what = f"raised {first['error_type']}: {first.get('message', '')[:300]}"
        elif first.get("lost"):
            what = "died without a word (killed with SIGKILL, e.g. by the out-of-memory killer, or its node was lost)"
        else:
            what = f"ended {first.get('status')}"
        others = [r for r in ranks if r["rank"] != rank and r.get("status") != "completed"]
        msg = f"Rank {rank} failed first, at step {first.get('steps')}: it {what}."
        if others:
            msg += (" The other ranks failed after it (" + ", ".join(
                f"rank {r['rank']}: {r.get('error_type') or ('killed' if r.get('killed_by_signal') else r.get('status'))}"
                for r in others) + ").")
        return [self.finding(
            severity="high", confidence=0.9, location=None, step=first.get("steps"), message=msg,
            evidence={"rank": rank, "run_id": first.get("run_id"), "error_type": first.get("error_type"),
                      "ranks": {str(r["rank"]): r.get("status") for r in ranks}},
            causes=["other"],
            recommendations=[best_practice(
                f"Start from rank {rank}'s own run and traceback: `modeldebug report {first.get('run_id')}`; the "
                "errors of the other ranks are consequences.", None)],
        )]
