"""wrong_loss_input: the loss function receives something other than what it expects (probabilities
into a loss that applies its own softmax or sigmoid)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.events import LOSS_FUNCS, LossTargets
from modeldebug.rules.base import Rule, attr_path, col, family, fix, g
from modeldebug.rules.reference import READS as REFERENCE_READS
from modeldebug.rules.reference import loss_calls, reference
from modeldebug.types import Finding

# A sampled input within [0, 1] up to float rounding; rows summing to 1 within SUM_TOL.
TOL, SUM_TOL = 1e-6, 1e-3
# NLLLoss: log-probabilities whose exps miss 1 by more than this over the class dimension were
# normalized over another one (log_softmax(dim=1) on [batch, time, classes]); float32 rounding of a
# log_softmax over 50k classes stays below 1e-3.
OFF_CLASSES = 0.1
# Share of the sampled steps that must show the pattern (a few unsampled-looking outliers allowed).
SHARE = 0.9
_SQUASHING = {"Softmax": "Softmax", "Softmax2d": "Softmax", "Sigmoid": "Sigmoid", "LogSoftmax": "LogSoftmax"}


@dataclass(frozen=True)
class Misuse:
    loss: str  # the loss function
    got: str  # "probabilities", "sigmoid outputs", "raw scores"
    expects: str
    samples: int
    lo: float
    hi: float
    sum_err: float | None


def misuse(ev: Evidence) -> Misuse | None:
    """What the loss input looked like on the sampled steps, when it is not what the loss expects:
    probabilities (in [0, 1], rows summing to 1) into ``cross_entropy``; non-negative values
    (probabilities, not log-probabilities, which are <= 0) or positive scores into ``nll_loss``;
    values all within [0, 1] (sigmoid outputs, not logits) into ``binary_cross_entropy_with_logits``."""
    calls = loss_calls(ev)
    names = {c.name for c in calls}
    if not names:
        return None
    if len(names) == 1:
        (name,) = names
    elif calls[0].name == "cross_entropy":
        # Several losses summed (multi-task heads): a sampled step's input is its first call's, the
        # first loss seen. Judged for cross_entropy alone: rows of probabilities summing to 1 are
        # measured for class losses only, so no other loss's input can show them.
        name = "cross_entropy"
    else:
        return None
    lo, hi = col(ev.steps, "loss_input_min"), col(ev.steps, "loss_input_max")
    ok = np.isfinite(lo) & np.isfinite(hi)
    n = int(ok.sum())
    if n < 2:
        return None
    lo, hi = lo[ok], hi[ok]
    err = col(ev.steps, "loss_input_sum_err")[ok]
    span = (float(lo.min()), float(hi.max()))
    unit = (lo >= -TOL) & (hi <= 1 + TOL)
    if name == "cross_entropy":
        rows = unit & np.isfinite(err) & (err <= SUM_TOL)
        if rows.mean() >= SHARE:
            return Misuse(name, "probabilities", "raw logits (it applies log_softmax itself)", n, *span,
                          float(np.nanmax(err)))
    elif name == "nll_loss":
        if (lo >= -TOL).mean() >= SHARE:
            return Misuse(name, "probabilities", "log-probabilities (log_softmax output, all <= 0)", n, *span,
                          float(np.nanmax(err)) if np.isfinite(err).any() else None)
        if (hi > TOL).mean() >= SHARE:
            return Misuse(name, "raw scores", "log-probabilities (log_softmax output, all <= 0)", n, *span, None)
        off = (hi <= TOL) & np.isfinite(err) & (err > OFF_CLASSES)
        if off.mean() >= SHARE:
            return Misuse(name, "log-probabilities normalized over another dimension",
                          "log-probabilities over its classes (dim 1), whose exps sum to 1", n, *span,
                          float(np.nanmin(err[off])))
    elif name == "binary_cross_entropy_with_logits" and n >= 3 and unit.mean() >= SHARE:
        return Misuse(name, "sigmoid outputs", "raw logits (it applies the sigmoid itself)", n, *span, None)
    return None


# Activations whose outputs stay within a range: (low, high), None where unbounded.
_BOUNDED = {"ReLU": (0.0, None), "ReLU6": (0.0, None), "Softplus": (0.0, None), "Sigmoid": (0.0, 1.0),
            "Hardsigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0), "Softsign": (-1.0, 1.0)}
_REGRESSION = {"mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss"}
# Share of the sampled target values a bounded output cannot reach before it is a wrong head: a
# regression on standardised targets puts half of them below 0, a third outside [-1, 1].
UNREACHABLE = 0.1


@dataclass(frozen=True)
class OutOfReach:
    loss: str
    layer: str
    activation: str
    low: float | None
    high: float | None
    share: float  # of the sampled target values outside [low, high]
    samples: int
    lo: float  # the loss input's range over the sampled steps
    hi: float

    @property
    def range(self) -> str:
        return f"below {g(self.low)}" if self.high is None else f"outside [{g(self.low)}, {g(self.high)}]"


def out_of_reach(ev: Evidence) -> OutOfReach | None:
    """A regression loss fed by a bounded activation (the model's last layer) whose range excludes
    ``UNREACHABLE`` or more of the sampled targets: a ReLU head on targets that go negative, a
    sigmoid on targets beyond [0, 1]. The loss input must stay within that range on every sampled
    step (it is that layer's output)."""
    names = {c.name for c in loss_calls(ev)}
    order = ev.layers_in_order()
    if len(names) != 1 or not names <= _REGRESSION or not order:
        return None
    (name,) = names
    last = order[-1]
    bounds = _BOUNDED.get(family(last))
    targets = next((t for t in ev.events_of(LossTargets) if t.name == name), None)
    if bounds is None or targets is None:
        return None
    low, high = bounds
    share = (targets.below_zero if low == 0 else targets.below_minus_one) or 0.0
    share += (targets.above_one or 0.0) if high is not None else 0.0
    lo, hi = col(ev.steps, "loss_input_min"), col(ev.steps, "loss_input_max")
    ok = np.isfinite(lo) & np.isfinite(hi)
    if share < UNREACHABLE or ok.sum() < 2:
        return None
    lo, hi = lo[ok], hi[ok]
    if lo.min() < low - TOL or (high is not None and hi.max() > high + TOL):
        return None  # the loss sees values the layer cannot give: something follows it
    return OutOfReach(name, last.name, family(last), low, high, float(share), int(ok.sum()),
                      float(lo.min()), float(hi.max()))


@register
@dataclass
class WrongLossInput(Rule):
    """The model's output, as the loss function receives it, is not what that loss expects.

    Reads: steps.loss_input_min / loss_input_max / loss_input_sum_err (sampled steps: the range of
    the loss input and, for class losses, the largest deviation of a row's sum from 1),
    events.loss_call (which loss function), layers (the last layer to run), the loss reference.
    Fires: on at least 2 sampled steps (3 for BCEWithLogitsLoss), 90% of them showing
    - probabilities into ``CrossEntropyLoss``: every value in [0, 1] and every row summing to 1
      (within 1e-3): softmax applied twice, the loss floored at ln(1 + (K-1)/e) and its gradients
      squashed;
    - probabilities (all >= 0) or raw scores (some > 0) into ``NLLLoss``, which expects
      log-probabilities (all <= 0); or log-probabilities whose exps miss 1 by more than
      ``OFF_CLASSES`` = 0.1 over the class dimension in the median row (``loss_input_sum_err``
      holds that for NLLLoss inputs all <= 0): a log_softmax over the wrong dimension;
    - sigmoid outputs (all in [0, 1]) into ``BCEWithLogitsLoss``: logits that never leave [0, 1]
      confine the prediction to [0.5, 0.73].
    Raw logits cannot satisfy these by chance: their rows do not sum to 1 and they take both signs.
    Also: a regression loss (MSE, L1, smooth L1, Huber) on the output of a bounded activation that
    is the model's last layer (ReLU/Softplus >= 0, Sigmoid in [0, 1], Tanh in [-1, 1]), the loss
    input within that range on every sampled step, while ``UNREACHABLE`` = 0.1 or more of the
    sampled target values lie outside it (a ReLU head on targets that go negative).
    With several loss functions (summed heads) the sampled input is the step's first call's: judged
    when that is ``CrossEntropyLoss``, the only pattern no other loss's input can show.
    Severity: high (the loss has a floor the model cannot go below; training "works" but worse).
    Causes: wrong_loss_function.
    Recommends: removing the final Softmax/Sigmoid (named when it is a module), log_softmax for
    NLLLoss, or the loss that matches the output.
    """

    id = "wrong_loss_input"
    kind = "wrong_loss_input"
    reads = ("steps.loss_input_min", "steps.loss_input_max", "steps.loss_input_sum_err", "layers",
             "events.loss_targets") + REFERENCE_READS

    def check(self, ev: Evidence) -> list[Finding]:
        m = misuse(ev)
        if m is None:
            r = out_of_reach(ev)
            return [self._out_of_reach(ev, r)] if r is not None else []
        order = ev.layers_in_order()
        last = order[-1] if order and family(order[-1]) in _SQUASHING else None
        where = f" The last layer to run, {last.name}, is a {family(last)}." if last is not None else ""
        loss = LOSS_FUNCS.get(m.loss, m.loss)
        summed = m.sum_err is not None and m.got == "probabilities"
        rows = f", rows summing to 1 within {g(m.sum_err)}" if summed else ""
        if m.got.startswith("log-probabilities"):
            rows = f" and the exps of its median row miss 1 by {g(m.sum_err)} or more"
        msg = (f"{loss} receives {m.got}: its input stays within [{g(m.lo)}, {g(m.hi)}]{rows} on all "
               f"{m.samples} sampled steps, but it expects {m.expects}.{where}")
        ref = reference(ev)
        evidence = {"loss_function": m.loss, "input_min": m.lo, "input_max": m.hi, "sampled_steps": m.samples}
        if m.sum_err is not None:
            evidence["row_sum_error"] = m.sum_err
        if ref is not None:
            msg += f" The training {ref.note()}."
            evidence.update(ref.evidence())
        return [self.finding(
            severity="high", confidence=0.9, location=last.name if last is not None else None,
            step=_first_probed(ev),
            message=msg, evidence=evidence, causes=["wrong_loss_function"],
            recommendations=_fixes(m, last.name if last is not None else None),
        )]


    def _out_of_reach(self, ev: Evidence, r: OutOfReach) -> Finding:
        loss = LOSS_FUNCS.get(r.loss, r.loss)
        msg = (f"The model's last layer, {r.layer}, is a {r.activation}: its outputs (the {loss} input, within "
               f"[{g(r.lo)}, {g(r.hi)}] on all {r.samples} sampled steps) cannot go {r.range}, but "
               f"{g(100 * r.share)}% of the sampled target values lie there, and the loss cannot fall below "
               f"what they cost.")
        evidence = {"loss_function": r.loss, "activation": r.activation, "input_min": r.lo, "input_max": r.hi,
                    "sampled_steps": r.samples, "targets_out_of_reach": r.share}
        ref = reference(ev)
        if ref is not None:
            msg += f" The training {ref.note()}."
            evidence.update(ref.evidence())
        recs = [fix(f"Remove the final {r.activation} ({r.layer}): a regression head returns the last layer's "
                    f"values, which reach the targets on both sides.", f"{attr_path(r.layer)} = nn.Identity()")]
        if r.high is not None:
            recs.append(fix(f"Or keep the {r.activation} and scale the targets into its range.",
                            "y = (y - y.min()) / (y.max() - y.min())" if r.low == 0
                            else "y = 2 * (y - y.min()) / (y.max() - y.min()) - 1"))
        return self.finding(
            severity="high", confidence=0.85, location=r.layer,
            step=_first_probed(ev),
            message=msg, evidence=evidence, causes=["wrong_loss_function"], recommendations=recs)


def _first_probed(ev: Evidence) -> int:
    """The first step whose loss input was measured."""
    return int(col(ev.steps, "step")[np.isfinite(col(ev.steps, "loss_input_min"))][0])


def _fixes(m: Misuse, last: str | None) -> list:
    layer = f" ({last})" if last else ""
    if m.loss == "cross_entropy":
        return [fix(f"Remove the final softmax{layer}: return the logits and let CrossEntropyLoss apply "
                    "log_softmax; take softmax only where you need probabilities (at inference).",
                    "logits = model(x)\nloss = nn.CrossEntropyLoss()(logits, y)\n"
                    "probs = logits.softmax(dim=1)  # for reporting only")]
    if m.loss == "nll_loss" and m.got.startswith("log-probabilities"):
        return [fix("Take log_softmax over the class dimension: the last one of a [batch, ..., classes] output "
                    "(dim=-1), before any reshape for NLLLoss.",
                    "logp = torch.log_softmax(logits, dim=-1)  # [batch, time, classes]\n"
                    "loss = F.nll_loss(logp.reshape(-1, logp.shape[-1]), y.reshape(-1))")]
    if m.loss == "nll_loss":
        return [fix("Give NLLLoss log-probabilities: log_softmax instead of softmax (or return logits and use "
                    "CrossEntropyLoss).", "return torch.log_softmax(self.out(h), dim=-1)  # then nn.NLLLoss()")]
    return [fix(f"Remove the sigmoid{layer} before BCEWithLogitsLoss (it applies the sigmoid itself, stably); "
                "keep torch.sigmoid for predictions, or use nn.BCELoss on probabilities.",
                "logits = model(x)  # no sigmoid\nloss = nn.BCEWithLogitsLoss()(logits, y)\n"
                "prob = torch.sigmoid(logits)")]
