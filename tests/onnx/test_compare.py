"""compare_with_torch on exported PyTorch models, one with a planted numerical change."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from modeldebug.errors import DebuggingError  # noqa: E402
from modeldebug.onnx import compare_with_torch  # noqa: E402
from modeldebug.onnx.compare import export_model  # noqa: E402
from modeldebug.types import Report  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(2 * dim, dim)
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.fc2(self.act(self.fc1(x))))


class Net(torch.nn.Module):
    def __init__(self, dim=16, depth=3):
        super().__init__()
        self.embed = torch.nn.Linear(8, dim)
        self.blocks = torch.nn.ModuleList(Block(dim) for _ in range(depth))
        self.drop = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(dim, 4)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.drop(x)).softmax(-1)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def example():
    return (torch.randn(2, 8, generator=torch.Generator().manual_seed(1)),)


@pytest.fixture(scope="module")
def ts_model(net, example):
    return export_model(net, example, "torchscript")


def _plant(proto, name, delta=0.5):
    """Change one weight of the exported model by ``delta`` in one entry."""
    planted = onnx.ModelProto()
    planted.CopyFrom(proto)
    for t in planted.graph.initializer:
        if t.name == name:
            arr = onnx.numpy_helper.to_array(t).copy()
            arr.flat[0] += delta
            t.CopyFrom(onnx.numpy_helper.from_array(arr, name))
            return planted
    raise AssertionError(f"{name} not in {[t.name for t in planted.graph.initializer]}")


def test_export_matches(net, example, ts_model):
    report = compare_with_torch(net, example, onnx_model=ts_model)
    assert Report.from_json(report.to_json()) == report
    assert report.findings == []
    modules = {p.module for p in report.metrics.points}
    assert {"embed", "blocks.0.fc1", "blocks.1.act", "blocks.2.norm", "head"} <= modules
    assert all(p.ok for p in report.metrics.points) and report.metrics.outputs[0].ok


def test_planted_weight_change_is_located(net, example, ts_model):
    report = compare_with_torch(net, example, onnx_model=_plant(ts_model, "blocks.1.fc2.weight"))
    f = report.findings[0]
    assert (f.kind, f.location) == ("onnx_numerical_mismatch", "blocks.1.fc2")
    assert f.evidence["weight_differences"][0]["name"] == "blocks.1.fc2.weight"
    assert f.evidence["earlier_points_ok"] >= 4  # embed, blocks.0.*, blocks.1.fc1, blocks.1.act agree
    assert f.evidence["max_abs"] > 1e-3 and "max abs error" in f.message
    assert report.metrics.first_divergence == "blocks.1.fc2"


def test_planted_op_change_is_located(net, example, ts_model):
    """The exporter's Gelu replaced by a Relu in the ONNX file: no weight differs, the op does."""
    planted = onnx.ModelProto()
    planted.CopyFrom(ts_model)
    (gelu,) = [n for n in planted.graph.node if n.op_type == "Gelu" and "blocks.2" in n.name]
    gelu.op_type = "Relu"
    del gelu.attribute[:]
    report = compare_with_torch(net, example, onnx_model=planted)
    assert report.findings[0].location == "blocks.2.act"
    assert report.findings[0].evidence["onnx_ops"] == ["Relu"]
    assert "approximation" in report.findings[0].message


def test_train_mode_is_recognised(example, ts_model):
    torch.manual_seed(0)
    net = Net().train()  # same weights as the fixture, dropout active
    report = compare_with_torch(net, example, onnx_model=ts_model)
    f = report.findings[0]
    assert f.location == "head"  # the first module after the dropout
    assert "train mode" in f.message and "drop" in f.message
    assert any("eval()" in r.description for r in f.recommendations)


@pytest.fixture(scope="module")
def dynamo_program(net, example):
    from modeldebug.onnx.compare import _export

    return _export(net, example, "dynamo")


def test_dynamo_export_matches_modules_and_ops(net, example):
    report = compare_with_torch(net, example, exporter="dynamo")
    assert report.findings == [] and report.metrics.exporter == "dynamo"
    points = report.metrics.points
    # 14 leaf modules (a block shares its norm's value) and, from the exported program, the
    # residual adds and the final softmax that belong to no leaf module
    assert sum(p.level == "module" for p in points) == 14
    assert [p.value for p in points if p.level == "op"] == ["add", "add_1", "add_2", "softmax"]
    assert [p.module for p in points if p.level == "op"][:3] == ["blocks.0", "blocks.1", "blocks.2"]


def test_planted_op_change_found_at_op_level(net, example, dynamo_program):
    """The residual Add of blocks.1 turned into a Sub: no module output of its own, found as an op."""
    from types import SimpleNamespace

    planted = onnx.ModelProto()
    planted.CopyFrom(dynamo_program.model_proto)
    (add,) = [n for n in planted.graph.node if list(n.output) == ["add_1"]]
    add.op_type = "Sub"
    program = SimpleNamespace(model_proto=planted, exported_program=dynamo_program.exported_program)
    f = compare_with_torch(net, example, onnx_model=program).findings[0]
    assert (f.location, f.evidence["level"], f.evidence["onnx_value"]) == ("blocks.1", "op", "add_1")
    assert "Sub op add_1 inside blocks.1" in f.message
    assert f.evidence["earlier_points_ok"] >= 8


def test_hooks_are_removed(net, example, ts_model):
    compare_with_torch(net, example, onnx_model=ts_model)
    assert all(not m._forward_hooks for m in net.modules())

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            self.fc(x)
            raise RuntimeError("boom")

    broken = Broken()
    with pytest.raises(DebuggingError, match="boom"):
        compare_with_torch(broken, example, onnx_model=export_model(torch.nn.Sequential(torch.nn.Linear(8, 4)), example, "torchscript"))
    assert not broken.fc._forward_hooks


def test_wrong_number_of_inputs(net, example, ts_model):
    with pytest.raises(DebuggingError, match="fails on the example inputs"):
        compare_with_torch(net, (example[0], example[0]), onnx_model=ts_model)


def test_tolerances_apply(net, example, ts_model):
    planted = _plant(ts_model, "head.bias", delta=1e-3)
    assert compare_with_torch(net, example, onnx_model=planted, atol=1e-2, rtol=1e-2).findings == []
    assert compare_with_torch(net, example, onnx_model=planted, atol=1e-5, rtol=1e-5).findings[0].location == "head"
    assert np.isfinite(compare_with_torch(net, example, onnx_model=planted).metrics.points[0].max_rel)
