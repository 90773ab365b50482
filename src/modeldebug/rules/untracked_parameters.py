"""untracked_parameters: parameters that compute the loss but that no optimizer can train, because
they are new objects every step or because the optimizer holds another instance's."""

from __future__ import annotations

from dataclasses import dataclass

from modeldebug.events import NewParameters
from modeldebug.evidence import Evidence
from modeldebug.rules import register
from modeldebug.rules.base import Rule, attr_path, family, fix, flag, layer_arg, per_group
from modeldebug.types import Finding


@dataclass
class Renewed:
    """Parameters that were new objects at sampled steps, and that no optimizer held."""

    params: list[str]
    steps: list[int]
    numel: int


@dataclass
class Twin:
    """``trained`` computes the loss and gets gradients but is in no optimizer; the optimizer holds
    ``held``, a second instance with the same parameter shapes that never gets a gradient."""

    trained: str
    held: str
    params: list[str]  # of ``trained``
    held_params: list[str]
    numel: int


def renewed(ev: Evidence) -> Renewed | None:
    events = [e for e in ev.events_of(NewParameters) if e.in_optimizer < e.numel]
    if not events:
        return None
    names = list(dict.fromkeys(n for e in events for n in e.params))
    steps = sorted({e.at_step for e in events if e.at_step is not None})
    return Renewed(names, steps, max(e.numel - e.in_optimizer for e in events))


def twins(ev: Evidence) -> list[Twin]:
    t = ev.param_stats
    has_grad = per_group(t["param"], flag(t, "has_grad"), "any") if len(t) else {}
    by_model: dict[str, list[str]] = {}
    for name, info in ev.params.items():
        by_model.setdefault(info.model, []).append(name)
    if len(by_model) < 2:
        return []

    def shapes(model: str) -> list[tuple[int, ...]]:
        return [tuple(ev.params[p].shape) for p in by_model[model]]

    def numel(names: list[str], where) -> int:
        return sum(ev.params[p].numel for p in names if where(p))

    out = []
    for trained, names in by_model.items():
        total = numel(names, lambda p: True)
        if not total or numel(names, lambda p: has_grad.get(p) and not ev.params[p].in_optimizer) < total / 2:
            continue
        for held, other in by_model.items():
            if held == trained or shapes(held) != shapes(trained):
                continue
            if numel(other, lambda p: ev.params[p].in_optimizer and not has_grad.get(p)) >= total / 2:
                out.append(Twin(trained, held, names, other, total))
                break
    return out


def claimed(ev: Evidence) -> set[str]:
    """The parameters this rule explains (unchanged_weights leaves them to it)."""
    names = set(r.params) if (r := renewed(ev)) else set()
    for tw in twins(ev):
        names |= set(tw.params) | set(tw.held_params)
    return names


def _module(names: list[str]) -> str:
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return ".".join(common)


@register
@dataclass
class UntrackedParameters(Rule):
    """Parameters that take part in the loss but that no optimizer can ever train.

    Reads: events.new_parameters (the collector compares the watched models' parameters with
    those registered when watching began, on sampled steps), params (model, shape, in_optimizer),
    param_stats.has_grad, layers (the renewed module's type and size).
    Fires: (1) parameters that are new objects at sampled steps and that no optimizer holds: a
    module created inside ``forward`` gets fresh random weights every call; high when seen at
    ``min_renewals`` or more steps (new every step), medium once (replaced once, mid-run).
    (2) two watched instances with the same parameter shapes, one computing the loss (gradients,
    in no optimizer) and one held by the optimizer (never a gradient): high.
    Cause: parameters_not_in_optimizer. No threshold from the data: any such parameter never trains.
    Recommends creating the module once in ``__init__`` (``nn.LazyLinear`` for a size known only at
    the first forward), or building the optimizer on the model that computes the loss.
    """

    id = "untracked_parameters"
    kind = "untracked_parameters"
    reads = ("events.new_parameters", "params", "param_stats.has_grad", "layers")
    min_renewals: int = 2

    def check(self, ev: Evidence) -> list[Finding]:
        findings = []
        r = renewed(ev)
        if r is not None:
            findings.append(self._renewed(ev, r))
        findings += [self._twin(tw) for tw in twins(ev)]
        return findings

    def _renewed(self, ev: Evidence, r: Renewed) -> Finding:
        module = _module(r.params)
        every = len(r.steps) >= self.min_renewals
        shown = ", ".join(r.params[:5]) + (f" and {len(r.params) - 5} more" if len(r.params) > 5 else "")
        at = ", ".join(str(s) for s in r.steps[:5])
        if every:
            what = (f"are new parameter objects at every step looked at (steps {at}): a module created inside "
                    f"forward() starts from fresh random weights at each call, and no optimizer holds them, "
                    f"so {module or 'it'} never trains")
        else:
            what = (f"were replaced by new parameter objects during training (step {at}) that no optimizer holds: "
                    f"from then on they never train")
        info = ev.layers.get(module)
        out = layer_arg(ev, module, "out_features") if info is not None and family(info) == "Linear" else None
        code = (f"self.{module} = nn.LazyLinear({out})  # in __init__: sized at the first forward\n"
                f"# forward(): return self.{module}(feats)  -- no module is created here") if out else (
            f"# in __init__ (before the optimizer is created):\nself.{module or 'layer'} = ...")
        recs = [fix(f"Create {module or 'the module'} once, in __init__, before the optimizer is built"
                    + (" (nn.LazyLinear when its input size is known only at the first forward)" if out else "")
                    + "; forward() should only call it.", code)]
        if not every:
            recs.append(fix("If the replacement is intended, give the new parameters to the optimizer.",
                            f"optimizer.add_param_group({{'params': {attr_path(module)}.parameters()}})"))
        return self.finding(
            severity="high" if every else "medium", confidence=0.9 if every else 0.7,
            location=module or None, step=r.steps[0] if r.steps else None,
            message=f"{shown} {what}.",
            evidence={"params": r.params[:50], "steps": r.steps, "numel": r.numel, "renewed_steps": len(r.steps)},
            causes=["parameters_not_in_optimizer"], recommendations=recs,
        )

    def _twin(self, tw: Twin) -> Finding:
        return self.finding(
            severity="high", confidence=0.85, location=tw.trained, step=0,
            message=(f"The optimizer holds the parameters of {tw.held}, another instance of {tw.trained} with the same "
                     f"parameter shapes, and none of {tw.trained}'s. {tw.trained} computes the training loss and gets "
                     f"the gradients but never changes; {tw.held} is stepped without gradients."),
            evidence={"model": tw.trained, "optimizer_holds": tw.held, "params": tw.params[:50], "numel": tw.numel},
            causes=["parameters_not_in_optimizer"],
            recommendations=[fix(
                f"Build the optimizer on the parameters of the model that computes the loss ({tw.trained}); keep "
                f"the copy ({tw.held}, an EMA or a target network) out of it and update it from the trained one.",
                "optimizer = torch.optim.AdamW(model.parameters(), lr=lr)  # the model whose loss calls backward()\n"
                "ema = torch.optim.swa_utils.AveragedModel(model)  # updated with ema.update_parameters(model)")],
        )


__all__ = ["UntrackedParameters", "claimed", "renewed", "twins"]
