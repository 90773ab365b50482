"""distributed_desync, straggler_rank, rank_failure, uneven_batches and rank attribution on
hand-built evidence: the rank summaries rank 0 gathers (``Evidence.ranks``) and the ``ranks`` event
``modeldebug run`` writes when the job ends. Each fires on its fault and stays quiet on a healthy job."""

from __future__ import annotations

import pytest

from modeldebug.evidence import Evidence
from modeldebug.rules.distributed_desync import DistributedDesync
from modeldebug.rules.rank_attribution import attribute_ranks, nonfinite_origin
from modeldebug.rules.rank_failure import RankFailure
from modeldebug.rules.straggler_rank import StragglerRank
from modeldebug.rules.uneven_batches import UnevenBatches

WORLD = 4
GATHERS = (10, 20, 30, 40, 50)


def rank_rows(world: int = WORLD, gathers=GATHERS, **per_rank) -> list[dict]:
    """One summary per (gather, rank) of a healthy DDP job; ``per_rank[field] = f(rank, step)``
    overrides a field (return None to keep the default)."""
    rows = []
    for step in gathers:
        for rank in range(world):
            row = dict(step=step, rank=rank, world_size=world, steps_done=step, window=10,
                       step_s=0.020, data_s=0.002, forward_s=0.005, backward_s=0.010, optimizer_s=0.002,
                       loss=1.0, grad_norm=1.0, checksum=1234.5, checksum_rel_diff=0.0, desync=False,
                       gather_s=0.0005)
            for name, f in per_rank.items():
                value = f(rank, step)
                if value is not None:
                    row[name] = value
            rows.append(row)
    return rows


def outcomes(*ranks: dict) -> Evidence:
    """Evidence whose ``ranks`` event holds these per-rank outcomes."""
    return Evidence.build(events=[{"step": None, "type": "ranks", "data": {"ranks": list(ranks)}}])


def outcome(rank: int, status: str = "completed", steps: int = 100, **more) -> dict:
    return dict(rank=rank, run_id=f"job.rank{rank}", status=status, steps=steps, time=1000.0 + steps, **more)


HEALTHY_RANKS = Evidence.build(ranks=rank_rows())
HEALTHY_OUTCOMES = outcomes(*(outcome(r) for r in range(WORLD)))


# --- distributed_desync --------------------------------------------------------------------------


def test_desync_names_the_first_rank_and_step_out_of_sync():
    drift = lambda r, s: r == 2 and s >= 30  # noqa: E731
    ev = Evidence.build(ranks=rank_rows(
        desync=lambda r, s: drift(r, s) or None,
        checksum_rel_diff=lambda r, s: 3e-4 if drift(r, s) else None,
        desync_param=lambda r, s: "fc.weight" if drift(r, s) else None,
        desync_param_diff=lambda r, s: 2e-3 if drift(r, s) else None,
    ))
    (f,) = DistributedDesync().check(ev)
    assert (f.kind, f.severity, f.step, f.location) == ("distributed_desync", "high", 30, "fc.weight")
    assert f.evidence["rank"] == 2 and f.evidence["last_step_in_sync"] == 20
    assert f.evidence["gathers_out_of_sync"] == 3
    assert "between step 20 and step 30" in f.message
    assert any("Call the DDP wrapper, not the module inside it" in r.description for r in f.recommendations)


@pytest.mark.parametrize("ev", [HEALTHY_RANKS, Evidence.build()], ids=["healthy-job", "single-process"])
def test_desync_stays_quiet(ev):
    assert DistributedDesync().check(ev) == []


# --- straggler_rank ------------------------------------------------------------------------------


def test_straggler_is_the_rank_whose_own_work_is_slower():
    # rank 3 spends 15 ms more per step outside backward; the others wait for it in the all-reduce
    ev = Evidence.build(ranks=rank_rows(
        step_s=lambda r, s: 0.035,
        backward_s=lambda r, s: 0.010 if r == 3 else 0.025,
        data_s=lambda r, s: 0.016 if r == 3 else None,
    ))
    (f,) = StragglerRank().check(ev)
    assert (f.kind, f.evidence["rank"]) == ("straggler_rank", 3)
    assert f.evidence["excess_s"] == pytest.approx(0.015)
    assert f.causes[0] == "slow_data_loading"  # most of the excess is data time
    assert f.severity == "medium"


def test_a_one_off_stall_is_not_a_straggler():
    ev = Evidence.build(ranks=rank_rows(step_s=lambda r, s: 0.060 if (r, s) == (1, 30) else None))
    assert StragglerRank().check(ev) == []


def test_straggler_stays_quiet_on_a_healthy_job():
    assert StragglerRank().check(HEALTHY_RANKS) == []


# --- rank_failure --------------------------------------------------------------------------------


def test_rank_failure_names_the_rank_whose_own_error_came_first():
    ev = outcomes(
        outcome(0, "crashed", 57, error_type="RuntimeError", message="Connection closed by peer", comm_error=True),
        outcome(1, "crashed", 57, error_type="ValueError", message="bad batch"),
        outcome(2, "crashed", 57, killed_by_signal=15),
        outcome(3, "crashed", 57, error_type="RuntimeError", message="gloo: connection reset", comm_error=True),
    )
    (f,) = RankFailure().check(ev)
    assert (f.kind, f.severity, f.step) == ("rank_failure", "high", 57)
    assert f.evidence["rank"] == 1 and f.evidence["error_type"] == "ValueError"
    assert "Rank 1 failed first" in f.message and "job.rank1" in f.recommendations[0].description


def test_rank_failure_names_a_rank_that_died_without_a_word():
    ev = outcomes(outcome(0, "crashed", 40, error_type="RuntimeError", comm_error=True),
                  outcome(1, "crashed", 40, lost=True))
    (f,) = RankFailure().check(ev)
    assert f.evidence["rank"] == 1 and "died without a word" in f.message


@pytest.mark.parametrize("ev", [HEALTHY_OUTCOMES, Evidence.build()], ids=["healthy-job", "no-ranks-event"])
def test_rank_failure_stays_quiet(ev):
    assert RankFailure().check(ev) == []


# --- uneven_batches ------------------------------------------------------------------------------


def test_uneven_batches_names_the_rank_that_ran_out_first():
    ev = outcomes(outcome(0, "completed", 100), outcome(1, "crashed", 101, error_type="RuntimeError", comm_error=True),
                  outcome(2, "completed", 100), outcome(3, "interrupted", 101))
    (f,) = UnevenBatches().check(ev)
    assert (f.kind, f.severity, f.step) == ("uneven_batches", "high", 100)
    assert f.evidence["rank"] == 0 and f.evidence["waiting_ranks"] == [1, 3]
    assert any("DistributedSampler" in (r.implementation or "") for r in f.recommendations)


@pytest.mark.parametrize("ev", [
    HEALTHY_OUTCOMES,
    outcomes(*(outcome(r, "crashed", 30, error_type="RuntimeError") for r in range(WORLD))),  # all died together
    Evidence.build(),
], ids=["healthy-job", "every-rank-crashed", "no-ranks-event"])
def test_uneven_batches_stays_quiet(ev):
    assert UnevenBatches().check(ev) == []


# --- rank attribution of NaN/Inf (a post-pass over the findings, not a rule) ---------------------


def _nan_on_rank_2():
    return Evidence.build(ranks=rank_rows(
        first_nonfinite_input=lambda r, s: 33 if r == 2 and s >= 40 else None,
        first_nonfinite_grad=lambda r, s: 33 if s >= 40 else None,  # the all-reduce spreads it to every rank
    ))


def test_nonfinite_origin_is_the_rank_whose_own_batch_went_bad():
    origin = nonfinite_origin(_nan_on_rank_2())
    assert (origin["rank"], origin["step"], origin["what"]) == (2, 33, "input")


def test_attribute_ranks_adds_a_finding_when_rank_0_saw_none():
    (f,) = attribute_ranks([], _nan_on_rank_2())
    assert (f.kind, f.step, f.evidence["rank"]) == ("nan_or_inf", 33, 2)
    assert "started on rank 2" in f.message


def test_attribute_ranks_names_the_rank_in_the_existing_finding():
    from modeldebug.findings import make_finding

    found = [make_finding("nan_or_inf", severity="high", message="Loss became NaN.", step=34)]
    (f,) = attribute_ranks(found, _nan_on_rank_2())
    assert f.message.startswith("Loss became NaN.") and f.evidence["rank"] == 2 and f.step == 34


def test_attribution_stays_quiet_on_a_healthy_job_and_when_every_rank_went_bad_together():
    assert nonfinite_origin(HEALTHY_RANKS) is None
    assert attribute_ranks([], HEALTHY_RANKS) == []
    together = Evidence.build(ranks=rank_rows(first_nonfinite_loss=lambda r, s: 12))
    assert attribute_ranks([], together) == []
