"""Planted faults: each must be found, at the right node, with the numbers in the message."""

from __future__ import annotations

import numpy as np
import pytest

from modeldebug.errors import DebuggingError
from modeldebug.onnx import analyze_model, find_nonfinite, load_model, profile_execution
from modeldebug.types import Report


def _kinds(report):
    return [f.kind for f in report.findings]


def _roundtrip(report):
    assert Report.from_json(report.to_json()) == report
    return report


def test_healthy_model_has_no_findings(healthy_model):
    report = _roundtrip(analyze_model(healthy_model))
    assert report.findings == []
    assert report.metrics.valid is True
    assert report.metrics.dynamic_axes == {"x": {"0": "batch"}, "y": {"0": "batch"}}
    assert report.metrics.opsets == {"ai.onnx": 17}
    assert report.metrics.parameter_count == 15


def test_unused_initializer_and_input_without_shape(healthy_model):
    import onnx

    healthy_model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones(7, np.float32), "leftover"))
    healthy_model.graph.input.append(onnx.ValueInfoProto(name="mask"))
    report = analyze_model(healthy_model, validate_graph=False)
    assert report.metrics.unused_initializers == ["leftover"]
    assert report.metrics.unused_inputs == ["mask"]
    assert report.metrics.inputs_without_shape == ["mask"]


def test_shape_error_names_node_and_op(shape_error_model):
    report = _roundtrip(analyze_model(shape_error_model))
    shape = [f for f in report.findings if f.kind == "onnx_shape_error"]
    assert len(shape) == 1
    assert shape[0].location == "bad_add"
    assert shape[0].evidence["op_type"] == "Add"
    assert "Incompatible dimensions" in shape[0].message
    assert shape[0].severity == "high"


def test_unsupported_op(unsupported_op_model):
    report = _roundtrip(analyze_model(unsupported_op_model))
    assert _kinds(report) == ["onnx_unsupported_op"]
    f = report.findings[0]
    assert f.location == "fancy"
    assert "com.example:FancyNorm" in f.message
    assert report.metrics.unsupported_ops[0]["op_type"] == "FancyNorm"


def test_standard_op_the_runtime_lacks():
    """ImageDecoder is in the ONNX standard (opset 20) but onnxruntime's CPU provider has no kernel for it."""
    from onnx import TensorProto as T
    from onnx import helper as h

    graph = h.make_graph(
        [h.make_node("ImageDecoder", ["x"], ["y"], name="decode")],
        "g",
        [h.make_tensor_value_info("x", T.UINT8, [100])],
        [h.make_tensor_value_info("y", T.UINT8, [None, None, 3])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 20)])
    report = analyze_model(model)
    unsupported = [f for f in report.findings if f.kind == "onnx_unsupported_op"]
    assert [f.location for f in unsupported] == ["decode"]
    assert "ImageDecoder version 20" in unsupported[0].message


def test_constant_nodes_are_supported():
    """onnxruntime folds Constant nodes itself: no kernel, but no finding either."""
    from onnx import TensorProto as T
    from onnx import helper as h

    graph = h.make_graph(
        [h.make_node("Constant", [], ["c"], value_float=2.0), h.make_node("Mul", ["x", "c"], ["y"])],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, [2])],
        [h.make_tensor_value_info("y", T.FLOAT, [2])],
    )
    assert analyze_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 21)])).findings == []


@pytest.mark.parametrize("which", ["truncated", "corrupt", "text", "checkpoint", "empty"])
def test_bad_files_give_one_line_error(bad_files, which):
    path = bad_files[which]
    with pytest.raises(DebuggingError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    report = _roundtrip(analyze_model(path))
    assert _kinds(report) == ["onnx_invalid_model"] and report.metrics.loadable is False
    with pytest.raises(DebuggingError):
        profile_execution(path)
    with pytest.raises(DebuggingError):
        find_nonfinite(path)


def test_non_onnx_files_are_named_for_what_they_are(bad_files):
    with pytest.raises(DebuggingError, match="text file"):
        load_model(bad_files["text"])
    with pytest.raises(DebuggingError, match="PyTorch checkpoint"):
        load_model(bad_files["checkpoint"])
    with pytest.raises(DebuggingError, match="no such file"):
        load_model(bad_files["text"].parent / "missing.onnx")


def test_log_of_zero(log_of_zero_model):
    x = np.array([1.0, -1.0, 2.0, 0.0], np.float32)
    report = _roundtrip(find_nonfinite(log_of_zero_model, {"x": x}))
    f = report.findings[0]
    assert (f.kind, f.location, f.evidence["op_type"]) == ("onnx_nan_or_inf", "log", "Log")
    assert f.evidence["outputs"]["l"]["inf_count"] == 2
    assert f.evidence["inputs"]["r"]["zero_count"] == 2
    assert "numerically_unstable_op" in f.causes
    # the Mul after it also holds NaN but is not the origin
    assert report.metrics.nonfinite_values == ["l", "y"]
    assert report.metrics.first_node == "log"


def test_sqrt_of_negative(sqrt_of_negative_model):
    report = find_nonfinite(sqrt_of_negative_model, [np.array([1.0, 20.0, 3.0], np.float32)])
    f = report.findings[0]
    assert (f.location, f.evidence["outputs"]["s"]["nan_count"]) == ("sqrt", 2)
    assert f.evidence["inputs"]["d"]["negative_count"] == 2
    assert "square root" in f.message


def test_finite_inputs_give_no_nan_finding(sqrt_of_negative_model):
    report = find_nonfinite(sqrt_of_negative_model, {"x": np.array([11.0, 20.0, 30.0], np.float32)})
    assert report.findings == [] and report.metrics.nonfinite_value_count == 0


def test_nan_in_graph_input_is_reported_as_source(log_of_zero_model):
    report = find_nonfinite(log_of_zero_model, {"x": np.array([np.nan, 1, 2, 3], np.float32)})
    assert report.findings[0].location == "x" and report.findings[0].evidence["source"] == "input"


def test_fp16_overflow():
    from onnx import TensorProto as T
    from onnx import helper as h

    graph = h.make_graph(
        [h.make_node("Mul", ["x", "x"], ["sq"], name="square"), h.make_node("Add", ["sq", "x"], ["y"], name="plus")],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT16, [2])],
        [h.make_tensor_value_info("y", T.FLOAT16, [2])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    near = find_nonfinite(model, {"x": np.array([200.0, 1.0], np.float16)})  # 40000: finite, near the limit
    assert [(f.kind, f.severity, f.location) for f in near.findings] == [("onnx_nan_or_inf", "medium", "square")]
    over = find_nonfinite(model, {"x": np.array([300.0, 1.0], np.float16)})  # 90000: Inf in fp16
    f = over.findings[0]
    assert (f.severity, f.location) == ("high", "square") and "overflow" in f.message


def test_profile_small_model(healthy_model):
    report = _roundtrip(profile_execution(healthy_model, warmup=1, iterations=5))
    m = report.metrics
    assert m.profiled_runs == 5 and m.random_inputs is True
    assert m.inputs["x"]["shape"] == [1, 4]  # the symbolic batch axis became 1
    assert {row.op_type for row in m.op_types} <= {"MatMul", "Add", "Relu", "FusedMatMul", "MatMulAddFusion", "Gemm", "FusedGemm"}
    assert abs(sum(row.share for row in m.op_types) - 1) < 0.01


def test_profile_reports_dominant_node():
    """A big MatMul next to two tiny ops takes nearly all the time."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    w = onnx.numpy_helper.from_array(np.ones((512, 512), np.float32), "w")
    graph = h.make_graph(
        [
            h.make_node("Relu", ["x"], ["r"], name="relu"),
            h.make_node("MatMul", ["r", "w"], ["m"], name="big_matmul"),
            h.make_node("Sigmoid", ["m"], ["y"], name="sigmoid"),
        ],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, [256, 512])],
        [h.make_tensor_value_info("y", T.FLOAT, [256, 512])],
        initializer=[w],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    report = profile_execution(model, warmup=1, iterations=5, optimization_level="disable")
    slow = [f for f in report.findings if f.kind == "onnx_slow_node"]
    assert slow and slow[0].location == "big_matmul"
    assert slow[0].evidence["share"] >= 0.5
    assert any("quantiz" in r.description for r in slow[0].recommendations)


def test_profile_rejects_wrong_inputs(healthy_model):
    with pytest.raises(DebuggingError, match="Missing inputs"):
        profile_execution(healthy_model, inputs={"nope": np.zeros((1, 4), np.float32)}, iterations=1)
