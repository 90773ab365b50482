"""Report.metrics is typed (modeldebug.metrics), and its JSON is the one readers knew: reports the
previous version wrote (metrics a plain dict) load as the right kind and are written back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from modeldebug.metrics import (
    LLMSection,
    OnnxCheckMetrics,
    OnnxNanMetrics,
    OnnxProfileMetrics,
    TrainingMetrics,
    metrics_kind,
)
from modeldebug.types import Report, RunInfo

PREVIOUS = json.loads((Path(__file__).parent / "previous_version_reports.json").read_text())
KINDS = {"dead": TrainingMetrics, "nan": TrainingMetrics, "check": OnnxCheckMetrics, "nan_onnx": OnnxNanMetrics,
         "profile": OnnxProfileMetrics}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_previous_versions_report_loads_and_is_written_back_unchanged(name):
    data = PREVIOUS[name]
    report = Report.model_validate(data)
    assert type(report.metrics) is KINDS[name]
    assert json.loads(report.to_json()) == data
    assert Report.from_json(report.to_json()) == report


def test_the_published_schema_accepts_every_kind():
    jsonschema = pytest.importorskip("jsonschema")
    schema = Report.json_schema()
    assert {"TrainingMetrics", "OnnxCheckMetrics", "OnnxCompareMetrics", "LLMSection"} <= set(schema["$defs"])
    for data in PREVIOUS.values():
        jsonschema.validate(data, schema)


def test_metrics_are_read_by_attribute():
    dead = Report.model_validate(PREVIOUS["dead"])
    m = dead.training
    assert m is dead.metrics and m.steps == PREVIOUS["dead"]["metrics"]["steps"]
    assert m.layers[0].name == "inp" and m.layers[0].histogram.counts
    assert m.series.columns()["loss"] == PREVIOUS["dead"]["metrics"]["series"]["loss"]
    assert m.monitor_stopped.hook == "_root_pre"
    llm = m.llm
    assert isinstance(llm, LLMSection) and llm.ok and llm.stored.id == 3 and llm.notes[0].source == "llm"
    finding = dead.findings[0]
    assert llm.explanation_for(finding) == "Its bias is -8."
    assert llm.explanation_for(finding.model_copy(update={"source": "llm"})) is None
    assert Report.model_validate(PREVIOUS["check"]).training is None


def test_only_what_was_set_is_written():
    report = Report(run=RunInfo(id="r"))
    assert report.to_dict()["metrics"] == {}
    report.metrics.issue = "slow"
    assert report.to_dict()["metrics"] == {"issue": "slow"}
    report.metrics.unset("issue")
    assert report.to_dict()["metrics"] == {}
    with pytest.raises(ValidationError):
        report.metrics.steps = "many"  # assignments are validated too
    bad = Report(run=RunInfo(id="r"), metrics={"loadable": False})
    assert bad.to_dict()["metrics"] == {"loadable": False}


def test_the_kind_comes_from_the_keys_a_writer_always_sets():
    assert metrics_kind({}) == "training" and metrics_kind({"loss": 0.5}) == "training"
    assert metrics_kind({"loadable": True}) == "onnx_check"
    assert metrics_kind({"values_checked": 3}) == "onnx_nan"
    assert metrics_kind({"matched_points": 0}) == "onnx_compare"
    assert metrics_kind({"latency_ms": {}}) == "onnx_profile"
    assert metrics_kind(OnnxNanMetrics()) == "onnx_nan"
    kept = Report(run=RunInfo(id="r"), metrics={"loss": 0.5})  # a key this version does not know is kept
    assert kept.to_dict()["metrics"] == {"loss": 0.5}
