"""Statistics of tensors: a few fused reductions on the device, the rest on the host.

On the device (no ``.item()``, no host sync) a tensor is reduced to one small vector: its sum,
sum of squares, min, max, the number of live units, followed by a strided subsample of at most
``SAMPLE`` values. The session copies the vectors of a step to the host at once, where
``summarize`` turns each into statistics. Each device op costs a few microseconds whatever
the tensor's size, so the device does only what needs every value (moments, extremes, live units)
and the host does what a subsample answers as well (histogram, zero and saturated fractions).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# Values kept per tensor for the histogram and the zero / saturated fractions.
SAMPLE = 1024
HEAD = 5  # sum, sumsq, min, max, alive units

# Bounded activations and their range; saturated = output within 1% of the range from a bound
# (tanh |y| > 0.98 <=> |x| > 2.3; sigmoid y < 0.01 or y > 0.99 <=> |x| > 4.6).
SATURATING = {
    "Tanh": (-1.0, 1.0),
    "Hardtanh": (-1.0, 1.0),
    "Softsign": (-1.0, 1.0),
    "Sigmoid": (0.0, 1.0),
    "Hardsigmoid": (0.0, 1.0),
}


def unit_dim(ndim: int) -> int | None:
    """The dimension that indexes units: channels for images (N, C, H, W[, D]), else features (last).

    A unit is "dead" when it is never positive over the whole batch.
    """
    if ndim < 2:
        return None
    return 1 if ndim in (4, 5) else ndim - 1


def reduce(t: torch.Tensor, units: bool = False) -> torch.Tensor:
    """Device-side vector [sum, sumsq, min, max, alive_units, sample...] of a tensor (float32).

    ``alive_units`` counts units positive somewhere in the batch (NaN unless ``units``).
    """
    x = t.detach()
    if x.dtype != torch.float32:
        x = x.float()
    flat = x.reshape(-1)
    lo, hi = torch.aminmax(flat)
    dim = unit_dim(x.dim()) if units else None
    if dim is not None:
        others = tuple(d for d in range(x.dim()) if d != dim)
        alive = torch.count_nonzero(x.amax(dim=others).clamp_min(0)).float()
    else:
        alive = torch.full((), math.nan, device=x.device)
    stride = max(1, -(-flat.numel() // SAMPLE))
    head = torch.stack([flat.sum(), torch.dot(flat, flat), lo, hi, alive])
    return torch.cat([head, flat[::stride]])


def summarize(
    vec: np.ndarray, numel: int, units: int | None = None, bins: int = 0, bounds: tuple[float, float] | None = None
) -> dict[str, float | int | np.ndarray | None]:
    """Host-side statistics from a ``reduce`` vector of a tensor with ``numel`` values."""
    s, ss, lo, hi, alive = (float(v) for v in vec[:HEAD])
    # float64 on the host: under numpy 2 a float32 array stays float32 in arithmetic with Python
    # floats, and huge activations would overflow there (histogram bin indices out of range).
    sample = vec[HEAD:].astype(np.float64)
    finite = np.isfinite(sample)
    good = sample[finite]
    mean = s / numel
    # min and max propagate NaN and Inf; the float32 sum of squares may overflow on its own.
    all_finite = math.isfinite(lo) and math.isfinite(hi)
    if all_finite and math.isfinite(ss) and math.isfinite(s):
        std = math.sqrt(max(ss / numel - mean * mean, 0.0))
        norm = math.sqrt(ss)
    elif all_finite and len(good):  # finite values too large for float32 sums: estimate from the sample
        if not math.isfinite(s):
            mean = float(good.mean())
        std, norm = float(good.std()), math.sqrt(float(np.mean(good * good)) * numel)
    else:
        std = norm = math.nan
    if all_finite:
        nonfinite = 0
    else:  # estimated from the subsample, at least 1
        nonfinite = max(1, round((len(sample) - int(finite.sum())) * numel / max(len(sample), 1)))
    out: dict = {
        "mean": mean,
        "std": std,
        "min": lo,
        "max": hi,
        "norm": norm,
        "max_abs": max(abs(lo), abs(hi)),
        "zero_frac": float(np.mean(good == 0)) if len(good) else math.nan,
        "dead_frac": 1.0 - alive / units if units and math.isfinite(alive) else math.nan,
        "sat_frac": math.nan,
        "nonfinite": nonfinite,
        "hist": None,
    }
    if bounds is not None and len(good):
        low, high = bounds
        margin = 0.01 * (high - low)
        out["sat_frac"] = float(np.mean((good <= low + margin) | (good >= high - margin)))
    if bins > 0 and len(good):
        h_lo, h_hi = (lo, hi) if all_finite else (float(good.min()), float(good.max()))
        if not h_hi - h_lo > 1e-6 * max(abs(h_lo), abs(h_hi), 1e-30):  # (nearly) constant values
            h_lo, h_hi = h_lo - 0.5, h_hi + 0.5
        counts, _ = np.histogram(good, bins=bins, range=(h_lo, h_hi))
        out["hist"], out["hist_lo"], out["hist_hi"] = counts.astype("<i8"), h_lo, h_hi
    return out


def num_units(t: torch.Tensor) -> int | None:
    dim = unit_dim(t.dim())
    return t.shape[dim] if dim is not None else None


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
