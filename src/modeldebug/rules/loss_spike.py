"""loss_spike: the training loss jumps far above its running level, and training recovers or not."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from modeldebug.events import BatchIdentity
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import GRACE_STEPS, Rule, best_practice, clip_grad, col, flag, g, lower_lr
from modeldebug.types import Finding

MAD_TO_STD = 1.4826  # the MAD of a normal distribution times this is its standard deviation
MAX_LISTED = 20  # spikes listed in the evidence (the largest first)


@dataclass
class Spike:
    start: int  # index of its first step among the finite losses
    end: int  # index of its last flagged step
    peak: int  # index of its highest loss
    level: float
    scale: float
    recovered: bool | None  # None: the run ended before it could tell
    diverged: bool  # the loss turned non-finite after it, before it recovered


def robust_level(v: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """For each loss, the median and the MAD (as a standard deviation) of the ``window`` losses
    before it (NaN for the first ``window``): the running level a spike is measured against."""
    level, scale = np.full(len(v), np.nan), np.full(len(v), np.nan)
    if len(v) <= window:
        return level, scale
    w = sliding_window_view(v[:-1], window)
    med = np.median(w, axis=1)
    level[window:], scale[window:] = med, MAD_TO_STD * np.median(np.abs(w - med[:, None]), axis=1)
    return level, scale


@register
@dataclass
class LossSpike(Rule):
    """Steps whose training loss jumps far above its running level (robust z-score).

    Reads: steps.loss (finite values after the grace steps), steps.loss_nonfinite, steps.lr,
    the ``batch_identity`` events (the spiking batch's position in its epoch and content hash,
    recorded by the collector when a cheap running level flags the step), optimizers.
    Fires: a loss ``z`` = 10 robust standard deviations (median and MAD of the ``window`` = 50
    finite losses before it, as Lightning's SpikeDetection and ZClip measure against a running
    level) above its level AND at least ``ratio`` = 2x the level (spread floored at ``floor`` =
    5% of the level, so a converged loss's tiny jitter is no yardstick) AND ``tail`` = 3x the
    99th percentile of the run's other z-scores (heavy-tailed noise: with batches of 1-4 samples,
    a hard sample reaches z 15-20, 1.4-2.4x that percentile) AND ``apart`` = 1.5x the largest of
    them (the suite's healthy SGD-momentum regression jumps to z 10.1 with another at 7.3; planted
    bad batches reach z 300+ over noise of z 5). Consecutive flagged steps
    are one spike. Not a spike: the grace steps and the first ``window`` losses (warm-up), a step
    within 3 steps of the learning rate rising 1.5x or more (a schedule's restart, a warm-up), the
    first batch of an epoch when spikes there recur over two epochs or more (an epoch boundary).
    A spike recovered when a loss within ``recover_steps`` = 50 steps of its end is back within
    3 spreads (or 25%) of its level (undecided when the run ends sooner). Fault suite: healthy runs (small-batch noise, epoch
    boundaries, warm-up, cosine restarts) stay under z 6 or under 2x their level.
    Severity: high when the loss turns non-finite after a spike it had not recovered from, or
    the last spike never recovers (the run diverged from it); medium for ``many`` = 3 or more
    recovered spikes; low for one or two recovered spikes (a hint).
    Causes: learning_rate_too_high; label_problem (a few batches far off the rest: bad samples).
    Recommends: skip the batches named (their position and hash), gradient clipping, lr / 10.
    """

    id = "loss_spike"
    kind = "loss_spike"
    reads = ("steps.loss", "steps.loss_nonfinite", "steps.lr", "events.batch_identity", "optimizers")
    z: float = 10.0
    ratio: float = 2.0
    tail: float = 3.0
    apart: float = 1.5
    floor: float = 0.05
    window: int = 50
    recover_steps: int = 50
    many: int = 3
    grace_steps: int = GRACE_STEPS

    def check(self, ev: Evidence) -> list[Finding]:
        steps, loss = col(ev.steps, "step"), col(ev.steps, "loss")
        if len(steps) == 0:
            return []
        finite = np.isfinite(loss) & (steps >= np.nanmin(steps) + self.grace_steps)
        s, v = steps[finite], loss[finite]
        spikes = self._spikes(s, v, steps, loss, col(ev.steps, "lr"), flag(ev.steps, "loss_nonfinite"))
        batches = {e.step: e for e in ev.events_of(BatchIdentity)}
        spikes = _past_epoch_starts(spikes, s, batches)
        if not spikes:
            return []
        return [self._finding(ev, s, v, spikes, batches)]

    def _spikes(self, s, v, steps, loss, lr, nonfinite) -> list[Spike]:
        level, spread = robust_level(v, self.window)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.maximum(spread, self.floor * np.abs(level))
            zs = (v - level) / scale
            hit = (zs >= self.z) & (v - level >= (self.ratio - 1) * np.abs(level)) & (scale > 0)
        hit &= ~self._after_lr_rise(s, steps, lr)
        # Heavy-tailed noise (a batch of a few samples, one of them hard) has z-scores of its own far
        # above a normal's: a spike must also stand out from the run's own tail.
        rest = zs[~hit & (zs > 0)]
        if len(rest) >= 100:
            hit &= zs >= self.tail * float(np.percentile(rest, 99))
        # ... and from its largest other excursion: one jump among several nearly as large is noise.
        if len(rest):
            hit &= zs >= self.apart * float(np.max(rest))
        idx = np.flatnonzero(hit)
        if not len(idx):
            return []
        # Consecutive flagged steps (gaps of 2 or less) are one spike, measured against the level before it.
        groups = np.split(idx, np.flatnonzero(np.diff(idx) > 3) + 1)
        bad_steps = steps[nonfinite | np.isinf(loss)]
        out = []
        for grp in groups:
            first, last = int(grp[0]), int(grp[-1])
            lv, sc = float(level[first]), float(scale[first])
            after = np.flatnonzero(s[last + 1:] <= s[last] + self.recover_steps) + last + 1
            back = after[v[after] <= lv + max(3 * sc, 0.25 * abs(lv))]
            recovered_at = s[back[0]] if len(back) else np.inf
            diverged = bool(np.any((bad_steps > s[last]) & (bad_steps < recovered_at)))
            ended = np.nanmax(steps) < s[last] + self.recover_steps
            recovered = True if len(back) else None if ended and not diverged else False
            out.append(Spike(first, last, first + int(np.argmax(v[first:last + 1])), lv, sc, recovered, diverged))
        return out

    def _after_lr_rise(self, s, steps, lr) -> np.ndarray:
        """Losses within 3 steps after the learning rate rose 1.5x or more (a restart or a warm-up's ramp)."""
        ok = np.isfinite(lr)
        if ok.sum() < 2:
            return np.zeros(len(s), dtype=bool)
        st, r = steps[ok], lr[ok]
        with np.errstate(invalid="ignore", divide="ignore"):
            rises = st[1:][r[1:] >= 1.5 * np.abs(r[:-1])]
        if not len(rises):
            return np.zeros(len(s), dtype=bool)
        pos = np.searchsorted(rises, s, side="right") - 1
        return (pos >= 0) & (s - rises[np.maximum(pos, 0)] <= 3)

    def _finding(self, ev: Evidence, s, v, spikes: list[Spike], batches: dict) -> Finding:
        listed = sorted(spikes, key=lambda p: -(v[p.peak] - p.level) / max(p.scale, 1e-30))[:MAX_LISTED]
        rows = [self._row(s, v, p, batches) for p in sorted(listed, key=lambda p: p.start)]
        doomed = [p for p in spikes if p.diverged] + ([spikes[-1]] if spikes[-1].recovered is False else [])
        recovered = sum(p.recovered is True for p in spikes)
        severity = "high" if doomed else "medium" if recovered >= self.many else "low"
        top = max(rows, key=lambda r: r["z"])
        first = doomed[0] if doomed else spikes[0]
        where = [r for r in rows if r.get("position") is not None]
        named = "; ".join(_batch_words(r) for r in where[:3])
        if doomed:
            tail = ("the loss turned non-finite after it" if doomed[0].diverged
                    else "training never recovered from it")
            head = f"The loss spiked at step {int(s[first.start])} to {g(v[first.peak])} ({g(v[first.peak] / first.level) if first.level else '?'}x its level {g(first.level)}) and {tail}"
        else:
            head = (f"The loss spiked {len(spikes)} time{'s' * (len(spikes) > 1)} far above its running level and "
                    f"recovered{'' if recovered == len(spikes) else ' from most'}: the largest at step {top['step']}, "
                    f"{g(top['loss'])} vs {g(top['level'])} (z {g(top['z'])})")
        message = head + (f". The batches: {named}." if named else ".")
        recs = []
        if where:
            recs.append(best_practice(
                "Look at the batches that spiked (their position in the epoch and content hash are listed) and skip "
                "or fix the bad samples in them.",
                "if (epoch, batch_idx) in {" + ", ".join(f"({r['epoch']}, {r['position']})" for r in where[:5]) + "}:\n    continue"))
        recs += [clip_grad()] + lower_lr(ev)
        causes = ["learning_rate_too_high", "label_problem"] if doomed else ["label_problem", "learning_rate_too_high"]
        return self.finding(
            severity=severity, confidence=0.8 if doomed else 0.6, location=None, step=int(s[first.start]),
            message=message, causes=causes, recommendations=recs,
            evidence={"spikes": rows, "count": len(spikes), "recovered": recovered,
                      "diverged": bool(doomed), "window": self.window})

    def _row(self, s, v, p: Spike, batches: dict) -> dict:
        step = int(s[p.peak])
        row = {"step": step, "first_step": int(s[p.start]), "steps": int(s[p.end] - s[p.start]) + 1,
               "loss": float(v[p.peak]), "level": p.level, "z": float((v[p.peak] - p.level) / p.scale),
               "recovered": p.recovered}
        b = batches.get(step) or batches.get(int(s[p.start]))
        if b is not None:
            row.update(epoch=b.epoch, position=b.position, content_hash=b.content_hash)
        return row


def _past_epoch_starts(spikes: list[Spike], s, batches: dict) -> list[Spike]:
    """The spikes less those on the first batch of an epoch when that recurs (two epochs or more): a
    jump at every epoch boundary (a reshuffle, a running average or state reset) is not a bad batch."""
    def epoch_start(p: Spike):
        b = batches.get(int(s[p.start]))
        return b.epoch if b is not None and b.position == 0 and b.epoch else None

    starts = {epoch_start(p) for p in spikes} - {None}
    return spikes if len(starts) < 2 else [p for p in spikes if epoch_start(p) is None]


def _batch_words(row: dict) -> str:
    where = f"step {row['step']}: batch {row['position']} of epoch {row['epoch']}"
    return where + (f" (hash {row['content_hash'][:12]})" if row.get("content_hash") else "")
