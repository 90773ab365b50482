"""Where an ONNX model spends its time: onnxruntime's own profiler, per node and per op type.

The session runs at the optimization level the user will deploy with (default: all), so the
nodes timed are the fused ones onnxruntime really runs. Warm-up runs are dropped from the
profile. Nodes that take a large share of the time become ``onnx_slow_node`` findings, with a
suggestion from a small table keyed by op type.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from typing import Any, Mapping, Sequence

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
)
from modeldebug.metrics import OnnxProfileMetrics
from modeldebug.findings import make_finding, optimization
from modeldebug.types import Finding, Recommendation, Report

# What to try when one op type dominates; keyed by onnxruntime's (possibly fused) op name.
_SUGGESTIONS: dict[str, Recommendation] = {
    "Conv": optimization(
        description="Convolutions dominate: quantize the model (static int8) or run it on a GPU execution provider.",
        implementation="onnxruntime.quantization.quantize_static(...)",
    ),
    "MatMul": optimization(
        description="Matrix products dominate: dynamic int8 quantization usually speeds them up 2-3x on CPU.",
        implementation="onnxruntime.quantization.quantize_dynamic('model.onnx', 'model.int8.onnx')",
    ),
    "Einsum": optimization(
        description="Einsum runs as a generic kernel; rewrite it as MatMul/Transpose in the source model.",
    ),
    "Loop": optimization(
        description="A Loop node runs its body op by op; unroll it at export (static trip count) if you can.",
    ),
    "Scan": optimization(
        description="Scan runs its body step by step; use the fused RNN/LSTM/GRU ops where the model allows.",
    ),
    "Resize": optimization(
        description="Resize is slow with cubic or antialiased modes; nearest or linear modes are much cheaper.",
    ),
    "TopK": optimization(description="TopK over a long axis is slow; reduce k or the axis length."),
}
for _name in ("Gemm", "FusedMatMul", "MatMulInteger", "FusedGemm"):
    _SUGGESTIONS[_name] = _SUGGESTIONS["MatMul"]
for _name in ("FusedConv", "ConvTranspose", "NhwcConv"):
    _SUGGESTIONS[_name] = _SUGGESTIONS["Conv"]

_LEVEL_HINT = optimization(
    description="Profile and deploy with graph optimizations enabled (ORT_ENABLE_ALL): fused kernels are faster.",
    implementation="opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL",
)


def profile_execution(
    model: ModelLike,
    inputs: Mapping[str, Any] | Sequence[Any] | None = None,
    warmup: int = 5,
    iterations: int = 100,
    providers: Sequence[str] | None = None,
    optimization_level: str = "all",
    slow_share: float = 0.25,
    top: int = 15,
) -> Report:
    """Time every node of the model with onnxruntime's profiler.

    Args:
        model: path, bytes or ``onnx.ModelProto``.
        inputs: a dict name -> array, or arrays in input order; random ones from the input
            signature (symbolic dimensions set to 1) when None.
        warmup, iterations: runs before profiling and runs profiled.
        providers: onnxruntime execution providers (default: CPU).
        optimization_level: "disable", "basic", "extended" or "all" (what you deploy with).
        slow_share: a node taking at least this share of the node time is reported.
        top: how many nodes the per-node table in ``metrics.top_nodes`` keeps.
    """
    if iterations < 1 or warmup < 0:
        raise ValueError(f"Expected `iterations` >= 1 and `warmup` >= 0 but got {iterations} and {warmup}.")
    started = time.perf_counter()
    providers = check_providers(providers)
    proto = load_model(model)
    with tempfile.TemporaryDirectory(prefix="modeldebug-prof-") as tmp:
        try:
            session = make_session(proto, providers, optimization_level, profile_prefix=os.path.join(tmp, "ort"))
        except Exception as exc:
            raise DebuggingError(
                f"onnxruntime cannot load the model ({one_line(exc, 200)}); run `modeldebug onnx check` on it.",
                type="profiling",
            ) from None
        feeds = check_feeds(session, inputs)
        latencies = []
        try:
            for i in range(warmup + iterations):
                t0 = time.perf_counter()
                session.run(None, feeds)
                if i >= warmup:
                    latencies.append(time.perf_counter() - t0)
        except Exception as exc:
            raise DebuggingError(f"The model fails to run: {one_line(exc, 240)}", type="profiling") from None
        finally:
            profile_path = session.end_profiling()
        with open(profile_path) as fh:
            events = json.load(fh)
    runs = _node_events_by_run(events)[warmup:]
    metrics = OnnxProfileMetrics(
        **_summarize(runs, latencies, top),
        providers=session.get_providers(),
        optimization_level=optimization_level,
        warmup=warmup,
        iterations=iterations,
        inputs={k: {"shape": list(getattr(v, "shape", [])), "dtype": str(getattr(v, "dtype", ""))} for k, v in feeds.items()},
        random_inputs=inputs is None,
    )
    findings = _slow_nodes(metrics, slow_share, optimization_level)
    command = ["modeldebug", "onnx", "profile", model_label(model)]
    return new_report(command, findings, metrics, started)


def _node_events_by_run(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split the profiler's node events into runs: each run's nodes come before its model_run event."""
    runs: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            current.append(ev)
        elif ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs.append(current)
            current = []
    return runs


def _summarize(runs: list[list[dict[str, Any]]], latencies: list[float], top: int) -> dict[str, Any]:
    # A node's time per run is its median over the runs: one run the OS preempted in a small node
    # would otherwise make that node look dominant (seen on a loaded 2-core machine).
    per_node: dict[str, dict[str, Any]] = {}
    n = max(len(runs), 1)
    for i, run in enumerate(runs):
        for ev in run:
            name = ev["name"][: -len("_kernel_time")]
            args = ev.get("args", {})
            entry = per_node.setdefault(
                name, {"node": name, "op_type": args.get("op_name", "?"), "provider": args.get("provider"),
                       "runs": [0] * n}
            )
            entry["runs"][i] += int(ev.get("dur", 0))
    for e in per_node.values():
        e["total_us"] = float(statistics.median(e.pop("runs"))) * n
    node_total = sum(e["total_us"] for e in per_node.values()) or 1
    nodes = sorted(per_node.values(), key=lambda e: -e["total_us"])
    for e in nodes:
        e["mean_us"] = round(e["total_us"] / n, 2)
        e["share"] = round(e["total_us"] / node_total, 4)
    per_op: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "total_us": 0})
    for e in nodes:
        per_op[e["op_type"]]["count"] += 1
        per_op[e["op_type"]]["total_us"] += e["total_us"]
    op_table = [
        {"op_type": op, "nodes": v["count"], "mean_us": round(v["total_us"] / n, 2), "share": round(v["total_us"] / node_total, 4)}
        for op, v in sorted(per_op.items(), key=lambda kv: -kv[1]["total_us"])
    ]
    lat_ms = sorted(x * 1000 for x in latencies)
    return {
        "latency_ms": {
            "mean": round(statistics.fmean(lat_ms), 4),
            "median": round(statistics.median(lat_ms), 4),
            "p90": round(lat_ms[min(len(lat_ms) - 1, int(0.9 * len(lat_ms)))], 4),
            "min": round(lat_ms[0], 4),
        },
        "node_time_ms": round(node_total / n / 1000, 4),
        "executed_nodes": len(nodes),
        "profiled_runs": len(runs),
        "op_types": op_table,
        "top_nodes": [{k: e[k] for k in ("node", "op_type", "provider", "mean_us", "share")} for e in nodes[:top]],
    }


def _slow_nodes(metrics: OnnxProfileMetrics, slow_share: float, level: str) -> list[Finding]:
    findings = []
    # In a graph of one or two nodes "dominating" says nothing.
    if metrics.executed_nodes < 3:
        return findings
    for e in metrics.top_nodes:
        if e.share < slow_share:
            break
        recs = [r for r in [_SUGGESTIONS.get(e.op_type)] if r]
        if level != "all":
            recs.append(_LEVEL_HINT)
        asked = (metrics.providers or ["CPU"])[0]
        if e.provider and e.provider == "CPUExecutionProvider" and asked != e.provider:
            recs.append(
                optimization(
                    description=f"This node fell back to the CPU while {asked} was asked for; "
                    "an op or dtype the accelerator supports avoids the copies.",
                )
            )
        findings.append(
            make_finding(
                "onnx_slow_node",
                severity="medium" if e.share >= 0.5 else "low",
                confidence=0.8,
                location=e.node,
                message=(
                    f"Node {e.node} ({e.op_type}) takes {e.share:.0%} of the node time "
                    f"({e.mean_us / 1000:.3f} ms of {metrics.node_time_ms:.3f} ms per run)."
                ),
                evidence={
                    "share": e.share,
                    "mean_us": e.mean_us,
                    "op_type": e.op_type,
                    "provider": e.provider,
                    "node_time_ms": metrics.node_time_ms,
                },
                causes=[],
                recommendations=recs,
            )
        )
    return findings
