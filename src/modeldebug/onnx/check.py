"""Static checks of an ONNX model: validity, shapes, operator support, graph hygiene.

``analyze_model`` runs, in order: the ONNX checker (``full_check``), strict shape inference
with data propagation, a look-up of every operator in onnxruntime's kernel registry for the
chosen providers, and a session creation (the runtime's own verdict). Each failure becomes a
finding; the graph facts (opsets, dynamic axes, unused inputs and initializers) go to metrics.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any, Sequence

from modeldebug.errors import DebuggingError
from modeldebug.onnx._common import (
    ModelLike,
    check_providers,
    load_model,
    make_session,
    model_label,
    new_report,
    one_line,
    onnx_mod,
    ort_mod,
    subgraph_nodes,
)
from modeldebug.metrics import OnnxCheckMetrics
from modeldebug.findings import fix, make_finding
from modeldebug.types import Finding, Report

_NODE_IN_MESSAGE = re.compile(r"op_type:\s*([\w.]+)(?:,\s*node name:\s*([^)]*))?\)")
_ORT_NODE = re.compile(r"Node \(([^)]*)\) Op \(([\w.]+)\)")
_ORT_NOT_IMPLEMENTED = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_ORT_NO_KERNEL = re.compile(r"Failed to find kernel for (\w+)\((\d+)\) \(node:'([^']*)'")
_ORT_NOT_REGISTERED = re.compile(r"([\w.]*):(\w+)\((-?\d+)\) is not a registered function/op")

_REEXPORT = fix(
    description="Re-export the model with a current exporter and opset, then check it again.",
    implementation="torch.onnx.export(model, args, 'model.onnx', dynamo=True)",
)


def analyze_model(
    model: ModelLike,
    check_shapes: bool = True,
    validate_graph: bool = True,
    providers: Sequence[str] | None = None,
) -> Report:
    """Check an ONNX model and return a Report.

    Args:
        model: path, bytes or ``onnx.ModelProto``.
        check_shapes: run strict shape inference (with data propagation) and report shape errors.
        validate_graph: run the ONNX checker and create an onnxruntime session.
        providers: onnxruntime execution providers the model will run on (default: CPU).

    A file that cannot be read at all gives a report with one ``onnx_invalid_model`` finding.
    """
    started = time.perf_counter()
    providers = check_providers(providers)  # a missing provider is bad input, not missing kernels
    command = ["modeldebug", "onnx", "check", model_label(model)]
    try:
        proto = load_model(model)
    except DebuggingError as exc:
        finding = make_finding(
            "onnx_invalid_model",
            severity="high",
            confidence=1.0,
            location=None,
            message=str(exc),
            evidence={"stage": "load"},
            causes=["export_problem"],
            recommendations=[_REEXPORT],
        )
        return new_report(command, [finding], OnnxCheckMetrics(loadable=False), started)

    findings: list[Finding] = []
    metrics = OnnxCheckMetrics(loadable=True, **graph_facts(proto))
    if validate_graph:
        findings += _run_checker(proto)
    if check_shapes:
        findings += _infer_shapes(proto)
    unsupported = unsupported_ops(proto, providers)
    metrics.unsupported_ops = unsupported
    findings += [_unsupported_finding(u, providers) for u in unsupported]
    # "No Op registered for X" from the checker says the same as the unsupported-op finding
    unknown = {u["op_type"] for u in unsupported}
    findings = [f for f in findings if not (f.evidence.get("stage") == "checker" and _names_unknown_op(f, unknown))]
    if validate_graph:
        session_findings, loaded = _try_session(proto, providers, findings)
        findings += session_findings
        if loaded:
            findings = [_soften_shape_error(f) for f in findings]
    metrics.providers = providers
    metrics.valid = not any(f.severity == "high" for f in findings)
    return new_report(command, findings, metrics, started)


# --- facts about the graph -------------------------------------------------------------------


def graph_facts(proto) -> dict[str, Any]:
    """Plain facts for the report: versions, sizes, dynamic axes, unused and shapeless values."""
    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    used: set[str] = set()
    op_counts: dict[str, int] = defaultdict(int)
    for node in subgraph_nodes(graph):
        used.update(i for i in node.input if i)
        op_counts[(node.domain + "::" if node.domain not in ("", "ai.onnx") else "") + node.op_type] += 1
    # subgraphs may read outer values without listing them as node inputs
    used |= _implicit_inputs(graph)
    outputs = {o.name for o in graph.output}
    real_inputs = [i for i in graph.input if i.name not in init_names]
    return {
        "ir_version": int(proto.ir_version),
        "opsets": {(imp.domain or "ai.onnx"): int(imp.version) for imp in proto.opset_import},
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "node_count": len(graph.node),
        "initializer_count": len(graph.initializer),
        "parameter_count": int(sum(_numel(t) for t in graph.initializer)),
        "op_counts": dict(sorted(op_counts.items(), key=lambda kv: -kv[1])),
        "inputs": [_describe_value(v) for v in real_inputs],
        "outputs": [_describe_value(v) for v in graph.output],
        "dynamic_axes": {
            v.name: axes for v in list(real_inputs) + list(graph.output) if (axes := _dynamic_axes(v))
        },
        "inputs_without_shape": [v.name for v in real_inputs if not _has_shape(v)],
        "unused_inputs": [v.name for v in real_inputs if v.name not in used and v.name not in outputs],
        "unused_initializers": [n for n in sorted(init_names) if n not in used and n not in outputs],
    }


def _implicit_inputs(graph) -> set[str]:
    names: set[str] = set()
    for node in subgraph_nodes(graph):
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for n in subgraph_nodes(g):
                    names.update(i for i in n.input if i)
    return names


def _numel(tensor) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n


def _describe_value(vi) -> dict[str, Any]:
    onnx = onnx_mod()
    t = vi.type
    if t.HasField("tensor_type"):
        elem = onnx.TensorProto.DataType.Name(t.tensor_type.elem_type) if t.tensor_type.elem_type else None
        shape = _shape_list(vi) if t.tensor_type.HasField("shape") else None
        return {"name": vi.name, "type": elem, "shape": shape}
    return {"name": vi.name, "type": t.WhichOneof("value"), "shape": None}


def _shape_list(vi) -> list[Any]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim]


def _has_shape(vi) -> bool:
    t = vi.type
    return t.HasField("tensor_type") and t.tensor_type.HasField("shape")


def _dynamic_axes(vi) -> dict[str, Any]:
    if not _has_shape(vi):
        return {}
    return {str(i): (d or "?") for i, d in enumerate(_shape_list(vi)) if not isinstance(d, int) or d <= 0}


# --- the checks ----------------------------------------------------------------------------------


def _run_checker(proto) -> list[Finding]:
    onnx = onnx_mod()
    try:
        # full_check=False here: shape inference is its own step, with its own finding kind
        onnx.checker.check_model(proto, full_check=False)
    except Exception as exc:
        text = str(exc).strip()
        location = _node_from_checker(text)
        return [
            make_finding(
                "onnx_invalid_model",
                severity="high",
                confidence=0.95,
                location=location,
                message=f"The ONNX checker rejects the model: {one_line(exc, 240)}",
                evidence={"stage": "checker", "error": text[:2000]},
                causes=["export_problem"],
                recommendations=[_REEXPORT],
            )
        ]
    return []


def _names_unknown_op(finding: Finding, ops: set[str]) -> bool:
    m = re.search(r"No Op registered for (\w+)", finding.evidence.get("error", ""))
    return bool(m and m.group(1) in ops)


def _node_from_checker(text: str) -> str | None:
    m = re.search(r"Name:\s*(\S+)\s+OpType", text)
    return m.group(1) if m else None


def _infer_shapes(proto) -> list[Finding]:
    onnx = onnx_mod()
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        text = str(exc).strip()
        nodes = _NODE_IN_MESSAGE.findall(text)
        if not nodes and "No Op registered" in text:
            return []  # an unknown operator; the checker and the operator look-up report it
        op, name = nodes[0] if nodes else (None, None)
        last = list(_NODE_IN_MESSAGE.finditer(text))
        detail = text[last[-1].end() :].lstrip(": ").strip() if last else text
        return [
            make_finding(
                "onnx_shape_error",
                severity="high",
                confidence=0.9,
                location=name or None,
                message=(
                    f"Shape inference fails at node {name!r} ({op}): {' '.join(detail.split())[:240]}"
                    if nodes
                    else f"Shape inference fails: {one_line(exc, 240)}"
                ),
                evidence={"stage": "shape_inference", "node": name, "op_type": op, "error": text[:2000]},
                causes=["export_problem"],
                recommendations=[
                    fix(
                        description="Check the shapes feeding this node in the source model (or the exporter's dynamic axes); "
                        "re-export once the shapes agree.",
                    )
                ],
            )
        ]
    return []


def unsupported_ops(proto, providers: Sequence[str]) -> list[dict[str, Any]]:
    """Operators of the model that none of ``providers`` has a kernel for in the installed onnxruntime.

    An operator the ONNX spec defines as a function is supported too: onnxruntime inlines it.
    """
    onnx = onnx_mod()
    kernels = _kernel_table()
    model_opsets = {(imp.domain if imp.domain != "ai.onnx" else ""): int(imp.version) for imp in proto.opset_import}
    local_functions = {(f.domain, f.name) for f in proto.functions}
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for node in subgraph_nodes(proto.graph):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        key = (domain, node.op_type)
        if key in seen:
            seen[key]["nodes"].append(node.name)
            continue
        if (node.domain, node.op_type) in local_functions or key in _HANDLED_BY_GRAPH:
            continue
        opset = model_opsets.get(domain)
        since = opset
        is_function = False
        try:
            schema = onnx.defs.get_schema(node.op_type, opset or 1, domain)
            since = schema.since_version
            is_function = schema.has_function or schema.has_context_dependent_function
        except Exception:
            pass  # not an ONNX-spec op: only onnxruntime's registry decides
        ranges = [r for p in providers for r in kernels.get((domain, node.op_type, p), [])]
        if since is not None and any(lo <= since <= hi for lo, hi in ranges):
            continue
        if is_function:
            continue
        seen[key] = {
            "op_type": node.op_type,
            "domain": domain or "ai.onnx",
            "version": since,
            "nodes": [node.name],
            "known_versions": sorted({f"{lo}-{hi if hi < 2**30 else ''}" for lo, hi in ranges}),
        }
    return list(seen.values())


# Ops onnxruntime resolves while building the graph, without a kernel.
_HANDLED_BY_GRAPH = {("", "Constant")}

_KERNELS: dict[tuple[str, str, str], list[tuple[int, int]]] | None = None


def _kernel_table() -> dict[tuple[str, str, str], list[tuple[int, int]]]:
    global _KERNELS  # a read-only cache of the installed runtime's registry
    if _KERNELS is None:
        ort_mod()
        from onnxruntime.capi import _pybind_state as C

        table: dict[tuple[str, str, str], list[tuple[int, int]]] = defaultdict(list)
        for d in C.get_all_opkernel_def():
            domain = "" if d.domain in ("", "ai.onnx") else d.domain
            table[(domain, d.op_name, d.provider)].append(tuple(d.version_range))
        _KERNELS = dict(table)
    return _KERNELS


def _unsupported_finding(u: dict[str, Any], providers: Sequence[str]) -> Finding:
    ort = ort_mod()
    name = u["op_type"] if u["domain"] == "ai.onnx" else f"{u['domain']}:{u['op_type']}"
    versions = f" (it has kernels for versions {', '.join(u['known_versions'])})" if u["known_versions"] else ""
    return make_finding(
        "onnx_unsupported_op",
        severity="high",
        confidence=0.9,
        location=u["nodes"][0] or None,
        message=(
            f"onnxruntime {ort.__version__} has no kernel for {name} version {u['version']} on "
            f"{', '.join(providers)}{versions}; {len(u['nodes'])} node(s) use it."
        ),
        evidence=dict(u, providers=list(providers), onnxruntime=ort.__version__),
        causes=["export_problem"],
        recommendations=[
            fix(
                description="Export with an opset the runtime supports, replace the operator in the source model, "
                "or register a custom-op library with onnxruntime.",
                implementation="torch.onnx.export(model, args, 'model.onnx', opset_version=18)",
            )
        ],
    )


def _soften_shape_error(f: Finding) -> Finding:
    """ONNX's shape inference failed but onnxruntime loads the model: maybe inference's own limit."""
    if f.kind != "onnx_shape_error" or f.evidence.get("stage") != "shape_inference":
        return f
    return f.model_copy(
        update={
            "severity": "medium",
            "confidence": 0.5,
            "message": f.message + " onnxruntime loads the model anyway, so this may be a limit of ONNX's shape inference; "
            "other runtimes and tools that rely on it may still fail.",
        }
    )


def _try_session(proto, providers: Sequence[str], earlier: list[Finding]) -> tuple[list[Finding], bool]:
    """Create a session: the runtime's verdict, reported unless an earlier finding says the same."""
    try:
        make_session(proto, providers, optimization_level="disable")
    except Exception as exc:
        text = str(exc)
        if m := (_ORT_NOT_IMPLEMENTED.search(text) or _ORT_NO_KERNEL.search(text)):
            kind, location = "onnx_unsupported_op", m.group(3) or None
        elif m := _ORT_NOT_REGISTERED.search(text):
            kind, location = "onnx_unsupported_op", None
        elif "not supported" in text.lower():  # a kernel exists but not for these attributes
            kind, location = "onnx_unsupported_op", None
        elif "ShapeInferenceError" in text or "TypeInferenceError" in text:
            m = _ORT_NODE.search(text)
            kind, location = "onnx_shape_error", m.group(1) if m else None
        else:
            kind, location = "onnx_invalid_model", None
        if any(f.kind == kind and (location is None or f.location == location) for f in earlier):
            return [], False
        return [
            make_finding(
                kind,
                severity="high",
                confidence=1.0,
                location=location,
                message=f"onnxruntime refuses to load the model: {one_line(exc, 240)}",
                evidence={"stage": "session", "error": text[:2000], "providers": list(providers)},
                causes=["export_problem"],
                recommendations=[_REEXPORT],
            )
        ], False
    return [], True
