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
    check_providers,
    load_model,
    make_session,
    new_report,
    one_line,
    onnx_mod,
    with_all_outputs,
)
from modeldebug.metrics import OnnxCompareMetrics
from modeldebug.onnx.compare_findings import divergence_findings, mode_dependent, nothing_matched, output_shape_finding
from modeldebug.types import Report

_SCOPE_KEY = "pkg.torch.onnx.name_scopes"

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
    providers = check_providers(providers)  # before the export, which takes seconds
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
    captured, calls, torch_outputs, chains = _run_torch(module, args, {p["module"] for p in points})
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
        if not result["ok"]:
            chain = [c for c in chains.get(name, []) if calls.get(c) == 1]
            p, result = _fused_match(p, result, chain, captured, onnx_values.get(p["value"]), rtol, atol)
        compared.append({**p, "module_type": type(modules[p["module"]]).__name__, **result})
    compared = _deepest_per_value(compared)
    for p in op_points:
        result = _compare(op_values[p["value"]], onnx_values.get(p["value"]), rtol, atol)
        if result is not None:
            compared.append({**p, "module_type": type(modules[p["module"]]).__name__, "also": [], **result})
    compared.sort(key=lambda p: p["node_index"])
    outputs, structural = _compare_outputs(torch_outputs, graph_outputs, rtol, atol)
    timing["compare_s"] = time.perf_counter() - t0

    numerical = divergence_findings(module, proto, compared, outputs, rtol, atol, modules)
    findings = structural + numerical
    if not findings and not compared:
        findings = [nothing_matched(outputs, skipped)]
    metrics = OnnxCompareMetrics(
        exporter=exporter if onnx_model is None else "given",
        onnx_source=source,
        tolerances={"rtol": rtol, "atol": atol},
        matched_points=len(compared),
        points=[_public_point(p) for p in compared],
        outputs=[_public_point(o) for o in outputs],
        skipped_modules=dict(list(skipped.items())[:100]),
        first_divergence=numerical[0].location if numerical else None,
        timing_s={k: round(v, 4) for k, v in timing.items()},
        training_mode_modules=mode_dependent(module),
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


# How many modules after a matched one are followed (Conv -> BatchNorm -> ReLU fused into one node).
_CHAIN_LENGTH = 3


def _run_torch(module, args: tuple, wanted: set[str]):
    """Outputs of the wanted modules, their call counts, the module's outputs, and the chains.

    A chain follows a wanted module through the modules that take its output directly (by tensor
    identity), up to ``_CHAIN_LENGTH`` of them: an exporter that folds a BatchNorm into the Conv
    before it makes the Conv's ONNX value equal to the BatchNorm's output.
    """
    torch = _torch()
    captured: dict[str, Any] = {}
    calls: dict[str, int] = defaultdict(int)
    chains: dict[str, list[str]] = defaultdict(list)
    # id(output tensor) -> (the tensor, kept alive so that ids stay unique; [(chain head, depth)])
    links: dict[int, tuple[Any, list[tuple[str, int]]]] = {}
    handles = []

    def hook_for(name):
        def hook(_mod, inp, out):
            calls[name] += 1
            if not isinstance(out, torch.Tensor):
                return
            joined = [
                (head, depth + 1)
                for t in inp
                if id(t) in links and links[id(t)][0] is t
                for head, depth in links[id(t)][1]
                if head != name and depth < _CHAIN_LENGTH
            ]
            for head, _ in joined:
                chains[head].append(name)
            if name in wanted:
                joined.append((name, 0))
            if joined:
                captured[name] = out.detach().cpu().clone()
                links[id(out)] = (out, joined)

        return hook

    try:
        for name, mod in module.named_modules():
            handles.append(mod.register_forward_hook(hook_for(name)))
        with torch.no_grad():
            out = module(*args)
    except Exception as exc:
        raise DebuggingError(f"The PyTorch module fails on the example inputs: {one_line(exc, 240)}") from None
    finally:
        for h in handles:
            h.remove()
        links.clear()
    return captured, dict(calls), _flatten(out), dict(chains)


def _fused_match(point, result, chain: list[str], captured, value, rtol: float, atol: float):
    """Relabel a failing point with the last module of its chain whose output the ONNX value equals."""
    for name in reversed(chain):
        if name not in captured:
            continue
        other = _compare(captured[name], value, rtol, atol)
        if other is not None and other["ok"]:
            fused = [point["module"]] + chain[: chain.index(name)]
            return {**point, "module": name, "fused": fused}, other
    return point, result


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
        session = make_session(with_all_outputs(proto, values), providers, optimization_level)
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


def _compare_outputs(torch_outputs, graph_outputs, rtol: float, atol: float):
    """The graph outputs against the module's, and a finding when their number or shapes differ."""
    outputs: list[dict[str, Any]] = []
    differ: list[dict[str, Any]] = []
    for i, (ref, (oname, value)) in enumerate(zip(torch_outputs, graph_outputs)):
        torch_shape = list(ref.shape)
        onnx_shape = list(getattr(value, "shape", []))
        result = _compare(ref, value, rtol, atol)
        if torch_shape != onnx_shape:
            differ.append({"output": i, "value": oname, "torch_shape": torch_shape, "onnx_shape": onnx_shape,
                           "same_values_reshaped": bool(result and result["ok"])})
        if result is not None:
            outputs.append({"output": i, "value": oname, **result})
    findings = []
    if len(torch_outputs) != len(graph_outputs) or differ:
        findings.append(output_shape_finding(len(torch_outputs), len(graph_outputs), differ))
    return outputs, findings


def _public_point(p: dict[str, Any]) -> dict[str, Any]:
    keys = ("module", "module_type", "level", "output", "value", "onnx_node", "op_types", "shape", "torch_dtype", "onnx_dtype",
            "max_abs", "max_rel", "mismatch_fraction", "ok", "also", "fused")
    return {k: p[k] for k in keys if k in p}
