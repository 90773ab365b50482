"""What every rule shares: the Rule base class and small helpers over Evidence.

A rule is a small dataclass: ``id``, the ``kind`` it reports, thresholds as constructor
arguments (dataclass fields), what evidence it ``reads``, and ``check(evidence) -> [Finding]``.
Helpers here are pure functions of Evidence columns (numpy, no loops over rows).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from modeldebug.evidence import Evidence, LayerInfo, Table
from modeldebug.findings import best_practice, fix, make_finding, optimization  # noqa: F401  (rules import them from here)
from modeldebug.rules.reference import READS as REFERENCE_READS  # noqa: F401  (severity-by-harm rules)
from modeldebug.rules.reference import harm
from modeldebug.types import Finding, Recommendation

# Steps at the start of a run that dynamics rules ignore: initial transients are not faults.
GRACE_STEPS = 5


@dataclass
class Rule:
    """Base class. Subclasses set the class attributes and implement ``check``."""

    id: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    reads: ClassVar[tuple[str, ...]] = ()
    # The cheapest analysis level (basic < detailed < comprehensive) whose preset includes the rule.
    level: ClassVar[str] = "basic"

    def check(self, ev: Evidence) -> list[Finding]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finding(self, **fields: Any) -> Finding:
        fields.setdefault("kind", self.kind)
        return make_finding(**fields)


def g(x: float) -> str:
    """A number for a message: 3 significant digits."""
    return f"{x:.3g}"


def col(t: Table, name: str, dtype=float) -> np.ndarray:
    """A column as a numeric array; an absent column is all-NaN (missing data, never an error)."""
    if name not in t:
        return np.full(len(t), np.nan)
    a = t[name]
    if a.dtype == object:
        a = np.array([np.nan if v is None else v for v in a], dtype=float)
    return a.astype(dtype, copy=False)


def flag(t: Table, name: str) -> np.ndarray:
    """A boolean column; missing values count as False."""
    if name not in t or len(t) == 0:
        return np.zeros(len(t), dtype=bool)
    a = t[name]
    if a.dtype == bool:
        return a
    a = np.asarray(a, dtype=float)
    return np.nan_to_num(a, nan=0.0) != 0


def grace_mask(steps: np.ndarray, grace: int) -> np.ndarray:
    """Rows at least ``grace`` steps after the first recorded step."""
    if len(steps) == 0:
        return np.zeros(0, dtype=bool)
    return steps >= np.nanmin(steps) + grace


def first_true(mask: np.ndarray, steps: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(steps[idx[0]]) if len(idx) else None


# --- how training is going: rules downgrade symptoms that do not hurt (AUTOTRAINER) ---------------


@dataclass
class LossTrend:
    start: float  # median loss of the first window after the grace steps
    end: float  # median loss of the last window
    n: int  # finite losses after the grace steps
    diverged: bool  # loss rose well above its start, or became non-finite
    ev: Evidence | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def harm(self) -> str:
        """The harm a reference shows though the loss may fall (rules/reference.py; "" for none).
        Rules whose severity reads it declare ``REFERENCE_READS``."""
        return harm(self.ev) if self.ev is not None else ""

    @property
    def rel_change(self) -> float:
        return (self.end - self.start) / abs(self.start) if self.start else 0.0

    @property
    def improving(self) -> bool:
        """Loss fell at least 10%, or reached about zero."""
        return not self.diverged and (self.end <= 0.9 * self.start or abs(self.end) < 1e-4)


def loss_trend(ev: Evidence, grace: int = GRACE_STEPS, min_steps: int = 6) -> LossTrend | None:
    """Start vs end of the training loss; None when there are too few finite values to tell."""
    steps = col(ev.steps, "step")
    loss = col(ev.steps, "loss")
    nonfinite = flag(ev.steps, "loss_nonfinite") | np.isinf(loss)
    keep = grace_mask(steps, grace) if len(steps) > 2 * grace + min_steps else np.ones(len(steps), bool)
    finite = loss[keep & np.isfinite(loss)]
    if len(finite) < min_steps:
        return None
    k = int(np.clip(len(finite) // 10, 3, 50))
    start, end = float(np.median(finite[:k])), float(np.median(finite[-k:]))
    diverged = bool(nonfinite[keep].any()) or end > start + 0.1 * abs(start)
    return LossTrend(start=start, end=end, n=len(finite), diverged=diverged, ev=ev)


def adversarial(ev: Evidence) -> bool:
    """Players trained against each other (a GAN's generator and discriminator): two models or
    more, an optimizer each, and several backward calls into each step (one per objective)."""
    models = {i.model for i in ev.params.values() if i.in_optimizer}
    calls = col(ev.steps, "backward_calls")
    return len(ev.optimizers) >= 2 and len(models) >= 2 and len(calls) > 0 and float(np.median(calls)) >= 2


ADVERSARIAL_READS = ("params", "optimizers", "steps.backward_calls")


def impact_severity(trend: LossTrend | None, hurt: str = "high", unknown: str = "medium") -> str:
    """Severity for a symptom: ``low`` when the loss still improves and no reference shows harm
    (``medium`` when one does: a loss that falls may still stay no better than a trivial predictor),
    else ``hurt``."""
    if trend is None:
        return unknown
    if trend.improving:
        return "medium" if trend.harm else "low"
    return hurt


# --- the optimizer: concrete learning-rate advice ----------------------------------------------

_ADAPTIVE = {"Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "SparseAdam", "Adafactor", "Adagrad"}
_TORCH_OPTIMS = _ADAPTIVE | {"SGD", "ASGD", "Adadelta", "LBFGS", "Rprop"}


def optimizer_type(ev: Evidence) -> str | None:
    if not ev.optimizers:
        return None
    return ev.optimizers[0].type.rsplit(".", 1)[-1]


def current_lr(ev: Evidence) -> float | None:
    """The largest learning rate of the first optimizer's groups; else the last logged lr. Under an
    lr scheduler (its groups carry ``initial_lr``) the largest the run stepped with: a warm-up and
    decay schedule ends near 0, which says nothing of the lr that trained (or blew up) the model."""
    for opt in ev.optimizers[:1]:
        lrs = [float(pg["lr"]) for pg in opt.param_groups if pg.get("lr") is not None]
        if lrs:
            if any("initial_lr" in pg for pg in opt.param_groups):
                logged = col(ev.steps, "lr")
                logged = logged[np.isfinite(logged)]
                lrs += [float(logged.max())] if len(logged) else []
            return max(lrs)
    lr = col(ev.steps, "lr")
    lr = lr[np.isfinite(lr)]
    return float(lr[-1]) if len(lr) else None


def lr_bounds(opt_type: str | None) -> tuple[float, float, float]:
    """(low, typical, high) learning rates for an optimizer family: common practice, fault suite."""
    if opt_type in _ADAPTIVE:
        return 1e-6, 1e-3, 1e-2
    if opt_type == "Adadelta":
        return 1e-3, 1.0, 10.0
    return 1e-5, 0.05, 0.5  # SGD and the rest


def lr_is_high(ev: Evidence) -> bool:
    lr = current_lr(ev)
    return lr is not None and lr >= lr_bounds(optimizer_type(ev))[2]


def lr_is_low(ev: Evidence) -> bool:
    lr = current_lr(ev)
    return lr is not None and lr <= lr_bounds(optimizer_type(ev))[0]


def _nice(x: float) -> float:
    return float(f"{x:.1g}")


def optimizer_code(ev: Evidence, **kwargs: Any) -> str:
    """``torch.optim.SGD(model.parameters(), lr=0.5)`` for this run's optimizer with new arguments."""
    name = optimizer_type(ev) or "SGD"
    qual = f"torch.optim.{name}" if name in _TORCH_OPTIMS else name
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{qual}(model.parameters(), {args})"


def lower_lr(ev: Evidence, factor: float = 10.0) -> list[Recommendation]:
    lr = current_lr(ev)
    if lr is None or lr <= 0:
        return [fix("Lower the learning rate about 10x.", None)]
    new = _nice(lr / factor)
    return [
        fix(
            f"Lower the learning rate about {factor:g}x: lr is {lr:g}; try {new:g}.",
            optimizer_code(ev, lr=new),
        )
    ]


def raise_lr(ev: Evidence) -> list[Recommendation]:
    lr = current_lr(ev)
    typical = lr_bounds(optimizer_type(ev))[1]
    if lr is None:
        return [fix(f"Raise the learning rate (about {typical:g} is typical for this optimizer).")]
    new = typical if lr <= 0 or lr < typical / 10 else _nice(lr * 10)
    return [fix(f"Raise the learning rate: lr is {lr:g}; try {new:g}.", optimizer_code(ev, lr=new))]


def device_type(ev: Evidence) -> str | None:
    """"cuda", "cpu", ... for the device the run trained on (``run.device``); None when unknown."""
    return ev.run.device.split(":")[0] if ev.run.device else None


def autocast_code(ev: Evidence, body: str) -> str:
    """``body`` under bf16 autocast for this run's device (CUDA when unknown): advice that fits the run."""
    return f"with torch.autocast(device_type='{device_type(ev) or 'cuda'}', dtype=torch.bfloat16):\n    {body}"


def clip_grad(max_norm: float = 1.0) -> Recommendation:
    return best_practice(
        "Clip the gradient norm between backward() and step().",
        f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm={max_norm:g})",
    )


# --- names: parameters, modules, code that reaches them ----------------------------------------


def attr_path(name: str, root: str = "model") -> str:
    """``features.0.weight`` -> ``model.features[0].weight``."""
    if not name:
        return root
    out = root
    for part in name.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def param_module(ev: Evidence, param: str) -> str:
    info = ev.params.get(param)
    if info is not None and info.module is not None:
        return info.module
    return param.rsplit(".", 1)[0] if "." in param else ""


# Layers with weights a recommendation can re-initialize, by family.
WEIGHTED = frozenset({"Linear", "LazyLinear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
                      "ConvTranspose2d", "ConvTranspose3d", "LSTM", "GRU", "RNN"})


def family(info: LayerInfo) -> str:
    """The built-in torch.nn class a layer is (a ``class MyTanh(nn.Tanh)`` is "Tanh"), else its own type
    name: what every table keyed by layer type matches, so subclasses are not skipped."""
    return info.family or info.type  # "" for a custom module and in stores written before the field


def layer_family(ev: Evidence, name: str) -> str:
    info = ev.layers.get(name)
    return family(info) if info else ""


def layers_of(ev: Evidence, families: set[str] | frozenset[str]) -> list[str]:
    """Names of the layers whose family is in ``families``."""
    return [n for n, info in ev.layers.items() if family(info) in families]


def layer_order(ev: Evidence, name: str) -> int:
    info = ev.layers.get(name)
    return info.order if info else -1


def previous_weighted(ev: Evidence, name: str) -> str | None:
    """The closest layer with weights that runs before ``name``."""
    order = layer_order(ev, name)
    before = [info for info in ev.layers_in_order() if info.order < order and family(info) in WEIGHTED]
    return before[-1].name if before else None


_INT_ARG = re.compile(r"(\w+)=(\d+)")


def layer_arg(ev: Evidence, name: str, arg: str) -> int | None:
    """An integer argument from a layer's description, e.g. out_features of a Linear."""
    info = ev.layers.get(name)
    if not info or not info.description:
        return None
    for k, v in _INT_ARG.findall(info.description):
        if k == arg:
            return int(v)
    # Conv2d(3, 16, kernel_size=...) and BatchNorm1d(64, ...) keep their sizes positional.
    m = re.match(r"\w+\((\d+)(?:,\s*(\d+))?", info.description)
    if m and arg in ("in_channels", "num_features"):
        return int(m.group(1))
    if m and arg == "out_channels" and m.group(2):
        return int(m.group(2))
    return None


def per_group(keys: np.ndarray, values: np.ndarray, reducer: str) -> dict[Any, float]:
    """Reduce ``values`` per key with numpy only: 'any', 'all', 'max', 'min', 'sum', 'count'."""
    if len(keys) == 0:
        return {}
    uniq, inv = np.unique(keys, return_inverse=True)
    v = np.asarray(values, dtype=float)
    n = len(uniq)
    if reducer == "any":
        out = np.bincount(inv, weights=(np.nan_to_num(v) != 0), minlength=n) > 0
    elif reducer == "all":
        out = np.bincount(inv, weights=(np.nan_to_num(v) == 0), minlength=n) == 0
    elif reducer == "sum":
        out = np.bincount(inv, weights=np.nan_to_num(v), minlength=n)
    elif reducer == "count":
        out = np.bincount(inv, weights=np.isfinite(v), minlength=n)
    elif reducer in ("max", "min"):
        fill = -np.inf if reducer == "max" else np.inf
        out = np.full(n, fill)
        (np.maximum if reducer == "max" else np.minimum).at(out, inv, np.where(np.isnan(v), fill, v))
        out = np.where(np.isinf(out) & (out == fill), np.nan, out)
    else:
        raise ValueError(f"Expected reducer in any/all/sum/count/max/min but got {reducer!r}")
    return {k.item() if hasattr(k, "item") else k: x.item() for k, x in zip(uniq, out)}


def _sorted_groups(keys: np.ndarray, values: np.ndarray):
    """The finite ``values`` sorted within each key (sort once): keys, sorted values, each key's start and count."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    keys, v = keys[ok], v[ok]
    if len(keys) == 0:
        return None
    uniq, inv = np.unique(keys, return_inverse=True)
    counts = np.bincount(inv, minlength=len(uniq))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return uniq, v[np.lexsort((v, inv))], starts, counts


def _by_key(uniq: np.ndarray, values: np.ndarray) -> dict[Any, float]:
    return {k.item() if hasattr(k, "item") else k: float(m) for k, m in zip(uniq, values)}


def per_group_median(keys: np.ndarray, values: np.ndarray) -> dict[Any, float]:
    """Median of the finite ``values`` per key."""
    groups = _sorted_groups(keys, values)
    if groups is None:
        return {}
    uniq, sv, starts, counts = groups
    return _by_key(uniq, (sv[starts + (counts - 1) // 2] + sv[starts + counts // 2]) / 2)


def thrown_early(ev: Evidence, limit: float = 0.1, rise: float = 2.0) -> float | None:
    """The largest median update ratio |dW|/|W| (over parameters) of a sampled step in the first half
    of the run, when above ``limit`` (DeepDiagnosis' healthy upper bound) and the training loss rose
    to ``rise`` = 2x its first value or more in that half: an lr far too high throws the weights and
    the loss up together, and can leave a collapsed network (at the trivial loss, its first layers
    starved of gradient) that its later steps hardly move. Large first updates alone are how
    Adagrad and Adam begin at a usual lr (0.3-0.7 in their first steps, the loss falling)."""
    t = ev.param_stats
    if len(t) == 0:
        return None
    steps_all, loss = col(ev.steps, "step"), col(ev.steps, "loss")
    finite = np.isfinite(loss)
    if not finite.any():
        return None
    half = finite & (steps_all <= np.median(steps_all))
    first = float(loss[finite][0])
    if not (half.any() and first > 0 and float(np.max(loss[half])) >= rise * first):
        return None
    steps, ratios = col(t, "step"), col(t, "update_ratio")
    worst = None
    for step in np.unique(steps[steps < np.median(steps)]):
        at = steps == step
        medians = list(per_group_median(t["param"][at], ratios[at]).values())
        if medians and float(np.median(medians)) > limit:
            worst = max(worst or 0.0, float(np.median(medians)))
    return worst


@dataclass(frozen=True)
class TightClip:
    max_norm: float
    median_norm: float  # the unclipped gradient norm of the clipped steps

    @property
    def shrink(self) -> float:
        return self.median_norm / self.max_norm


def clipped_hard(ev: Evidence, factor: float = 100.0) -> TightClip | None:
    """clip_grad_norm_ after backward at a max_norm ``factor`` = 100x or more below the median
    unclipped gradient norm of the steps it ran on, under a non-adaptive optimizer: every update is
    that many times smaller than the lr says. (Adam-style optimizers divide the scale out again, and
    clipping at 1.0 on norms of a few to tens is the usual guard.)"""
    from modeldebug.events import GradientClip

    clip = next((e for e in ev.events_of(GradientClip) if not e.before_backward
                 and e.function == "clip_grad_norm_" and e.max_value), None)
    if clip is None or optimizer_type(ev) in _ADAPTIVE:
        return None
    clipped = col(ev.steps, "clip_calls") > 0
    norms = col(ev.steps, "grad_norm")[clipped]
    norms = norms[np.isfinite(norms)]
    if not len(norms) or clip.max_value <= 0:
        return None
    median = float(np.median(norms))
    return TightClip(float(clip.max_value), median) if median >= factor * clip.max_value else None


def input_scale(ev: Evidence) -> float:
    """The largest |mean| or std of the model's input over the steps (0 when none was recorded)."""
    return float(np.nanmax(np.abs(np.concatenate([col(ev.steps, "input_mean"), col(ev.steps, "input_std")])),
                           initial=0.0))


def target_scale(ev: Evidence) -> float | None:
    """The root mean square of the sampled regression targets (the ``loss_targets`` event), if any."""
    from modeldebug.events import LossTargets

    return next((t.rms for t in ev.events_of(LossTargets) if t.rms is not None), None)


def per_group_low(keys: np.ndarray, values: np.ndarray, q: float = 0.25) -> dict[Any, float]:
    """The lower ``q`` order statistic of the finite ``values`` per key (the minimum for fewer than 5):
    for timings, which a busy machine only ever lengthens."""
    groups = _sorted_groups(keys, values)
    if groups is None:
        return {}
    uniq, sv, starts, counts = groups
    return _by_key(uniq, sv[starts + ((counts - 1) * q).astype(int)])


def init_scales(ev: Evidence, first_steps: int = 10) -> dict[str, float]:
    """Weight RMS x sqrt(fan_in) at the first sample, per weight matrix (~0.6-1.4 for PyTorch's
    default, Kaiming and Xavier init); empty when the first sample came after ``first_steps``."""
    t = ev.param_stats
    if len(t) == 0:
        return {}
    steps, norm = col(t, "step"), col(t, "norm")
    start = np.nanmin(steps)
    if not start <= first_steps:
        return {}
    out = {}
    for p, n in zip(t["param"][steps == start], norm[steps == start]):
        info = ev.params.get(str(p))
        if info is None or len(info.shape) < 2 or info.numel == 0 or not np.isfinite(n):
            continue
        out[str(p)] = float(n / np.sqrt(info.measured_numel) * np.sqrt(info.numel // info.shape[0]))
    return out
