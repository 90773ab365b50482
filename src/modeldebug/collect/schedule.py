"""When to look closely: a schedule decides which steps get per-layer statistics.

A schedule is called with the step number and answers whether to sample it (Cockpit's
convention); ``observe`` tells it what the last step cost so that an adaptive schedule can keep
the monitor inside a time budget.
"""

from __future__ import annotations

import math
from collections import deque


class Every:
    """Sample every ``n``-th step, and the first ``warmup`` steps."""

    def __init__(self, n: int, warmup: int = 0):
        if n < 1:
            raise ValueError(f"Expected `every` to be a positive integer but got {n}")
        self.n = n
        self.warmup = warmup

    def __call__(self, step: int) -> bool:
        return step < self.warmup or step % self.n == 0

    def observe(self, step: int, step_s: float, sampled: bool, monitor_s: float) -> None:
        pass


class Adaptive(Every):
    """Sample as often as a time budget allows.

    The extra cost of a sampled step is the monitor's time in it beyond an ordinary step's; the
    interval is chosen so that this cost, spread over the interval, stays under
    ``target_overhead`` of a plain step's time. Starts dense (the first ``warmup`` steps, then
    every 2nd) and relaxes as measurements arrive, at most doubling from one sample to the next
    (2, 4, 8, ...: a run of a hundred or so steps still gets samples past its first few, where a
    jump straight to an interval of 130 left a 128-step run with none after step 2); never sparser
    than ``max_every``.
    """

    def __init__(self, target_overhead: float = 0.01, warmup: int = 3, max_every: int = 200, window: int = 50):
        super().__init__(2, warmup)
        if not 0 < target_overhead < 1:
            raise ValueError(f"Expected `target_overhead` in (0, 1) but got {target_overhead}")
        self.target = target_overhead
        self.max_every = max_every
        self._plain = deque(maxlen=window)  # step times of unsampled steps
        self._extra = deque(maxlen=8)  # monitor seconds of sampled steps
        self._last_sampled = -1
        self._plain_seen = 0
        self._widest = 2  # the interval may grow to this until the next sample

    def __call__(self, step: int) -> bool:
        # The decision itself marks the step as sampled: on CUDA a sampled step's costs arrive
        # steps later (non-blocking copies), and a schedule that waited for them would sample
        # every step until they did. (Asked again for the same step, it answers the same.)
        if step == self._last_sampled:
            return True
        if step < self.warmup or step - self._last_sampled >= self.n:
            self._last_sampled = step
            self._widest = 2 * max(self.n, 1)
            return True
        return False

    def observe(self, step: int, step_s: float, sampled: bool, monitor_s: float) -> None:
        if sampled:
            self._extra.append(monitor_s)
        elif step_s > 0:
            self._plain.append(step_s)
            self._plain_seen += 1
            if self._plain_seen % 8 and self.n > 2:
                return  # the plain median moves slowly: re-plan on sampled steps and every 8th plain one
        if self._extra and self._plain:
            plain = sorted(self._plain)[len(self._plain) // 2]
            extra = sorted(self._extra)[len(self._extra) // 2]
            self.n = int(min(self.max_every, self._widest, max(1, math.ceil(extra / (self.target * plain)))))
