"""The real-model graphs that ship inside the onnx package (backend/test/data/light/).

ResNet-50, DenseNet-121, VGG-19, ... with their weights replaced by small constants: full graphs,
tiny files. Two profiling iterations keep this fast (all of them in under 10 s on two cores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from modeldebug.onnx import analyze_model, find_nonfinite, profile_execution  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = sorted(LIGHT.glob("*.onnx"))


def _params():
    for path in MODELS:
        yield pytest.param(path, id=path.stem.removeprefix("light_"))


def test_models_are_there():
    assert len(MODELS) >= 8 and (LIGHT / "light_resnet50.onnx").exists()


@pytest.mark.parametrize("path", list(_params()))
def test_analyze_and_profile(path):
    report = analyze_model(path)
    assert not [f for f in report.findings if f.severity == "high"], report.findings
    assert report.metrics.node_count > 5 and report.metrics.opsets
    prof = profile_execution(path, warmup=0, iterations=2)
    m = prof.metrics
    assert m.profiled_runs == 2 and m.executed_nodes > 3
    assert m.op_types[0].share > 0 and m.top_nodes
    assert abs(sum(r.share for r in m.op_types) - 1) < 0.01


def test_resnet50_nan_check():
    """Every one of ResNet-50's intermediate values comes back from one session, all finite."""
    path = LIGHT / "light_resnet50.onnx"
    model = onnx.load(path)
    x = np.random.default_rng(0).standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    report = find_nonfinite(path, {model.graph.input[0].name: x})
    assert report.metrics.nonfinite_value_count == 0
    assert report.metrics.values_checked >= len(model.graph.node)
    assert not [f for f in report.findings if f.severity == "high"]
