"""``debug_model(..., verify_fixes=True)``: the candidate fixes of `modeldebug fix`, verified the same way.

With a command (``DebuggingRequest.command``, or the stored run's own), :func:`modeldebug.fixes.verify.run_fix`
re-runs the script. A probed model is re-probed instead: once unfixed (the noise) and once per
candidate, each on a fresh copy of the user's model and optimizer from the same random state, the
candidate applied to the copy only (its optimizer's rates and hooks, its parameters, hooks on the
copied model); the same judge decides. Candidates that need the script (its scheduler, its ops)
are listed as not tried on the probe.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from modeldebug.fixes import DEFAULT_CANDIDATES, DEFAULT_STEPS
from modeldebug.fixes.candidates import Candidate, build
from modeldebug.fixes.verify import Window, _judge, _loss_curve, _roots, run_fix
from modeldebug.types import Fix, Report

if TYPE_CHECKING:
    from modeldebug.agent.models import DebuggingRequest
    from modeldebug.config import DebuggingConfig


def verify_fixes(req: DebuggingRequest, report: Report, config: DebuggingConfig, notices: list[str]) -> list[Fix]:
    """The fixes tried for ``report``'s root findings, the best verified first (empty: a notice says why)."""
    command = req.command or (report.run.command if req.model is None else None)
    if command:
        session = run_fix(command, steps=DEFAULT_STEPS, max_candidates=DEFAULT_CANDIDATES, config=config)
        notices.append(f"modeldebug fix on `{' '.join(command)}`: {session.verdict}")
        return session.fixes
    if req.model is None:
        notices.append("verify_fixes: the stored run has no command to re-run")
        return []
    return _on_probe(req, report, config, notices)


def _on_probe(req: DebuggingRequest, report: Report, config: DebuggingConfig, notices: list[str]) -> list[Fix]:
    import torch

    probe = Window(report, 0, report.run.duration_s)
    roots = _roots(probe)
    if not roots:
        notices.append("verify_fixes: no fix needed (no medium or high root finding in the probe)")
        return []
    candidates = build(roots, DEFAULT_CANDIDATES, _facts(req, report))
    if not candidates:
        notices.append(f"verify_fixes: no candidate fix for {', '.join(sorted({f.kind for f in roots}))}")
        return []
    devices = sorted({p.device.index or 0 for p in req.model.parameters() if p.is_cuda})
    fixes: list[Fix] = []
    with torch.random.fork_rng(devices=devices):
        start = torch.random.get_rng_state()
        rerun = lambda apply: _rerun(req, config, start, apply)  # noqa: E731
        again = rerun(None)
        for candidate in candidates:
            apply = _APPLY.get(candidate.spec["kind"])
            if apply is None or (req.optimizer is None and candidate.spec["kind"] in _NEEDS_OPTIMIZER):
                fixes.append(Fix(addresses=candidate.addresses, change=candidate.change, verified=False,
                                 reason="not tried on the probe: this change needs the training script (modeldebug fix)"))
                continue
            after = rerun(lambda model, opt, c=candidate: apply(c.spec, model, opt))
            tried = _judge(candidate, probe, again, after)
            tried.loss_curve = _loss_curve(after)
            fixes.append(tried)
    fixes.sort(key=lambda f: (not f.verified, f.loss_after if f.loss_after is not None else float("inf")))
    verified = sum(f.verified for f in fixes)
    notices.append(f"verify_fixes: {verified} of {len(fixes)} candidate fixes verified on the probe")
    return fixes


def _facts(req: DebuggingRequest, report: Report) -> dict[str, Any]:
    """What the candidates need to know of the probe (fixes/candidates.probe_facts), from its report
    and the user's optimizer."""
    from modeldebug.rules.base import lr_bounds

    rates = [g["lr"] for g in req.optimizer.param_groups if isinstance(g.get("lr"), (int, float))] \
        if req.optimizer is not None else []
    layers = report.training.layers if report.training else []
    return {"layer_types": sorted({layer.type for layer in layers}),
            "lr": max(rates) if rates else None,
            "typical_lr": lr_bounds(type(req.optimizer).__name__ if req.optimizer is not None else None)[1]}


def _rerun(req: DebuggingRequest, config: DebuggingConfig, rng, apply: Callable | None) -> Window:
    """The probe again, on a fresh copy, from the random state the first probe started from."""
    import torch

    from modeldebug.agent.probe import clone_for_probe, run_probe

    torch.random.set_rng_state(rng)
    started = time.time()
    model_c, opt_c = clone_for_probe(req.model, req.optimizer)
    if apply is not None:
        apply(model_c, opt_c)
    probed = run_probe(model_c, opt_c, req, config, [])
    failed = probed.error is not None
    return Window(probed.report, 1 if failed else 0, time.time() - started,
                  f"{type(probed.error[0]).__name__}: {probed.error[0]}" if failed else "")


# ---------------------------------------------------------------- each candidate on the copy


def _lr_scale(spec: dict[str, Any], model, opt) -> None:
    for group in opt.param_groups:
        group["lr"] = group["lr"] * float(spec["factor"])


def _weight_decay_scale(spec: dict[str, Any], model, opt) -> None:
    for group in opt.param_groups:
        if isinstance(group.get("weight_decay"), (int, float)):
            group["weight_decay"] = group["weight_decay"] * float(spec["factor"])


def _clip(spec: dict[str, Any], model, opt) -> None:
    import torch

    def clip(optimizer, args, kwargs) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, float(spec.get("max_norm", 1.0)))

    opt.register_step_pre_hook(clip)  # before the monitor's own hooks: it sees clipped gradients


def _train_params(spec: dict[str, Any], model, opt) -> None:
    names = set(spec.get("params") or [])
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    missing = []
    for name, p in model.named_parameters():
        if name in names and p.is_floating_point():
            p.requires_grad_(True)
            if id(p) not in held:
                missing.append(p)
    if missing:
        opt.add_param_group({"params": missing})


def _on_model(make: Callable[[dict[str, Any]], Callable]) -> Callable:
    """A candidate of fixes/modules.py that changes the model at its first call, applied to the copy now."""
    def apply(spec: dict[str, Any], model, opt) -> None:
        make(spec)(model)

    return apply


def _standardize(spec: dict[str, Any], model, opt) -> None:
    from modeldebug.fixes.modules import standardize_inputs

    model.register_forward_pre_hook(standardize_inputs())


def _module(name: str) -> Callable:
    def make(spec: dict[str, Any]) -> Callable:
        from modeldebug.fixes import modules

        if name == "reinit":
            return modules.reinit(str(spec.get("scheme", "kaiming")))
        if name == "leaky_relu":
            return modules.leaky_relu(float(spec.get("negative_slope", 0.01)))
        return modules.loss_input(str(spec["layer"]), str(spec.get("loss", "")))

    return make


_APPLY: dict[str, Callable[[dict[str, Any], Any, Any], None]] = {
    "lr_scale": _lr_scale,
    "weight_decay_scale": _weight_decay_scale,
    "clip_grad_norm": _clip,
    "train_params": _train_params,
    "standardize_inputs": _standardize,
    "reinit": _on_model(_module("reinit")),
    "leaky_relu": _on_model(_module("leaky_relu")),
    "loss_input": _on_model(_module("loss_input")),
}
_NEEDS_OPTIMIZER = ("lr_scale", "weight_decay_scale", "clip_grad_norm", "train_params")
