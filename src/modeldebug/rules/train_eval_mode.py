"""train_eval_mode: optimizer steps with the model in eval mode, evaluation with it in train mode."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from modeldebug.evidence import Evidence, LayerInfo
from modeldebug.rules import register
from modeldebug.rules.base import Rule, col, fix, flag
from modeldebug.types import Finding

# Layers that behave differently in train and eval mode (dropout draws, batch vs running statistics).
_DROPOUT = {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "RReLU"}
_RUNNING_STATS = {"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
                  "LazyBatchNorm2d", "LazyBatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"}
_ZERO_P = re.compile(r"\bp=0(\.0+)?(?![\d.])")


def mode_dependent(info: LayerInfo) -> bool:
    """A layer whose output depends on train/eval mode: dropout with p > 0, a norm that keeps
    running statistics (InstanceNorm only with track_running_stats=True, BatchNorm unless it is off)."""
    family = info.family or info.type
    if family in _DROPOUT:
        return not _ZERO_P.search(info.description)
    if family in _RUNNING_STATS:
        if family.startswith("InstanceNorm"):
            return "track_running_stats=True" in info.description
        return "track_running_stats=False" not in info.description
    return False


@register
@dataclass
class TrainEvalMode(Rule):
    """The model's mode does not match what the loop does.

    Reads: steps.eval_mode (a watched root module was in eval mode at the step's training
    forward) and steps.optimizer_stepped; validation.batches and validation.train_mode_batches
    (evaluation losses computed with the root in train mode); layers (only a model with layers
    whose behaviour differs by mode, dropout or running-statistics norms, is judged: otherwise
    the mode changes nothing and the rule says nothing).
    Fires: (a) at least ``min_steps`` optimizer steps and ``min_fraction`` = 20% of them in eval
    mode: high from half of them, else medium; (b) at least ``min_fraction_eval`` = 50% of the
    evaluation batches in train mode: medium (the reported validation is noisy, and BatchNorm's
    running statistics take in the validation batches).
    Cause: wrong_module_mode.
    Recommends: model.train() at the start of every epoch; model.eval() before evaluating.
    """

    id = "train_eval_mode"
    kind = "train_eval_mode"
    reads = ("steps.eval_mode", "steps.optimizer_stepped", "validation.batches", "validation.train_mode_batches",
             "layers")
    min_steps: int = 5
    min_fraction: float = 0.2
    high_fraction: float = 0.5
    min_fraction_eval: float = 0.5

    def check(self, ev: Evidence) -> list[Finding]:
        layers = [l for l in ev.layers.values() if mode_dependent(l)]
        if not layers:
            return []
        names = [l.name for l in layers][:5]
        kinds = sorted({l.family or l.type for l in layers})
        out = []
        train = self._trained_in_eval(ev, names, kinds)
        if train:
            out.append(train)
        evaluated = self._evaluated_in_train(ev, names, kinds)
        if evaluated:
            out.append(evaluated)
        return out

    def _trained_in_eval(self, ev: Evidence, names: list[str], kinds: list[str]) -> Finding | None:
        t = ev.steps
        stepped = flag(t, "optimizer_stepped")
        in_eval = flag(t, "eval_mode") & stepped
        n_eval, n_steps = int(in_eval.sum()), int(stepped.sum())
        if n_eval < self.min_steps or n_eval < self.min_fraction * n_steps:
            return None
        steps = col(t, "step")
        first = int(steps[np.flatnonzero(in_eval)[0]])
        frac = n_eval / n_steps
        after_eval = len(ev.validation) and first >= float(np.nanmin(col(ev.validation, "step")))
        how = ("after the first evaluation called model.eval(), training never switched back: "
               if after_eval else "")
        return self.finding(
            severity="high" if frac >= self.high_fraction else "medium",
            message=(f"{n_eval} of {n_steps} optimizer steps ({frac:.0%}) trained the model in eval mode, "
                     f"from step {first}: {how}its {', '.join(kinds)} layers ran as at inference "
                     "(no dropout; BatchNorm normalises with running statistics that no longer update)."),
            confidence=0.9,
            location=names[0],
            step=first,
            evidence={"eval_mode_steps": n_eval, "optimizer_steps": n_steps, "first_eval_mode_step": first,
                      "mode_dependent_layers": names, "after_evaluation": bool(after_eval)},
            causes=["wrong_module_mode"],
            recommendations=[fix("Call model.train() at the start of every training epoch (an evaluation that "
                                 "calls model.eval() leaves the model in eval mode).",
                                 "for epoch in range(epochs):\n    model.train()\n    for x, y in loader: ...")],
        )

    def _evaluated_in_train(self, ev: Evidence, names: list[str], kinds: list[str]) -> Finding | None:
        v = ev.validation
        if not len(v):
            return None
        batches = np.nan_to_num(col(v, "batches"))
        in_train = np.nan_to_num(col(v, "train_mode_batches"))
        total, n_train = float(batches.sum()), float(in_train.sum())
        if total <= 0 or n_train < self.min_fraction_eval * total:
            return None
        rows = np.flatnonzero(in_train > 0)
        first = int(col(v, "step")[rows[0]])
        return self.finding(
            severity="medium",
            message=(f"{int(n_train)} of {int(total)} evaluation batches ran with the model in train mode: its "
                     f"{', '.join(kinds)} layers still drop units and use batch statistics, so the reported "
                     "validation loss is noisy and worse than the model is, and BatchNorm's running statistics "
                     "take in the validation batches."),
            confidence=0.85,
            location=names[0],
            step=first,
            evidence={"train_mode_eval_batches": int(n_train), "eval_batches": int(total),
                      "evaluations": int(len(rows)), "mode_dependent_layers": names},
            causes=["wrong_module_mode"],
            recommendations=[fix("Call model.eval() before evaluating (and model.train() before training again).",
                                 "model.eval()\nwith torch.no_grad():\n    ...\nmodel.train()")],
        )
