"""uneven_batches: ranks that run different numbers of batches (the job hangs at the end of an epoch)."""

from __future__ import annotations

from dataclasses import dataclass

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, fix
from modeldebug.rules.ranks import rank_outcomes
from modeldebug.types import Finding


@register
@dataclass
class UnevenBatches(Rule):
    """Ranks that ran out of batches at different points.

    Reads: the ``ranks`` event (each rank's final status and step count, collected from every
    rank's run when the job ended).
    Fires: when one rank finished normally while another was still training: the other was
    left in a collective waiting for it (it then crashed with a connection error, was killed,
    or hangs until the process group's timeout), or ran more steps. DDP needs every rank to run
    the same number of forward/backward passes; a data split by hand (``data[rank::world]``, an
    IterableDataset sharded per rank, ``drop_last=False`` on uneven shards) breaks that.
    Severity: high (the job hangs or dies at the end of an epoch). ``evidence.rank`` is the rank
    that ran out of batches first.
    Causes: other (uneven data split).
    Recommends: DistributedSampler (pads every rank to the same count), ``drop_last=True``, or the
    ``Join`` context manager for deliberately uneven inputs.
    """

    id = "uneven_batches"
    kind = "uneven_batches"
    reads = ("events.ranks",)

    def check(self, ev: Evidence) -> list[Finding]:
        ranks = rank_outcomes(ev)
        done = [r for r in ranks if r.get("status") == "completed"]
        left = [r for r in ranks if r.get("status") != "completed"]
        more = [r for r in ranks if done and r.get("steps", 0) > max(d.get("steps", 0) for d in done)]
        if not done or not (left or more):
            return []
        early = min(done, key=lambda r: (r.get("steps", 0), r.get("time") or 0))
        waiting = sorted({r["rank"] for r in left + more})
        steps = {str(r["rank"]): r.get("steps") for r in ranks}
        msg = (f"Rank {early['rank']} finished after {early.get('steps')} steps while rank(s) "
               f"{', '.join(map(str, waiting))} still had batches to train on and were left waiting for it in a "
               f"collective (steps per rank: {', '.join(f'{k}: {v}' for k, v in steps.items())}): the ranks got "
               "different numbers of batches.")
        return [self.finding(
            severity="high", confidence=0.8, location=None, step=early.get("steps"), message=msg,
            evidence={"rank": early["rank"], "waiting_ranks": waiting, "steps": steps,
                      "status": {str(r["rank"]): r.get("status") for r in ranks}},
            causes=["other"],
            recommendations=[
                fix("Split the data with DistributedSampler (every rank gets the same number of batches) and "
                    "call set_epoch each epoch.",
                    "sampler = DistributedSampler(ds, drop_last=True)\nloader = DataLoader(ds, batch_size=B, "
                    "sampler=sampler)"),
                fix("For inputs that are uneven on purpose, wrap the loop in DDP's Join context manager.",
                    "from torch.distributed.algorithms.join import Join\nwith Join([model]):\n    for x, y in loader: ..."),
            ],
        )]
