"""`mlflow:URI`: the run read back with MLflow's own client on its local file store."""

import json
import os

import pytest

from modeldebug.export import export_report
from modeldebug.types import Report
from readback import expected_layer, expected_series, expected_validation, severity_counts

pytest.importorskip("mlflow")


@pytest.fixture
def client(monkeypatch):
    def make(uri):
        from mlflow.tracking import MlflowClient

        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the test's reader opts in, as a user would
        return MlflowClient(tracking_uri=uri)

    return make


def _only_run(client):
    (experiment,) = [e for e in client.search_experiments() if e.name == "modeldebug"]
    (run,) = client.search_runs([experiment.experiment_id])
    return run


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_metrics_tags_and_artifacts_are_what_the_report_says(broken_report, tmp_path, client, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = tmp_path / "mlruns"
    result = export_report(broken_report, f"mlflow:{store}")  # a plain directory: the local file store
    assert result.ok, result.note
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # allowed for the export only, then put back
    c = client(store.as_uri())
    run = _only_run(c)
    assert result.location == f"{store.as_uri()} run {run.info.run_id}"
    assert run.info.run_name == broken_report.run.id and run.info.status == "FINISHED"
    for column in ("loss", "grad_norm", "lr", "step_s"):
        assert _history(c, run.info.run_id, f"modeldebug/train/{column}") == expected_series(broken_report, column)
    assert _history(c, run.info.run_id, "modeldebug/val/loss") == expected_validation(broken_report)
    name, points = expected_layer(broken_report, "output_std")
    assert _history(c, run.info.run_id, f"modeldebug/layer/{name}/output_std") == points
    metrics = run.data.metrics
    for severity, n in severity_counts(broken_report).items():
        assert metrics[f"modeldebug/findings/{severity}"] == n
    tags, params = run.data.tags, run.data.params
    assert tags["modeldebug.worst_severity"] == "high"
    for f in broken_report.findings:
        tag = tags[f"modeldebug.finding.{f.id.replace('@', '_').replace('#', '_')}"]
        assert tag.startswith(f"[{f.severity}] {f.kind}") and f.message in tag
    assert params["modeldebug.run_id"] == broken_report.run.id
    assert params["modeldebug.steps"] == str(broken_report.run.steps)
    local = c.download_artifacts(run.info.run_id, "modeldebug/report.json", str(tmp_path / "dl"))
    assert Report.model_validate(json.loads(open(local).read())) == broken_report


def test_a_crashed_run_ends_failed_and_a_second_export_is_a_second_run(healthy_report, tmp_path, client):
    crashed = healthy_report.model_copy(deep=True)
    crashed.run.status, crashed.run.exit_code = "crashed", 1
    uri = (tmp_path / "store").as_uri()  # a file: URI
    assert export_report(healthy_report, f"mlflow:{uri}").ok
    assert export_report(crashed, f"mlflow:{uri}").ok
    c = client(uri)
    (experiment,) = [e for e in c.search_experiments() if e.name == "modeldebug"]
    runs = c.search_runs([experiment.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    for r in runs:
        assert r.data.tags["modeldebug.worst_severity"] == "none"
        assert r.data.metrics["modeldebug/findings/total"] == 0


def test_the_experiment_is_mlflows_own_setting(healthy_report, tmp_path, client, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mnist-baseline")
    assert export_report(healthy_report, f"mlflow:{tmp_path}").ok
    c = client(tmp_path.as_uri())
    assert "mnist-baseline" in [e.name for e in c.search_experiments()]
