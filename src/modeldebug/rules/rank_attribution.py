"""Which rank a NaN/Inf started on: adds ``evidence.rank`` to the ``nan_or_inf`` finding of a distributed run.

Not a rule of its own (it would repeat the ``nan_or_inf`` finding): ``modeldebug run`` passes the
findings of rank 0's run through :func:`attribute_ranks`. In DDP a NaN on one rank reaches every
rank within the same step (the gradient all-reduce averages it in), so rank 0's own evidence shows
non-finite gradients everywhere; the rank where it started is the one whose loss or input batch
went non-finite first (collect/distributed.py tracks the first such step on every rank).
"""

from __future__ import annotations

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules.base import Rule, col, fix
from modeldebug.rules.ranks import data_parallel, reduction_of
from modeldebug.types import Finding


def nonfinite_origin(ev: Evidence) -> dict | None:
    """The rank and step where non-finite values started, from the gathered per-rank summaries."""
    t = ev.ranks
    if len(t) == 0:
        return None
    ranks = col(t, "rank").astype(int)
    firsts: dict[int, dict[str, int]] = {}
    for r in sorted(set(ranks.tolist())):
        m = ranks == r
        firsts[r] = {}
        for what in ("input", "loss", "grad"):
            v = col(t, f"first_nonfinite_{what}")[m]
            v = v[np.isfinite(v) & (v >= 0)]
            if len(v):
                firsts[r][what] = int(v.min())
    # Own symptoms first (a NaN batch or loss on that rank); gradients reach all ranks together.
    for whats in (("input", "loss"), ("grad",)):
        seen = {r: min(f[w] for w in whats if w in f) for r, f in firsts.items() if any(w in f for w in whats)}
        if seen:
            step = min(seen.values())
            at = sorted(r for r, s in seen.items() if s == step)
            if len(at) == len(firsts) and len(firsts) > 1:
                continue  # every rank at once: no single origin from these symptoms
            what = next(w for w in whats if w in firsts[at[0]] and firsts[at[0]][w] == step)
            return {"rank": at[0], "ranks": at, "step": step, "what": what,
                    "by_rank": {str(r): f for r, f in firsts.items()}}
    if any(firsts.values()):
        step = min(min(f.values()) for f in firsts.values() if f)
        return {"rank": None, "ranks": sorted(firsts), "step": step, "what": "grad",
                "by_rank": {str(r): f for r, f in firsts.items()}}
    return None


class _NanOnRank(Rule):
    id = "nan_or_inf_rank"
    kind = "nan_or_inf"


def attribute_ranks(findings: list[Finding], ev: Evidence) -> list[Finding]:
    """The findings with the NaN/Inf finding naming its rank (one is added if rank 0 saw none)."""
    origin = nonfinite_origin(ev)
    if origin is None or origin["rank"] is None:
        return findings
    rank, step, what = origin["rank"], origin["step"], origin["what"]
    symptom = {"input": "its input batch", "loss": "its loss", "grad": "its gradients"}[what]
    note = (f" It started on rank {rank}: {symptom} became non-finite at step {step} while the other ranks' "
            f"stayed finite; {reduction_of(data_parallel(ev))} then spread it to every rank.")
    out = []
    done = False
    for f in findings:
        if f.kind == "nan_or_inf" and not done:
            f = f.model_copy(update={
                "message": f.message + note,
                "evidence": {**f.evidence, "rank": rank, "rank_step": step, "nonfinite_by_rank": origin["by_rank"]},
            })
            done = True
        out.append(f)
    if not done:
        out.insert(0, _NanOnRank().finding(
            severity="high", confidence=0.85, location=None, step=step,
            message=f"Values became NaN/Inf in training.{note}",
            evidence={"rank": rank, "rank_step": step, "nonfinite_by_rank": origin["by_rank"]},
            causes=["other", "numerically_unstable_op"],
            recommendations=[fix(f"Look at rank {rank}'s data shard and its run (`modeldebug report <run>.rank{rank}`).",
                                 "assert torch.isfinite(x).all(), f'non-finite batch on rank {rank}'")],
        ))
    return out
