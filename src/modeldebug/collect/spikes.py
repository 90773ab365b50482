"""Which batch made the loss jump: its place in the epoch on every step (a counter the DataLoader
keeps anyway), its content hashed only when a cheap running level flags the step's loss.

The rule (rules/loss_spike.py) decides what is a spike from the stored losses; this only has to
flag a superset of its spikes while the batch is still at hand, at a few float operations a step.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch

from modeldebug.events import BatchIdentity

ALPHA = 0.05  # EMA weight of a new loss: about the last 20 steps
WARMUP = 10  # losses seen before any is flagged
JUMP = 3.0  # flagged: this many mean absolute deviations above the level ...
RISE = 0.5  # ... and this fraction of the level above it (the rule asks for 2x and z 10 on a median)
MAX_EVENTS = 1000  # batches recorded per run, at most


class BatchCounter:
    """(epoch, position) of the latest batch a DataLoader iterator yielded, epochs counted per dataset
    (an evaluation loader in between counts its own). The iterator is not kept (that would keep its
    workers alive): a new epoch is a new iterator's id or a count that restarted."""

    __slots__ = ("_passes", "_last")

    def __init__(self) -> None:
        self._passes: dict[int, list] = {}  # id(dataset) -> [epoch, id(iterator), last count]
        self._last: list | None = None  # the pass of the latest iterator (the usual case: the same one)

    def seen(self, iterator: Any) -> tuple[int, int] | None:
        count = getattr(iterator, "_num_yielded", None)
        if count.__class__ is not int:
            return None
        p = self._last
        if p is None or p[1] != id(iterator) or count <= p[2]:
            p = self._last = self._switch(iterator, count)
        p[2] = count
        return p[0], count - 1

    def _switch(self, iterator: Any, count: int) -> list:
        """Another iterator, or the same one restarted: its dataset's pass, a new epoch of it if need be."""
        key = id(getattr(iterator, "_dataset", None))
        p = self._passes.get(key)
        if p is None:
            p = self._passes[key] = [-1, None, -1]
        if id(iterator) != p[1] or count <= p[2]:
            p[0] += 1
            p[1] = id(iterator)
        return p


class SpikeWatch:
    """An EMA of the loss and of its absolute deviation; a loss far above both is recorded with its batch."""

    __slots__ = ("level", "dev", "n", "events")

    def __init__(self) -> None:
        self.level, self.dev, self.n, self.events = 0.0, 0.0, 0, 0

    def flags(self, loss: float) -> bool:
        """Take a step's loss into the running level; True when it jumps far above it."""
        if loss - loss != 0.0:  # NaN or inf (math.isfinite without the call)
            return False
        n = self.n = self.n + 1
        level, dev = self.level, self.dev
        if n == 1:
            self.level = loss
            return False
        d = loss - level
        jump = n > WARMUP and d > JUMP * dev and d > RISE * abs(level)
        # A jump moves the level by a bounded amount (one outlier is not the new level); the
        # deviation takes it whole, so a loss that stays up stops being flagged within a few steps.
        self.level = level + ALPHA * (min(d, JUMP * dev) if jump else d)
        self.dev = dev + ALPHA * (abs(d) - dev)
        return jump and self.events < MAX_EVENTS

    def identity(self, step: int, loss: float, level: float, batch: tuple[int, int] | None,
                 x: torch.Tensor | None) -> BatchIdentity:
        self.events += 1
        digest, shape = None, None
        if x is not None:
            shape = list(x.shape)
            digest = content_hash(x)
        epoch, position = batch if batch is not None else (None, None)
        return BatchIdentity(step=step, loss=loss, level=level, epoch=epoch, position=position,
                             content_hash=digest, shape=shape)


def content_hash(x: torch.Tensor) -> str | None:
    """blake2b (128 bits) of a host tensor's bytes, its dtype and shape; None for what has no plain bytes."""
    try:
        if x.device.type != "cpu" or x.is_sparse or x.is_nested:
            return None
        raw = x.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        h = hashlib.blake2b(f"{x.dtype}{tuple(x.shape)}".encode(), digest_size=16)
        h.update(memoryview(raw))
        return h.hexdigest()
    except Exception:  # a tensor subclass or layout without plain bytes: the position still names the batch
        return None
