"""The first node of an ONNX graph that turns finite values into NaN or Inf.

Every intermediate value is made a graph output, the model runs once in onnxruntime with graph
optimizations off (so the nodes are the ones in the file), and the nodes are walked in graph
order (ONNX stores them topologically sorted): the origin is the first node with a non-finite
output whose inputs are all finite. Finite values beyond what fp16 can hold are reported too.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from modeldebug.errors import DebuggingError
from modeldebug.onnx._common import (
    ModelLike,
    check_feeds,
    check_providers,
    load_model,
    make_session,
    model_label,
    new_report,
    one_line,
    onnx_mod,
    value_stats,
    with_all_outputs,
)
from modeldebug.metrics import OnnxNanMetrics
from modeldebug.findings import fix, make_finding
from modeldebug.types import Finding, Report

FP16_MAX = 65504.0

# Why an op makes NaN/Inf from finite inputs, and the usual fix.
_OP_ADVICE: dict[str, tuple[str, str, str]] = {
    "Log": ("log of zero or of a negative value", "Clamp the input to a small positive value before the log.", "torch.log(x.clamp_min(1e-12))"),
    "Sqrt": ("square root of a negative value", "Clamp the input at zero (or add an epsilon) before the square root.", "torch.sqrt(x.clamp_min(0) + 1e-12)"),
    "Div": ("division by zero", "Add an epsilon to the denominator.", "a / (b + 1e-12)"),
    "Reciprocal": ("reciprocal of zero", "Add an epsilon before taking the reciprocal.", "1 / (x + 1e-12)"),
    "Pow": ("a negative base with a fractional exponent, or an overflow", "Clamp the base or use a stable formulation.", None),
    "Exp": ("overflow of exp", "Subtract the maximum before exp (as softmax does) or clamp the input.", "torch.exp(x - x.amax(dim, keepdim=True))"),
    "Softplus": ("overflow", "Use a thresholded softplus (torch.nn.Softplus(threshold=20)).", None),
    "Acos": ("input outside [-1, 1]", "Clamp the input to [-1, 1].", "torch.acos(x.clamp(-1, 1))"),
    "Asin": ("input outside [-1, 1]", "Clamp the input to [-1, 1].", "torch.asin(x.clamp(-1, 1))"),
}


def find_nonfinite(
    model: ModelLike,
    inputs: Mapping[str, Any] | Sequence[Any] | None = None,
    providers: Sequence[str] | None = None,
    check_fp16_range: bool = True,
) -> Report:
    """Run the model once and find the first node whose output holds NaN or Inf while its inputs do not.

    Args:
        model: path, bytes or ``onnx.ModelProto``.
        inputs: a dict name -> array, or arrays in input order; random ones when None.
        providers: onnxruntime execution providers (default: CPU).
        check_fp16_range: also report finite values beyond the fp16 range (65504).
    """
    started = time.perf_counter()
    providers = check_providers(providers)
    proto = load_model(model)
    nodes = list(proto.graph.node)
    names = [o for node in nodes for o in node.output if o]
    try:
        session = make_session(with_all_outputs(proto, names), providers, "disable")
    except Exception as exc:
        raise DebuggingError(
            f"onnxruntime cannot load the model ({one_line(exc, 200)}); run `modeldebug onnx check` on it."
        ) from None
    feeds = check_feeds(session, inputs)
    out_names = [o.name for o in session.get_outputs()]
    try:
        results = session.run(out_names, feeds)
    except Exception as exc:
        raise DebuggingError(f"The model fails to run: {one_line(exc, 240)}") from None
    values: dict[str, Any] = dict(zip(out_names, results))
    values.update(feeds)

    findings: list[Finding] = []
    bad_inputs = [n for n, v in feeds.items() if _nonfinite(v)]
    bad_weights = _nonfinite_initializers(proto)
    for name in bad_inputs + bad_weights:
        findings.append(_source_finding(name, name in bad_inputs, values.get(name)))
    known_bad = set(bad_inputs) | set(bad_weights)

    origin = None
    nonfinite_values = []
    for index, node in enumerate(nodes):
        bad_out = [o for o in node.output if o in values and _nonfinite(values[o])]
        if not bad_out:
            continue
        nonfinite_values.extend(bad_out)
        if origin is None and not any(i in known_bad or (i in values and _nonfinite(values[i])) for i in node.input if i):
            origin = (index, node, bad_out)
    if origin is not None:
        findings.insert(0, _origin_finding(*origin, values))
    fp16 = _fp16_range(nodes, values) if check_fp16_range else []
    findings += _fp16_findings(fp16)
    metrics = OnnxNanMetrics(
        values_checked=len(out_names),
        nonfinite_values=nonfinite_values[:100],
        nonfinite_value_count=len(nonfinite_values),
        first_node=None if origin is None else _node_label(origin[1], origin[0]),
        fp16_out_of_range=fp16[:50],
        random_inputs=inputs is None,
        input_stats={n: value_stats(v) for n, v in feeds.items() if isinstance(v, np.ndarray)},
    )
    return new_report(["modeldebug", "onnx", "nan", model_label(model)], findings, metrics, started)


def _nonfinite(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind in "fc" and not np.isfinite(value).all()


def _node_label(node, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def _nonfinite_initializers(proto) -> list[str]:
    numpy_helper = onnx_mod().numpy_helper
    bad = []
    for t in proto.graph.initializer:
        if t.data_type in (1, 10, 11, 16):  # float, float16, double, bfloat16
            try:
                arr = numpy_helper.to_array(t)
            except Exception:
                continue
            if _nonfinite(np.asarray(arr, dtype=np.float32)):
                bad.append(t.name)
    return bad


def _origin_finding(index: int, node, bad_out: list[str], values: dict[str, Any]) -> Finding:
    label = _node_label(node, index)
    out_stats = {o: value_stats(values[o]) for o in bad_out}
    in_stats = {i: value_stats(values[i]) for i in node.input if i and isinstance(values.get(i), np.ndarray)}
    first = out_stats[bad_out[0]]
    what, remedy, code = _OP_ADVICE.get(node.op_type, ("a numerically unstable operation", "Guard this operation's inputs (clamp or add an epsilon).", None))
    overflow = _looks_like_overflow(node, values)
    if overflow:
        what = "an overflow of its output type (the inputs are finite but the result exceeds the type's range)"
        remedy = "Compute this part in float32, or scale the values down before it."
        code = None
    inputs_text = "; ".join(
        f"{i}: min {s.get('min', float('nan')):.3g}, max {s.get('max', float('nan')):.3g}, zeros {s.get('zero_count', 0)}, negatives {s.get('negative_count', 0)}"
        for i, s in in_stats.items()
    )
    return make_finding(
        "onnx_nan_or_inf",
        severity="high",
        confidence=0.95,
        location=label,
        message=(
            f"Node {label} ({node.op_type}) is the first to produce non-finite values: {first.get('nan_count', 0)} NaN and "
            f"{first.get('inf_count', 0)} Inf of {first['numel']} in {bad_out[0]}, from finite inputs ({inputs_text}). "
            f"Likely {what}."
        ),
        evidence={
            "node": label,
            "op_type": node.op_type,
            "node_index": index,
            "outputs": out_stats,
            "inputs": in_stats,
        },
        causes=["numerically_unstable_op"],
        recommendations=[fix(remedy, code)],
    )


def _looks_like_overflow(node, values: dict[str, Any]) -> bool:
    """Inf (and no NaN) out of an op that cannot divide by zero: the type's range ran out."""
    if node.op_type in ("Log", "Sqrt", "Div", "Reciprocal", "Acos", "Asin"):
        return False
    outs = [values[o] for o in node.output if isinstance(values.get(o), np.ndarray)]
    return bool(outs) and all(not np.isnan(o).any() for o in outs if o.dtype.kind == "f") and any(
        o.dtype == np.float16 for o in outs
    )


def _source_finding(name: str, is_input: bool, value: Any) -> Finding:
    what = "input" if is_input else "initializer (weight)"
    stats = value_stats(value) if isinstance(value, np.ndarray) else {}
    return make_finding(
        "onnx_nan_or_inf",
        severity="high",
        confidence=0.9,
        location=name,
        message=f"The graph {what} {name} already holds non-finite values "
        f"({stats.get('nan_count', '?')} NaN, {stats.get('inf_count', '?')} Inf); every value computed from it inherits them.",
        evidence={"value": name, "source": "input" if is_input else "initializer", "stats": stats},
        causes=["unnormalized_inputs"] if is_input else ["export_problem", "bad_weight_init"],
        recommendations=[
            fix(
                description="Check the data pipeline for NaN/Inf before inference."
                if is_input
                else "The exported weights are broken: check the checkpoint for NaN and re-export.",
            )
        ],
    )


def _fp16_range(nodes, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Finite values that fp16 cannot hold (float32/64) or that sit near its limit (float16)."""
    hits = []
    for index, node in enumerate(nodes):
        for o in node.output:
            v = values.get(o)
            if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or v.size == 0:
                continue
            finite = v[np.isfinite(v)]
            if not finite.size:
                continue
            peak = float(np.abs(finite).max())
            limit = FP16_MAX if v.dtype != np.float16 else FP16_MAX / 2
            if peak > limit:
                hits.append({"node": _node_label(node, index), "op_type": node.op_type, "value": o, "dtype": str(v.dtype), "abs_max": peak})
    return hits


def _fp16_findings(hits: list[dict[str, Any]]) -> list[Finding]:
    if not hits:
        return []
    first = hits[0]
    native = first["dtype"] == "float16"
    return [
        make_finding(
            "onnx_nan_or_inf",
            severity="medium" if native else "low",
            confidence=0.7,
            location=first["node"],
            message=(
                f"{len(hits)} value(s) stay finite but exceed the float16 range; the first is {first['value']} from node "
                f"{first['node']} ({first['op_type']}) with |x| up to {first['abs_max']:.4g} "
                + ("(over half the fp16 maximum 65504: it will overflow to Inf with slightly larger inputs)." if native else "(fp16 max 65504): it turns into Inf if the model runs in fp16.")
            ),
            evidence={"values": hits[:20], "fp16_max": FP16_MAX},
            causes=["numerically_unstable_op"],
            recommendations=[
                fix(
                    description="Keep this node in float32 when converting to fp16 (e.g. the block list of onnxconverter_common's "
                    "convert_float_to_float16), or normalize the values before it.",
                    implementation="convert_float_to_float16(model, node_block_list=[...])",
                )
            ],
        )
    ]
