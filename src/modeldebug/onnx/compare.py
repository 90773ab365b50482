"""PyTorch module vs its ONNX export, value by value, to the first module whose output diverges.

How values are matched:
- ONNX side: each node carries the PyTorch module scope it came from. The torch.export-based
  exporter (``dynamo=True``) writes it into ``metadata_props["pkg.torch.onnx.name_scopes"]``;
  the TorchScript exporter into node names such as ``/encoder/encoder.0/Gemm``. A module's ONNX
  value is the single value its nodes produce that is used outside them.
- PyTorch side: forward hooks record each such module's output (hooks removed in ``finally``).
- One onnxruntime session returns every matched value at once (they are added as graph outputs).
Matched points are ordered as their producing nodes in the graph; the first one outside the
tolerances is where the two diverge.
"""

from __future__ import annotations

import ast
import contextlib
import io
import time
import warnings
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from modeldebug.errors import DebuggingError
from modeldebug.onnx._common import (
    default_providers,
    load_model,
    make_session,
    new_report,
    one_line,
    onnx_mod,
    with_all_outputs,
)
from modeldebug.metrics import OnnxCompareMetrics
from modeldebug.findings import fix, make_finding
from modeldebug.types import Finding, Recommendation, Report

_SCOPE_KEY = "pkg.torch.onnx.name_scopes"

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


def compare_with_torch(
    module: Any,
    example_inputs: Any,
    onnx_model: Any = None,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    exporter: str = "dynamo",
    providers: Sequence[str] | None = None,
    optimization_level: str = "all",
) -> Report:
    """Run ``module`` and its ONNX export on ``example_inputs`` and compare every matched value.

    Args:
        module: the ``torch.nn.Module`` the ONNX model was exported from.
        example_inputs: a tensor or a tuple of tensors (positional arguments of ``forward``).
        onnx_model: path, bytes or ``onnx.ModelProto``; exported here when None.
        rtol, atol: a value matches when ``|onnx - torch| <= atol + rtol * |torch|`` everywhere.
        exporter: "dynamo" (``torch.onnx.export(..., dynamo=True)``, the default) or "torchscript".
        providers, optimization_level: the onnxruntime session's (default: CPU, all optimizations).
    """
    torch = _torch()
    started = time.perf_counter()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"Expected `module` to be a torch.nn.Module but got {type(module).__name__}.")
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    timing: dict[str, float] = {}

    t0 = time.perf_counter()
    program = None
    if onnx_model is None:
        program = _export(module, args, exporter)
        proto = program if exporter == "torchscript" else program.model_proto
        program = None if exporter == "torchscript" else program
        source = f"<exported with {exporter}>"
    elif hasattr(onnx_model, "model_proto") and hasattr(onnx_model, "exported_program"):
        program, proto, source = onnx_model, onnx_model.model_proto, "<given ONNXProgram>"
    else:
        proto = load_model(onnx_model)
        source = str(onnx_model) if isinstance(onnx_model, str) else "<given model>"
    timing["export_or_load_s"] = time.perf_counter() - t0

    nodes = list(proto.graph.node)
    modules = dict(module.named_modules())
    points = _candidate_points(nodes, proto.graph, modules)

    t0 = time.perf_counter()
    captured, calls, torch_outputs = _run_torch(module, args, {p["module"] for p in points})
    op_values = _run_exported_program(program, args) if program is not None else {}
    op_points = _op_points(nodes, modules, op_values, {p["value"] for p in points})
    timing["torch_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    wanted = [p["value"] for p in points] + [p["value"] for p in op_points]
    onnx_values, graph_outputs = _run_onnx(proto, args, wanted, providers, optimization_level)
    timing["onnx_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    compared = []
    skipped: dict[str, str] = {}
    for p in points:
        name = p["module"]
        if calls.get(name, 0) != 1 or name not in captured:
            skipped[name] = "called more than once" if calls.get(name, 0) > 1 else "no tensor output recorded"
            continue
        result = _compare(captured[name], onnx_values.get(p["value"]), rtol, atol)
        if result is None:
            skipped[name] = "shapes differ"
            continue
        compared.append({**p, "module_type": type(modules[name]).__name__, **result})
    compared = _deepest_per_value(compared)
    for p in op_points:
        result = _compare(op_values[p["value"]], onnx_values.get(p["value"]), rtol, atol)
        if result is not None:
            compared.append({**p, "module_type": type(modules[p["module"]]).__name__, "also": [], **result})
    compared.sort(key=lambda p: p["node_index"])
    outputs = []
    for i, (ref, (oname, value)) in enumerate(zip(torch_outputs, graph_outputs)):
        result = _compare(ref, value, rtol, atol)
        if result is not None:
            outputs.append({"output": i, "value": oname, **result})
    timing["compare_s"] = time.perf_counter() - t0

    findings = _findings(module, proto, compared, outputs, rtol, atol, modules)
    metrics = OnnxCompareMetrics(
        exporter=exporter if onnx_model is None else "given",
        onnx_source=source,
        tolerances={"rtol": rtol, "atol": atol},
        matched_points=len(compared),
        points=[_public_point(p) for p in compared],
        outputs=[_public_point(o) for o in outputs],
        skipped_modules=dict(list(skipped.items())[:100]),
        first_divergence=findings[0].location if findings and findings[0].kind == "onnx_numerical_mismatch" else None,
        timing_s={k: round(v, 4) for k, v in timing.items()},
        training_mode_modules=_mode_dependent(module),
    )
    report = new_report(["modeldebug", "onnx", "compare", source], findings, metrics, started)
    report.run.models = []
    return report


def _torch():
    import torch

    return torch


def export_model(module, args: tuple, exporter: str = "dynamo"):
    """Export ``module`` with torch.onnx and return the ModelProto; the exporter's chatter is silenced."""
    out = _export(module, args, exporter)
    return out if exporter == "torchscript" else out.model_proto


def _export(module, args: tuple, exporter: str):
    """The ONNXProgram (dynamo) or the ModelProto (torchscript)."""
    torch = _torch()
    onnx = onnx_mod()
    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"Expected `exporter` to be 'dynamo' or 'torchscript' but got {exporter!r}.")
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                return torch.onnx.export(module, args, dynamo=True, verbose=False)
            f = io.BytesIO()
            torch.onnx.export(module, args, f, dynamo=False)
            return onnx.load_from_string(f.getvalue())
    except Exception as exc:
        raise DebuggingError(
            f"torch.onnx.export ({exporter}) failed: {one_line(exc, 240)}. Try the other exporter (exporter=...) or pass an exported model."
        ) from None


# --- matching ------------------------------------------------------------------------------------


def node_scopes(node) -> list[str]:
    """Scope names of the modules a node was exported from, outermost first, as the exporter wrote them."""
    for prop in node.metadata_props:
        if prop.key == _SCOPE_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in scopes[:-1] if s]  # the last entry names the aten op, not a module
    if node.name.startswith("/"):
        return [s for s in node.name.split("/")[1:-1] if s]
    return []


def qualified_scopes(node, modules: dict[str, Any]) -> list[str]:
    """The node's scopes as qualified module names.

    Exporters write either full names at each level (``enc/enc.0``) or the attribute name only
    (``blocks.0/fc1`` for ``blocks.0.fc1``); both are resolved against the module tree.
    """
    out: list[str] = []
    current = ""
    for part in node_scopes(node):
        for candidate in (f"{current}.{part}" if current else part, part):
            if candidate in modules and (not current or candidate.startswith(current + ".")):
                current = candidate
                out.append(candidate)
                break
    return out


def _candidate_points(nodes, graph, modules: dict[str, Any]) -> list[dict[str, Any]]:
    members: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(nodes):
        for scope in qualified_scopes(node, modules):
            members[scope].append(index)
    consumers: dict[str, set[int]] = defaultdict(set)
    for index, node in enumerate(nodes):
        for i in node.input:
            consumers[i].add(index)
    graph_outputs = {o.name for o in graph.output}
    points = []
    for name, idxs in members.items():
        inside = set(idxs)
        boundary = [
            (i, v)
            for i in idxs
            for v in nodes[i].output
            if v and (v in graph_outputs or consumers[v] - inside)
        ]
        if len(boundary) != 1:
            continue  # several outputs (or none): no single value to match the module's output with
        index, value = boundary[0]
        points.append(
            {
                "module": name,
                "value": value,
                "node_index": index,
                "onnx_node": nodes[index].name or f"{nodes[index].op_type}#{index}",
                "op_types": sorted({nodes[i].op_type for i in idxs}),
                "level": "module",
            }
        )
    return sorted(points, key=lambda p: p["node_index"])


def _run_exported_program(program, args: tuple) -> dict[str, Any]:
    """Every aten-level value of the torch.export program behind a dynamo export, by FX node name.

    The dynamo exporter names ONNX values after these FX nodes, so they match by name.
    """
    torch = _torch()
    values: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and isinstance(out, torch.Tensor):
                values[n.name] = out.detach().cpu().clone()
            return out

    try:
        graph_module = program.exported_program.module()
        with torch.no_grad():
            Recorder(graph_module).run(*[a for a in args if isinstance(a, torch.Tensor)])
    except Exception:  # noqa: BLE001 - op-level points are a refinement; module-level ones remain
        return {}
    return values


def _op_points(nodes, modules: dict[str, Any], op_values: dict[str, Any], taken: set[str]) -> list[dict[str, Any]]:
    """Points for ONNX values named after an FX node (op level), where no module point has them."""
    points = []
    for index, node in enumerate(nodes):
        for value in node.output:
            if value in op_values and value not in taken:
                scopes = qualified_scopes(node, modules)
                points.append(
                    {
                        "module": scopes[-1] if scopes else "",
                        "value": value,
                        "node_index": index,
                        "onnx_node": node.name or f"{node.op_type}#{index}",
                        "op_types": [node.op_type],
                        "level": "op",
                    }
                )
    return points


def _deepest_per_value(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Several nested modules can share one value (a block and its last layer): keep the innermost."""
    best: dict[str, dict[str, Any]] = {}
    for p in points:
        q = best.get(p["value"])
        if q is None or len(p["module"]) > len(q["module"]):
            best[p["value"]] = dict(p, also=(q["also"] + [q["module"]]) if q else [])
        else:
            q["also"].append(p["module"])
    return sorted(best.values(), key=lambda p: p["node_index"])


# --- running -------------------------------------------------------------------------------------


def _run_torch(module, args: tuple, wanted: set[str]):
    torch = _torch()
    captured: dict[str, Any] = {}
    calls: dict[str, int] = defaultdict(int)
    handles = []

    def hook_for(name):
        def hook(_mod, _inp, out):
            calls[name] += 1
            if isinstance(out, torch.Tensor):
                captured[name] = out.detach().cpu().clone()

        return hook

    try:
        for name, mod in module.named_modules():
            if name in wanted:
                handles.append(mod.register_forward_hook(hook_for(name)))
        with torch.no_grad():
            out = module(*args)
    except Exception as exc:
        raise DebuggingError(f"The PyTorch module fails on the example inputs: {one_line(exc, 240)}") from None
    finally:
        for h in handles:
            h.remove()
    return captured, dict(calls), _flatten(out)


def _flatten(out) -> list[Any]:
    torch = _torch()
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu()]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return []


def _run_onnx(proto, args: tuple, values: list[str], providers, optimization_level: str):
    torch = _torch()
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    try:
        session = make_session(with_all_outputs(proto, values), providers or default_providers(), optimization_level)
    except Exception as exc:
        raise DebuggingError(
            f"onnxruntime cannot load the model ({one_line(exc, 200)}); run `modeldebug onnx check` on it."
        ) from None
    inputs = session.get_inputs()
    if len(inputs) != len(tensors):
        raise DebuggingError(
            f"The ONNX model takes {len(inputs)} inputs {[i.name for i in inputs]} but {len(tensors)} example tensors were given."
        )
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(inputs, tensors)}
    names = [o.name for o in session.get_outputs()]
    try:
        results = session.run(names, feeds)
    except Exception as exc:
        raise DebuggingError(f"The ONNX model fails on the example inputs: {one_line(exc, 240)}") from None
    out = dict(zip(names, results))
    graph_outputs = [(o.name, out[o.name]) for o in proto.graph.output]
    return out, graph_outputs


def _compare(ref, value, rtol: float, atol: float) -> dict[str, Any] | None:
    if value is None or not isinstance(value, np.ndarray):
        return None
    expected = ref.numpy() if hasattr(ref, "numpy") else np.asarray(ref)
    if expected.shape != value.shape:
        if expected.size != value.size:
            return None
        value = value.reshape(expected.shape)
    result: dict[str, Any] = {
        "shape": list(expected.shape),
        "torch_dtype": str(ref.dtype).replace("torch.", ""),
        "onnx_dtype": str(value.dtype),
    }
    if expected.dtype.kind in "fc" or value.dtype.kind in "fc":
        a = value.astype(np.float64)
        b = expected.astype(np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0.0, np.abs(a - b))
        diff = np.where(np.isnan(diff), np.inf, diff)
        bad = diff > atol + rtol * np.abs(b)
        rel = diff / np.maximum(np.abs(b), atol if atol > 0 else 1e-12)
        result.update(
            max_abs=float(diff.max()) if diff.size else 0.0,
            max_rel=float(rel.max()) if rel.size else 0.0,
            mismatch_fraction=float(bad.mean()) if bad.size else 0.0,
            ok=not bool(bad.any()),
        )
    else:
        bad = value != expected
        result.update(max_abs=float(bad.sum()), max_rel=0.0, mismatch_fraction=float(bad.mean()) if bad.size else 0.0, ok=not bool(bad.any()))
    return result


def _public_point(p: dict[str, Any]) -> dict[str, Any]:
    keys = ("module", "module_type", "level", "output", "value", "onnx_node", "op_types", "shape", "torch_dtype", "onnx_dtype",
            "max_abs", "max_rel", "mismatch_fraction", "ok", "also")
    return {k: p[k] for k in keys if k in p}


# --- findings ------------------------------------------------------------------------------------


def _mode_dependent(module) -> list[str]:
    return [
        name
        for name, m in module.named_modules()
        if m.training and any(type(m).__name__.startswith(prefix) for prefix in _MODE_DEPENDENT)
    ]


def _findings(module, proto, compared, outputs, rtol, atol, modules) -> list[Finding]:
    first = next((p for p in compared if not p["ok"]), None)
    bad_outputs = [o for o in outputs if not o["ok"]]
    if first is None and not bad_outputs:
        return []
    training = _mode_dependent(module)
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
