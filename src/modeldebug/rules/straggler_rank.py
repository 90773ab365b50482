"""straggler_rank: one rank well slower than the others, holding every rank back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, best_practice, col, g, optimization
from modeldebug.types import Finding


@register
@dataclass
class StragglerRank(Rule):
    """A rank whose own work per step takes well longer than the other ranks'.

    Reads: ranks.step_s, backward_s, data_s (means per gather window, collect/distributed.py).
    In DDP every rank's step takes as long as the slowest one's: the others wait for it inside
    the gradient all-reduce, which runs during backward. So a rank's own work is its step time
    less its backward time (data, forward, optimizer, and whatever the script does between
    steps); where backward was not seen, the step time itself.
    Fires: when one rank's median own time (over the gathers after the first) exceeds the median
    of the other ranks' by at least ``min_excess_s`` = 2 ms and ``min_fraction`` = 20% of the
    step time, and it is the slowest rank in at least ``min_share`` = 60% of the gathers (a
    one-off stall is not a straggler).
    Severity: medium (high when the excess is at least half the step): every rank idles that long
    every step. ``evidence.rank`` is the straggler.
    Causes: slow_data_loading when most of the excess is data time, else other (a slower device,
    another job on the machine, rank-specific work such as logging or checkpointing every step).
    Recommends: find the work only that rank does (rank-only logging, evaluation, checkpointing,
    a busy host), and give every rank the same work per step (DistributedSampler, equal lengths).
    """

    id = "straggler_rank"
    kind = "straggler_rank"
    reads = ("ranks.step_s", "ranks.backward_s", "ranks.data_s")
    min_excess_s: float = 0.002
    min_fraction: float = 0.2
    min_share: float = 0.6

    def check(self, ev: Evidence) -> list[Finding]:
        t = ev.ranks
        if len(t) == 0:
            return []
        steps, ranks = col(t, "step").astype(int), col(t, "rank").astype(int)
        step_s, bwd, data = col(t, "step_s"), col(t, "backward_s"), col(t, "data_s")
        own = np.where(np.isfinite(bwd), step_s - bwd, step_s)
        gathers = sorted(set(steps.tolist()))[1:]  # the first window is start-up (graph building, first batch)
        world = sorted(set(ranks.tolist()))
        if len(gathers) < 2 or len(world) < 2:
            return []
        table = np.full((len(gathers), len(world)), np.nan)
        dtable = np.full_like(table, np.nan)
        stable = np.full_like(table, np.nan)
        for i, s in enumerate(gathers):
            for j, r in enumerate(world):
                m = (steps == s) & (ranks == r)
                if m.any():
                    table[i, j], dtable[i, j], stable[i, j] = own[m][0], data[m][0], step_s[m][0]
        ok = np.isfinite(table).all(axis=1)
        if ok.sum() < 2:
            return []
        table, dtable, stable = table[ok], dtable[ok], stable[ok]
        med = np.median(table, axis=0)
        j = int(np.argmax(med))
        others = float(np.median(np.delete(med, j)))
        excess = float(med[j] - others)
        step = float(np.nanmedian(stable))
        share = float(np.mean(np.argmax(table, axis=1) == j))
        if excess < self.min_excess_s or excess < self.min_fraction * step or share < self.min_share:
            return []
        rank = world[j]
        dmed = np.nanmedian(dtable, axis=0) if np.isfinite(dtable).any() else np.full(len(world), np.nan)
        data_excess = float(dmed[j] - np.nanmedian(np.delete(dmed, j))) if np.isfinite(dmed).all() else 0.0
        data_bound = data_excess >= 0.5 * excess
        first = int(np.array(gathers)[ok][np.argmax(np.argmax(table, axis=1) == j)])
        msg = (f"Rank {rank} is a straggler: its own work takes {g(1e3 * med[j])} ms per step against "
               f"{g(1e3 * others)} ms on the other ranks, so every rank waits about {g(1e3 * excess)} ms of each "
               f"{g(1e3 * step)} ms step for it in DDP's gradient all-reduce.")
        if data_bound:
            msg += f" Most of the difference is waiting for data ({g(1e3 * data_excess)} ms more per step)."
        return [self.finding(
            severity="high" if excess >= 0.5 * step else "medium", confidence=min(0.95, 0.6 + 0.4 * share),
            location=None, step=first, message=msg,
            evidence={"rank": rank, "own_time_s": {str(r): float(v) for r, v in zip(world, med)},
                      "excess_s": excess, "step_s": step, "slowest_share": share,
                      "data_excess_s": data_excess if np.isfinite(data_excess) else None},
            causes=["slow_data_loading", "other"] if data_bound else ["other"],
            recommendations=[
                optimization(f"Find what rank {rank} does that the others do not: rank-only logging, "
                             "evaluation or checkpointing inside the loop, a slower device, or another process on "
                             "its CPU/GPU (compare `nvidia-smi`/`top` on its host).",
                             "if rank == 0 and step % 1000 == 0:  # rank-only work rarely, or in a background thread"),
                best_practice("Give every rank the same amount of work per step: the same batch size and "
                              "sequence lengths (bucket by length), and enough DataLoader workers on each.",
                              "DataLoader(ds, batch_size=B, sampler=DistributedSampler(ds), num_workers=4)"),
            ],
        )]
