"""nan_or_inf: the loss, a gradient, an activation or a weight became NaN or Inf."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeldebug.events import NonfiniteOrigin
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import (
    Rule,
    attr_path,
    best_practice,
    clip_grad,
    col,
    first_true,
    fix,
    flag,
    g,
    input_scale,
    lower_lr,
    lr_is_high,
    param_module,
)
from modeldebug.types import Finding


@register
@dataclass
class NanOrInf(Rule):
    """Non-finite values anywhere in training.

    Reads: the ``nonfinite_origin`` event (the collector replays the first bad step before the
    weights change: the module and op that produced the first NaN/Inf, forward or backward, or
    the batch, or weights already blown up); steps.loss_nonfinite, grad_nonfinite,
    input_nonfinite, loss, grad_norm; layer_stats.nonfinite / grad_nonfinite (the first layer
    with non-finite values, in forward order, when no replay could be made, e.g. on CUDA);
    param_stats.norm (weights that became NaN).
    Fires: at the first step with a non-finite loss or gradient (SageMaker's and AUTOTRAINER's
    NaN check: any NaN is a fault; no threshold). Always ``high``.
    Causes: inputs already non-finite -> ``other`` (bad data; data_issue says more, and this
    finding is only medium); an op of the model (log of 0, x/0, exp overflow, sqrt at 0 in the
    backward) -> ``numerically_unstable_op``; a layer's op (not exp) that overflows on finite inputs
    before any update -> ``bad_weight_init`` (the initial scale grows the activations;
    ``unnormalized_inputs`` first when the inputs' mean or std exceeds 1e3); gradient norm growing ``growth``x over the steps
    before, or weights already non-finite -> ``learning_rate_too_high``.
    Recommends: lower lr (concrete), gradient clipping, the stable op (log_softmax,
    BCEWithLogitsLoss, eps), torch.autograd.detect_anomaly to find the op.
    """

    id = "nan_or_inf"
    kind = "nan_or_inf"
    reads = ("steps.loss_nonfinite", "steps.grad_nonfinite", "steps.grad_norm", "layer_stats.nonfinite", "layer_stats.grad_nonfinite",
             "param_stats.norm", "events.nonfinite_origin", "layers", "optimizers", "param_stats.changed",
             "steps.input_nonfinite", "steps.loss", "steps.optimizer_stepped", "steps.scaler_skipped",
             "steps.input_mean", "steps.input_std")
    growth: float = 100.0  # grad norm rise before the NaN that points at the learning rate (fault suite)

    def check(self, ev: Evidence) -> list[Finding]:
        s = ev.steps
        if len(s) == 0:
            return []
        steps = col(s, "step")
        loss, gn = col(s, "loss"), col(s, "grad_norm")
        bad = flag(s, "loss_nonfinite") | flag(s, "grad_nonfinite") | np.isinf(loss) | np.isinf(gn)
        # Steps a GradScaler skipped: inf gradients are how it finds its scale (loss_scale_collapse
        # judges when they are a fault).
        bad &= ~flag(s, "scaler_skipped")
        first = first_true(bad, steps)
        weights_bad = self._bad_weights(ev)
        if first is None and not weights_bad:
            return []
        if first is None:
            first = min(step for step, _ in weights_bad.values())
        what = []
        if flag(s, "loss_nonfinite").any() or np.isinf(loss).any():
            what.append("loss")
        if flag(s, "grad_nonfinite").any() or np.isinf(gn).any():
            what.append("gradients")
        if weights_bad:
            what.append("weights")

        replay = self._replay(ev)
        location, origin = self._origin(ev)
        inputs_bad = flag(s, "input_nonfinite") & (steps <= first)
        before = gn[(steps < first) & np.isfinite(gn)]
        grew = len(before) >= 2 and before[-1] > self.growth * max(np.min(before), 1e-12)
        phase = replay.get("phase") if replay else None
        # an optimizer step before the first non-finite one (none: no update can have caused it)
        updated_before = bool((flag(s, "optimizer_stepped") & (steps < first)).any())
        # The loss overflowed on finite outputs too large to square: activations that blew up in the model.
        overflowed = phase == "loss" and bool((replay.get("details") or {}).get("blown_up"))
        # A layer's op (not exp) overflowed on finite inputs before any update: the initial weights
        # grow the activations layer by layer, or time step by time step.
        init_overflow = (phase in ("forward", "backward") and not updated_before
                         and str(replay.get("cause", "")).startswith("overflow in"))
        if inputs_bad.any() or phase == "input":
            causes = ["other", "numerically_unstable_op"]
        elif overflowed:
            causes = (["learning_rate_too_high", "bad_weight_init"] if updated_before and (grew or lr_is_high(ev))
                      else ["bad_weight_init", "missing_normalization_layer", "learning_rate_too_high"])
        elif init_overflow:
            scale = input_scale(ev)
            causes = (["unnormalized_inputs", "bad_weight_init", "missing_normalization_layer"] if scale > 1e3
                      else ["bad_weight_init", "missing_normalization_layer", "numerically_unstable_op"])
        elif phase in ("forward", "backward") and not (grew and str(replay.get("cause", "")).startswith("overflow")):
            causes = ["numerically_unstable_op", "learning_rate_too_high"]
        elif phase == "loss" and not grew:  # e.g. log(0) in a hand-written loss
            causes = ["numerically_unstable_op", "wrong_loss_function"]
        elif phase == "weights" and not updated_before:
            causes = ["bad_weight_init", "other"]
        elif grew or lr_is_high(ev) or phase == "weights":
            causes = ["learning_rate_too_high", "numerically_unstable_op", "bad_weight_init"]
        else:
            causes = ["numerically_unstable_op", "learning_rate_too_high"]

        msg = f"The {' and '.join(what) or 'values'} became NaN/Inf at step {first}"
        if replay and phase in ("forward", "backward"):
            # (no module: the op is in the model's own forward, outside its layers)
            location = replay.get("module")
            where = f"{location} ({replay.get('module_type')})" if location else "the model's own forward code"
            pass_ = "forward" if phase == "forward" else "backward"
            msg += (f"; replaying that step, the first non-finite value comes from `{replay.get('op')}` in "
                    f"{where} in the {pass_} pass: {replay.get('cause')}")
            if init_overflow:
                msg += (". No update had run yet: the initial weights grow the activations through the layers "
                        "(or time steps) until they overflow")
        elif replay and overflowed:
            location = replay.get("module")
            msg += (f"; replaying that step, the model's forward and backward stay finite but {replay.get('cause')}"
                    ": its activations grow through its layers (or time steps) instead of keeping their scale")
        elif replay and phase == "loss":
            location = None
            # After the gradients blew up, the loss overflows on huge outputs: no hand-written op to blame.
            guess = ("the outputs of weights that earlier updates blew up overflow it" if grew
                     else "a hand-written log or division in the loss, or targets out of range")
            msg += ("; replaying that step, the model's forward and backward stay finite: it arises in the loss "
                    f"computation ({guess})")
        elif replay and phase == "weights":
            location = replay.get("module") or location
            if updated_before:
                msg += f"; the weights of {location} were already non-finite: an earlier update blew them up"
            else:
                msg += (f"; the weights of {location} were already non-finite before any update: they were "
                        "initialised or loaded that way")
        elif origin:
            msg += f"; the first layer in forward order with non-finite {origin[1]} is {location} ({origin[0]})"
        msg += "."
        if inputs_bad.any() or phase == "input":
            at = first_true(inputs_bad, steps) if inputs_bad.any() else replay.get("step", first)
            msg += f" The input batch was already non-finite at step {at}: the data, not the model."
            location = None
        elif grew:
            msg += f" The gradient norm rose from {g(np.min(before))} to {g(before[-1])} just before."
        recs = []
        if inputs_bad.any() or phase == "input":
            recs.append(fix("Drop or repair non-finite samples before they reach the model.",
                            "assert torch.isfinite(x).all(), 'non-finite input batch'"))
        if causes[0] == "unnormalized_inputs":
            recs.append(fix("Standardize the inputs: at this scale the first layers' outputs overflow.",
                            "x = (x - x_train.mean(0)) / (x_train.std(0) + 1e-8)"))
        if (overflowed or init_overflow) and causes[0] == "bad_weight_init":
            where = location or "the model"
            recurrent = replay.get("module_type") in ("RNN", "LSTM", "GRU")
            code = (f"for name, p in {attr_path(where)}.named_parameters():\n    if 'weight_hh' in name:\n"
                    "        nn.init.orthogonal_(p)" if recurrent and location
                    else f"nn.init.kaiming_normal_({attr_path(where)}.weight)" if location else None)
            recs.append(fix(f"Initialise {where}'s weights at a scale that keeps the activations' size (each "
                            "layer, or for a recurrent layer each time step, multiplies it): the default or "
                            "Xavier/Kaiming init, orthogonal recurrent weights; or add a LayerNorm.", code))
        elif causes[0] == "bad_weight_init":
            recs.append(fix("Check the weights where they are made or loaded, before training starts.",
                            "assert all(torch.isfinite(p).all() for p in model.parameters()), 'non-finite weights'"))
        if causes[0] == "learning_rate_too_high":
            recs += lower_lr(ev) + [clip_grad()]
        if not (overflowed or init_overflow):
            recs.append(_stable_op_fix(replay))
        if causes[0] != "learning_rate_too_high":
            recs += [clip_grad()]
        if not replay or phase in ("unknown", "loss"):
            recs.append(best_practice("Find the op that produced the first NaN (slow: one run only).",
                                      "with torch.autograd.detect_anomaly():\n    loss.backward()"))
        data_fault = bool(inputs_bad.any() or phase == "input")
        return [self.finding(
            severity="medium" if data_fault else "high", confidence=0.95, location=location, step=first,
            message=msg,
            evidence={"first_step": first, "nonfinite_steps": int(bad.sum()), "what": what,
                      "last_finite_grad_norm": float(before[-1]) if len(before) else None,
                      "weights": sorted(weights_bad)[:10],
                      **({"origin": {**{k: replay.get(k) for k in ("phase", "module", "module_type", "op", "cause")},
                                     **({"blown_up": replay["details"]["blown_up"]} if overflowed else {})}}
                         if replay else {})},
            causes=causes, recommendations=recs,
        )]

    @staticmethod
    def _replay(ev: Evidence) -> dict | None:
        """The collector's replay of the first non-finite step (the first one that found something)."""
        found = [e.to_data() for e in ev.events_of(NonfiniteOrigin)]
        useful = [d for d in found if d.get("phase") != "unknown"]
        return (useful or found or [None])[0]

    def _origin(self, ev: Evidence) -> tuple[str | None, tuple[str, str] | None]:
        """First layer in forward order with non-finite outputs (or gradients) at the earliest such step."""
        t = ev.layer_stats
        if len(t) == 0:
            return None, None
        for column, what in (("nonfinite", "outputs"), ("grad_nonfinite", "gradients")):
            bad = np.nan_to_num(col(t, column)) > 0
            if not bad.any():
                continue
            steps = col(t, "step")
            first = np.min(steps[bad])
            names = t["layer"][bad & (steps == first)]
            order = {n: ev.layers[n].order if n in ev.layers and ev.layers[n].order >= 0 else 1 << 30
                     for n in names}
            if what == "gradients":  # backward runs last layer first: the origin is the deepest
                name = max(names, key=lambda n: (order[n] if order[n] < 1 << 30 else -1))
            else:
                name = min(names, key=lambda n: order[n])
            return str(name), (ev.layers[name].type if name in ev.layers else "?", what)
        return None, None

    def _bad_weights(self, ev: Evidence) -> dict[str, tuple[int, str]]:
        t = ev.param_stats
        if len(t) == 0:
            return {}
        norm = col(t, "norm")
        bad = np.isinf(norm) | (np.isnan(norm) & flag(t, "changed"))
        if not bad.any():
            return {}
        steps, names = col(t, "step")[bad], t["param"][bad]
        out: dict[str, tuple[int, str]] = {}
        for st, n in sorted(zip(steps, names)):
            out.setdefault(str(n), (int(st), param_module(ev, str(n))))
        return out


def _stable_op_fix(replay: dict | None):
    """The numerically stable replacement for the op the replay named (generic advice otherwise)."""
    op = str((replay or {}).get("op") or "").lower()
    module = (replay or {}).get("module") or "the layer"
    if op.startswith("log") or op.startswith("logbackward"):
        return fix(f"Keep the argument of log in {module} away from 0: clamp it, or work in log space "
                   "(log_softmax, BCEWithLogitsLoss instead of sigmoid + log).", "torch.log(x.clamp_min(1e-8))")
    if op.startswith("div") or op.startswith("reciprocal"):
        return fix(f"Add an epsilon to the divisor in {module}.", "x / (y + 1e-8)  # or y.clamp_min(1e-8)")
    if op.startswith("exp"):
        return fix(f"Keep exp in {module} from overflowing: subtract the max first or use logsumexp/softmax.",
                   "torch.exp(x - x.amax(dim=-1, keepdim=True))")
    if op.startswith("sqrt") or op.startswith("rsqrt") or op.startswith("pow"):
        return fix(f"The derivative of sqrt is infinite at 0: add an epsilon inside the sqrt in {module}.",
                   "torch.sqrt(x + 1e-12)  # or torch.linalg.vector_norm(x, dim=...) which handles 0")
    if op.endswith("backward") and op[:-8]:
        return fix(f"Check the backward() of the custom autograd function {op[:-8]} used in {module}: it "
                   "returns a non-finite gradient; guard its divisions and logs.", None)
    return fix(
        "Use numerically stable ops: log_softmax/CrossEntropyLoss instead of log(softmax), "
        "BCEWithLogitsLoss instead of sigmoid+BCELoss, an eps in log/sqrt/division.",
        "torch.log(x.clamp_min(1e-8))  # or x / (y + 1e-8)",
    )
