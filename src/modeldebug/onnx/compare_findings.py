"""What ``compare_with_torch`` found, as findings: the first divergence, outputs that do not fit, nothing matched."""

from __future__ import annotations

from typing import Any

import numpy as np

from modeldebug.findings import fix, make_finding
from modeldebug.onnx._common import onnx_mod
from modeldebug.types import Finding, Recommendation

# Modules whose behaviour differs between train and eval mode.
_MODE_DEPENDENT = ("Dropout", "BatchNorm", "InstanceNorm", "AlphaDropout", "FeatureAlphaDropout")

# ONNX ops an exact export of a module uses; none of them in the module's nodes means the exporter
# wrote something else (a decomposition or an approximation).
_EXPECTED_OPS: dict[str, set[str]] = {
    "GELU": {"Gelu", "Erf", "Tanh"},
    "LayerNorm": {"LayerNormalization", "ReduceMean"},
    "Softmax": {"Softmax", "Exp"},
    "LogSoftmax": {"LogSoftmax", "Log"},
    "SiLU": {"Sigmoid", "Swish"},
    "Mish": {"Mish", "Softplus"},
    "Hardswish": {"HardSwish", "HardSigmoid"},
    "Hardsigmoid": {"HardSigmoid"},
    "Sigmoid": {"Sigmoid"},
    "Tanh": {"Tanh"},
    "Linear": {"Gemm", "MatMul"},
    "Conv1d": {"Conv"},
    "Conv2d": {"Conv"},
    "Conv3d": {"Conv"},
}


def output_shape_finding(torch_count: int, onnx_count: int, differ: list[dict[str, Any]]) -> Finding:
    """The ONNX model does not return what the module returns: another number of outputs, or other shapes."""
    parts = []
    if torch_count != onnx_count:
        parts.append(f"the module returns {torch_count} tensor(s) and the ONNX model {onnx_count}")
    parts += [f"output {d['output']} ({d['value']}) is {d['torch_shape']} in PyTorch and {d['onnx_shape']} in ONNX" for d in differ]
    return make_finding(
        "onnx_numerical_mismatch",
        severity="high",
        confidence=1.0,
        location=differ[0]["value"] if differ else None,
        message=f"The ONNX model's outputs do not have the module's shapes: {'; '.join(parts)}. "
        "The file was exported from another module, another configuration, or with other example inputs.",
        evidence={"reason": "output_shapes", "torch_outputs": torch_count, "onnx_outputs": onnx_count,
                  "differences": differ},
        causes=["export_problem"],
        recommendations=[fix(description="Re-export this module with the example inputs it is used with, "
                             "or compare against the .onnx file exported from it.")],
    )


def nothing_matched(outputs: list[dict[str, Any]], skipped: dict[str, str]) -> Finding:
    """No intermediate value matched: the comparison cannot say where the two would diverge."""
    what = (f"only the {len(outputs)} graph output(s) were compared, and they agree" if outputs
            else "nothing was compared at all, so the export is not verified")
    return make_finding(
        "onnx_numerical_mismatch",
        severity="low" if outputs else "high",
        confidence=0.5,
        location=None,
        message=f"No module's output could be matched with an ONNX value ({len(skipped)} skipped); {what}.",
        evidence={"reason": "nothing_matched", "compared_outputs": len(outputs), "skipped_modules": dict(list(skipped.items())[:20])},
        causes=["other"],
        recommendations=[fix(description="Export with module scopes kept (torch.onnx.export, dynamo or TorchScript, "
                             "without renaming nodes) so that ONNX values can be traced to modules.")],
    )


def mode_dependent(module) -> list[str]:
    return [
        name
        for name, m in module.named_modules()
        if m.training and any(type(m).__name__.startswith(prefix) for prefix in _MODE_DEPENDENT)
    ]


def divergence_findings(module, proto, compared, outputs, rtol, atol, modules) -> list[Finding]:
    """The first matched point (or else output) outside the tolerances, with the causes it shows."""
    first = next((p for p in compared if not p["ok"]), None)
    bad_outputs = [o for o in outputs if not o["ok"]]
    if first is None and not bad_outputs:
        return []
    training = mode_dependent(module)
    causes_text: list[str] = []
    recs: list[Recommendation] = []
    evidence: dict[str, Any] = {"rtol": rtol, "atol": atol, "failing_outputs": len(bad_outputs)}
    if training:
        causes_text.append(
            f"the module is in train mode with {len(training)} mode-dependent layer(s) ({', '.join(training[:3])}): "
            "dropout and batch statistics make PyTorch's outputs differ from the export"
        )
        recs.append(fix(description="Call model.eval() before exporting and comparing.", implementation="model.eval()"))
    if first is not None:
        location = first["module"] or None  # "" is the root module: the model itself
        op_level = first.get("level") == "op"
        evidence.update(
            level=first.get("level", "module"),
            module=first["module"], module_type=first["module_type"], onnx_node=first["onnx_node"], onnx_value=first["value"],
            onnx_ops=first["op_types"], max_abs=first["max_abs"], max_rel=first["max_rel"],
            mismatch_fraction=first["mismatch_fraction"], torch_dtype=first["torch_dtype"], onnx_dtype=first["onnx_dtype"],
            earlier_points_ok=sum(1 for p in compared if p["node_index"] < first["node_index"]),
        )
        weights = _weight_differences(modules[first["module"]], first["module"], proto)
        if weights:
            evidence["weight_differences"] = weights
            w = weights[0]
            causes_text.append(f"the ONNX weight {w['name']} differs from the module's parameter (max abs diff {w['max_abs']:.3g})")
            recs.append(fix(description="Re-export from the intended checkpoint; the ONNX file's weights are not the module's."))
        if first["torch_dtype"] != first["onnx_dtype"]:
            causes_text.append(f"the dtype changes ({first['torch_dtype']} in PyTorch, {first['onnx_dtype']} in ONNX)")
            recs.append(fix(description="Export with the dtypes the module computes in (cast inputs, avoid .half() only on one side)."))
        expected = _EXPECTED_OPS.get(first["module_type"])
        if expected and not op_level and not expected & set(first["op_types"]):
            causes_text.append(
                f"{first['module_type']} was exported as {', '.join(first['op_types'])} (a replacement or approximation of the original op)"
            )
            recs.append(fix(description=f"Export with an opset that has a native op for {first['module_type']}, or use an exact formulation in the source model."))
        where = (
            f"the {first['op_types'][0]} op {first['value']} inside {first['module'] or 'the top-level module'} ({first['module_type']})"
            if op_level
            else f"{location} ({first['module_type']}, ONNX node {first['onnx_node']})"
        )
        message = (
            f"ONNX first diverges from PyTorch at {where}: "
            f"max abs error {first['max_abs']:.3g}, max rel error {first['max_rel']:.3g}, "
            f"{first['mismatch_fraction']:.1%} of values outside rtol={rtol:g}, atol={atol:g}; "
            f"{evidence['earlier_points_ok']} earlier matched point(s) agree."
        )
    else:
        o = bad_outputs[0]
        location = o["value"]
        evidence.update(output=o["output"], onnx_value=o["value"], max_abs=o["max_abs"], max_rel=o["max_rel"], mismatch_fraction=o["mismatch_fraction"])
        message = (
            f"ONNX output {o['value']} differs from PyTorch (max abs error {o['max_abs']:.3g}, max rel error {o['max_rel']:.3g}) "
            f"but no matched intermediate value does; the divergence is between the last matched module and the output."
        )
    if causes_text:
        message += " Likely cause: " + "; ".join(causes_text) + "."
    else:
        recs.append(
            fix(
                description="Look at the ONNX nodes of this module (evidence.onnx_ops) against its PyTorch code; "
                "re-export with the other exporter to see whether the export or the runtime is at fault.",
            )
        )
    return [
        make_finding(
            "onnx_numerical_mismatch",
            severity="high",
            confidence=0.9 if first is not None else 0.7,
            location=location,
            message=message,
            evidence=evidence,
            causes=["export_problem"] if (training or causes_text) else ["export_problem", "other"],
            recommendations=recs,
        )
    ]


def _weight_differences(mod, prefix: str, proto) -> list[dict[str, Any]]:
    """The module's own parameters against initializers of the same name and shape."""
    numpy_helper = onnx_mod().numpy_helper
    inits = {t.name: t for t in proto.graph.initializer}
    diffs = []
    for pname, param in mod.named_parameters(recurse=False):
        full = f"{prefix}.{pname}" if prefix else pname
        t = inits.get(full)
        if t is None:
            continue
        arr = numpy_helper.to_array(t)
        ref = param.detach().cpu().numpy()
        if arr.shape != ref.shape:
            continue
        diff = float(np.abs(arr.astype(np.float64) - ref.astype(np.float64)).max()) if arr.size else 0.0
        if diff > 0:
            diffs.append({"name": full, "max_abs": diff})
    return diffs
