"""Statistics of tensors: a few reductions on the device, the rest on the host.

On the device (no ``.item()``, no host sync) a tensor is reduced to a few small tensors: its sum,
sum of squares, min and max, each unit's maximum over the batch (live units), and a strided
subsample of at most ``SAMPLE`` values. They are not packed per tensor: a ``Transfer`` packs all
the tensors of a step with one stack and one cat and copies them to the host at once (on CUDA
without waiting for the device), where
``summarize_many`` turns them into statistics together. A sampled step's cost is mostly the ops
dispatched (a few microseconds each, whatever the tensor's size), so the device does only what
needs every value (moments, extremes, live units) and the host does what a subsample answers as
well (histogram, zero and saturated fractions), vectorised over all the tensors of a step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

# Values kept per tensor for the histogram and the zero / saturated fractions.
SAMPLE = 1024
# Units whose maxima go to the host as they are; wider outputs (a vocabulary's logits) send a
# strided subset of their units, and the dead fraction is estimated from it.
MAX_UNITS = 4096

# Bounded activations and their range, keyed by class (a subclass of nn.Tanh is bounded too: looked
# up through the MRO); saturated = output within 1% of the range from a bound
# (tanh |y| > 0.98 <=> |x| > 2.3; sigmoid y < 0.01 or y > 0.99 <=> |x| > 4.6).
SATURATING: dict[type, tuple[float, float]] = {
    nn.Tanh: (-1.0, 1.0),
    nn.Hardtanh: (-1.0, 1.0),
    nn.Softsign: (-1.0, 1.0),
    nn.Sigmoid: (0.0, 1.0),
    nn.Hardsigmoid: (0.0, 1.0),
}


def saturation_bounds(cls: type) -> tuple[float, float] | None:
    """The output range of a bounded activation class or of a subclass of one; None for others."""
    return next((SATURATING[c] for c in cls.__mro__ if c in SATURATING), None)


def family(cls: type) -> str:
    """The name of the first built-in ``torch.nn`` module class in ``cls``'s MRO: "Tanh" for a user's
    ``class MyTanh(nn.Tanh)``, the class's own name for a built-in, "" for a plain custom module."""
    for c in cls.__mro__:
        if c is nn.Module:
            return ""
        if c.__module__.startswith("torch.nn.") and issubclass(c, nn.Module):
            return c.__name__
    return ""


def unit_dim(ndim: int) -> int | None:
    """The dimension that indexes units: channels for images (N, C, H, W[, D]), else features (last).

    A unit is "dead" when it is never positive over the whole batch.
    """
    if ndim < 2:
        return None
    return 1 if ndim in (4, 5) else ndim - 1


class Reduced(NamedTuple):
    """A tensor reduced on its device (tensors still there); a ``Transfer`` brings many over at once."""

    numel: int
    head: tuple[torch.Tensor, ...]  # 0-d float32: sum, sum of squares, min, max
    unit_max: torch.Tensor | None  # each unit's max over the batch (a strided subset above MAX_UNITS)
    sample: torch.Tensor  # strided subsample, at most SAMPLE values


class HostReduced(NamedTuple):
    """``Reduced`` on the host: numpy views into one copied buffer."""

    numel: int
    head: np.ndarray  # float64: sum, sum of squares, min, max
    unit_max: np.ndarray | None
    sample: np.ndarray


def reduce(t: torch.Tensor, units: bool = False) -> Reduced:
    """Reduce a tensor on its device: four or five ops, nothing copied, no sync."""
    x = t.detach()
    if x.dtype != torch.float32:
        x = x.float()
    flat = x.reshape(-1)
    lo, hi = torch.aminmax(flat)
    dim = unit_dim(x.dim()) if units else None
    unit_max = None
    if dim is not None:
        unit_max = x.amax(dim=tuple(d for d in range(x.dim()) if d != dim))
        if x.shape[dim] > MAX_UNITS:
            unit_max = unit_max[:: -(-x.shape[dim] // MAX_UNITS)]
    stride = max(1, -(-flat.numel() // SAMPLE))
    return Reduced(flat.numel(), (flat.sum(), torch.dot(flat, flat), lo, hi), unit_max, flat[::stride])


class Transfer:
    """Reduced tensors (and ``extra`` 1-d tensors) on their way to the host, all in one copy.

    One ``stack`` of every head scalar and one ``cat`` of everything else, then a single copy.
    On CUDA the copy goes into pinned memory without blocking and an event marks its end: the
    monitor polls ``ready()`` at later steps and never waits for the device while training runs
    (``result()`` waits only if asked before the copy is done, at the end of a run).
    """

    def __init__(self, items: list[Reduced], extra: list[torch.Tensor] = ()):
        self._items = items
        self._extra_sizes = [e.numel() for e in extra]
        self._event = None
        if not items and not extra:
            self._buf = None
            return
        dev = (items[0].sample if items else extra[0]).device

        def here(t: torch.Tensor) -> torch.Tensor:  # model parallel: parts on several devices
            return t if t.device == dev else t.to(dev)

        parts: list[torch.Tensor] = []
        if items:
            parts.append(torch.stack([here(h) for r in items for h in r.head]))
        for r in items:
            if r.unit_max is not None:
                parts.append(here(r.unit_max))
            parts.append(here(r.sample))
        parts += [here(e.reshape(-1).float()) for e in extra]
        flat = torch.cat(parts) if len(parts) > 1 else parts[0]
        if flat.is_cuda:
            self._buf = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            self._buf.copy_(flat, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._buf = flat

    def ready(self) -> bool:
        return self._event is None or self._event.query()

    def result(self) -> tuple[list[HostReduced], list[np.ndarray]]:
        if self._buf is None:
            return [], []
        if self._event is not None:
            self._event.synchronize()
        flat = self._buf.numpy().astype(np.float64)
        pos = 4 * len(self._items)
        heads = flat[:pos].reshape(len(self._items), 4)
        out = []
        for i, r in enumerate(self._items):
            unit_max = None
            if r.unit_max is not None:
                unit_max = flat[pos : pos + r.unit_max.numel()]
                pos += r.unit_max.numel()
            sample = flat[pos : pos + r.sample.numel()]
            pos += r.sample.numel()
            out.append(HostReduced(r.numel, heads[i], unit_max, sample))
        rest = []
        for n in self._extra_sizes:
            rest.append(flat[pos : pos + n])
            pos += n
        return out, rest


def to_host(items: list[Reduced], extra: list[torch.Tensor] = ()) -> tuple[list[HostReduced], list[np.ndarray]]:
    """Copy reduced tensors (and ``extra`` 1-d tensors) to the host now (see ``Transfer``)."""
    return Transfer(items, extra).result()


def summarize(
    item: Reduced | HostReduced, bins: int = 0, bounds: tuple[float, float] | None = None
) -> dict[str, float | int | np.ndarray | None]:
    """Statistics of one reduced tensor (``summarize_many`` for a step's worth)."""
    if isinstance(item, Reduced):
        item = to_host([item])[0][0]
    return summarize_many([item], bins, [bounds])[0]


def summarize_many(
    items: list[HostReduced], bins: int = 0, bounds: list[tuple[float, float] | None] | None = None
) -> list[dict[str, float | int | np.ndarray | None]]:
    """``summarize`` for many reduced tensors at once: one numpy pass over all their samples.

    Per tensor: mean, std, min, max, norm, max_abs, zero_frac, dead_frac (for tensors reduced
    with units), sat_frac (with ``bounds``), nonfinite (estimated from the sample when min/max
    say there are any) and, with ``bins``, a histogram of the finite sample values over [min, max].
    """
    k = len(items)
    if k == 0:
        return []
    bounds = bounds or [None] * k
    # float64 on the host (a Transfer's buffer): under numpy 2 a float32 array stays float32 in
    # arithmetic with Python floats, and huge activations would overflow there.
    head = np.stack([r.head for r in items])
    lens = np.array([len(r.sample) for r in items])
    width = max(1, int(lens.max()))
    sample = np.full((k, width), np.nan)
    for i, r in enumerate(items):
        sample[i, : lens[i]] = r.sample
    finite = np.isfinite(sample)
    n_good = finite.sum(1)
    has_good = n_good > 0
    good = np.where(finite, sample, 0.0)
    inside = np.arange(width) < lens[:, None]  # not padding
    n = np.array([r.numel for r in items], dtype=np.float64)

    total, sumsq, lo, hi = head.T
    all_finite = np.isfinite(lo) & np.isfinite(hi)
    with np.errstate(all="ignore"):
        # The moments from the device when finite; finite values too large for float32 sums (the
        # sum of squares overflows first) are estimated from the sample; non-finite values (min
        # and max propagate NaN and Inf) leave them NaN.
        mean = total / n
        g_mean = good.sum(1) / np.maximum(n_good, 1)
        g_sq = (good * good).sum(1) / np.maximum(n_good, 1)
        exact = all_finite & np.isfinite(sumsq) & np.isfinite(total)
        estimated = all_finite & ~exact & has_good
        mean = np.where(estimated & ~np.isfinite(total), g_mean, mean)
        std = np.where(exact, np.sqrt(np.maximum(sumsq / n - mean * mean, 0.0)),
                       np.where(estimated, np.sqrt(np.maximum(g_sq - g_mean**2, 0.0)), np.nan))
        norm = np.where(exact, np.sqrt(sumsq), np.where(estimated, np.sqrt(g_sq * n), np.nan))
        # Estimated from the subsample, at least 1, when min/max say some value is not finite.
        bad = (inside & ~finite).sum(1)
        nonfinite = np.where(all_finite, 0, np.maximum(1, np.round(bad * n / np.maximum(lens, 1))))
        zero_frac = np.where(has_good, (finite & (sample == 0)).sum(1) / np.maximum(n_good, 1), np.nan)
        # Dead: never positive over the batch (NaN maxima count as alive, as NaN is not <= 0).
        dead_frac = np.array([
            np.nan if r.unit_max is None or not len(r.unit_max) else float(np.mean(r.unit_max <= 0))
            for r in items
        ])
        b_lo = np.array([np.nan if b is None else b[0] for b in bounds], dtype=np.float64)
        b_hi = np.array([np.nan if b is None else b[1] for b in bounds], dtype=np.float64)
        margin = 0.01 * (b_hi - b_lo)
        sat = finite & ((sample <= (b_lo + margin)[:, None]) | (sample >= (b_hi - margin)[:, None]))
        sat_frac = np.where(np.isfinite(b_lo) & has_good, sat.sum(1) / np.maximum(n_good, 1), np.nan)
        max_abs = np.maximum(np.abs(lo), np.abs(hi))

    hists = [None] * k
    if bins > 0 and has_good.any():
        # Over [min, max] (of the finite sample when some values are not finite); (nearly)
        # constant values get a unit-wide range around them.
        s_lo = np.where(finite, sample, np.inf).min(1)
        s_hi = np.where(finite, sample, -np.inf).max(1)
        h_lo, h_hi = np.where(all_finite, lo, s_lo), np.where(all_finite, hi, s_hi)
        with np.errstate(all="ignore"):
            magnitude = np.maximum(np.maximum(np.abs(h_lo), np.abs(h_hi)), 1e-30)
            flat_range = ~(h_hi - h_lo > 1e-6 * magnitude)
            pad = np.maximum(0.5, 1e-6 * magnitude)  # +-0.5 vanishes in float64 above ~1e16
            h_lo, h_hi = np.where(flat_range, h_lo - pad, h_lo), np.where(flat_range, h_hi + pad, h_hi)
            scale = bins / (h_hi - h_lo)
            idx = np.floor((good - h_lo[:, None]) * scale[:, None])
        idx = np.clip(np.nan_to_num(idx, nan=0.0, posinf=bins - 1, neginf=0.0), 0, bins - 1).astype(np.intp)
        idx += np.arange(k)[:, None] * bins
        counts = np.bincount(idx[finite], minlength=k * bins).reshape(k, bins).astype("<i8")
        for i in np.flatnonzero(has_good):
            hists[i] = (counts[i], float(h_lo[i]), float(h_hi[i]))

    out = []
    cols = zip(mean.tolist(), std.tolist(), lo.tolist(), hi.tolist(), norm.tolist(), max_abs.tolist(),
               zero_frac.tolist(), dead_frac.tolist(), sat_frac.tolist(), nonfinite.tolist(), hists)
    for m, s, a, b, nm, mx, z, d, sf, nf, h in cols:
        row = {"mean": m, "std": s, "min": a, "max": b, "norm": nm, "max_abs": mx, "zero_frac": z,
               "dead_frac": d, "sat_frac": sf, "nonfinite": int(nf), "hist": None}
        if h is not None:
            row["hist"], row["hist_lo"], row["hist_hi"] = h
        out.append(row)
    return out


def first_float_tensor(value, _depth: int = 0, floating: bool = True) -> torch.Tensor | None:
    """The first floating-point tensor (any non-empty tensor if not ``floating``) in a module's
    inputs or output: tensors, tuples, lists, dicts, dataclasses."""
    if isinstance(value, torch.Tensor):
        return value if (value.is_floating_point() or not floating) and value.numel() > 0 else None
    if _depth > 3:
        return None
    if isinstance(value, dict):
        items = value.values()
    elif isinstance(value, (tuple, list)):
        items = value
    elif hasattr(value, "__dataclass_fields__"):
        items = (getattr(value, f) for f in value.__dataclass_fields__)
    else:
        return None
    for item in items:
        found = first_float_tensor(item, _depth + 1, floating)
        if found is not None:
            return found
    return None
