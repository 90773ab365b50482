"""Plain helpers shared by the agent, the LM layer and ``modeldebug ask`` (no dspy, no torch).

- :func:`match_issue`: a small deterministic table from what users say ("not converging",
  "NaN", "out of memory", "slow") to the finding kinds (and runtime-error causes) that explain it.
- :func:`compact_metrics` / :func:`findings_for_prompt`: a report squeezed to a few kilobytes of
  JSON for an LM prompt (series summarised, not listed).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from modeldebug.types import Finding, Report


@dataclass(frozen=True)
class IssueTopic:
    name: str
    pattern: str  # a regex, matched case-insensitively against the user's words
    kinds: tuple[str, ...]
    causes: tuple[str, ...] = ()  # runtime_error causes (evidence or finding.causes) that also match
    tools: tuple[str, ...] = ()  # tools to look with first


# Order matters only for ties: a finding matched by an earlier topic comes first.
TOPICS: tuple[IssueTopic, ...] = (
    IssueTopic("nan", r"\bnan\b|\binf\b|infinit|not a number|non-?finite|diverg|blow(s|n)? up|explod",
               ("nan_or_inf", "exploding_gradient", "onnx_nan_or_inf"), ("nan_detected", "numerically_unstable_op"),
               ("GradientDebugger", "LayerAnalyzer")),
    IssueTopic("convergence",
               r"not? (converg|learn|train|improv|decreas|go(ing)? down)|converg|stuck|plateau|flat|"
               r"loss (is |stays |goes )?(high|constant|same)|doesn'?t learn|won'?t learn|no progress|unstable|oscillat|jump",
               ("loss_not_decreasing", "oscillating_loss", "loss_spike", "unchanged_weights", "vanishing_gradient",
                "exploding_gradient", "dead_relu", "saturated_activation", "poor_weight_init", "data_issue",
                "gradient_accumulation", "nan_or_inf"),
               (), ("GradientDebugger", "LayerAnalyzer")),
    IssueTopic("growing_gradient", r"grad\w*\b.*\b(grow|increas|ris|bigger|larger|accumulat)|accumulat|zero_grad",
               ("gradient_accumulation", "exploding_gradient", "unchanged_weights"),
               ("missing_zero_grad", "zero_grad_misplaced"), ("GradientDebugger",)),
    IssueTopic("gradient", r"gradient|grads?\b|backprop",
               ("vanishing_gradient", "exploding_gradient", "unchanged_weights", "gradient_accumulation", "nan_or_inf"),
               (), ("GradientDebugger",)),
    IssueTopic("activation", r"activation|dead|relu|saturat|sigmoid|tanh|neuron",
               ("dead_relu", "saturated_activation", "poor_weight_init"), (), ("LayerAnalyzer",)),
    IssueTopic("overfit", r"overfit|generali[sz]|validation|val loss|test (loss|accuracy)|memori[sz]",
               ("overfitting",), (), ("LayerAnalyzer",)),
    IssueTopic("accuracy", r"accuracy|predict|always the same (class|output)|one class|imbalanc|label",
               ("data_issue", "loss_not_decreasing", "overfitting", "dead_relu"), (), ("LayerAnalyzer",)),
    IssueTopic("memory", r"memory|\boom\b|out of memory|leak|ram\b|vram|cuda (error|memory)|allocat",
               ("memory_growth", "memory_pressure"), ("out_of_memory", "graph_kept_alive"), ("MemoryTracker",)),
    IssueTopic("speed", r"slow|speed|fast|throughput|latency|bottleneck|gpu (util|idle)|takes (too )?long|time per",
               ("input_bottleneck", "slow_operation", "onnx_slow_node"), ("slow_data_loading",), ("PerformanceProfiler",)),
    IssueTopic("crash", r"crash|error|exception|raise|fail|shape|dtype|device|mismatch|traceback|in-?place",
               ("runtime_error", "onnx_invalid_model", "onnx_shape_error", "onnx_unsupported_op"), (), ("ErrorDiagnoser",)),
    IssueTopic("weights", (r"(weights?|param\w*|layers?)\b.*\b(never|not|don'?t|doesn'?t|won'?t|stop\w*)\b.*\b(chang|updat|mov|train|learn)"
                r"|never (chang|updat)|frozen|freez|not updat|no update|requires_grad"),
               ("unchanged_weights",), ("frozen_parameters", "parameters_not_in_optimizer", "detached_graph"),
               ("GradientDebugger",)),
    IssueTopic("data", r"\bdata\b|input|normali[sz]|dataset|loader|batch|shuffl",
               ("data_issue", "input_bottleneck"), ("unnormalized_inputs", "unshuffled_data"), ("LayerAnalyzer",)),
    IssueTopic("onnx", r"onnx|export|runtime differ|mismatch between",
               ("onnx_numerical_mismatch", "onnx_invalid_model", "onnx_shape_error", "onnx_unsupported_op",
                "onnx_nan_or_inf", "onnx_slow_node"), ("export_problem",), ()),
)


def topics_for(text: str | None) -> list[IssueTopic]:
    """The topics the user's words mention, in table order."""
    if not text:
        return []
    return [t for t in TOPICS if re.search(t.pattern, text, flags=re.IGNORECASE)]


def match_issue(text: str | None, findings: Sequence[Finding]) -> list[int]:
    """Indices of the findings that bear on the user's issue text, best match first.

    A finding matches a topic by its kind, or (runtime errors) by a cause named in its causes or
    ``evidence.cause``. Findings are ranked by the earliest topic matching them, then by the order
    of kinds inside that topic, then by severity.
    """
    from modeldebug.types import SEVERITY_ORDER

    topics = topics_for(text)
    ranked: list[tuple[tuple[int, int, int], int]] = []
    for i, f in enumerate(findings):
        best = None
        for ti, t in enumerate(topics):
            causes = set(f.causes) | {str(f.evidence.get("cause"))}
            if f.kind in t.kinds:
                key = (ti, t.kinds.index(f.kind), SEVERITY_ORDER[f.severity])
            elif causes & set(t.causes):
                key = (ti, len(t.kinds), SEVERITY_ORDER[f.severity])
            else:
                continue
            best = key if best is None or key < best else best
        if best is not None:
            ranked.append((best, i))
    return [i for _, i in sorted(ranked)]


def tools_for(text: str | None, all_tools: Iterable[str]) -> list[str]:
    """Tool names ordered so those the issue points at come first (stable otherwise)."""
    names = list(all_tools)
    wanted: list[str] = []
    for t in topics_for(text):
        wanted += [n for n in t.tools if n in names and n not in wanted]
    return wanted + [n for n in names if n not in wanted]


# --- prompt material ------------------------------------------------------------------------------


def _num(x: Any) -> Any:
    if isinstance(x, float):
        if not math.isfinite(x):
            return None
        return float(f"{x:.4g}")
    return x


def _series_summary(values: Sequence[Any]) -> dict[str, Any] | None:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None
    n = len(vals)
    head, tail = vals[: max(1, n // 10)], vals[-max(1, n // 10):]
    return {
        "first": _num(vals[0]), "last": _num(vals[-1]), "min": _num(min(vals)), "max": _num(max(vals)),
        "mean_first_10pct": _num(sum(head) / len(head)), "mean_last_10pct": _num(sum(tail) / len(tail)),
        "points": len(values), "missing_or_nonfinite": len(values) - n,
    }


def compact_metrics(report: Report, *, max_layers: int = 40, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run in a few kilobytes: its summary, series as first/last/min/max, each layer's latest numbers."""
    run = report.run
    out: dict[str, Any] = {
        "run": {"id": run.id, "status": run.status, "steps": run.steps, "duration_s": _num(run.duration_s),
                "models": [x.model_dump() for x in run.models], "exit_code": run.exit_code},
    }
    t = report.training
    if t is None:  # an ONNX command's report: no series
        out["series"] = {}
    else:
        series = t.series.columns() if t.series is not None else {}
        out["series"] = {k: s for k, v in series.items() if k != "step" and (s := _series_summary(v))}
        if t.timing_median_s is not None:
            out["timing_median_s"] = t.timing_median_s.model_dump()
        if t.first_nonfinite_step is not None:
            out["first_nonfinite_step"] = t.first_nonfinite_step
        if t.class_counts:
            out["class_counts"] = t.class_counts
        if t.validation is not None:
            out["validation_loss"] = _series_summary(t.validation.loss)
        layers = []
        for layer in t.layers[:max_layers]:
            entry = {"name": layer.name, "type": layer.type}
            for key in ("output_mean", "output_std", "zero_frac", "dead_frac", "sat_frac", "grad_norm"):
                vals = [v for v in getattr(layer, key) if v is not None]
                if vals:
                    entry[key] = _num(vals[-1])
            layers.append(entry)
        if layers:
            out["layers_latest"] = layers
            if len(t.layers) > max_layers:
                out["layers_omitted"] = len(t.layers) - max_layers
    if context:
        out["user_context"] = context
    return out


def finding_id(i: int) -> str:
    return f"F{i + 1}"


def findings_for_prompt(findings: Sequence[Finding], limit: int = 30) -> list[dict[str, Any]]:
    """The rule engine's findings with stable ids (F1, F2, ...) the LM refers back to."""
    out = []
    for i, f in enumerate(findings[:limit]):
        evidence = {k: _num(v) for k, v in f.evidence.items() if isinstance(v, (int, float, str, bool)) or v is None}
        out.append({"id": finding_id(i), "kind": f.kind, "severity": f.severity, "confidence": _num(f.confidence),
                    "location": f.location, "step": f.step, "message": f.message, "causes": list(f.causes),
                    "evidence": evidence, "recommendations": [r.description for r in f.recommendations]})
    return out


def to_json(obj: Any, limit: int = 24000) -> str:
    text = json.dumps(obj, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + "...(truncated)"
