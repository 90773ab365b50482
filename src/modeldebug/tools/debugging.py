"""The debugging tools: LayerAnalyzer (activations and gradients of a layer), GradientDebugger
(gradient flow) and ErrorDiagnoser (an exception explained)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from modeldebug.events import ScriptException
from modeldebug.evidence import Evidence
from modeldebug.errors import DebuggingError
from modeldebug.tools.base import (
    ProbeRun,
    Tool,
    call_model,
    finite,
    findings_of_kinds,
    float_tensors,
    last_finite,
    layer_type_ok,
    load_evidence,
    preserved,
    removing,
    tensor_stats,
    to_float,
)

if TYPE_CHECKING:
    from modeldebug.types import Finding, Report

GRADIENT_FINDINGS = ("exploding_gradient", "vanishing_gradient", "nan_or_inf", "unchanged_weights",
                     "gradient_accumulation", "dead_relu")


class LayerAnalyzer(Tool):
    name = "LayerAnalyzer"
    description = "Analyzes layer activations and gradients"
    category = "debugging"

    def analyze(self, layer: nn.Module, input: Any) -> dict[str, Any]:
        """Forward ``input`` through ``layer``, backward ones, and return activation and gradient statistics.

        The spec's ``analyzeLayer``: ``activations`` (shape and stats of each output), ``gradients``
        (``input``: stats of d(sum of outputs)/d(input), ``parameters``: each parameter's gradient stats).
        The layer's existing ``.grad`` and mode are restored; ``input`` itself is not modified.
        """
        if not isinstance(layer, nn.Module):
            raise TypeError(f"Expected `layer` to be a torch.nn.Module but got {type(layer).__name__}")
        inputs = input if isinstance(input, (tuple, list, dict)) else (input,)

        def prep(v):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                return v.detach().clone().requires_grad_(True)
            return v

        if isinstance(inputs, dict):
            inputs = {k: prep(v) for k, v in inputs.items()}
            leaves = float_tensors(list(inputs.values()))
        else:
            inputs = type(inputs)(prep(v) for v in inputs) if isinstance(inputs, tuple) else [prep(v) for v in inputs]
            leaves = float_tensors(list(inputs))
        activations: list[dict[str, Any]] = []

        def hook(module, args, output):
            for t in float_tensors(output) or ([output] if isinstance(output, torch.Tensor) else []):
                activations.append({"shape": list(t.shape), "stats": tensor_stats(t)})

        with preserved(layer), removing([layer.register_forward_hook(hook)]):
            try:
                output = call_model(layer, inputs)
                outs = [o for o in float_tensors(output) if o.requires_grad]
                if outs:
                    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            except Exception as exc:
                raise DebuggingError(f"LayerAnalyzer: the layer raised {type(exc).__name__}: {exc}", "analysis",
                                     {"layer": type(layer).__name__}) from exc
            gradients = {
                "input": tensor_stats(leaves[0].grad) if leaves else None,
                "parameters": {n: tensor_stats(p.grad) for n, p in layer.named_parameters()},
            }
        return {"layer": type(layer).__name__, "activations": activations, "gradients": gradients}

    def from_run(self, evidence: Evidence, layer_types: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Each recorded layer's latest activation and gradient statistics (optionally only some types)."""
        out = []
        layers = evidence.layers_in_order() or list(evidence.layers.values())
        for info in layers:
            if not layer_type_ok(info.type, layer_types):
                continue
            t = evidence.layer(info.name)
            entry: dict[str, Any] = {"name": info.name, "type": info.type, "samples": int(len(t))}
            if len(t):
                last = -1
                entry["step"] = int(t.step[last])
                entry["output_stats"] = {k: to_float(t[k][last]) for k in ("mean", "std", "min", "max")}
                entry["gradient_stats"] = {"norm": to_float(t.grad_norm[last]), "mean": to_float(t.grad_mean[last]),
                                           "std": to_float(t.grad_std[last])}
                for k in ("zero_frac", "dead_frac", "sat_frac"):
                    entry[k] = to_float(t[k][last])
                entry["nonfinite"] = int(np.nansum(np.asarray(t.nonfinite, dtype=float)))
            out.append(entry)
        return out

    def for_run(self, evidence: Evidence, options: Any) -> Any:
        return {"layers": self.from_run(evidence, options.layer_types)}

    def _for_probe(self, probe: ProbeRun) -> Any:
        return {"layers": _layers_from_report(probe.report, probe.options.layer_types)}


class GradientDebugger(Tool):
    name = "GradientDebugger"
    description = "Debugs gradient flow issues"
    category = "debugging"
    probe_after_error = True

    def __init__(self, threshold: float = 1e-3):
        if not threshold > 0:
            raise ValueError(f"Expected `threshold` to be > 0 but got {threshold!r}")
        self.threshold = threshold

    def check_model(self, model: nn.Module, threshold: float | None = None) -> dict[str, Any]:
        """The gradients now on ``model``'s parameters (after a backward): norms, missing and weak ones."""
        threshold = self.threshold if threshold is None else threshold
        params = {}
        missing, weak, nonfinite = [], [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                params[name] = {"requires_grad": False}
                continue
            if p.grad is None:
                missing.append(name)
                params[name] = {"grad": None}
                continue
            s = tensor_stats(p.grad)
            params[name] = s
            if s["nonfinite"]:
                nonfinite.append(name)
            elif s["norm"] < threshold:
                weak.append(name)
        return {"threshold": threshold, "parameters": params, "no_gradient": missing,
                "below_threshold": weak, "nonfinite": nonfinite}

    def check(self, evidence: Evidence, threshold: float | None = None) -> dict[str, Any]:
        """Gradient flow of a recorded run: per-layer gradient norms, weak and silent layers, the rules' gradient findings."""
        threshold = self.threshold if threshold is None else threshold
        flow = []
        for info in evidence.layers_in_order():
            g = finite(evidence.layer(info.name).grad_norm) if len(evidence.layer(info.name)) else np.empty(0)
            if len(g):
                flow.append({"name": info.name, "type": info.type, "grad_norm_median": float(np.median(g)),
                             "grad_norm_last": float(g[-1])})
        weak = [x["name"] for x in flow if x["grad_norm_median"] < threshold]
        ratio = None
        if len(flow) >= 2 and flow[-1]["grad_norm_median"] > 0:
            ratio = flow[0]["grad_norm_median"] / flow[-1]["grad_norm_median"]
        silent = [n for n, p in evidence.params.items() if p.requires_grad and len(evidence.param(n))
                  and not np.isfinite(np.asarray(evidence.param(n).grad_norm, dtype=float)).any()]
        frozen = [n for n, p in evidence.params.items() if not p.requires_grad]
        not_in_opt = [n for n, p in evidence.params.items() if p.requires_grad and not p.in_optimizer]
        g = finite(evidence.steps.grad_norm) if len(evidence.steps) else np.empty(0)
        return {
            "threshold": threshold,
            "global_grad_norm": {"median": to_float(np.median(g)) if len(g) else None, "max": to_float(g.max()) if len(g) else None,
                                 "last": to_float(g[-1]) if len(g) else None},
            "flow": flow,
            "first_to_last_ratio": ratio,
            "below_threshold": weak,
            "no_gradient": silent,
            "frozen": frozen,
            "not_in_optimizer": not_in_opt,
            "findings": findings_of_kinds(evidence, GRADIENT_FINDINGS),
        }

    def for_run(self, evidence: Evidence, options: Any) -> Any:
        return self.check(evidence, options.gradient_threshold)

    def _for_probe(self, probe: ProbeRun) -> Any:
        return _gradient_summary(probe.report, probe.options.gradient_threshold)


class ErrorDiagnoser(Tool):
    name = "ErrorDiagnoser"
    description = "Explains an exception raised in training (shape, dtype, device, in-place, out of memory) and how to fix it"
    category = "debugging"

    def diagnose(self, exc: BaseException, model: Any = None, step: int | None = None) -> Finding:
        """A ``runtime_error`` Finding for an exception raised by the user's model or training step;
        with the ``model``, the module it happened in is named by its qualified name."""
        from modeldebug.diagnose import diagnose_exception, module_names_of

        names = module_names_of(model) if model is not None else None
        return diagnose_exception(exc, module_names=names, step=step)

    def diagnose_text(self, text: str) -> Finding:
        """A ``runtime_error`` Finding from an error message or a traceback's text."""
        from modeldebug.diagnose import diagnose_text

        return diagnose_text(text)

    def _parse(self, input: str) -> dict[str, Any]:
        text = (input or "").strip()
        if text.startswith("{"):
            return super()._parse(text)
        return {"error": text}

    def _run(self, spec: dict[str, Any]) -> Any:
        if spec.get("error"):
            return self.diagnose_text(str(spec["error"]))
        ev = load_evidence(spec, self.error_type)
        exc = ev.events_of(ScriptException)
        if not exc:
            return {"run": ev.run.id, "status": ev.run.status, "finding": None}
        return {"run": ev.run.id, "status": ev.run.status,
                "finding": self.diagnose_text(f"{exc[-1].type or 'Error'}: {exc[-1].message}")}

    def for_run(self, evidence: Evidence, options: Any) -> Any:
        return {"status": evidence.run.status,
                "errors": [e for e in evidence.events if e.get("type") == ScriptException.tag]}  # the stored rows

    def for_probe(self, probe: ProbeRun) -> Any:
        if probe.error is None:
            return {"error": None}
        exc, step = probe.error
        return {"error": exc.__class__.__name__, "step": step, "finding": probe.report.findings[0].model_dump(mode="json")}


# --- the probe's report, read for the agent


def _layers_from_report(report: Report, layer_types) -> list[dict[str, Any]]:
    out = []
    for l in report.training.layers if report.training else []:
        if layer_types and l.type not in layer_types:
            continue
        out.append({"name": l.name, "type": l.type, "samples": l.samples,
                    "output_mean": last_finite(l.output_mean), "output_std": last_finite(l.output_std),
                    "zero_frac": last_finite(l.zero_frac), "dead_frac": last_finite(l.dead_frac),
                    "sat_frac": last_finite(l.sat_frac), "grad_norm": last_finite(l.grad_norm)})
    return out


def _gradient_summary(report: Report, threshold: float) -> dict[str, Any]:
    flow = [{"name": l.name, "type": l.type, "grad_norm": last_finite(l.grad_norm)}
            for l in (report.training.layers if report.training else [])]
    flow = [f for f in flow if f["grad_norm"] is not None]
    ratio = flow[0]["grad_norm"] / flow[-1]["grad_norm"] if len(flow) >= 2 and flow[-1]["grad_norm"] else None
    return {
        "threshold": threshold,
        "flow": flow,
        "first_to_last_ratio": ratio,
        "below_threshold": [f["name"] for f in flow if f["grad_norm"] < threshold],
        "findings": [f.model_dump(mode="json") for f in report.findings if f.kind in GRADIENT_FINDINGS],
    }
