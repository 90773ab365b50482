"""Export targets as users write them, a missing library, and exports that fail without raising."""

import sys

import pytest

from modeldebug.errors import MissingExtraError
from modeldebug.export import check_target, check_targets, export_all, export_report, parse_target
from modeldebug.export.to_mlflow import key, tracking_uri


@pytest.mark.parametrize("text, kind, location", [
    ("tensorboard:runs/exp1", "tensorboard", "runs/exp1"),
    ("TensorBoard: logs ", "tensorboard", "logs"),
    ("mlflow:file:///tmp/mlruns", "mlflow", "file:///tmp/mlruns"),
    ("mlflow:http://127.0.0.1:5000", "mlflow", "http://127.0.0.1:5000"),
    ("wandb", "wandb", "."),
    ("wandb:out/wb", "wandb", "out/wb"),
])
def test_targets_are_read_as_written(text, kind, location):
    target = parse_target(text)
    assert (target.kind, target.location, str(target)) == (kind, location, text.strip())


def test_mlflow_alone_is_mlflows_own_setting_or_a_local_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert parse_target("mlflow").location == "./mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert parse_target("mlflow").location == "http://tracking:5000"


@pytest.mark.parametrize("text, says", [
    ("tensorbord:runs", "did you mean tensorboard?"),
    ("neptune:x", "expected tensorboard:DIR"),
    ("tensorboard", "needs a log directory"),
    ("tensorboard:", "needs a log directory"),
])
def test_a_target_that_names_nothing_is_refused(text, says):
    with pytest.raises(ValueError, match=says.replace("?", r"\?")):
        parse_target(text)
    result = export_report(None, text)  # never raises: the reason comes back
    assert not result.ok and says in result.note


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_library_names_its_extra(kind, monkeypatch, healthy_report, tmp_path):
    monkeypatch.setitem(sys.modules, kind, None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=rf"pip install 'modeldebug\[{kind}\]'"):
        check_targets([f"{kind}:{tmp_path}"])
    result = export_report(healthy_report, f"{kind}:{tmp_path}")
    assert not result.ok and f"modeldebug[{kind}]" in result.note
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_is_a_note_and_the_next_one_still_runs(healthy_report, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log directory should be")
    results = export_all(healthy_report, [f"tensorboard:{blocked}", f"tensorboard:{tmp_path / 'tb'}"])
    assert [r.ok for r in results] == [False, True]
    assert results[0].note.startswith(("FileExistsError", "NotADirectoryError")) and "\n" not in results[0].note
    assert "failed" in str(results[0]) and str(results[1]).startswith("exported to ")
    assert blocked.read_text().startswith("a file")


def test_an_mlflow_store_that_cannot_be_reached_is_a_note(healthy_report):
    result = export_report(healthy_report, "mlflow:nosuchscheme://host/x")
    assert not result.ok and result.note


def test_mlflow_names_and_uris():
    assert tracking_uri("file:///tmp/x") == "file:///tmp/x"
    assert tracking_uri("sqlite:///m.db") == "sqlite:///m.db"
    assert tracking_uri("/tmp/mlruns") == "file:///tmp/mlruns"
    assert tracking_uri("mlruns").startswith("file:///") and tracking_uri("mlruns").endswith("/mlruns")
    assert key("modeldebug.finding.dead_relu@encoder.0#2") == "modeldebug.finding.dead_relu_encoder.0_2"
    assert key("modeldebug/layer/fc 1/grad_norm") == "modeldebug/layer/fc 1/grad_norm"


def test_check_target_accepts_parsed_targets():
    target = parse_target("wandb:x")
    assert check_target(target) is target
