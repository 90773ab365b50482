"""Small ONNX models built here, each with one planted fault."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402

import numpy as np  # noqa: E402


def make_model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset), *extra_opsets])


def vi(name, shape, elem=T.FLOAT):
    return h.make_tensor_value_info(name, elem, shape)


@pytest.fixture
def healthy_model():
    """x -> MatMul(w) -> Add(b) -> Relu -> y, with a dynamic batch axis."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    b = onnx.numpy_helper.from_array(np.zeros(3, np.float32), "b")
    return make_model(
        [
            h.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
            h.make_node("Add", ["xw", "b"], ["z"], name="add"),
            h.make_node("Relu", ["z"], ["y"], name="relu"),
        ],
        [vi("x", ["batch", 4])],
        [vi("y", ["batch", 3])],
        [w, b],
    )


@pytest.fixture
def log_of_zero_model():
    """Relu(x) makes zeros from negative inputs; Log of them is -Inf; Mul by 0 then makes NaN."""
    zero = onnx.numpy_helper.from_array(np.zeros(1, np.float32), "zero")
    return make_model(
        [
            h.make_node("Relu", ["x"], ["r"], name="relu"),
            h.make_node("Log", ["r"], ["l"], name="log"),
            h.make_node("Mul", ["l", "zero"], ["y"], name="mul"),
        ],
        [vi("x", [4])],
        [vi("y", [4])],
        [zero],
    )


@pytest.fixture
def sqrt_of_negative_model():
    return make_model(
        [
            h.make_node("Sub", ["x", "ten"], ["d"], name="shift"),
            h.make_node("Sqrt", ["d"], ["s"], name="sqrt"),
            h.make_node("Add", ["s", "x"], ["y"], name="add"),
        ],
        [vi("x", [3])],
        [vi("y", [3])],
        [onnx.numpy_helper.from_array(np.full(1, 10, np.float32), "ten")],
    )


@pytest.fixture
def shape_error_model():
    return make_model(
        [h.make_node("Add", ["x", "y"], ["z"], name="bad_add")],
        [vi("x", [2, 3]), vi("y", [4, 5])],
        [vi("z", [2, 3])],
    )


@pytest.fixture
def unsupported_op_model():
    """An operator of a custom domain that no onnxruntime kernel implements."""
    return make_model(
        [h.make_node("Relu", ["x"], ["r"], name="relu"), h.make_node("FancyNorm", ["r"], ["y"], name="fancy", domain="com.example")],
        [vi("x", [2, 3])],
        [vi("y", [2, 3])],
        extra_opsets=[h.make_opsetid("com.example", 1)],
    )


@pytest.fixture
def model_file(tmp_path, healthy_model):
    path = tmp_path / "healthy.onnx"
    onnx.save(healthy_model, path)
    return path


@pytest.fixture
def bad_files(tmp_path, model_file):
    data = model_file.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(data[:2] + bytes([0xFF]) * 40 + data[42:])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    checkpoint = tmp_path / "weights.onnx"
    checkpoint.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    return {"truncated": truncated, "corrupt": corrupt, "text": text, "checkpoint": checkpoint, "empty": empty}
