"""The adaptive schedule keeps the monitor inside its time budget, also when costs arrive late."""

import pytest

from modeldebug.collect.schedule import Adaptive, Every


def _run(schedule, steps: int, plain_s: float, extra_s: float, lag: int) -> list[int]:
    """Ask for each step, report its cost ``lag`` steps later (CUDA's non-blocking copies)."""
    sampled, reports = [], []
    for step in range(steps):
        is_sampled = schedule(step)
        if is_sampled:
            sampled.append(step)
        reports.append((step, plain_s + (extra_s if is_sampled else 0.0), is_sampled, extra_s if is_sampled else 0.0))
        if len(reports) > lag:
            schedule.observe(*reports.pop(0))
    return sampled


@pytest.mark.parametrize("lag", [0, 1, 6], ids=["on-time", "one-step-late", "six-steps-late"])
def test_sampling_interval_follows_the_budget_whatever_the_lag(lag):
    # A sampled step costs 20% more; at a 1% budget that is one step in 20.
    sampled = _run(Adaptive(target_overhead=0.01, warmup=3), 2000, plain_s=0.025, extra_s=0.005, lag=lag)
    steady = [s for s in sampled if s >= 200]
    gaps = {b - a for a, b in zip(steady, steady[1:])}
    assert gaps == {20}, sorted(gaps)
    assert sampled[:3] == [0, 1, 2]


def test_asking_twice_for_a_step_gives_the_same_answer():
    s = Adaptive(target_overhead=0.01, warmup=1)
    s.n = 5
    assert [s(0), s(0), s(1), s(1), s(5), s(5)] == [True, True, False, False, True, True]


def test_every_n():
    assert [k for k in range(12) if Every(4, warmup=2)(k)] == [0, 1, 4, 8]


def test_the_interval_at_most_doubles_from_one_sample_to_the_next():
    # A sampled step costing 1.5 plain ones asks for one sample in 150 at once; a 128-step run
    # still gets samples after its first few: 0, 1, 2, then intervals 4, 8, 16, ...
    sampled = _run(Adaptive(target_overhead=0.01, warmup=3), 1000, plain_s=0.001, extra_s=0.0015, lag=0)
    gaps = [b - a for a, b in zip(sampled[2:], sampled[3:])]
    assert sampled[:3] == [0, 1, 2] and len([s for s in sampled if s < 128]) >= 6
    assert all(b <= 2 * a for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] == 150
