"""Exports that do not fit the module (issue 16, item 2) and providers the runtime lacks (item 9)."""

from __future__ import annotations

import textwrap

import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from typer.testing import CliRunner  # noqa: E402

from modeldebug.errors import DebuggingError  # noqa: E402
from modeldebug.onnx import compare_with_torch, find_nonfinite, profile_execution  # noqa: E402
from modeldebug.onnx.cli import onnx_app  # noqa: E402
from modeldebug.onnx.compare import export_model  # noqa: E402
from modeldebug.types import Report  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(onnx_app, [str(a) for a in args], catch_exceptions=False)


SOURCE = textwrap.dedent(
    """
    import torch

    def wide():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 5)).eval(), (torch.randn(2, 3),)

    def narrow():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 4)).eval(), (torch.randn(2, 3),)
    """
)


def test_compare_refuses_an_export_with_other_output_shapes(tmp_path):
    src = tmp_path / "shapes.py"
    src.write_text(SOURCE)
    narrow = torch.nn.Sequential(torch.nn.Linear(3, 4)).eval()
    onnx.save(export_model(narrow, (torch.randn(2, 3),), "torchscript"), tmp_path / "narrow.onnx")
    out = tmp_path / "r.json"
    result = invoke("compare", f"{src}:wide", "--onnx", tmp_path / "narrow.onnx", "--fail-on", "low", "--json", out)
    assert result.exit_code == 1, result.output
    assert "No problems found" not in result.output
    finding = Report.from_json(out.read_text()).findings[0]
    assert finding.severity == "high" and finding.kind == "onnx_numerical_mismatch"
    assert "[2, 5]" in finding.message and "[2, 4]" in finding.message
    assert finding.evidence["reason"] == "output_shapes"


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 4)
        self.b = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.a(x), self.b(x)


def test_compare_refuses_an_export_with_fewer_outputs():
    torch.manual_seed(0)
    module = TwoHeads().eval()
    x = torch.randn(2, 3)
    one_head = export_model(module.a, (x,), "torchscript")
    report = compare_with_torch(module, (x,), onnx_model=one_head)
    finding = report.findings[0]
    assert finding.severity == "high" and finding.evidence["torch_outputs"] == 2 and finding.evidence["onnx_outputs"] == 1
    assert "2 tensor(s)" in finding.message


def test_no_matched_point_is_never_no_problems():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()).eval()
    x = torch.randn(2, 3)
    proto = export_model(module, (x,), "torchscript")
    for i, node in enumerate(proto.graph.node):  # names without module scopes: nothing to match
        node.name = f"n{i}"
    report = compare_with_torch(module, (x,), onnx_model=proto)
    assert report.metrics.matched_points == 0
    (finding,) = report.findings
    assert finding.evidence["reason"] == "nothing_matched" and finding.severity == "low"
    assert "only the 1 graph output(s) were compared" in finding.message


class ConvBnRelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(8, 4, 3)
        self.bn2 = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(self.relu(self.bn(self.conv(x)))))


@pytest.fixture(scope="module")
def conv_bn():
    torch.manual_seed(0)
    module = ConvBnRelu()
    with torch.no_grad():  # batch norms far from identity, so that folding them changes the Conv
        for bn in (module.bn, module.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    module.eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    proto = export_model(module, (x,), "torchscript")  # the eval export folds each BatchNorm into its Conv
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Relu", "Conv"]
    return module, x, proto


def test_batchnorm_folded_into_conv_matches_the_batchnorm(conv_bn):
    module, x, proto = conv_bn
    report = compare_with_torch(module, (x,), onnx_model=proto)
    assert report.findings == []
    points = {p.onnx_node: p for p in report.metrics.points}
    assert points["/conv/Conv"].module == "bn" and points["/conv/Conv"].fused == ["conv"]
    assert points["/conv2/Conv"].module == "bn2" and points["/conv2/Conv"].fused == ["conv2"]
    assert points["/relu/Relu"].module == "relu" and points["/relu/Relu"].fused == []


def test_a_real_change_in_a_folded_conv_is_still_found(conv_bn):
    module, x, proto = conv_bn
    planted = onnx.ModelProto()
    planted.CopyFrom(proto)
    weight = planted.graph.node[2].input[1]  # the second Conv's (folded) weight
    for t in planted.graph.initializer:
        if t.name == weight:
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * 1.5, t.name))
    report = compare_with_torch(module, (x,), onnx_model=planted)
    assert report.findings[0].location == "conv2"
    assert report.metrics.first_divergence == "conv2"


def _missing_provider() -> str:
    missing = [p for p in ort.get_all_providers() if p not in ort.get_available_providers()]
    if not missing:
        pytest.skip("every onnxruntime provider is available here")
    return "CUDAExecutionProvider" if "CUDAExecutionProvider" in missing else missing[0]


def test_check_with_a_provider_that_is_not_installed(model_file):
    provider = _missing_provider()
    result = invoke("check", model_file, "-p", provider)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "no kernel" not in result.output
    assert f"{provider} is not available" in result.output and "CPUExecutionProvider" in result.output


def test_other_commands_refuse_a_missing_or_unknown_provider(model_file):
    provider = _missing_provider()
    with pytest.raises(DebuggingError, match="is not available"):
        find_nonfinite(str(model_file), providers=[provider])
    with pytest.raises(DebuggingError, match="is not available"):
        profile_execution(str(model_file), iterations=1, providers=[provider])
    with pytest.raises(DebuggingError, match="not an onnxruntime provider name"):
        profile_execution(str(model_file), iterations=1, providers=["CUDAProvider"])
    module = torch.nn.Linear(4, 3).eval()
    with pytest.raises(DebuggingError, match="is not available"):
        compare_with_torch(module, (torch.randn(1, 4),), providers=[provider])
