"""distributed_desync: parameters that differ across ranks (DDP replicas drifting apart)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, best_practice, col, fix, flag, g
from modeldebug.rules.ranks import DESYNC_REASONS, data_parallel
from modeldebug.types import Finding


@register
@dataclass
class DistributedDesync(Rule):
    """Ranks whose parameters differ from the others' after a step.

    Reads: ranks (the summaries rank 0 gathers every N steps, collect/distributed.py): per rank a
    float64 checksum of the parameters (sum over parameters of sum(p) + |p|), ``desync`` (differs
    from the reference: the checksum most ranks share, rank 0's on a tie, since DDP broadcasts
    rank 0's parameters at construction), the parameter that differs most.
    Fires: at the first gather where a rank's checksum differs from the reference by more than
    ``DESYNC_RTOL`` = 1e-6 of the sum of parameter norms. DDP replicas apply the same averaged
    gradients to the same parameters, so they stay bitwise equal: any larger difference is a
    real one, and it never heals by itself (gradients are averaged, parameters are not).
    Severity: high (the replicas train different models; the checkpoint of rank 0 is not what
    the others computed). ``evidence.rank`` is the first rank out of sync.
    Causes: other (per-rank seeds without a broadcast, parameters changed outside DDP on one
    rank, ``no_sync`` without a final synchronised backward, a module wrapped after it changed).
    Recommends: change parameters only through the optimizer, identically on every rank; seed
    identically or broadcast from rank 0; end every ``no_sync`` block with a synchronised step.
    """

    id = "distributed_desync"
    kind = "distributed_desync"
    reads = ("ranks.desync", "ranks.checksum", "ranks.desync_param", "ranks.checksum_rel_diff",
             "ranks.desync_param_diff", "events.rank_exit")

    def check(self, ev: Evidence) -> list[Finding]:
        t = ev.ranks
        if len(t) == 0:
            return []
        bad = flag(t, "desync")
        if not bad.any():
            return []
        steps, ranks = col(t, "step").astype(int), col(t, "rank").astype(int)
        first = int(steps[bad].min())
        at_first = bad & (steps == first)
        out_ranks = sorted({int(r) for r in ranks[bad]})
        rank = int(ranks[at_first].min())
        row = np.flatnonzero(at_first & (ranks == rank))[0]
        param = str(t["desync_param"][row]) if "desync_param" in t else ""
        earlier = steps[steps < first]
        in_sync = int(earlier.max()) if len(earlier) else None
        rel = float(col(t, "checksum_rel_diff")[row])
        where = f"between step {in_sync} and step {first}" if in_sync is not None else f"by step {first}"
        msg = (f"The parameters of rank {rank} differ from the other ranks' {where} (checksum off by "
               f"{g(rel)} of the parameter norms")
        msg += f"; most in {param})." if param else ")."
        parallel = data_parallel(ev)
        msg += DESYNC_REASONS.get(parallel, DESYNC_REASONS[""]).format(parallel)
        if len(out_ranks) > 1:
            msg += f" Ranks out of sync: {', '.join(map(str, out_ranks))}."
        return [self.finding(
            severity="high", confidence=0.95, location=param or None, step=first, message=msg,
            evidence={"rank": rank, "ranks": out_ranks, "first_step": first, "last_step_in_sync": in_sync,
                      "parameter": param or None, "checksum_rel_diff": rel,
                      "param_rel_diff": float(col(t, "desync_param_diff")[row]),
                      "gathers_out_of_sync": int(len(set(steps[bad].tolist()))), "parallel": parallel or None},
            causes=["other"],
            recommendations=[
                fix("Change parameters only through the optimizer (or identically on every rank): an in-place "
                    "edit, a re-initialisation or loading a checkpoint on one rank only desynchronises it.",
                    "if rank == 0: ...  # never touch model parameters under a rank condition"),
                fix("Call the DDP wrapper, not the module inside it: only the wrapper's forward sets up the "
                    "gradient all-reduce, so a forward through `ddp_model.module` leaves every rank its own "
                    "gradients.",
                    "ddp_model = DistributedDataParallel(model)\nloss = criterion(ddp_model(x), y)  # not ddp_model.module(x)"),
                fix("Seed every rank identically before building the model, or broadcast rank 0's parameters.",
                    "for p in model.parameters():\n    torch.distributed.broadcast(p.data, src=0)"),
                best_practice("End every `model.no_sync()` block with one backward outside it before "
                              "optimizer.step(), so the accumulated gradients are all-reduced.",
                              "with model.no_sync():\n    loss1.backward()\nloss2.backward()  # synchronised\n"
                              "optimizer.step()"),
            ],
        )]
