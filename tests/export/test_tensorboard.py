"""`tensorboard:DIR`: the event file read back with TensorBoard's own EventAccumulator."""

import numpy as np
import pytest

from modeldebug.export import export_report
from readback import expected_layer, expected_series, expected_validation, severity_counts

pytest.importorskip("tensorboard")


def _read(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _f32(points):
    # TensorBoard keeps a scalar as a 32-bit float
    return [(s, float(np.float32(v))) for s, v in points]


def _text(acc, tag):
    (event,) = acc.Tensors(tag)
    return event.tensor_proto.string_val[0].decode()


def test_series_layers_and_findings_are_what_the_report_says(broken_report, tmp_path):
    result = export_report(broken_report, f"tensorboard:{tmp_path}")
    assert result.ok, result.note
    assert result.location.endswith(".modeldebug") and result.location.startswith(str(tmp_path))
    acc = _read(tmp_path)
    for column in ("loss", "grad_norm", "lr"):
        assert _scalars(acc, f"modeldebug/train/{column}") == _f32(expected_series(broken_report, column))
    # a non-finite validation loss (null in the report) is left out, the finite ones kept
    assert _scalars(acc, "modeldebug/val/loss") == _f32(expected_validation(broken_report))
    assert len(expected_validation(broken_report)) < len(broken_report.metrics.validation.step)
    name, points = expected_layer(broken_report, "grad_norm")
    assert points and _scalars(acc, f"modeldebug/layer/{name}/grad_norm") == _f32(points)
    last = max([broken_report.run.steps] + [int(x) for x in broken_report.metrics.series.step])
    for severity, n in severity_counts(broken_report).items():
        assert _scalars(acc, f"modeldebug/findings/{severity}") == [(last, float(n))]
    text = _text(acc, "modeldebug/findings")
    for f in broken_report.findings:
        assert f"[{f.severity}] {f.kind}" in text and f.message in text
    assert broken_report.run.id in _text(acc, "modeldebug/run")
    histograms = acc.Histograms(f"modeldebug/layer/{broken_report.metrics.layers[0].name}/output")
    first = broken_report.metrics.layers[0].histogram_first
    assert histograms[0].step == first.step and histograms[0].histogram_value.num == sum(first.counts)


def test_a_healthy_run_says_it_found_nothing(healthy_report, tmp_path):
    assert export_report(healthy_report, f"tensorboard:{tmp_path}").ok
    acc = _read(tmp_path)
    assert _text(acc, "modeldebug/findings").startswith("No findings")
    assert _scalars(acc, "modeldebug/findings/total")[0][1] == 0.0
    assert _scalars(acc, "modeldebug/train/loss") == _f32(expected_series(healthy_report, "loss"))


def test_beside_the_runs_own_events(healthy_report, tmp_path):
    """Written into a log directory that already has the training's own event file, both are read as one run."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    own = EventFileWriter(str(tmp_path))
    own.add_event(event_pb2.Event(step=3, summary=summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag="train/acc", simple_value=0.5)])))
    own.close()
    assert export_report(healthy_report, f"tensorboard:{tmp_path}").ok
    tags = _read(tmp_path).Tags()["scalars"]
    assert "train/acc" in tags and "modeldebug/train/loss" in tags


def test_a_report_without_training_metrics_exports_its_findings(tmp_path):
    """An ONNX command's report has findings and no series."""
    from modeldebug.metrics import OnnxCheckMetrics
    from modeldebug.types import Finding, Report, RunInfo

    finding = Finding(kind="onnx_unsupported_op", severity="high", confidence=0.9, location="node_7",
                      message="GridSample is not supported by the installed onnxruntime.")
    report = Report(run=RunInfo(id="onnx-check", status="completed"), findings=[finding],
                    metrics=OnnxCheckMetrics(loadable=True))
    assert export_report(report, f"tensorboard:{tmp_path}").ok
    acc = _read(tmp_path)
    assert finding.message in _text(acc, "modeldebug/findings")
    assert _scalars(acc, "modeldebug/findings/high") == [(0, 1.0)]
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("modeldebug/train/")]


def test_a_suppressed_finding_is_listed_as_such_and_not_counted(broken_report, tmp_path):
    report = broken_report.model_copy(deep=True)
    quiet = report.sorted_findings()[0]
    quiet.suppressed, quiet.suppression_reason = True, "already in baseline run 20261201-1"
    assert export_report(report, f"tensorboard:{tmp_path}").ok
    acc = _read(tmp_path)
    counts = severity_counts(report)
    counts[quiet.severity] -= 1
    for severity, n in counts.items():
        assert _scalars(acc, f"modeldebug/findings/{severity}")[0][1] == n
    assert _scalars(acc, "modeldebug/findings/suppressed")[0][1] == 1.0
    text = _text(acc, "modeldebug/findings")
    assert f"suppressed (already in baseline run 20261201-1): [{quiet.severity}] {quiet.kind}" in text
    assert text.startswith(f"**{len(report.findings) - 1} finding(s)**")
