"""`modeldebug onnx ...` through typer's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from typer.testing import CliRunner  # noqa: E402

from modeldebug.onnx.cli import onnx_app  # noqa: E402
from modeldebug.types import Report  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(onnx_app, [str(a) for a in args], catch_exceptions=False)


def test_check_healthy(model_file, tmp_path):
    out = tmp_path / "r.json"
    result = invoke("check", model_file, "--json", out)
    assert result.exit_code == 0, result.output
    report = Report.from_json(out.read_text())
    assert report.findings == [] and report.run.command[:3] == ["modeldebug", "onnx", "check"]
    assert "IR version" in result.output


@pytest.mark.parametrize("which", ["truncated", "corrupt", "text", "checkpoint", "empty"])
@pytest.mark.parametrize("command", ["check", "profile", "nan"])
def test_bad_file_one_line_error(bad_files, which, command):
    result = invoke(command, bad_files[which])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output


def test_missing_file(tmp_path):
    result = invoke("check", tmp_path / "nope.onnx")
    assert result.exit_code == 2 and "no such file" in result.output


def test_fail_on(tmp_path, shape_error_model):
    path = tmp_path / "shape.onnx"
    onnx.save(shape_error_model, path)
    assert invoke("check", path).exit_code == 0  # findings alone do not fail the command
    result = invoke("check", path, "--fail-on", "high")
    assert result.exit_code == 1 and "onnx_shape_error" in result.output
    assert invoke("check", path, "--fail-on", "severe").exit_code == 2


def test_profile_and_nan_with_inputs(tmp_path, model_file, log_of_zero_model):
    out = tmp_path / "p.json"
    result = invoke("profile", model_file, "-n", 3, "--warmup", 0, "--json", out)
    assert result.exit_code == 0, result.output
    assert Report.from_json(out.read_text()).metrics.profiled_runs == 3
    assert "time per op type" in result.output

    path = tmp_path / "log.onnx"
    onnx.save(log_of_zero_model, path)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.array([1, -1, 2, 0], np.float32))
    out = tmp_path / "n.json"
    result = invoke("nan", path, "--inputs", inputs, "--json", out, "--fail-on", "high")
    assert result.exit_code == 1
    report = Report.from_json(out.read_text())
    assert report.findings[0].location == "log"


SOURCE = textwrap.dedent(
    """
    import torch

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(6, 12)
            self.act = torch.nn.Tanh()
            self.fc2 = torch.nn.Linear(12, 3)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    def build():
        torch.manual_seed(0)
        return Small().eval(), (torch.randn(4, 6),)

    def module_only():
        torch.manual_seed(0)
        return Small().eval()
    """
)


def test_compare_source_spec(tmp_path):
    import torch

    src = tmp_path / "mymodel.py"
    src.write_text(SOURCE)
    out = tmp_path / "c.json"
    result = invoke("compare", f"{src}:build", "--exporter", "torchscript", "--json", out)
    assert result.exit_code == 0, result.output
    report = Report.from_json(out.read_text())
    assert report.findings == [] and report.metrics.matched_points == 3

    # an ONNX file whose fc2 weights were changed after export
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodel
    finally:
        sys.path.remove(str(tmp_path))
    module, args = mymodel.build()
    from modeldebug.onnx.compare import export_model

    proto = export_model(module, args, "torchscript")
    for t in proto.graph.initializer:
        if t.name == "fc2.weight":
            arr = onnx.numpy_helper.to_array(t) * 1.5
            t.CopyFrom(onnx.numpy_helper.from_array(arr, t.name))
    onnx.save(proto, tmp_path / "planted.onnx")
    torch.save((torch.randn(4, 6),), tmp_path / "inputs.pt")
    result = invoke("compare", f"{src}:module_only", "--onnx", tmp_path / "planted.onnx", "--inputs", tmp_path / "inputs.pt", "--json", out)
    assert result.exit_code == 0, result.output
    assert Report.from_json(out.read_text()).findings[0].location == "fc2"
    assert invoke("compare", f"{src}:module_only", "--onnx", tmp_path / "planted.onnx", "--shape", "4,6", "--fail-on", "high").exit_code == 1


def test_compare_bad_specs(tmp_path):
    src = tmp_path / "mymodel.py"
    src.write_text(SOURCE)
    for spec in ["nocolon", f"{tmp_path}/missing.py:build", f"{src}:nothing", "json:dumps"]:
        result = invoke("compare", spec, "--shape", "4,6")
        assert result.exit_code == 2, (spec, result.output)
        assert result.output.startswith("error: ") and "Traceback" not in result.output
    result = invoke("compare", f"{src}:module_only")
    assert result.exit_code == 2 and "example inputs" in result.output


def test_real_subprocess_no_traceback(bad_files):
    proc = subprocess.run(
        [sys.executable, "-c", "from modeldebug.cli import main; main()", "onnx", "check", str(bad_files["truncated"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_json_reports_validate_against_the_published_schema(tmp_path, model_file, log_of_zero_model):
    import json

    jsonschema = pytest.importorskip("jsonschema")
    path = tmp_path / "log.onnx"
    onnx.save(log_of_zero_model, path)
    for args in (["check", model_file], ["profile", model_file, "-n", 2], ["nan", path]):
        out = tmp_path / f"{args[0]}.json"
        assert invoke(*args, "--json", out).exit_code == 0
        jsonschema.validate(json.loads(out.read_text()), Report.json_schema())


def test_missing_extra_is_one_line(monkeypatch, model_file):
    """Without onnx installed the command names the extra to install."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    result = invoke("check", model_file)
    assert result.exit_code == 2
    assert "pip install 'modeldebug[onnx]'" in result.output and "Traceback" not in result.output
